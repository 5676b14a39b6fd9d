"""Tracing on etcd: after a worker ID was reused, ``/decode`` and ``idgen decode --etcd`` name the process that minted
an ID, from the history kept in etcd, with real processes (a holder killed with SIGKILL, then an ``idgen serve``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from etcdharness import TEST_CREDENTIALS
from holder import HolderProcess
from lease_backends import ETCD_OPTIONS, WINDOW_MS
from polling import poll
from serverproc import ServerProcess as Server

from idgen import DEFAULT_LAYOUT, Layout
from idgen.leases.etcd import EtcdClient

SOLO = Layout("solo", (("time", 41), ("sequence", 22)), epoch_ms=DEFAULT_LAYOUT.epoch_ms)  # every holder reuses 0


def decode_cli(endpoints: str, namespace: str, id_: int) -> dict[str, object]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "idgen.cli",
            "decode",
            str(id_),
            "--etcd",
            endpoints,
            "--namespace",
            namespace,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    decoded: dict[str, object] = json.loads(result.stdout)
    return decoded


def test_decode_names_the_process_that_minted_an_id_after_its_worker_id_was_reused(
    etcd_endpoints: str, etcd_namespace: str, spawn_holder: Callable[..., HolderProcess]
) -> None:
    options = {**ETCD_OPTIONS, "window_ms": WINDOW_MS}
    crashed = spawn_holder(SOLO, etcd=etcd_endpoints, namespace=etcd_namespace, options=options).ready()
    crashed.kill()  # SIGKILL: its claim goes when its etcd lease's TTL runs out
    admin = EtcdClient(etcd_endpoints, TEST_CREDENTIALS)
    poll(lambda: not admin.range(f"{etcd_namespace}/leases/0"), what="the dead holder's claim to expire", timeout=30)
    serve = ("--etcd", etcd_endpoints, "--namespace", etcd_namespace)  # the layout: the namespace's
    with Server(*serve, env={"IDGEN_ETCD_TTL": "2"}) as server:
        info = server.get("/info").json()
        assert info["worker_id"] == 0  # the dead holder's worker ID, reused
        mine = server.get("/id").json()["id"]
        theirs = server.get(f"/decode/{crashed.first_id}").json()
        assert theirs["node"]["pid"] == crashed.pid and theirs["node"]["lease_id"] == crashed.lease_id
        ours = server.get(f"/decode/{mine}").json()
        assert ours["node"]["pid"] == server.proc.pid
        by_cli = decode_cli(etcd_endpoints, etcd_namespace, crashed.first_id)
        assert by_cli["node"]["pid"] == crashed.pid  # type: ignore[index]
        assert decode_cli(etcd_endpoints, etcd_namespace, mine)["node"]["pid"] == server.proc.pid  # type: ignore[index]
