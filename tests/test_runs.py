"""The compact runs form of ``GET /id?count=N`` (``application/vnd.idgen.runs+json``), against a real ``idgen
serve``, and its parser :func:`idgen.runs.parse_runs` on bodies no server should send."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from serverproc import ServerProcess as Server
from test_http import assert_error

from idgen import decode
from idgen.runs import RUNS_TYPE, parse_runs, runs_body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server("--state-dir", str(tmp_path_factory.mktemp("state"))) as running:
        yield running


def ids_of(body: bytes, count: int) -> list[int]:
    return [i for run in parse_runs(body, count) for i in run]


@pytest.mark.parametrize("accept", [RUNS_TYPE, f"application/json;q=0.5, {RUNS_TYPE}", RUNS_TYPE.upper() + ";q=0.9"])
def test_the_runs_form_holds_count_strictly_increasing_ids_of_this_worker(server: Server, accept: str) -> None:
    worker = server.get("/info").json()["worker_id"]
    seen: list[int] = []
    for _ in range(3):
        reply = server.get("/id?count=4096", headers={"Accept": accept})
        assert reply.status == 200, reply.body
        assert reply.headers["Content-Type"] == RUNS_TYPE and reply.headers["Cache-Control"] == "no-store"
        body = reply.json()
        assert set(body) == {"runs"} and all(isinstance(f, str) and isinstance(c, int) for f, c in body["runs"])
        seen += ids_of(reply.body, 4096)
    assert all(a < b for a, b in itertools.pairwise(seen)) and {decode(i)["worker"] for i in seen} == {worker}
    # maximal runs: a gap separates each run from the next
    runs = server.get("/id?count=4096", headers={"Accept": RUNS_TYPE}).json()["runs"]
    assert all(int(a[0]) + a[1] < int(b[0]) for a, b in itertools.pairwise(runs))


@pytest.mark.parametrize("accept", [None, "application/json", f"{RUNS_TYPE};q=0", "text/plain"])
def test_everyone_else_gets_what_they_got_before(server: Server, accept: str | None) -> None:
    reply = server.get("/id?count=3", headers={} if accept is None else {"Accept": accept})
    assert reply.status == 200 and not reply.headers["Content-Type"].startswith(RUNS_TYPE)


def test_a_single_id_stays_json_on_the_fast_path(server: Server) -> None:
    reply = server.get("/id", headers={"Accept": RUNS_TYPE})
    assert reply.status == 200 and set(reply.json()) == {"id"}


@pytest.mark.parametrize(
    ("query", "code"),
    [("count=0", "invalid_count"), ("count=4097", "invalid_count"), ("count=x", "invalid_count"),
     ("count=5&format=hex", "invalid_format"), ("count=5&format=nope", "invalid_format")],
)  # fmt: skip
def test_bad_runs_requests_are_400_with_a_json_error(server: Server, query: str, code: str) -> None:
    assert_error(server.get(f"/id?{query}", headers={"Accept": RUNS_TYPE}), 400, code)


def test_runs_body_writes_maximal_runs() -> None:
    assert runs_body([5, 6, 7]) == b'{"runs":[["5",3]]}'
    assert runs_body([1, 2, 4, 9, 10]) == b'{"runs":[["1",2],["4",1],["9",2]]}'
    assert ids_of(runs_body([1, 2, 4, 9, 10]), 5) == [1, 2, 4, 9, 10]


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"ids": ["1"]}', b'{"runs": []}', b'{"runs": [[1, 2]]}', b'{"runs": [["1", 0]]}',
     b'{"runs": [["1", true]]}', b'{"runs": [["1", 2, 3]]}', b'{"runs": [["5", 1], ["5", 1]]}',
     b'{"runs": [["9223372036854775807", 2]]}', b'{"runs": [["1", 3]]}', b'{"runs": [["-1", 2]]}'],
)  # fmt: skip
def test_parse_runs_refuses_anything_but_exactly_count_increasing_ids(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_runs(body, 2)


def test_the_client_reads_both_forms_and_refuses_a_malformed_one() -> None:
    from idgen.client.answers import Failed, ids_answer

    runs = {"Content-Type": RUNS_TYPE}
    assert ids_answer(200, runs, b'{"runs":[["1",2],["4",1]]}', 3) == [range(1, 3), range(4, 5)]
    assert ids_answer(200, {"Content-Type": "application/json"}, b'{"ids":["1","2","4"]}', 3) == [
        range(1, 3),
        range(4, 5),
    ]
    with pytest.raises(Failed, match="malformed answer"):
        ids_answer(200, runs, b'{"runs":[["1",2]]}', 3)
