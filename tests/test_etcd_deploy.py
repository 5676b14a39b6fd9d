"""The etcd deployment examples agree with the code: deploy/compose-etcd.yaml and the deploy/kubernetes-etcd overlay
(rendered by a real ``kubectl kustomize``). The variable names the code reads come from tests/test_deploy.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy import REPO, environment, server_env_names

from idgen.leases.etcd import ETCD_CA_ENV, ETCD_CREDENTIALS

COMPOSE = REPO / "deploy" / "compose-etcd.yaml"
OVERLAY = REPO / "deploy" / "kubernetes-etcd"


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return found


def test_compose_runs_a_three_member_etcd_cluster_that_agrees_on_its_members() -> None:
    members = {
        n: environment(s) for n, s in services().items() if n.startswith("etcd") and "ETCD_NAME" in environment(s)
    }
    assert len(members) == 3
    for name, env in members.items():
        assert env["ETCD_NAME"] == name
        initial = dict(entry.split("=", 1) for entry in env["ETCD_INITIAL_CLUSTER"].split(","))
        assert set(initial) == set(members)
        assert initial[name] == env["ETCD_INITIAL_ADVERTISE_PEER_URLS"]


def test_compose_workers_share_one_namespace_on_every_member_with_credentials_from_a_secret_file() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    workers = {n: s for n, s in services().items() if n.startswith("idgen")}
    assert len(workers) == 3
    envs = {n: environment(s) for n, s in workers.items()}
    for name, env in envs.items():
        assert set(env) <= server_env_names(), f"{name}: {set(env) - server_env_names()}"
        assert (
            "IDGEN_ZK" not in env and ETCD_CREDENTIALS.insecure_env not in env and ETCD_CREDENTIALS.auth_env not in env
        )
        hosts = {url.split("//")[1].split(":")[0] for url in env["IDGEN_ETCD"].split(",")}
        assert hosts == {"etcd1", "etcd2", "etcd3"}
        path = Path(env[ETCD_CREDENTIALS.auth_file_env])
        assert path.parent == Path("/run/secrets") and path.name in workers[name]["secrets"]
        user, _, password = (COMPOSE.parent / compose["secrets"][path.name]["file"]).read_text().strip().partition(":")
        assert user and password
    for key in ("IDGEN_ETCD", "IDGEN_NAMESPACE", "IDGEN_LAYOUT"):
        assert len({env.get(key) for env in envs.values()}) == 1, key


def test_compose_auth_job_limits_the_role_to_the_workers_namespace() -> None:
    job = services()["etcd-auth"]
    script = "\n".join(job["command"])
    namespace = environment(services()["idgen1"])["IDGEN_NAMESPACE"]
    assert f"--prefix=true readwrite {namespace}\n" in script
    assert script.rstrip().endswith("etcdctl auth enable")
    assert all(
        w["depends_on"]["etcd-auth"]["condition"] == "service_completed_successfully"
        for n, w in services().items()
        if n.startswith("idgen")
    )


def test_kubernetes_overlay_swaps_zookeeper_for_etcd() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    objects = {d["kind"]: d for d in yaml.safe_load_all(rendered.stdout) if d}
    assert set(objects) == {"Deployment", "Service", "PodDisruptionBudget", "Secret"}
    assert objects["Secret"]["metadata"]["name"] == "idgen-etcd-auth"
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= server_env_names()
    assert "IDGEN_ETCD" in env and not any(name.startswith("IDGEN_ZK") for name in env)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(volumes)
    secret = volumes["etcd-auth"]["secret"]
    assert secret["secretName"] == "idgen-etcd-auth"
    files = {f"{mounts['etcd-auth']}/{item['path']}" for item in secret["items"]}
    assert {env[ETCD_CREDENTIALS.auth_file_env], env[ETCD_CA_ENV]} <= files
    assert set(objects["Secret"]["stringData"]) == {item["key"] for item in secret["items"]}
