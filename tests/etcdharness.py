"""Real etcd members for tests, started from Debian's ``etcd-server`` package (etcd 3.4).

Every member binds 127.0.0.1 on free ports and keeps its data in a private temp directory, removed by
:meth:`EtcdCluster.stop`. A cluster starts with authentication enabled: a ``root`` user and an ``idgen`` user
(:data:`TEST_CREDENTIALS`) whose role may read and write only keys under :data:`NAMESPACE_PREFIX`::

    with EtcdServer() as etcd:            # one member
        lease = EtcdLease(layout, etcd.endpoints, "/idgen-test/x", auth=TEST_CREDENTIALS)

    with EtcdCluster(3) as cluster:       # three members, one leader
        cluster.leader().kill()
        cluster.wait_for_leader()

Readiness is ``/health`` answering ``{"health":"true"}`` (it needs a leader). This module does not import pytest;
tests/conftest.py wraps it in fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import tiers
from zkharness import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ROOT_CREDENTIALS = "root:root-secret"
TEST_CREDENTIALS = "idgen:etcd-secret"
NAMESPACE_PREFIX = "/idgen"  # the idgen user's role: readwrite on every key starting with this (and nothing else)
READY_TIMEOUT_S = 30.0


class EtcdMember:
    """One etcd process of a cluster; ``kill``, ``pause``/``resume`` and ``restart`` act on it alone."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        client_port: int,
        peer_port: int,
        hosts: Sequence[str] = ("127.0.0.1",),
        netns: str = "",
    ) -> None:
        self.name = name
        self.hosts = tuple(hosts)  # it listens on, and advertises, every one; the first is the one tests use
        self.netns = netns  # a network namespace to run in (``ip netns exec``, which execs: the pid is etcd's)
        self.tls: EtcdTlsFiles | None = None  # set by the cluster: client URLs over TLS, client certificates required
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{name}.log"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.hosts[0]}:{self.client_port}"

    @property
    def client_urls(self) -> str:
        return ",".join(f"{self.scheme}://{host}:{self.client_port}" for host in self.hosts)

    @property
    def peer_urls(self) -> list[str]:
        return [f"http://{host}:{self.peer_port}" for host in self.hosts]

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def spawn(self, initial_cluster: str, state: str, extra: Sequence[str] = ()) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(["ip", "netns", "exec", self.netns] if self.netns else []),
                    ETCD,
                    f"--name={self.name}",
                    f"--data-dir={self.data_dir}",
                    f"--listen-client-urls={self.client_urls}",
                    f"--advertise-client-urls={self.client_urls}",
                    f"--listen-peer-urls={','.join(self.peer_urls)}",
                    f"--initial-advertise-peer-urls={','.join(self.peer_urls)}",
                    f"--initial-cluster={initial_cluster}",
                    f"--initial-cluster-state={state}",
                    "--initial-cluster-token=idgen-test",
                    "--heartbeat-interval=100",
                    "--election-timeout=1000",
                    "--logger=zap",
                    "--log-level=warn",
                    # Passwords hashed at bcrypt's lowest cost: each authentication costs etcd about 60 ms of CPU at
                    # its default (10), and 16 workers starting at once on 2 shared cores then wait seconds for it.
                    "--bcrypt-cost=4",
                    *extra,
                    *(self.tls.server_args() if self.tls else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def healthy(self, timeout_s: float = 1.0) -> bool:
        try:
            context = self.tls.context() if self.tls else None
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout_s, context=context) as answer:
                return bool(json.loads(answer.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def is_leader(self) -> bool:
        try:
            request = urllib.request.Request(f"{self.url}/v3/maintenance/status", data=b"{}", method="POST")
            context = self.tls.context() if self.tls else None
            with urllib.request.urlopen(request, timeout=1.0, context=context) as answer:
                status = json.loads(answer.read())
        except (OSError, ValueError):
            return False
        return bool(status.get("leader") == status.get("header", {}).get("member_id"))

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __repr__(self) -> str:
        return f"EtcdMember({self.name}, {self.url}, pid={self.pid})"


class EtcdCluster:
    """``size`` members on free loopback ports, with auth enabled (see the module docstring). ``placement`` puts
    members elsewhere: ``{index: (addresses, netns)}``, e.g. one member inside a network namespace to partition it,
    the others on loopback and on the host's end of the link to it (peers try each advertised URL in turn)."""

    def __init__(
        self,
        size: int = 3,
        *,
        auth: bool = True,
        extra_args: Sequence[str] = (),
        placement: Mapping[int, tuple[Sequence[str], str]] | None = None,
        tls: bool = False,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="idgen-etcd-"))
        self.auth = auth
        self.extra_args = list(extra_args)
        where = placement or {}
        self.members = [
            EtcdMember(f"m{i}", self.root / f"m{i}", free_port(), free_port(), *where.get(i - 1, (("127.0.0.1",), "")))
            for i in range(1, size + 1)
        ]
        self.tls = EtcdTlsFiles(self.root / "tls") if tls else None
        for member in self.members:
            member.tls = self.tls
        self.initial_cluster = ",".join(f"{m.name}={url}" for m in self.members for url in m.peer_urls)

    @property
    def endpoints(self) -> str:
        """Every member's client URL, comma-separated: what ``--etcd`` takes."""
        return ",".join(m.url for m in self.members)

    def start(self) -> EtcdCluster:
        tiers.check_may_start("etcd", "an EtcdCluster")
        for member in self.members:
            member.spawn(self.initial_cluster, "new", self.extra_args)
        self.wait_ready()
        if self.auth:
            self._enable_auth()
        return self

    def wait_ready(self, members: Sequence[EtcdMember] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for member in members or self.members:
            while not member.healthy():
                if member.proc is not None and member.proc.poll() is not None:
                    raise RuntimeError(f"{member} exited: {member.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{member} not healthy within {timeout_s:g} s: {member.log_tail()}")
                time.sleep(0.05)

    def etcdctl(self, *args: str, user: str | None = ROOT_CREDENTIALS) -> str:
        """Run ``etcdctl`` (API 3) against the live members; its stdout, or RuntimeError with its stderr."""
        live = ",".join(m.url for m in self.members if m.pid is not None)
        command = [ETCDCTL, f"--endpoints={live}", "--dial-timeout=3s", "--command-timeout=5s"]
        if self.tls is not None:
            command += [f"--cacert={self.tls.ca}", f"--cert={self.tls.client_cert}", f"--key={self.tls.client_key}"]
        if user is not None and self.auth_enabled:
            command.append(f"--user={user}")
        done = subprocess.run(
            [*command, *args], capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    auth_enabled = False

    def _enable_auth(self) -> None:
        root_password = ROOT_CREDENTIALS.partition(":")[2]
        user, _, password = TEST_CREDENTIALS.partition(":")
        for args in (
            ("user", "add", f"root:{root_password}", "--interactive=false"),
            ("role", "add", "root"),
            ("user", "grant-role", "root", "root"),
            ("role", "add", user),
            ("role", "grant-permission", user, "--prefix=true", "readwrite", NAMESPACE_PREFIX),
            ("user", "add", f"{user}:{password}", "--interactive=false"),
            ("user", "grant-role", user, user),
            ("auth", "enable"),
        ):
            self.etcdctl(*args)
        self.auth_enabled = True

    def leader(self, timeout_s: float = 10.0) -> EtcdMember:
        deadline = time.monotonic() + timeout_s
        while True:
            leaders = [m for m in self.members if m.pid is not None and m.is_leader()]
            if len(leaders) == 1:
                return leaders[0]
            if time.monotonic() > deadline:
                raise RuntimeError(f"no single leader among {self.members} within {timeout_s:g} s")
            time.sleep(0.05)

    def wait_for_leader(self, exclude: EtcdMember | None = None, timeout_s: float = 10.0) -> EtcdMember:
        deadline = time.monotonic() + timeout_s
        while True:
            leader = self.leader(timeout_s)
            if leader is not exclude:
                return leader
            if time.monotonic() > deadline:
                raise RuntimeError(f"the leader is still {exclude}")
            time.sleep(0.05)

    def restart(self, member: EtcdMember) -> None:
        """Start a killed or stopped member again on its data directory and ports."""
        member.spawn(self.initial_cluster, "existing", self.extra_args)
        self.wait_ready([member])

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


class EtcdServer(EtcdCluster):
    """A single-member cluster."""

    def __init__(self, *, auth: bool = True, extra_args: Sequence[str] = (), tls: bool = False) -> None:
        super().__init__(1, auth=auth, extra_args=extra_args, tls=tls)


class EtcdTlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate without a CommonName (etcd's gateway refuses
    one that has a CN), made with ``openssl`` in ``directory``: etcd then serves TLS and requires client certificates
    (``--client-cert-auth``)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        self.ca, ca_key = directory / "ca.crt", directory / "ca.key"
        self.server_cert, self.server_key = directory / "server.crt", directory / "server.key"
        self.client_cert, self.client_key = directory / "client.crt", directory / "client.key"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=idgen-test-ca",
                 "-keyout", ca_key, "-out", self.ca)  # fmt: skip
        for cert, key, subject, extension in (
            (self.server_cert, self.server_key, "/CN=etcd", "subjectAltName=IP:127.0.0.1"),
            (self.client_cert, self.client_key, "/O=idgen-test", "extendedKeyUsage=clientAuth"),  # no CN (gateway)
        ):
            request = key.with_suffix(".csr")
            _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key, "-out", request)
            _openssl("x509", "-req", "-in", request, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
                     "-extfile", _extension_file(directory, extension), "-out", cert)  # fmt: skip

    def server_args(self) -> list[str]:
        return [
            f"--cert-file={self.server_cert}",
            f"--key-file={self.server_key}",
            f"--trusted-ca-file={self.ca}",
            "--client-cert-auth",
        ]

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _extension_file(directory: Path, line: str) -> Path:
    path = directory / f"ext-{abs(hash(line))}.cnf"
    path.write_text(line + "\n")
    return path
