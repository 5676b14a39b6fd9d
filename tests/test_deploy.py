"""The deployment files agree with the code: Dockerfile, deploy/compose.yaml, deploy/kubernetes/ and docs/DEPLOY.md.

Nothing here needs a container engine. What the code accepts is derived from the code itself: the ``IDGEN_*``
variables from ``idgen.cli.build_parser()`` (each ``serve`` option is tried through its variable), the credential
variables from :mod:`idgen.leases.zookeeper` and the load test's from ``loadtest/locustfile.py``; the probe paths from
the routes of a real app and from a real server; the port from the ``serve`` default. The Dockerfile's entry point
is run here as a real process with the Dockerfile's ``ENV``, its ``HEALTHCHECK`` command is run against it, and
SIGTERM must stop it with exit code 0.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import http.client
import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp.web_urldispatcher import PlainResource

from idgen import cli
from idgen.http.server import HARD_STOP_S
from idgen.layout import PRESETS
from idgen.leases import etcd, zookeeper

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "compose.yaml"
KUBERNETES = REPO / "deploy" / "kubernetes"
DEPLOY_DOC = REPO / "docs" / "DEPLOY.md"
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
ENV_NAME = re.compile(r"\bIDGEN_[A-Z0-9_]*[A-Z0-9]\b")
SUPERVISOR_SLACK_S = 5  # idgen.http.server._wait_for_workers kills workers HARD_STOP_S + 5 s after the stop signal
# docs/DEPLOY.md's scaling table keeps this many pods' worth of worker IDs free: the rolling update's surge pod,
# plus pods that crashed and whose worker IDs stay held until their ZooKeeper sessions expire.
SURGE_PODS, CRASHED_PODS = 1, 2
TABLE_PROCESSES = (1, 2, 4)


# -- what the code accepts --------------------------------------------------------------------------------------


@contextlib.contextmanager
def idgen_env(**values: str) -> Iterator[None]:
    """``os.environ`` without any inherited ``IDGEN_*`` variable, plus ``values``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IDGEN_")}
    with mock.patch.dict(os.environ, {**clean, **values}, clear=True):
        yield


def serve_parser() -> argparse.ArgumentParser:
    """The ``serve`` subcommand's parser, built under the current environment (its defaults read it)."""
    parser = cli.build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["serve"]


def serve_defaults() -> argparse.Namespace:
    with idgen_env():
        return cli.build_parser().parse_args(["serve"])


@functools.cache
def serve_option_env() -> dict[str, str]:
    """``{option dest: IDGEN_* variable}`` for every ``serve`` option whose default the variable really sets,
    found by setting the variable and parsing. Options that no variable sets are left out (a test fails on them)."""
    with idgen_env():
        options = [a for a in serve_parser()._actions if a.option_strings and a.dest != "help"]
        baseline = vars(cli.build_parser().parse_args(["serve"]))
    read = {}
    for action in options:
        name = f"IDGEN_{action.dest.upper()}"
        for candidate in ("7", "true", "false", "0.5", "/x", "twitter"):
            quiet = contextlib.redirect_stderr(io.StringIO())
            with idgen_env(**{name: candidate}), quiet, contextlib.suppress(SystemExit):
                if vars(cli.build_parser().parse_args(["serve"]))[action.dest] != baseline[action.dest]:
                    read[action.dest] = name
                    break
    return read


def server_env_names() -> set[str]:
    """Every ``IDGEN_*`` variable the server reads: the ``serve`` options' plus the ZooKeeper and etcd credentials',
    etcd's TLS files, and the second halves of the insecure opt-outs."""
    credentials = etcd.ETCD_CREDENTIALS
    return {
        *serve_option_env().values(),
        zookeeper.ZK_AUTH_ENV,
        zookeeper.ZK_AUTH_FILE_ENV,
        zookeeper.ZK_INSECURE_ENV,
        credentials.auth_env,
        credentials.auth_file_env,
        credentials.insecure_env,
        etcd.ETCD_CA_ENV,
        etcd.ETCD_CERT_ENV,
        etcd.ETCD_KEY_ENV,
    }


#: ``serve`` options deliberately not settable through a variable: running ZooKeeper without credentials takes both
#: this flag and ``IDGEN_ZK_INSECURE_NO_AUTH=1``, so an environment alone (an image, a manifest) can never opt out.
COMMAND_LINE_ONLY = {
    flag.removeprefix("--").replace("-", "_")
    for flag in (zookeeper.ZK_INSECURE_FLAG, etcd.ETCD_CREDENTIALS.insecure_flag)
}


def loadtest_env_names() -> set[str]:
    """The ``IDGEN_*`` names the locustfile reads through ``os.environ``, from its syntax tree (importing it would
    import locust, which monkey-patches the standard library)."""
    names = set()
    for node in ast.walk(ast.parse(LOCUSTFILE.read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv"):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("IDGEN_"):
                names.add(first.value)
    assert names, "no IDGEN_* variable found in the locustfile"
    return names


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The paths a real app (``idgen.app.make_app``, over a real generator with a local lease) routes explicitly;
    probes need fixed paths, so dynamic routes (``/decode/{id}`` and the catch-all that answers 404) are left out."""
    from idgen.app import make_app
    from idgen.generator import Generator
    from idgen.layout import DEFAULT_LAYOUT
    from idgen.leases.local import LocalLease

    lease = LocalLease(DEFAULT_LAYOUT, state_dir=tmp_path_factory.mktemp("routes"))
    with Generator(DEFAULT_LAYOUT, lease) as generator:
        app = make_app(generator)
        return {r.canonical for r in app.router.resources() if isinstance(r, PlainResource)}


def test_every_serve_option_can_be_set_through_its_environment_variable() -> None:
    """The image is configured by environment only, so an option without a variable could not be set there."""
    with idgen_env():
        options = {a.dest for a in serve_parser()._actions if a.option_strings and a.dest != "help"}
    assert options - set(serve_option_env()) == COMMAND_LINE_ONLY
    assert {"IDGEN_PORT", "IDGEN_ZK", "IDGEN_NAMESPACE"} <= server_env_names()  # the derivation found something


# -- the Dockerfile -----------------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]

    def last(self, instruction: str) -> str | None:
        found = self.all(instruction)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            words = shlex.split(args)
            if words and "=" not in words[0]:  # legacy form: ENV NAME value with spaces
                values[words[0]] = args.split(None, 1)[1] if len(words) > 1 else ""
            else:
                values.update(w.split("=", 1) for w in words)
        return values


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile: instructions with continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    stages: list[Stage] = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1].instructions.append((instruction, args))
    return stages


def exec_form(args: str) -> list[str]:
    value = ast.literal_eval(args)  # the JSON array form is also a Python list literal
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@dataclass
class Healthcheck:
    options: dict[str, str]
    command: list[str]


def parse_healthcheck(args: str) -> Healthcheck:
    options, _, command = args.partition(" CMD ")
    assert command, f"HEALTHCHECK without CMD: {args}"
    parsed = dict(o.lstrip("-").split("=", 1) for o in options.split())
    return Healthcheck(parsed, exec_form(command.strip()))


def seconds(text: str | int | float) -> float:
    """A Docker / compose duration (``10s``, ``1m30s``, ``500ms``) or a plain number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def probe_path(command: list[str] | str) -> str:
    """The one URL path a health-check command asks for (``'/healthz'`` in ``... + '/healthz'``)."""
    text = " ".join(command) if isinstance(command, list) else command
    paths = re.findall(r"""['"](/[A-Za-z0-9_./-]*)['"]""", text)
    assert len(paths) == 1, f"expected one path in {text!r}, found {paths}"
    return paths[0]


def probe_default_port(command: list[str]) -> int:
    """The port a health-check command falls back to when ``IDGEN_PORT`` is unset."""
    match = re.search(r"""environ\.get\(\s*['"]IDGEN_PORT['"]\s*,\s*['"](\d+)['"]""", " ".join(command))
    assert match, f"the health check does not read IDGEN_PORT: {command}"
    return int(match.group(1))


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` leaves ``path`` (or a directory above it) out of the build context. Only the
    pattern forms used there: names, globs and a leading ``**/``; no ``!`` exceptions."""
    from fnmatch import fnmatchcase

    assert not any(p.startswith("!") for p in patterns), "exceptions are not handled here"
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.strip("/")
        for prefix in prefixes:
            if fnmatchcase(prefix, pattern) or (
                pattern.startswith("**/") and fnmatchcase(prefix.rsplit("/", 1)[-1], pattern[3:])
            ):
                return True
    return False


@functools.cache
def dockerfile() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage() -> Stage:
    return dockerfile()[-1]


def image_user() -> tuple[int, int | None]:
    """The final stage's ``USER`` as ``(uid, gid)``; fails unless it is numeric."""
    user = final_stage().last("USER")
    assert user, "the final stage sets no USER, so it runs as root"
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), f"USER {user} is not numeric (runAsNonRoot cannot check it)"
    return int(uid), int(gid) if gid else None


def entrypoint_script() -> Path:
    """The repo file that the final stage's ``ENTRYPOINT`` runs: the ``COPY`` source whose destination it names."""
    (program, *_) = exec_form(final_stage().last("ENTRYPOINT") or "[]")
    for args in final_stage().all("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        *sources, destination = words
        if destination == program or Path(destination).name == program:
            assert len(sources) == 1, args
            return REPO / sources[0]
    raise AssertionError(f"no COPY in the final stage puts {program!r} in the image")


def test_dockerfile_final_stage_is_small_and_runs_as_a_non_root_user() -> None:
    build, final = dockerfile()[0], final_stage()
    assert len(dockerfile()) >= 2 and build.name, "a separate build stage keeps build tools out of the image"
    assert final.base == build.base and final.base.startswith("python:") and final.base.endswith("-slim")
    uid, gid = image_user()
    assert uid != 0 and gid != 0
    creates = " ".join(final.all("RUN"))
    assert re.search(rf"useradd\b.*--uid {uid}\b", creates), "the USER's UID is not created in the image"
    for tool in ("apt-get install", "gcc", "build-essential", "pytest", "[test]", "hypothesis", "ruff"):
        assert tool not in creates, f"the final stage installs {tool!r}"
    # it installs the package built from the repo, and only that
    assert any(re.search(r"pip install .*/wheels/", run) for run in final.all("RUN"))
    assert any(re.search(r"pip wheel .* \.$", run) for run in build.all("RUN"))
    copied = [w for args in build.all("COPY") for w in args.split()[:-1] if not w.startswith("--")]
    assert {"pyproject.toml", "idgen"} <= set(copied)
    patterns = dockerignore_patterns()
    for source in [*copied, str(entrypoint_script().relative_to(REPO))]:
        assert (REPO / source).exists(), source
        assert not ignored(source, patterns), f".dockerignore leaves {source} out of the build context"
    assert ignored(".git", patterns) and ignored("idgen/__pycache__", patterns)


def test_dockerfile_configures_only_through_environment_variables_the_code_reads() -> None:
    final = final_stage()
    env = final.env()
    assert {k for k in env if k.startswith("IDGEN_")} <= server_env_names()
    # every IDGEN_* name anywhere in the file (comments too) is one the server reads
    assert set(ENV_NAME.findall(DOCKERFILE.read_text())) <= server_env_names()
    assert final.last("CMD") is None, "no CMD: options would be command-line arguments, not environment"
    exposed = [int(p.split("/")[0]) for args in final.all("EXPOSE") for p in args.split()]
    assert exposed == [serve_defaults().port] == [int(env["IDGEN_PORT"])]
    health = parse_healthcheck(final.last("HEALTHCHECK") or "")
    assert probe_path(health.command) == "/healthz"
    assert probe_default_port(health.command) == serve_defaults().port
    client_timeout = float(re.search(r"timeout=([\d.]+)\)", " ".join(health.command)).group(1))
    assert client_timeout < seconds(health.options["timeout"]), "the request must give up before Docker does"
    assert final.last("STOPSIGNAL") in (None, "SIGTERM", "15")


def test_entrypoint_script_is_in_cmd_and_executable() -> None:
    script = entrypoint_script()
    assert script.parent == REPO / "cmd" and script.is_file()
    assert os.access(script, os.X_OK), f"{script} is not executable, and COPY keeps the mode"
    git = shutil.which("git")  # the quick tier runs without it, on a copy of the checkout too
    command = [git or "git", "ls-files", "--stage", str(script.relative_to(REPO))]
    staged = subprocess.run(command, cwd=REPO, capture_output=True, text=True).stdout.split() if git else []
    if staged:  # tracked: a fresh clone must get the executable bit too
        assert staged[0] == "100755", staged
    assert script.read_text().startswith("#!/usr/bin/env python3\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def http_status(port: int, path: str) -> int | None:
    """The status of ``GET path`` on the local server, ``None`` if nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def in_image_command(command: list[str]) -> list[str]:
    """A command written for the image, run here: its ``python3`` is this interpreter."""
    return [sys.executable if command[0] in ("python", "python3") else command[0], *command[1:]]


def test_the_entrypoint_runs_with_the_dockerfile_env_passes_its_healthcheck_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """The image's process, without the image: the ENTRYPOINT script with the final stage's ENV, IDGEN_PORT moved to
    a free port and IDGEN_STATE_DIR to a temporary directory (the local lease). Every probe path that the
    Dockerfile, the compose file and the Kubernetes manifests use answers 200; SIGTERM stops it with exit code 0."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDGEN_")}
    env.update(final_stage().env())
    env.update(IDGEN_PORT=str(port), IDGEN_STATE_DIR=str(tmp_path / "state"))
    entrypoint = exec_form(final_stage().last("ENTRYPOINT") or "[]")
    command = [sys.executable, str(entrypoint_script()), *entrypoint[1:]]
    health = parse_healthcheck(final_stage().last("HEALTHCHECK") or "")
    log = tmp_path / "server.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stderr=stderr)
    try:

        def answering() -> bool:
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
            return http_status(port, "/healthz") == 200

        wait_for(answering, 30, "GET /healthz")

        check = subprocess.run(in_image_command(health.command), env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr

        for path in sorted(all_probe_paths()):
            wait_for(lambda path=path: http_status(port, path) == 200, 10, f"GET {path} -> 200")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HARD_STOP_S + 5) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert '"event": "stopped"' in log.read_text()
    # the health check really checks: with the server gone it fails
    after = subprocess.run(in_image_command(health.command), env=env, capture_output=True, timeout=30)
    assert after.returncode != 0


# -- deploy/compose.yaml ------------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment, given as a mapping or as a list of NAME=value."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def built_from_repo(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if build is None:
        return False
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile_name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return (COMPOSE.parent / context).resolve() == REPO and dockerfile_name == "Dockerfile"


def compose_services(kind: str) -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    if kind == "zookeeper":
        return {n: s for n, s in services.items() if str(s.get("image", "")).startswith("zookeeper:")}
    if kind == "locust":
        return {n: s for n, s in services.items() if str(s.get("image", "")).startswith("locustio/locust")}
    # idgen servers: built from this repo's Dockerfile, with the image's own entry point
    return {n: s for n, s in services.items() if built_from_repo(s) and "entrypoint" not in s}


def container_port(service: dict[str, Any]) -> int:
    """The port the idgen server listens on inside the container: the service's IDGEN_PORT, else the image's."""
    return int(environment(service).get("IDGEN_PORT", final_stage().env()["IDGEN_PORT"]))


def test_compose_runs_a_three_node_zookeeper_ensemble() -> None:
    zk = compose_services("zookeeper")
    assert len(zk) == 3
    ids = {name: environment(s)["ZOO_MY_ID"] for name, s in zk.items()}
    assert sorted(ids.values()) == ["1", "2", "3"]
    for service in zk.values():
        servers = dict(entry.split("=", 1) for entry in environment(service)["ZOO_SERVERS"].split())
        # server.N=<host>:2888:3888;2181 for every node, N matching that node's ZOO_MY_ID
        assert {f"server.{ids[host]}" for host in zk} == set(servers), servers
        for key, spec in servers.items():
            host = spec.split(":")[0]
            assert host in zk and key == f"server.{ids[host]}", spec
            assert spec.endswith(";2181"), spec
        assert service["healthcheck"]["test"]


def test_compose_workers_share_one_namespace_on_the_ensemble_and_use_only_names_the_code_reads() -> None:
    workers = compose_services("idgen")
    zk = compose_services("zookeeper")
    assert len(workers) == 3
    envs = {name: environment(s) for name, s in workers.items()}
    for name, env in envs.items():
        assert set(env) <= server_env_names(), f"{name}: {set(env) - server_env_names()}"
        # without IDGEN_ZK each container would take a local lease: the same worker ID in all three, duplicate IDs
        hosts = [h.rsplit(":", 1) for h in env["IDGEN_ZK"].split(",")]
        assert {h for h, _ in hosts} == set(zk) and {p for _, p in hosts} == {"2181"}, env["IDGEN_ZK"]
        assert set(workers[name]["depends_on"]) >= set(zk)
    # one namespace and one layout for all: that is what makes their worker IDs distinct
    for key in ("IDGEN_ZK", "IDGEN_NAMESPACE", "IDGEN_LAYOUT"):
        assert len({env.get(key) for env in envs.values()}) == 1, key


def test_compose_workers_use_zookeeper_credentials_from_a_secret_file() -> None:
    """Without credentials the workers would refuse to start; never the insecure opt-out."""
    secrets = compose().get("secrets", {})
    for name, service in compose_services("idgen").items():
        env = environment(service)
        assert zookeeper.ZK_AUTH_ENV not in env and zookeeper.ZK_INSECURE_ENV not in env, name
        path = Path(env[zookeeper.ZK_AUTH_FILE_ENV])
        assert path.parent == Path("/run/secrets") and path.name in service.get("secrets", []), name
        source = COMPOSE.parent / secrets[path.name]["file"]
        user, _, password = source.read_text().strip().partition(":")
        assert user and password, f"{source} must hold user:password"
    sources = {s["file"] for s in secrets.values()}
    assert len(sources) == 1, "one set of credentials for the whole namespace"


def test_compose_worker_ports_healthchecks_and_stop_grace_match_the_server(app_routes: set[str]) -> None:
    for name, service in compose_services("idgen").items():
        port = container_port(service)
        assert port == serve_defaults().port
        published = [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]
        assert published == [str(port)], f"{name} publishes {published}"
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL")
        assert probe_path(test[1:]) in app_routes
        assert probe_default_port(test[1:]) == port
        # docker's default is 10 s; the server may take up to its hard stop to release the lease
        assert seconds(service["stop_grace_period"]) > HARD_STOP_S


def test_compose_load_test_targets_all_workers_and_uses_the_locustfile() -> None:
    (locust,) = compose_services("locust").values()
    workers = compose_services("idgen")
    env = environment(locust)
    assert set(env) <= loadtest_env_names()
    targets = [urlsplit(url) for url in env["IDGEN_LOADTEST_HOSTS"].split(",")]
    assert {t.hostname for t in targets} == set(workers)
    for target in targets:
        assert target.scheme == "http" and target.port == container_port(workers[target.hostname])
    assert set(locust["depends_on"]) >= set(workers)
    command = locust["command"] if isinstance(locust["command"], list) else shlex.split(locust["command"])
    assert "--headless" in command
    locustfile = command[command.index("-f") + 1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in locust["volumes"]}
    (mount,) = (m for m in mounts if locustfile.startswith(m + "/"))
    assert (COMPOSE.parent / mounts[mount] / Path(locustfile).relative_to(mount)).resolve() == LOCUSTFILE
    out = env["IDGEN_LOADTEST_OUT"]
    assert any(out == m or out.startswith(m + "/") for m in mounts), "the ID logs must outlive the container"


# -- deploy/kubernetes/ -------------------------------------------------------------------------------------------


@functools.cache
def manifests() -> dict[str, dict[str, Any]]:
    """Every object in the kustomization's resources, by kind (one of each)."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    objects: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((KUBERNETES / resource).read_text()):
            if document:
                assert document["kind"] not in objects, f"two {document['kind']} objects"
                objects[document["kind"]] = document
    return objects


def pod_spec() -> dict[str, Any]:
    return manifests()["Deployment"]["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return only


def container_env() -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container().get("env", [])}


def resolve_port(port: int | str) -> int:
    """A probe's or Service's port, given as a number or as the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = (p["containerPort"] for p in container()["ports"] if p["name"] == port)
    return number


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert set(manifests()) == {"Deployment", "Service", "PodDisruptionBudget", "Secret"}
    images = {i["name"] for i in kustomization.get("images", [])}
    assert container()["image"].split(":")[0] in images


def test_kustomize_renders_the_manifests() -> None:
    """``kubectl kustomize`` (no cluster needed) accepts the kustomization and renders every object once."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run([kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    assert sorted(o["kind"] for o in objects) == sorted(manifests())
    (deployment,) = (o for o in objects if o["kind"] == "Deployment")
    # the common labels must not have changed the selector, which would orphan pods on an update
    assert deployment["spec"]["selector"] == manifests()["Deployment"]["spec"]["selector"]


def test_deployment_env_port_and_probes_match_the_server(app_routes: set[str]) -> None:
    env = container_env()
    assert set(env) <= server_env_names(), set(env) - server_env_names()
    assert env["IDGEN_ZK"]["value"], "without ZooKeeper every pod would take a local lease: the same worker IDs"
    assert "command" not in container() and "args" not in container(), "configuration is by environment only"
    (port,) = container()["ports"]
    assert (
        port["containerPort"]
        == serve_defaults().port
        == int(env.get("IDGEN_PORT", {}).get("value", port["containerPort"]))
    )
    readiness, liveness = container()["readinessProbe"]["httpGet"], container()["livenessProbe"]["httpGet"]
    assert (readiness["path"], liveness["path"]) == ("/readyz", "/healthz")
    for probe in (readiness, liveness):
        assert probe["path"] in app_routes
        assert resolve_port(probe["port"]) == port["containerPort"]


def test_service_and_disruption_budget_select_the_pods() -> None:
    labels = manifests()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert manifests()["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = manifests()["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert {resolve_port(p["targetPort"]) for p in service["ports"]} == {serve_defaults().port}
    budget = manifests()["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable")


def test_no_service_link_variable_can_shadow_an_idgen_variable() -> None:
    """The kubelet injects ``<SERVICE>_PORT=tcp://...`` and more for every Service: a Service named ``idgen`` would
    set IDGEN_PORT to a URL, unless service links are off."""
    if pod_spec().get("enableServiceLinks", True):
        for service in (manifests()["Service"],):
            prefix = service["metadata"]["name"].upper().replace("-", "_") + "_"
            assert not any(name.startswith(prefix) for name in server_env_names()), prefix


def test_zookeeper_credentials_come_from_the_secret_as_a_file() -> None:
    env = container_env()
    assert zookeeper.ZK_AUTH_ENV not in env, "a plain credential in the pod spec; use the Secret file"
    assert zookeeper.ZK_INSECURE_ENV not in env, "pods run with credentials, never the insecure opt-out"
    path = Path(env[zookeeper.ZK_AUTH_FILE_ENV]["value"])
    mounts = {Path(m["mountPath"]): m for m in container()["volumeMounts"]}
    (mount_path,) = (m for m in mounts if path.is_relative_to(m))
    assert mounts[mount_path].get("readOnly") is True
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    secret_volume = volumes[mounts[mount_path]["name"]]["secret"]
    secret = manifests()["Secret"]
    assert secret_volume["secretName"] == secret["metadata"]["name"]
    keys = {**secret.get("data", {}), **secret.get("stringData", {})}
    file_to_key = {i["path"]: i["key"] for i in secret_volume.get("items", [])} or {k: k for k in keys}
    key = file_to_key[str(path.relative_to(mount_path))]
    assert key in keys
    if key in secret.get("stringData", {}):
        user, _, password = secret["stringData"][key].partition(":")
        assert user and password  # what credentials_from_env accepts
    mode = secret_volume.get("defaultMode", 0o644)
    assert mode & 0o007 == 0, f"the credentials file is world-readable (mode {mode:o})"
    security = pod_spec()["securityContext"]
    assert mode & 0o040 and security.get("fsGroup") == security.get("runAsGroup"), "the server cannot read it"
    # and nowhere on a command line
    assert zookeeper.ZK_AUTH_ENV not in str(container().get("lifecycle", ""))


def test_pod_runs_as_the_image_user_on_a_read_only_root_with_a_writable_tmp() -> None:
    pod, own = pod_spec()["securityContext"], container()["securityContext"]
    uid, gid = image_user()
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid and pod.get("runAsGroup", gid) == gid
    assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    # prometheus-client's multiprocess files go to tempfile.mkdtemp(): /tmp must be writable with several processes
    processes = int(container_env().get("IDGEN_PROCESSES", {}).get("value", serve_defaults().processes))
    if processes > 1:
        volumes = {v["name"]: v for v in pod_spec()["volumes"]}
        (tmp,) = (m for m in container()["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]] and not tmp.get("readOnly")


def test_termination_grace_covers_the_pre_stop_delay_and_the_servers_own_bound() -> None:
    pre_stop = container()["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        delay = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        delay = float(command[1])
    assert delay >= container()["readinessProbe"].get("periodSeconds", 10)
    processes = int(container_env().get("IDGEN_PROCESSES", {}).get("value", serve_defaults().processes))
    server_bound = HARD_STOP_S + (SUPERVISOR_SLACK_S if processes > 1 else 0)
    assert pod_spec()["terminationGracePeriodSeconds"] > delay + server_bound


def test_replicas_fit_the_namespace_with_headroom() -> None:
    env = container_env()
    layout = PRESETS[env.get("IDGEN_LAYOUT", {}).get("value", "idgen")]
    processes = int(env.get("IDGEN_PROCESSES", {}).get("value", serve_defaults().processes))
    deployment = manifests()["Deployment"]["spec"]
    surge = deployment["strategy"]["rollingUpdate"]["maxSurge"]
    assert isinstance(surge, int) and surge <= SURGE_PODS
    assert max_replicas(layout.worker_capacity, processes) >= deployment["replicas"]


# -- docs/DEPLOY.md -----------------------------------------------------------------------------------------------


def max_replicas(capacity: int, processes: int) -> int:
    """Pods of ``processes`` processes that fit ``capacity`` worker IDs with the surge pod and crashed pods free."""
    return capacity // processes - SURGE_PODS - CRASHED_PODS


def test_deploy_doc_describes_every_variable_and_no_other() -> None:
    text = DEPLOY_DOC.read_text()
    mentioned = set(ENV_NAME.findall(text))
    assert server_env_names() | loadtest_env_names() <= mentioned
    assert mentioned <= server_env_names() | loadtest_env_names()
    reference = re.findall(r"^\| `(IDGEN_[A-Z0-9_]+)` \|", text, re.MULTILINE)
    assert sorted(reference) == sorted(server_env_names() | loadtest_env_names()), "the reference table"


def test_deploy_doc_scaling_table_matches_the_layouts() -> None:
    rows = {}
    for line in DEPLOY_DOC.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in PRESETS:
            rows[cells[0]] = cells
    assert set(rows) == set(PRESETS)
    for name, layout in PRESETS.items():
        numbers = [int(c.replace(",", "")) for c in rows[name] if re.fullmatch(r"[\d,]+", c)]
        expected = [layout.worker_capacity, *(max_replicas(layout.worker_capacity, p) for p in TABLE_PROCESSES)]
        assert numbers == expected, (name, numbers, expected)


def all_probe_paths() -> set[str]:
    """Every HTTP path a probe or health check in the deployment files asks for."""
    paths = {probe_path(parse_healthcheck(final_stage().last("HEALTHCHECK") or "").command)}
    for service in compose_services("idgen").values():
        paths.add(probe_path(service["healthcheck"]["test"][1:]))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container():
            paths.add(container()[probe]["httpGet"]["path"])
    return paths


def test_every_probe_path_is_a_route_of_the_app(app_routes: set[str]) -> None:
    assert {"/healthz", "/readyz"} <= all_probe_paths() <= app_routes


# -- where the server listens ----------------------------------------------------------------------------------


def test_idgen_alone_listens_on_loopback_and_every_deployment_says_where_it_listens() -> None:
    """``idgen serve`` binds 127.0.0.1 by default, as gunicorn and uvicorn do. A container must listen on every
    interface to be reached at all, so the image, each compose worker and the Kubernetes pod set the host
    themselves rather than rely on a default."""
    assert serve_defaults().host == "127.0.0.1"
    assert final_stage().env()["IDGEN_HOST"] == "0.0.0.0"
    for name, service in compose_services("idgen").items():
        assert environment(service).get("IDGEN_HOST") == "0.0.0.0", name
    assert container_env()["IDGEN_HOST"]["value"] == "0.0.0.0"


#: What one server process may hold at its bounds, with margin (docs/DEPLOY.md, "Memory": about 87 MiB measured).
MEMORY_PER_PROCESS_MIB = 96


def mebibytes(quantity: str) -> float:
    """A Kubernetes (``256Mi``) or compose (``128m``) memory quantity in MiB."""
    number, unit = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]*)", str(quantity)).groups()  # type: ignore[union-attr]
    factor = {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20, "m": 1, "g": 1024, "mb": 1, "gb": 1024}
    return float(number) * factor[unit]


def test_every_manifest_gives_each_process_the_memory_of_its_bounds() -> None:
    """The budget of IDs in flight, the head bound and the connection cap bound a process's memory; a limit below
    it would have the kernel kill a server that is doing nothing wrong."""
    processes = int(container_env().get("IDGEN_PROCESSES", {}).get("value", "1"))
    limit = mebibytes(container()["resources"]["limits"]["memory"])
    assert limit >= processes * MEMORY_PER_PROCESS_MIB, (limit, processes)
    for name, service in compose_services("idgen").items():
        processes = int(environment(service).get("IDGEN_PROCESSES", "1"))
        assert mebibytes(service["mem_limit"]) >= processes * MEMORY_PER_PROCESS_MIB, name
