"""etcd access control, as with ZooKeeper (tests/test_zookeeper_security.py), on real etcd members with auth enabled:

- without credentials ``serve`` and every command with ``--etcd`` refuse to start in one line with exit 2, unless the
  operator opts out twice (``--etcd-insecure-no-auth`` and ``IDGEN_ETCD_INSECURE_NO_AUTH=1``);
- wrong credentials are one line, never a traceback; an etcd with authentication disabled is refused;
- an anonymous client can delete neither claims nor fences, and the holder keeps minting;
- an auth token that expires is renewed.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from etcdharness import TEST_CREDENTIALS, EtcdServer
from polling import eventually
from serverproc import ServerProcess as Server

from idgen import DEFAULT_LAYOUT, Generator
from idgen.errors import InvalidInput, LeaseUnavailable
from idgen.leases.etcd import EtcdClient, EtcdLease

NO_CREDENTIALS = {"IDGEN_ETCD_AUTH": "", "IDGEN_ETCD_AUTH_FILE": ""}
OPT_OUT_ENV = {**NO_CREDENTIALS, "IDGEN_ETCD_INSECURE_NO_AUTH": "1"}
SERVE = ["serve", "--host", "127.0.0.1", "--port", "0"]


def idgen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idgen.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def anonymous(endpoint: str, path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    """A request to etcd's gateway without a token: anyone who can reach etcd."""
    request = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- credentials are required ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["mint"], NO_CREDENTIALS),
        (["decode", "1"], NO_CREDENTIALS),
        (["leases"], NO_CREDENTIALS),
        (SERVE, NO_CREDENTIALS),
        (["mint", "--etcd-insecure-no-auth"], NO_CREDENTIALS),  # half an opt-out is none
        (SERVE, OPT_OUT_ENV),
    ],
)
def test_serve_and_every_etcd_command_refuse_to_start_without_credentials(
    etcd_endpoints: str, etcd_namespace: str, command: list[str], env: dict[str, str]
) -> None:
    result = idgen(*command, "--etcd", etcd_endpoints, "--namespace", etcd_namespace, env=env)
    assert result.returncode == 2
    assert "IDGEN_ETCD_AUTH" in one_line(result)
    admin = EtcdClient(etcd_endpoints, TEST_CREDENTIALS)
    assert admin.range(etcd_namespace, prefix=True) == []  # refused before touching etcd


def test_the_library_lease_needs_credentials_or_an_explicit_opt_out(etcd_endpoints: str) -> None:
    with pytest.raises(InvalidInput, match=r"auth='user:password', or insecure=True"):
        EtcdLease(DEFAULT_LAYOUT, etcd_endpoints)


def test_the_opt_out_on_an_etcd_with_auth_enabled_is_refused_by_etcd_in_one_line(
    etcd_endpoints: str, etcd_namespace: str
) -> None:
    result = idgen(
        "mint", "--etcd", etcd_endpoints, "--namespace", etcd_namespace, "--etcd-insecure-no-auth", env=OPT_OUT_ENV
    )
    assert result.returncode == 1
    assert "etcd refused access" in one_line(result)


@pytest.mark.parametrize("credentials", ["idgen:wrong-password", "nobody:secret"])
def test_wrong_credentials_are_one_line(etcd_endpoints: str, etcd_namespace: str, credentials: str) -> None:
    for command in (["mint"], ["leases"], ["decode", "1"]):
        result = idgen(
            *command, "--etcd", etcd_endpoints, "--namespace", etcd_namespace, env={"IDGEN_ETCD_AUTH": credentials}
        )
        assert result.returncode == 1, result
        line = one_line(result)
        assert "etcd refused access" in line and "IDGEN_ETCD_AUTH" in line, line


def test_a_namespace_outside_the_users_role_is_refused_in_one_line(etcd_endpoints: str) -> None:
    result = idgen("mint", "--etcd", etcd_endpoints, "--namespace", "/not-idgens")
    assert result.returncode == 1
    assert "permission denied" in one_line(result)


def test_a_bad_credentials_value_is_one_line_exit_2(etcd_endpoints: str) -> None:
    result = idgen("mint", "--etcd", etcd_endpoints, env={"IDGEN_ETCD_AUTH": "no-colon"})
    assert result.returncode == 2
    assert "etcd credentials must look like user:password" in one_line(result)


@pytest.mark.etcd
def test_an_etcd_without_authentication_is_refused() -> None:
    with EtcdServer(auth=False) as open_etcd, pytest.raises(LeaseUnavailable, match="authentication disabled"):
        Generator(DEFAULT_LAYOUT, EtcdLease(DEFAULT_LAYOUT, open_etcd.endpoints, auth=TEST_CREDENTIALS))


# -- an anonymous client ----------------------------------------------------------------------------------------


def test_an_anonymous_client_can_delete_neither_claims_nor_fences(etcd_endpoints: str, etcd_namespace: str) -> None:
    with Server("--etcd", etcd_endpoints, "--namespace", etcd_namespace) as server:
        first = server.get("/id").json()["id"]
        worker = server.get("/info").json()["worker_id"]
        endpoint = etcd_endpoints.split(",")[0]
        attacks = [
            ("/v3/kv/deleterange", {"key": b64(f"{etcd_namespace}/leases/{worker}")}),
            ("/v3/kv/deleterange", {"key": b64(f"{etcd_namespace}/fences/{worker}")}),
            ("/v3/kv/deleterange", {"key": b64(f"{etcd_namespace}/"), "range_end": b64(f"{etcd_namespace}0")}),
            ("/v3/kv/put", {"key": b64(f"{etcd_namespace}/fences/{worker}"), "value": b64("{}")}),
        ]
        for path, body in attacks:
            status, answer = anonymous(endpoint, path, body)
            assert status != 200 and "user name is empty" in str(answer.get("message")), (path, status, answer)
        admin = EtcdClient(etcd_endpoints, TEST_CREDENTIALS)
        assert admin.range(f"{etcd_namespace}/leases/{worker}")
        assert admin.range(f"{etcd_namespace}/fences/{worker}")
        assert server.get("/id").json()["id"] > first
        assert server.get("/info").json()["lease"]["insecure"] is False


# -- tokens expire ------------------------------------------------------------------------------------------------


@pytest.fixture
def short_token_etcd() -> Iterator[EtcdServer]:
    """A member whose auth tokens expire after 1 s without use."""
    with EtcdServer(extra_args=["--auth-token-ttl=1"]) as server:
        yield server


def test_an_expired_auth_token_is_renewed(short_token_etcd: EtcdServer) -> None:
    client = EtcdClient(short_token_etcd.endpoints, TEST_CREDENTIALS)
    client.put("/idgen/token-test", b"1")
    old = client._token
    assert old is not None
    endpoint = short_token_etcd.endpoints

    def expired() -> bool:
        request = urllib.request.Request(
            endpoint + "/v3/kv/range", data=json.dumps({"key": b64("/idgen/x")}).encode(), method="POST"
        )
        request.add_header("Authorization", old)
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as exc:
            return "invalid auth token" in exc.read().decode()
        return False

    # each look uses the token, which keeps it alive another second: look less often than that
    assert eventually(expired, timeout=30, interval=2.0), "the token never expired"
    assert client.range("/idgen/token-test")  # renewed on the way
    assert client._token not in (None, old)


# -- TLS ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def tls_etcd() -> Iterator[EtcdServer]:
    """A member serving TLS only and requiring client certificates (``--client-cert-auth``)."""
    with EtcdServer(tls=True) as server:
        yield server


def test_tls_with_a_client_certificate_works_and_an_unknown_ca_or_no_certificate_is_one_line(
    tls_etcd: EtcdServer,
) -> None:
    tls = tls_etcd.tls
    assert tls is not None and tls_etcd.endpoints.startswith("https://")
    files = {
        "IDGEN_ETCD_CA": str(tls.ca),
        "IDGEN_ETCD_CERT": str(tls.client_cert),
        "IDGEN_ETCD_KEY": str(tls.client_key),
    }
    namespace = ("--etcd", tls_etcd.endpoints, "--namespace", "/idgen/tls")
    minted = idgen("mint", "-n", "2", *namespace, env=files)
    assert minted.returncode == 0, minted.stderr
    assert len(set(minted.stdout.split())) == 2
    without_ca = {**files, "IDGEN_ETCD_CA": ""}  # the system's CAs do not know this one
    without_certificate = {**files, "IDGEN_ETCD_CERT": "", "IDGEN_ETCD_KEY": ""}  # etcd requires one
    for env in (without_ca, without_certificate):
        refused = idgen("mint", *namespace, env=env)
        assert refused.returncode == 1, refused.stderr
        assert "no etcd endpoint answered" in one_line(refused)
