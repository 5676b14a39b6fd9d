"""A real worker process for lease tests.

Run as a script, it leases a worker ID (local or ZooKeeper, from a JSON config in argv[1]), mints one ID,
prints ``{"worker_id", "id", "pid"}`` and its reservation as one JSON line and holds the lease until its stdin closes.
Imported, :class:`HolderProcess` starts one and reads that line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from idgen import Generator, Layout


def _run(config: dict[str, Any]) -> None:
    from idgen.leases.etcd import EtcdLease
    from idgen.leases.local import LocalLease
    from idgen.leases.zookeeper import ZkLease

    layout = Layout.from_spec(config["layout"])
    options = config.get("options", {})
    if "etcd" in config:
        lease = EtcdLease(layout, config["etcd"], config["namespace"], **options)
    elif "zk" in config:
        lease = ZkLease(layout, config["zk"], config["namespace"], **options)
    else:
        lease = LocalLease(layout, config["state_dir"], range(*config["worker_ids"]), **options)
    with Generator(layout, lease) as gen:
        first_id = gen.next_id()
        held = lease.status().reservation
        assert held is not None
        report = {"worker_id": gen.worker_id, "id": first_id, "pid": os.getpid(), **asdict(held)}
        print(json.dumps(report), flush=True)
        sys.stdin.read()


class HolderProcess:
    """A worker process holding a lease. ``stop()`` releases it cleanly; ``proc.kill()`` crashes it."""

    def __init__(self, layout: Layout, **config: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), json.dumps({"layout": layout.spec(), **config})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> HolderProcess:
        """Wait for the report line; raise with the process's stderr if it failed instead."""
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(self.proc.stderr.read().strip().splitlines()[-1])
        report = json.loads(line)
        self.worker_id: int = report["worker_id"]
        self.first_id: int = report["id"]
        self.pid: int = report["pid"]
        self.lease_id: str = report["lease_id"]
        self.after_ms: int = report["after_ms"]  # the fence it found: it mints only above it
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=15)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


if __name__ == "__main__":
    _run(json.loads(sys.argv[1]))
