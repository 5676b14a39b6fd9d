"""The HTTP service, as clients see it: a real ``idgen serve`` process on a loopback port, real requests.

:class:`Server` is ``tests/serverproc.py``'s process helper, which ``test_serve.py``, the client and inspector
tests and the fault suite share.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import itertools
import json
import logging
import os
import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.generation.modes import GenerationMode
from serverproc import Reply
from serverproc import ServerProcess as Server

from idgen import DEFAULT_LAYOUT, FORMS, Generator, decode, format_id, get_layout, parse_id
from idgen.app import make_app
from idgen.clock import ManualClock
from idgen.config import OPTIONS
from idgen.errors import InvalidInput
from idgen.http import budget, connections
from idgen.http.connections import HEAD_TIMEOUT_S, log_accept_errors
from idgen.http.metrics import ID_LATENCY_SAMPLE, Metrics
from idgen.http.service import SERVICE
from idgen.leases.local import LocalLease

ROUTES = ["/", "/id", "/decode/{id}", "/healthz", "/readyz", "/info", "/metrics", "/openapi.json"]


# -- helpers (the server process itself is tests/serverproc.py) ---------------------------------------


def assert_error(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
    """``reply`` is the JSON error shape with ``status`` (and ``code``); its ``error`` object."""
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One local-lease server for the route tests of this module."""
    with Server("--state-dir", str(tmp_path_factory.mktemp("state"))) as running:
        yield running


# -- GET /id ------------------------------------------------------------------------------------------


def test_one_id_is_a_json_string_minted_under_the_leased_worker(server: Server) -> None:
    reply = server.get("/id")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["Cache-Control"] == "no-store"
    body = reply.json()
    assert list(body) == ["id"] and isinstance(body["id"], str)
    fields = decode(body["id"])
    assert fields["worker"] == server.get("/info").json()["worker_id"]
    assert abs(fields["timestamp_ms"] - time.time() * 1000) < 5_000


def test_count_batches_are_strictly_increasing_within_and_across_requests(server: Server) -> None:
    batches = [server.get(f"/id?count={n}").json()["ids"] for n in (1, 4096, 4096, 7, 4096)]
    assert [len(b) for b in batches] == [1, 4096, 4096, 7, 4096]
    ids = [int(i) for batch in batches for i in batch]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert all(isinstance(i, str) for batch in batches for i in batch)


@pytest.mark.parametrize("form", FORMS)
def test_every_format_parses_back_in_order(server: Server, form: str) -> None:
    one = server.get(f"/id?format={form}").json()["id"]
    batch = server.get(f"/id?count=50&format={form}").json()["ids"]
    values = [parse_id(text, form) for text in [one, *batch]]
    assert [format_id(v, form) for v in values] == [one, *batch]
    assert values == sorted(set(values))


@pytest.mark.parametrize(
    ("accept", "text"),
    [
        ("text/plain", True),
        ("text/plain, application/json;q=0.5", True),
        ("text/*", True),
        ("application/json, text/plain", False),
        ("text/plain;q=0.2, application/json", False),
        ("*/*", False),
        ("text/plain;q=0", False),
        ("image/png", False),
    ],
)
def test_accept_text_plain_gives_one_id_per_line(server: Server, accept: str, text: bool) -> None:
    reply = server.get("/id?count=5&format=hex", headers={"Accept": accept})
    assert reply.status == 200
    if text:
        assert reply.headers["Content-Type"].startswith("text/plain")
        lines = reply.body.decode().split("\n")
        assert lines[-1] == "" and len(lines) == 6
        assert [parse_id(line, "hex") for line in lines[:-1]] == sorted(parse_id(line, "hex") for line in lines[:-1])
    else:
        assert len(reply.json()["ids"]) == 5


def test_text_plain_single_id_is_a_bare_decimal(server: Server) -> None:
    reply = server.get("/id", headers={"Accept": "text/plain"})
    assert reply.status == 200
    assert reply.body.decode().endswith("\n")
    assert decode(reply.body.decode().strip())["worker"] == server.get("/info").json()["worker_id"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("count=0", "invalid_count"),
        ("count=-1", "invalid_count"),
        ("count=4097", "invalid_count"),
        ("count=99999999999999999999999999", "invalid_count"),
        ("count=abc", "invalid_count"),
        ("count=1.5", "invalid_count"),
        ("count=", "invalid_count"),
        ("count=%201", "invalid_count"),
        ("count=%D9%A5", "invalid_count"),  # an Arabic-Indic digit five: int() would take it
        ("format=octal", "invalid_format"),
        ("format=", "invalid_format"),
        ("count=2&format=HEX", "invalid_format"),
        ("count=2&count=x", "repeated_parameter"),  # which one counts would be a guess
        ("count=2&count=2", "repeated_parameter"),
        ("format=hex&format=hex", "repeated_parameter"),
    ],
)
def test_bad_parameters_are_400_with_a_json_error(server: Server, query: str, code: str) -> None:
    assert_error(server.get(f"/id?{query}"), 400, code)


# -- GET /decode/{id} ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_decode_takes_every_form_and_names_this_process(server: Server, form: str) -> None:
    id_ = server.get("/id").json()["id"]
    text = format_id(int(id_), form)
    for path in (f"/decode/{text}", f"/decode/{text}?format={form}"):
        reply = server.get(path)
        assert reply.status == 200, reply.body
        body = reply.json()
        node = body.pop("node")
        assert body == decode(id_)  # the same fields as `idgen decode --json`
        assert node["pid"] == server.pid
        assert node["host"] == os.uname().nodename
        assert node["address"] == f"127.0.0.1:{server.port}"
        assert node["worker_id"] == body["worker"]
        assert node["ended_ms"] is None
        assert node["after_ms"] < body["timestamp_ms"]


@pytest.mark.parametrize(
    ("unix_ms", "code"), [(3_881_000_000_000, "future"), (DEFAULT_LAYOUT.epoch_ms, "before_history")]
)
def test_decode_names_no_node_for_an_id_no_holder_minted_and_says_why(server: Server, unix_ms: int, code: str) -> None:
    worker = server.get("/info").json()["worker_id"]
    id_ = DEFAULT_LAYOUT.compose(DEFAULT_LAYOUT.tick_of(unix_ms), worker, 0)  # this worker ID, in 2093 or at the epoch
    reply = server.get(f"/decode/{id_}")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["node"] is None and "node_error" not in body
    assert body["node_reason"]["code"] == code and body["node_reason"]["message"]
    assert {k: v for k, v in body.items() if not k.startswith("node")} == decode(id_)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/decode/abc", "invalid_id"),
        ("/decode/9223372036854775808", "invalid_id"),  # 2**63: does not fit
        ("/decode/99999999999999999999", "invalid_id"),  # 20 digits
        ("/decode/0x8000000000000000", "invalid_id"),
        ("/decode/0x12", "invalid_id"),
        ("/decode/%F0%9F%92%A5", "invalid_id"),
        ("/decode/a%2Fb", "invalid_id"),
        ("/decode/" + "7" * 5000, "invalid_id"),
        ("/decode/123?format=hex", "invalid_id"),
        ("/decode/123?format=octal", "invalid_format"),
        ("/decode/123?format=decimal&format=hex", "repeated_parameter"),
    ],
)
def test_bad_ids_are_400(server: Server, path: str, code: str) -> None:
    assert_error(server.get(path), 400, code)


@pytest.mark.parametrize(
    ("text", "form", "other"),
    [("0737185780000", "base32", 737185780000), ("12345678912", "base58", 12345678912)],
)
def test_decode_refuses_a_string_that_reads_in_two_forms_unless_format_says_which(
    server: Server, text: str, form: str, other: int
) -> None:
    """An all-digit base32 (or base58) ID is a decimal number too: 400 ambiguous_id naming both readings, never a
    200 for the decimal one (which 0737185780000 got: ID 737185780000, minted 2025-01-01)."""
    value = parse_id(text, form)
    error = assert_error(server.get(f"/decode/{text}"), 400, "ambiguous_id")
    assert f"decimal {other}" in error["message"] and f"{form} {value}" in error["message"]
    assert server.get(f"/decode/{text}?format={form}").json()["id"] == str(value)
    assert server.get(f"/decode/{text}?format=decimal").json()["id"] == str(other)


def test_decode_reads_a_string_in_the_one_form_that_fits_the_layout(server: Server) -> None:
    """13 decimal digits are also base32, but the base32 reading (2**60 or more) is wider than js53's 53 bits: with
    ``?layout=js53`` only the decimal reading is an ID of the layout. The 63-bit default layout fits both."""
    assert server.get("/decode/1234567890123?layout=js53").json()["id"] == "1234567890123"
    assert_error(server.get("/decode/1234567890123"), 400, "ambiguous_id")


def test_decode_takes_a_layout_by_preset_or_spec_and_says_the_node_is_not_here(server: Server) -> None:
    discord = "175928847299117063"  # Discord's documented example: 2016-04-30T11:18:25.796Z, worker 1, increment 7
    body = server.get(f"/decode/{discord}?layout=discord").json()
    assert (body["time"], body["worker_id"], body["process_id"], body["sequence"]) == (
        "2016-04-30T11:18:25.796Z",
        1,
        0,
        7,
    )
    assert body["layout"] == "discord" and body["node"] is None and body["node_reason"]["code"] == "other_layout"
    assert server.get(f"/decode/{discord}").json()["time"] != body["time"]  # in this server's layout: another time
    spec = "time:42,worker_id:5,process_id:5,sequence:12;epoch=2015-01-01"  # Discord's, spelled out
    assert server.get(f"/decode/{discord}?layout={spec}").json()["time"] == body["time"]
    own = server.get("/id").json()["id"]
    assert server.get(f"/decode/{own}?layout=idgen").json()["node"]["pid"] == server.pid  # its own layout: traced
    assert assert_error(server.get(f"/decode/{own}?layout=nope"), 400)["code"] == "invalid_layout"
    too_wide = assert_error(server.get(f"/decode/{own}?layout=js53"), 400, "invalid_id")  # 63 bits in a 53-bit layout
    assert "more than the 53 bits of layout 'js53'" in too_wide["message"]
    assert_error(server.get(f"/decode/{own}?layout=time:70,sequence:1;epoch=2020-01-01"), 400, "invalid_layout")


# -- routing errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/index.html", "/id/", "/decode/", "/decode/1/2", "/ID", "/metrics/x"])
def test_unknown_routes_are_404(server: Server, path: str) -> None:
    assert_error(server.get(path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/id"), ("PUT", "/id"), ("DELETE", "/decode/1"), ("HEAD", "/id"), ("PATCH", "/healthz")],
)
def test_other_methods_are_405_with_allow(server: Server, method: str, path: str) -> None:
    reply = server.get(path, method=method)
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET"
    if method != "HEAD":
        assert_error(reply, 405, "method_not_allowed")


#: One raw request of every class that aiohttp answers itself, below idgen's routes: its parser refuses it, no route
#: can take its target, or its Expect is refused. Each must get idgen's JSON error, never aiohttp's text/plain.
MALFORMED = {
    "bytes outside ASCII in the target": (b"GET /decode/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "an unknown method": (b"BREW /id HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "a request line over 8,190 bytes": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "a header over 8,190 bytes": (b"GET /id HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", 400),
    "200 headers": (b"GET /id HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 400),
    "TLS on the plain port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "an HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "an unknown HTTP version": (b"GET /id HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    "a control byte in a header": (b"GET /id HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
    "a header without a colon": (b"GET /id HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", 400),
    "a bad Content-Length": (b"GET /id HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    "two Content-Lengths": (b"GET /id HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "a bad chunk size": (b"GET /id HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "bare LF line ends": (b"GET /id HTTP/1.1\nHost: x\n\n", 400),
    "CONNECT /id": (b"CONNECT /id HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "CONNECT host:port": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "OPTIONS *": (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "an unknown Expect": (b"GET /id HTTP/1.1\r\nHost: x\r\nExpect: nonsense\r\nContent-Length: 1\r\n\r\n", 417),
}


def raw_request(port: int, request: bytes) -> Reply:
    """``request`` sent as bytes on a new connection; the one answer read back (by its Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536) or b"\0"
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        message = email.message_from_string("\r\n".join(lines) + "\r\n\r\n")
        length = int(message.get("Content-Length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, f"the answer to {request[:40]!r} ended early"
            body += chunk
    return Reply(int(status_line.split()[1]), message, body)


@pytest.mark.parametrize("name", MALFORMED)
def test_every_malformed_request_class_gets_a_json_error(server: Server, name: str) -> None:
    request, status = MALFORMED[name]
    reply = raw_request(server.port, request)
    error = assert_error(reply, status)
    assert reply.headers["Cache-Control"] == "no-store"
    assert "\\x" not in error["message"] and "aaaaaaaa" not in error["message"]  # the request is not echoed
    assert error["code"] == {400: "bad_request", 404: "not_found", 417: "expectation_failed"}[status]


def test_unparseable_requests_make_one_warning_not_one_each(server: Server) -> None:
    before = len([e for e in server.events if e.get("event") == "bad_http_request"])
    for _ in range(50):
        raw_request(server.port, MALFORMED["a control byte in a header"][0])
    assert_error(server.get("/nope"), 404)  # served after them, so their lines (if any) are logged by now
    warnings = [e for e in server.events if e.get("event") == "bad_http_request"]
    assert len(warnings) - before <= 1
    assert warnings and warnings[0]["level"] == "WARNING" and "exc_info" not in warnings[0]


def test_a_request_body_that_cannot_be_decompressed_logs_no_traceback(server: Server) -> None:
    """idgen reads no body; aiohttp used to decompress the one it drains after the answer, and logged a bad gzip
    body as an "Unhandled exception" at ERROR with three tracebacks."""
    reply = raw_request(
        server.port, b"GET /id HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert reply.status == 200
    assert_error(server.get("/nope"), 404)
    assert not [e for e in server.events if e.get("level") == "ERROR" or "exc_info" in e]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/id"),
        ("GET", "/id?count=3"),
        ("GET", "/id?count=600&format=base58"),  # a batch beyond one slice: the budgeted, streamed answer
        ("GET", "/id?count=0"),
        ("GET", "/decode/1"),
        ("GET", "/decode/x"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/info"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/id"),
    ],
)
def test_every_answer_says_cache_control_no_store(server: Server, method: str, path: str) -> None:
    """A cache that replays an ID answer makes duplicates; the others describe live state or are not worth a cache.
    The inspector page alone may be kept, if revalidated (``no-cache``): it is the same HTML for a version."""
    reply = server.get(path, method=method, headers={"Accept": "text/html"} if path == "/" else None)
    assert reply.headers.get_all("Cache-Control") == ["no-cache" if path == "/" else "no-store"], (path, reply.status)


def test_no_idle_timeout_is_shorter_than_the_head_deadline() -> None:
    """aiohttp's idle timer starts when a connection opens: a shorter --idle-timeout would cut heads short silently.
    config.py states the bound as a number (it must not import aiohttp); this holds it to HEAD_TIMEOUT_S."""
    parse = OPTIONS["idle_timeout"][0]
    assert parse(f"{HEAD_TIMEOUT_S:g}") == HEAD_TIMEOUT_S
    with pytest.raises(InvalidInput):
        parse(f"{HEAD_TIMEOUT_S - 0.001:g}")


def test_a_request_head_sent_slowly_is_cut_off_at_the_head_deadline(server: Server) -> None:
    """A slowloris keeps a connection by never finishing its head: a header line now and then. Each byte used to
    be enough to keep it for an hour (aiohttp's keep-alive default); the head now has ``HEAD_TIMEOUT_S``."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=HEAD_TIMEOUT_S + 5) as sock:
        sock.sendall(b"GET /id HTTP/1.1\r\nHost: x\r\n")
        opened = time.monotonic()
        with pytest.raises(OSError):  # the server closes it; a send after that fails
            while time.monotonic() - opened < HEAD_TIMEOUT_S + 5:
                sock.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.25)
                if select.select([sock], [], [], 0)[0] and not sock.recv(1):
                    raise ConnectionResetError("closed by the server")
        closed_after = time.monotonic() - opened
    assert HEAD_TIMEOUT_S - 1 < closed_after < HEAD_TIMEOUT_S + 2


def test_a_request_head_over_32_kib_closes_the_connection_and_one_below_is_served(server: Server) -> None:
    """aiohttp bounds a head's lines (8,190 bytes) and count (128), not its size: about 1 MiB each, and 1,000
    connections sending heads that never ended took the server from 42 MB to 759 MB of RSS."""
    header = b"X-Pad-%03d: " + b"p" * 1000 + b"\r\n"
    below = b"".join(header % i for i in range(30))  # 30 KiB
    assert raw_request(server.port, b"GET /id HTTP/1.1\r\nHost: x\r\n" + below + b"\r\n").status == 200
    with socket.create_connection(("127.0.0.1", server.port), timeout=HEAD_TIMEOUT_S - 2) as sock:
        sock.sendall(b"GET /id HTTP/1.1\r\nHost: x\r\n" + below)
        with contextlib.suppress(ConnectionResetError):
            sock.sendall(b"".join(header % i for i in range(30, 40)))  # 40 KiB, not ended
            assert sock.recv(1) == b""  # closed before the head deadline: recv would time out
    assert_error(server.get("/nope"), 404)  # answered after, so the closing is logged by now
    assert [e for e in server.events if e.get("event") == "head_too_large"]


def test_every_response_says_server_idgen_and_no_version(server: Server) -> None:
    """The ``Server`` header named aiohttp and its version, a gift to anyone matching servers to known bugs."""
    replies = [
        server.get(path, method=method)
        for method, path in [
            ("GET", "/id"),
            ("GET", "/id?count=3&format=base58"),
            ("GET", "/id?count=0"),
            ("GET", "/healthz"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("GET", "/"),
            ("GET", "/nope"),
            ("POST", "/id"),
        ]
    ]
    headers = [reply.headers.get_all("Server") for reply in replies]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:  # aiohttp's own 400
        sock.sendall(b"BREW /id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b"".join(iter(lambda: sock.recv(65536), b"")).split(b"\r\n\r\n")[0].split(b"\r\n")
    assert raw[0].split()[1] == b"400"
    headers.append([line.split(b":", 1)[1].strip().decode() for line in raw if line.lower().startswith(b"server:")])
    assert headers == [["idgen"]] * len(headers)


# -- health, info, metrics, OpenAPI ----------------------------------------------------------------------


def test_health_readiness_and_info(server: Server) -> None:
    assert server.get("/healthz").json() == {"status": "ok"}
    assert server.get("/readyz").json() == {"status": "ready"}
    info = server.get("/info").json()
    assert info["pid"] == server.pid and info["ready"] is True and info["reason"] is None
    assert info["layout"]["name"] == DEFAULT_LAYOUT.name
    assert info["time_bits_run_out"] == "2094-09-07T15:47:35.551Z"
    assert info["version"]
    assert info["fence_ms"] > time.time() * 1000
    lease = info["lease"]
    assert (lease["backend"], lease["state"], lease["worker_id"]) == ("local", "held", info["worker_id"])
    assert (lease["host"], lease["pid"], lease["address"]) == (
        os.uname().nodename,
        server.pid,
        f"127.0.0.1:{server.port}",
    )


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_ids_requests_latency_and_lease(server: Server) -> None:
    before = _samples(server.get("/metrics").body.decode())
    for _ in range(2 * ID_LATENCY_SAMPLE):  # the fast path: every request counted, one in ID_LATENCY_SAMPLE timed
        server.get("/id")
    server.get("/id", headers={"Accept": "text/plain"})  # the wrapped path
    server.get("/id?count=100")
    server.get("/id?count=0")
    after_reply = server.get("/metrics")
    assert after_reply.status == 200 and after_reply.headers["Content-Type"].startswith("text/plain")
    after = _samples(after_reply.body.decode())

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    fast = 2 * ID_LATENCY_SAMPLE  # any run of this many holds exactly two timed requests, each standing for half
    assert delta("idgen_ids_minted_total") == fast + 101
    assert delta("idgen_http_requests_total", route="/id", status="200") == fast + 2
    assert delta("idgen_http_requests_total", route="/id", status="400") == 1
    assert delta("idgen_http_request_duration_seconds_count", route="/id") == fast + 3
    assert delta("idgen_http_request_duration_seconds_bucket", route="/id", le="+Inf") == fast + 3
    assert after[("idgen_lease_state", (("state", "held"),))] == 1
    assert after[("idgen_lease_state", (("state", "lost"),))] == 0
    assert after[("idgen_ready", ())] == 1
    assert after[("idgen_worker_id", ())] == server.get("/info").json()["worker_id"]
    assert 0 < after[("idgen_fence_headroom_seconds", ())] <= 7.5
    assert ("idgen_clock_rollbacks_total", ()) in after
    assert ("idgen_overflow_waits_total", ()) in after


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk-adds", "observe-fallback"])
def test_the_tally_adds_weighted_latencies_and_quick_counts_in_either_mode(bulk: bool) -> None:
    metrics = Metrics()
    tally = metrics.tally("/id")
    assert tally.bulk  # this prometheus-client has the private values that bulk adds use
    tally.bulk = bulk
    tally.add(200, 0.0003)
    tally.observe(0.003, ID_LATENCY_SAMPLE)
    tally.quick_ok += 5
    tally.flush()
    tally.quick_ok += 2
    tally.flush()
    samples = _samples(metrics.render().decode())
    route = (("route", "/id"),)
    assert samples[("idgen_http_request_duration_seconds_count", route)] == 1 + ID_LATENCY_SAMPLE
    assert samples[("idgen_http_request_duration_seconds_bucket", (("le", "0.0005"), *route))] == 1
    assert samples[("idgen_http_request_duration_seconds_bucket", (("le", "0.005"), *route))] == 1 + ID_LATENCY_SAMPLE
    expected_sum = 0.0003 + 0.003 * ID_LATENCY_SAMPLE
    assert samples[("idgen_http_request_duration_seconds_sum", route)] == pytest.approx(expected_sum)
    assert samples[("idgen_http_requests_total", (*route, ("status", "200")))] == 1 + 5 + 2


def test_openapi_document_is_valid_and_lists_every_route(server: Server) -> None:
    document = server.get("/openapi.json").json()
    validate(document)
    assert set(document["paths"]) == {
        "/",
        "/id",
        "/decode/{id}",
        "/healthz",
        "/readyz",
        "/info",
        "/metrics",
        "/openapi.json",
    }
    count = document["paths"]["/id"]["get"]["parameters"][0]
    assert count["schema"]["maximum"] == server.get("/info").json()["max_count"] == 4096


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{server.port}/openapi.json")
    schema.hook("filter_case")(id_in_the_form_format_names(server.get("/openapi.json").json()))
    return schema


def id_in_the_form_format_names(document: dict[str, Any]) -> Callable[[Any, Any], bool]:
    """The rules of the document that OpenAPI cannot state, as it states them in words: /decode/{id}'s id matches
    the anyOf branch (titled by form) that format names, and without format exactly one branch; and the ID fits the
    bits of the layout it is decoded in. OpenAPI relates no two parameters, so the generator draws id, format and
    layout apart; a schemathesis filter keeps the positive cases that keep the rules. Negative cases are all kept:
    each must be refused."""
    [id_parameter] = [p for p in document["paths"]["/decode/{id}"]["get"]["parameters"] if p["name"] == "id"]
    branches = {b["title"]: re.compile(b["pattern"]) for b in id_parameter["schema"]["anyOf"]}

    def keep(context: Any, case: Any) -> bool:
        if case.operation.path != "/decode/{id}" or not case.meta.generation.mode.is_positive:
            return True
        query = case.query or {}
        text, form = case.path_parameters["id"], query.get("format")
        matched = [name for name, pattern in branches.items() if pattern.fullmatch(text)]
        if (form not in matched) if form is not None else len(matched) != 1:
            return False
        return parse_id(text, form or matched[0]) >> get_layout(query.get("layout", "idgen")).bits_total == 0

    return keep


# Operations with parameters get schema-invalid input too; the others have nothing to get wrong.
FUZZED = [(path, "positive") for path in ROUTES] + [("/id", "negative"), ("/decode/{id}", "negative")]


@pytest.mark.parametrize(("path", "mode"), FUZZED)
def test_fuzzed_requests_never_get_a_5xx_and_match_the_document(api_schema: Any, path: str, mode: str) -> None:
    """schemathesis's generators, driven by Hypothesis directly (not its pytest plugin, which breaks on pytest
    9.2). Every check runs: no 5xx; status codes, content types, bodies and headers as documented; schema-invalid
    input rejected; schema-valid input accepted (the document's ID patterns are exactly what idgen reads, and
    :func:`id_in_the_form_format_names` keeps the rule that relates id and format)."""

    @settings(max_examples=40, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=api_schema[path]["GET"].as_strategy(GenerationMode(mode)))
    def check(case: Any) -> None:
        response = case.call_and_validate()
        assert response.status_code < 500

    check()


# -- the event loop waits out small clock rollbacks without blocking ------------------------------------------


def test_without_riding_a_small_rollback_is_awaited_while_other_requests_are_served(tmp_path: Path) -> None:
    """In-process, because the clock must be stepped back: a manual clock drives the generator and its lease.
    ``max_lead_ms=0``: the generator refuses instead of riding the step, so the app's own wait is what is tested."""
    clock = ManualClock()
    generator = Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, clock=clock), clock=clock, max_lead_ms=0)

    async def scenario() -> None:
        app = make_app(generator, rollback_tolerance_ms=5_000)
        async with TestServer(app) as test_server, aiohttp.ClientSession(test_server.make_url("")) as session:
            first = int((await (await session.get("/id")).json())["id"])
            clock.advance(-3)
            pending = asyncio.create_task(session.get("/id"))
            while generator.clock_rollbacks == 0:  # the request has met the rollback and is now awaiting it
                await asyncio.sleep(0.001)
            assert not pending.done()
            health = await session.get("/healthz")  # served while /id waits: the loop is free
            assert (health.status, await health.json()) == (200, {"status": "ok"})
            assert not pending.done()
            clock.advance(4)
            reply = await pending
            assert reply.status == 200
            second = int((await reply.json())["id"])
            assert second > first
            assert decode(second)["timestamp_ms"] == clock.now_ms()

            clock.advance(-10_000)  # beyond the tolerance: refused at once
            refused = await session.get("/id")
            assert refused.status == 503
            assert int(refused.headers["Retry-After"]) == 10
            assert (await refused.json())["error"]["code"] == "clock_behind"
            metrics = _samples(await (await session.get("/metrics")).text())
            assert metrics[("idgen_clock_rollbacks_total", ())] == 2

    try:
        asyncio.run(scenario())
    finally:
        generator.close()


def test_a_clock_step_back_is_ridden_through_ready_and_shown_in_info_and_metrics(tmp_path: Path) -> None:
    clock = ManualClock()
    generator = Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, clock=clock), clock=clock)

    async def scenario() -> None:
        app = make_app(generator)
        async with TestServer(app) as test_server, aiohttp.ClientSession(test_server.make_url("")) as session:
            first = int((await (await session.get("/id")).json())["id"])
            clock.advance(-2_000)
            replies = [await session.get("/id?count=3") for _ in range(5)]
            assert [r.status for r in replies] == [200] * 5
            ids = [int(i) for r in replies for i in (await r.json())["ids"]]
            assert [first, *ids] == sorted({first, *ids})
            assert (await session.get("/readyz")).status == 200
            info = await (await session.get("/info")).json()
            assert (info["clock_lead_ms"], info["clock_rides"], info["worker_id_switches"]) == (2_000, 1, 0)
            assert info["clock_lead_max_ms"] == 2_000 and info["max_lead_ms"] == 15_000
            metrics = _samples(await (await session.get("/metrics")).text())
            assert metrics[("idgen_clock_rides_total", ())] == 1
            assert metrics[("idgen_clock_lead_seconds", ())] == 2.0
            assert metrics[("idgen_worker_id_switches_total", ())] == 0

    try:
        asyncio.run(scenario())
    finally:
        generator.close()


async def http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str) -> bytes:
    """One keep-alive HTTP/1.1 request on an open connection; the response's body."""
    writer.write(f"GET {target} HTTP/1.1\r\nHost: idgen\r\n\r\n".encode())
    return await read_body(reader)


async def read_body(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


@pytest.mark.parametrize("form", FORMS)
def test_a_large_answer_is_formatted_in_slices_with_other_requests_served_in_between(tmp_path: Path, form: str) -> None:
    """Formatting 4096 IDs takes milliseconds (base58: 12 ms before it was sped up), longer than the one time unit
    the event loop may be held. Two requests reach the server at once on two connections: ``count=4096`` first,
    then ``/metrics``. ``/metrics`` must be answered while the batch is being formatted: after its IDs were minted
    (they are counted), before its response was counted."""
    generator = Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path))

    async def scenario() -> tuple[bytes, bytes]:
        async with TestServer(make_app(generator)) as test_server:
            (big, big_out), (small, small_out) = [
                await asyncio.open_connection(test_server.host, test_server.port) for _ in range(2)
            ]
            for reader, writer in [(big, big_out), (small, small_out)]:  # both connections accepted and idle
                await http_get(reader, writer, "/healthz")
            big_out.write(f"GET /id?count=4096&format={form} HTTP/1.1\r\nHost: idgen\r\n\r\n".encode())
            metrics = await http_get(small, small_out, "/metrics")  # written before the server ran again
            ids = await read_body(big)
            for writer in (big_out, small_out):
                writer.close()
            return metrics, ids

    try:
        metrics, ids = asyncio.run(scenario())
    finally:
        generator.close()
    assert len(json.loads(ids)["ids"]) == 4096
    samples = _samples(metrics.decode())
    assert samples[("idgen_ids_minted_total", ())] == 4096  # the batch was minted when /metrics was answered ...
    assert ("idgen_http_requests_total", (("route", "/id"), ("status", "200"))) not in samples  # ... not answered


def test_a_client_that_does_not_read_a_batch_is_disconnected_and_its_budget_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch holds its share of the ID budget until its answer is taken; a client that never reads would hold it
    for ever. The server's send buffer is made small (loopback's would take the whole answer), the send deadline
    short; the batch's connection is then closed, the budget whole again, and other batches served."""
    monkeypatch.setattr(budget, "SEND_TIMEOUT_S", 0.5)
    generator = Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path))
    app = make_app(generator, max_count=65536)

    async def small_send_buffer(request: web.Request, response: web.StreamResponse) -> None:
        request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    app.on_response_prepare.append(small_send_buffer)
    service = app[SERVICE]

    async def scenario() -> tuple[bytes, bytes]:
        async with TestServer(app) as test_server:
            sock = socket.create_connection((test_server.host, test_server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /id?count=65536&format=base58 HTTP/1.1\r\nHost: idgen\r\n\r\n")  # never read
            await asyncio.sleep(0.1)
            assert service.budget.free == service.budget.capacity - 65536  # held while the answer is stuck
            for _ in range(100):
                await asyncio.sleep(0.05)
                if service.budget.free == service.budget.capacity:
                    break
            reader, writer = await asyncio.open_connection(test_server.host, test_server.port)
            served = await http_get(reader, writer, "/id?count=1000")
            writer.close()
            sock.setblocking(False)
            received = b""
            with contextlib.suppress(BlockingIOError):
                while chunk := sock.recv(1 << 20):
                    received += chunk
            sock.close()
            return served, received

    try:
        with caplog.at_level(logging.WARNING, logger="idgen.http"):
            served, received = asyncio.run(scenario())
    finally:
        generator.close()
    assert service.budget.free == service.budget.capacity
    assert len(json.loads(served)["ids"]) == 1000
    assert len(received) < 1_000_000  # cut off: the whole answer is about 920 KB of base58 plus JSON
    assert [r for r in caplog.records if getattr(r, "event", None) == "send_timeout"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_failed_accepts_are_logged_once_every_few_seconds_with_a_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of descriptors, asyncio logs every failed accept with a traceback, and Python 3.11 retries the whole burst
    each turn: 125,003 lines in 37 s under a slowloris (docs/RELIABILITY.md, 13a). Now the first is logged at once,
    the rest with their count when the interval ends; other loop errors still go to asyncio's handler."""
    monkeypatch.setattr(connections, "LOG_INTERVAL_S", 0.2)

    async def flood() -> None:
        loop = asyncio.get_running_loop()
        log_accept_errors(loop)
        for _ in range(1000):
            context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "EMFILE")}
            loop.call_exception_handler(context)
        loop.call_exception_handler({"message": "something else"})
        await asyncio.sleep(0.5)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(flood())
    accept_lines = [r for r in caplog.records if "accept" in r.getMessage()]
    assert [(r.levelname, getattr(r, "event", None), getattr(r, "count", None)) for r in accept_lines] == [
        ("WARNING", "accept_failed", 1),
        ("WARNING", "accept_failed", 999),
    ]
    assert not any(r.exc_info for r in accept_lines)
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR] == [
        "something else"
    ]


def test_no_request_of_this_module_reached_the_catch_all(server: Server) -> None:
    """Last in the module, after the fuzzing: the shared server logged no internal error and no traceback."""
    assert server.get("/healthz").status == 200
    assert not [e for e in server.events if e.get("event") == "internal_error" or "exc_info" in e]
    assert not [e for e in server.events if e.get("level") == "ERROR"]
