"""A soak of the fault-injection suite (not in CI): one 3-node ZooKeeper ensemble, a few idgen servers under steady
load, and faults injected one after another, in a cycle, for ``--duration`` seconds.

    python loadtest/soak.py                       # 5 minutes, every fault in turn
    python loadtest/soak.py --duration 3600 --faults kill-9,sigstop,clock-back-2s

The servers share one ZooKeeper namespace with the 4-worker-ID layout ``tiny``, so worker IDs are reused all the
time. Each server runs under libfaketime (its own offset file at +0) when the ``libfaketime`` package is installed,
so that its clock can be stepped back. The faults, as in ``tests/faults`` (see docs/RELIABILITY.md):

- ``kill-9``: SIGKILL a server, start a replacement. Allowed: failed requests in flight to the killed server.
- ``sigstop``: freeze a server past its session timeout, start another meanwhile, resume it, then stop one so the
  pool keeps its size. Allowed: 503 from the resumed zombie until it holds a lease again.
- ``zk-leader``: SIGKILL the ensemble's leader, then restart it as a follower. Allowed: nothing.
- ``zk-down-short``: SIGKILL all three members for 1 s, then restart them. Allowed: nothing.
- ``zk-down-long``: all three down for 9 s (past the fence window). Allowed: 503 fence_reached / no_lease.
- ``clock-back-2s``: step one server's clock back 2 s; set it right once it has caught up. Allowed: 503 clock_behind
  from that server.

The partition and capacity scenarios are not cycled: they need their own topology and start-up.

At the end it prints the suite's table: one row per fault injected (the answers from its start to the next one's),
and one for the whole run, whose IDs are all checked together. Exit code 1 on any duplicate, any ID out of order, or
any error the fault in progress does not allow.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the ZooKeeper harness
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "faults"))  # the fault kit

from faultkit import TINY, Faketime, IdgenServer, claim_owner, close_all, create_namespace, faketime_library, zk_client
from kazoo.client import KazooClient
from loadclient import LoadClient, Record, Report, check, render
from zkharness import ZkEnsemble

SESSION_TIMEOUT_S = 2.0
FAULTS = ("kill-9", "sigstop", "zk-leader", "zk-down-short", "zk-down-long", "clock-back-2s")


@dataclass
class Injected:
    """One fault as injected: what it allows, and from when (and on which servers) recovery is measured."""

    name: str
    start: float
    allow: Callable[[Record], bool]
    recovery_since: float | None = None
    recovery_servers: tuple[str, ...] | None = None
    recovery_from: str = ""
    end: float = 0.0


def _never(record: Record) -> bool:
    return False


class Soak:
    """The running system: the ensemble, the servers (each with its clock offset file) and the load."""

    def __init__(self, ensemble: ZkEnsemble, workdir: Path, servers: int, rate: float) -> None:
        self.ensemble = ensemble
        self.workdir = workdir
        self.namespace = f"/soak-{uuid.uuid4().hex[:8]}"
        self.library = faketime_library()
        self.names = (f"s{n}" for n in itertools.count())
        self.servers: list[IdgenServer] = []
        self.retired: list[IdgenServer] = []
        self.clocks: dict[str, Faketime] = {}
        create_namespace(ensemble.hosts, self.namespace, TINY)
        self.load = LoadClient(rate=rate).start()
        for _ in range(servers):
            self.load.add(self.spawn().wait_ready())

    def spawn(self) -> IdgenServer:
        name = next(self.names)
        env: dict[str, str] = {}
        if self.library is not None:
            directory = self.workdir / name
            directory.mkdir()
            self.clocks[name] = Faketime(self.library, directory)
            env = self.clocks[name].env()
        server = IdgenServer(
            name,
            *("--zk", self.ensemble.hosts, "--namespace", self.namespace),
            *("--zk-session-timeout", f"{SESSION_TIMEOUT_S:g}"),
            env=env,
        )
        self.servers.append(server)
        return server

    def retire(self, server: IdgenServer) -> None:
        self.load.remove(server.name)
        self.servers.remove(server)
        self.retired.append(server)

    def settle(self, seconds: float = 3.0) -> None:
        """Wait until every server is ready and has answered steadily for ``seconds``."""
        for server in self.servers:
            server.wait_ready(60)
        since = time.monotonic()
        for server in self.servers:
            self.load.wait_ok(server.name, max(10, int(seconds * 20)), since=since, timeout=60)

    def close(self) -> list[Record]:
        records = self.load.stop()
        close_all(self.servers + self.retired)
        return records

    # -- the faults ----------------------------------------------------------------------------------------------

    def kill_9(self) -> Injected:
        victim = random.choice(self.servers)
        start = time.monotonic()
        victim.kill()
        self.retire(victim)
        replacement = self.spawn()
        self.load.add(replacement.wait_ready(60))
        return Injected(
            "kill -9 a server, start a replacement",
            start,
            lambda r: r.server == victim.name and r.status == 0 and r.done >= start,
            start,
            (replacement.name,),
            "from the kill to the replacement's first ID",
        )

    def sigstop(self) -> Injected:
        zombie = random.choice(self.servers)
        held = zombie.info()["lease"]
        with zk_client(self.ensemble.hosts) as zk:
            start = time.monotonic()
            zombie.freeze()
            try:
                _wait(lambda: claim_owner(zk, self.namespace, held["worker_id"]) != zombie.pid, 30, "session expiry")
                other = self.spawn()
                _wait(lambda: other.pid in _claims(zk, self.namespace), 30, "the new server's claim")
            finally:
                resumed = time.monotonic()
                zombie.thaw()
        _wait(lambda: zombie.info()["lease"]["lease_id"] != held["lease_id"], 15, "the zombie to notice LOST")
        self.load.add(other.wait_ready(60))
        spare = next(s for s in self.servers if s not in (zombie, other))
        released = time.monotonic()
        self.retire(spare)  # the pool keeps its size, and a worker ID comes free for the zombie
        spare.stop()
        _wait(zombie.ready, 30, "the zombie to re-lease")
        relet = time.monotonic()
        return Injected(
            "SIGSTOP past the session timeout, another server starts, SIGCONT",
            start,
            lambda r: r.server == zombie.name and r.status == 503 and resumed <= r.done and r.sent <= relet,
            released,
            (zombie.name,),
            "from a worker ID coming free to the zombie's re-lease",
        )

    def zk_leader(self) -> Injected:
        leader = self.ensemble.leader()
        start = time.monotonic()
        leader.kill()
        self.ensemble.wait_for_leader(exclude=leader)
        leader.start(wait=False)
        self.ensemble.wait_for_leader()
        return Injected("ZooKeeper leader killed, then restarted", start, _never)

    def _zk_down(self, seconds: float, name: str, allow: Callable[[Record, float, float], bool]) -> Injected:
        start = time.monotonic()
        for member in self.ensemble.servers:
            member.kill()
        time.sleep(seconds)  # the outage itself
        for member in self.ensemble.servers:
            member.start(wait=False)
        self.ensemble.wait_for_leader()
        back = time.monotonic()
        if seconds < 5:  # inside the fence lead: no outage to recover from
            return Injected(name, start, lambda r: allow(r, start, back))
        return Injected(name, start, lambda r: allow(r, start, back), back, None, "after ZooKeeper is back")

    def zk_down_short(self) -> Injected:
        return self._zk_down(1.0, "all of ZooKeeper down 1 s (+ election)", lambda r, start, back: False)

    def zk_down_long(self) -> Injected:
        def allow(record: Record, start: float, back: float) -> bool:
            return record.status == 503 and record.code in ("fence_reached", "no_lease") and record.done >= start

        return self._zk_down(9.0, "all of ZooKeeper down 9 s (> fence window)", allow)

    def clock_back_2s(self) -> Injected:
        server = random.choice([s for s in self.servers if s.name in self.clocks])
        clock = self.clocks[server.name]
        start = time.monotonic()
        clock.set(-2)
        self.load.wait_for(lambda r: r.server == server.name and r.status == 503, 1, start, 5)
        self.load.wait_ok(server.name, 50, since=start + 2.2, timeout=30)
        clock.set(0)  # NTP steps it right again; ZooKeeper's skew check would refuse extensions 2 s off
        return Injected(
            "clock stepped back 2 s on one server",
            start,
            lambda r: r.server == server.name and r.status == 503 and r.code == "clock_behind" and r.done >= start,
            start,
            (server.name,),
            "after the jump",
        )


def _claims(zk: KazooClient, namespace: str) -> set[int | None]:
    """The pids holding the namespace's worker IDs."""
    return {claim_owner(zk, namespace, worker) for worker in range(TINY.worker_capacity)}


def _wait(probe: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds to cycle faults (default %(default)s)")
    parser.add_argument("--servers", type=int, default=3, help="idgen servers, at most 3 (default %(default)s)")
    parser.add_argument("--rate", type=float, default=300, help="requests per second in all (default %(default)s)")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, from: " + ", ".join(FAULTS))
    parser.add_argument("--seed", type=int, default=None, help="seed for choosing victims")
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(faults) - set(FAULTS)
    if unknown or not faults or not 1 <= args.servers <= 3:
        parser.error(f"unknown faults {sorted(unknown)}" if unknown else "need a fault and 1 to 3 servers")
    random.seed(args.seed)
    injected: list[Injected] = []
    with ZkEnsemble(3) as ensemble, tempfile.TemporaryDirectory(prefix="idgen-soak-") as workdir:
        soak = Soak(ensemble, Path(workdir), args.servers, args.rate)
        if soak.library is None and "clock-back-2s" in faults:
            print("libfaketime is not installed: skipping clock-back-2s", file=sys.stderr)
            faults.remove("clock-back-2s")
        print(f"ZooKeeper {ensemble.hosts}, namespace {soak.namespace}; faults {', '.join(faults)}", flush=True)
        began = time.monotonic()
        failure: Exception | None = None
        try:
            soak.settle()
            for fault in itertools.cycle(faults):
                if time.monotonic() - began >= args.duration:
                    break
                print(f"{time.monotonic() - began:7.1f} s  {fault}", flush=True)
                injected.append(getattr(soak, fault.replace("-", "_"))())
                soak.settle()
                injected[-1].end = time.monotonic()
        except Exception as exc:  # still report what was received
            failure = exc
            if injected and not injected[-1].end:
                injected[-1].end = time.monotonic()
        finally:
            records = soak.close()
    reports = [_report(records, fault) for fault in injected]
    reports.append(
        check(
            records,
            f"whole soak: {len(injected)} faults in {time.monotonic() - began:.0f} s",
            allow=lambda r: any(f.start <= r.done <= f.end and f.allow(r) for f in injected),
            layout=TINY,
        )
    )
    print(render(reports))
    problems = [f"{report.scenario}: {p}" for report in reports for p in report.problems()]
    if failure is not None:
        problems.append(f"the soak stopped early: {failure}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def _report(records: list[Record], fault: Injected) -> Report:
    window = [r for r in records if fault.start <= r.done <= fault.end]
    return check(
        window,
        fault.name,
        allow=fault.allow,
        recovery_since=fault.recovery_since,
        recovery_servers=fault.recovery_servers,
        recovery_from=fault.recovery_from,
        layout=TINY,
    )


if __name__ == "__main__":
    sys.exit(main())
