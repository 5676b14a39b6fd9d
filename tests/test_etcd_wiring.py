"""How etcd is asked for: ``--etcd``/``IDGEN_ETCD`` on every command, ``IDGEN_ETCD_TTL``, ``idgen leases --etcd``,
and the process default (``idgen.next_id()``) with ``IDGEN_ETCD``; contradictory settings are one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from etcdharness import TEST_CREDENTIALS

from idgen.leases.etcd import EtcdClient


def idgen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idgen.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_next_id_leases_from_etcd_with_idgen_etcd(etcd_endpoints: str, etcd_namespace: str) -> None:
    script = "import idgen, json, os; print(json.dumps([idgen.next_id(), os.getpid()]))"
    env = {**os.environ, "IDGEN_ETCD": etcd_endpoints, "IDGEN_NAMESPACE": etcd_namespace, "IDGEN_ETCD_TTL": "3"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    id_, pid = json.loads(result.stdout)
    history = EtcdClient(etcd_endpoints, TEST_CREDENTIALS).range(f"{etcd_namespace}/history/0")
    assert history, "nothing was leased in etcd"
    decoded = idgen("decode", str(id_), "--etcd", etcd_endpoints, "--namespace", etcd_namespace, "--json")
    assert json.loads(decoded.stdout)["node"]["pid"] == pid


def test_mint_and_leases_on_etcd(etcd_endpoints: str, etcd_namespace: str) -> None:
    minted = idgen("mint", "-n", "3", env={"IDGEN_ETCD": etcd_endpoints, "IDGEN_NAMESPACE": etcd_namespace})
    assert minted.returncode == 0, minted.stderr
    assert len(set(minted.stdout.split())) == 3
    listed = idgen("leases", "--json", "--etcd", etcd_endpoints, "--namespace", etcd_namespace)
    assert listed.returncode == 0, listed.stderr
    described = json.loads(listed.stdout)
    assert described["leases"] == {}  # released at exit
    assert list(described["fences"]) == ["0"] and len(described["history"]["0"]) == 1


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["mint", "--etcd", "http://127.0.0.1:1", "--zk", "127.0.0.1:1"], {}, "both name a coordinator"),
        (["mint", "--etcd", "http://127.0.0.1:1", "--worker-ids", "0-3"], {}, "etcd hands out the worker IDs"),
        (["serve", "--etcd", "http://127.0.0.1:1"], {"IDGEN_ETCD_TTL": "1"}, "IDGEN_ETCD_TTL"),
        (["mint", "--etcd", "127.0.0.1:2379"], {}, "must be URLs like http://host:2379"),
        (["zk-secure", "--etcd", "http://127.0.0.1:1"], {}, "zk-secure is for ZooKeeper"),
        (["mint", "--etcd", "https://127.0.0.1:1"], {"IDGEN_ETCD_CERT": "/c.pem"}, "IDGEN_ETCD_KEY"),
    ],
)
def test_contradictory_or_malformed_etcd_settings_are_one_line(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = idgen(*args, env=env)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_no_etcd_answering_is_one_line_exit_1() -> None:
    result = idgen("mint", "--etcd", "http://127.0.0.1:1,http://127.0.0.1:2")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no etcd endpoint answered" in result.stderr, result.stderr
