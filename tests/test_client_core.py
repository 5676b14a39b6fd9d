"""The sans-IO core of both clients, :class:`idgen.client.buffer.IdBuffer`, driven with plain calls: no sockets, no
threads, a hand-stepped monotonic clock. A refill round is run as a refiller runs it (``advance``), each request
answered by a :class:`FakeServer` that mints as an idgen server does. tests/test_client.py covers the same rules
end to end against real servers; here each rule is pinned where it lives.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from idgen import DEFAULT_LAYOUT, InvalidInput, format_id
from idgen.client.answers import (
    ANSWER_SLACK_BYTES,
    Answer,
    Failed,
    Refused,
    Replayed,
    answer_limit_bytes,
    check_length,
    ids_answer,
    retry_after_s,
)
from idgen.client.buffer import (
    GROW_S,
    LOW_STEP,
    MIN_BATCH,
    RETRY_COOLDOWN_S,
    SHRINK_S,
    IdBuffer,
    Request,
    Steps,
    Taken,
    advance,
    count_ids,
    ids_of,
)
from idgen.errors import AllServersFailed, ClientClosed
from idgen.runs import RUNS_TYPE, runs_body

LAYOUT = DEFAULT_LAYOUT
A, B, C = "http://a:8080", "http://b:8080", "http://c:8080"


class Clock:
    """A monotonic clock stepped by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeServer:
    """Answers the buffer's requests as an idgen server would: ``/info``, ``/readyz``, and ``/id`` with IDs of
    ``worker`` minted in consecutive ticks, one tick per answer. ``refuse`` (a Retry-After text) makes it answer 503;
    ``down`` makes every request fail as an unreachable server's; ``replay`` makes it send its last ``/id`` answer
    again, as a cache would."""

    def __init__(self, worker: int = 1, max_count: int = 4096) -> None:
        self.worker, self.max_count, self.tick = worker, max_count, 1
        self.refuse: str | None = None
        self.down = False
        self.replay = False
        self.last: Answer | None = None
        self.paths: list[str] = []

    def __call__(self, request: Request) -> Answer | Failed:
        self.paths.append(request.path)
        if self.down:
            return Failed("connection refused")
        if self.refuse is not None:
            body = json.dumps({"error": {"code": "no_lease", "message": "lease lost"}}).encode()
            return Answer(503, {"Retry-After": self.refuse}, body)
        if request.path == "/info":
            info = {"layout": {"spec_string": LAYOUT.spec_string()}, "max_count": self.max_count}
            return Answer(200, {"Content-Type": "application/json"}, json.dumps(info).encode())
        if request.path == "/readyz":
            return Answer(200, {"Content-Type": "application/json"}, b'{"ready": true}')
        count = int(request.path.removeprefix("/id?count="))
        if count > self.max_count:
            error = {"error": {"code": "invalid_count", "message": f"count must be at most {self.max_count}"}}
            return Answer(400, {"Content-Type": "application/json"}, json.dumps(error).encode())
        if not (self.replay and self.last):
            self.last = Answer(200, {"Content-Type": RUNS_TYPE}, runs_body(self.mint(count)))
        return self.last

    def mint(self, count: int) -> list[int]:
        ids = [LAYOUT.compose(self.tick, self.worker, sequence) for sequence in range(count)]
        self.tick += 1
        return ids


def make(
    clock: Clock, urls: list[str] | None = None, batch: int | None = 100, low_water: int | None = None, **options: Any
) -> IdBuffer:
    settings: dict[str, Any] = {
        "timeout": 1.0,
        "retries": 0,
        "backoff": 0.1,
        "probe_interval": None,
        "max_wait": None,
        "max_age": 5.0,
    }
    settings.update(options)
    return IdBuffer(urls or [A], batch, low_water, **settings, clock=clock)


def drive(steps: Steps, servers: Mapping[str, Callable[[Request], Answer | Failed]], clock: Clock) -> list[Any]:
    """Run ``steps`` to their end as a refiller does, each request answered by its server's fake, each pause taken
    on ``clock``; what they asked for, in order (``(url, path)`` per request, seconds per pause)."""
    asked: list[Any] = []
    outcome: Answer | Failed | None = None
    while (step := advance(steps, outcome)) is not None:
        if isinstance(step, Request):
            asked.append((step.server.url, step.path))
            outcome = servers[step.server.url](step)
        else:
            asked.append(step)
            clock.now += step
            outcome = None
    return asked


def refill(buffer: IdBuffer, servers: Mapping[str, Callable[[Request], Answer | Failed]], clock: Clock) -> list[Any]:
    """The refiller's next work, which must be due now, driven to its end."""
    steps, _ = buffer.next_step(clock.now)
    assert steps is not None, "no refill was due"
    return drive(steps, servers, clock)


# -- taking from the buffer ----------------------------------------------------------------------------------------


def test_each_id_leaves_the_buffer_once_and_the_counts_add_up() -> None:
    clock, server = Clock(), FakeServer()
    buffer = make(clock)
    refill(buffer, {A: server}, clock)
    assert buffer.level == 100

    first = buffer.take_one(clock.now)
    parts = buffer.take(30, clock.now)
    assert all(isinstance(part, Taken) and part.server.url == A for part in parts)
    assert count_ids(parts) == 30 and buffer.level == 69
    rest = buffer.take(500, clock.now)  # more than it holds: what is left, no more
    assert count_ids(rest) == 69 and buffer.level == 0 and buffer.take_one(clock.now) is None

    got = [first, *ids_of(parts, None), *ids_of(rest, None)]
    assert len(set(got)) == 100 and got == sorted(got)
    assert ids_of(parts, "hex") == [format_id(i, "hex") for i in ids_of(parts, None)]
    [status] = buffer.status()
    assert (status.fetched, status.handed_out, status.buffered, status.discarded) == (100, 100, 0, 0)


def test_the_head_is_cut_where_the_level_reaches_low_water() -> None:
    """The lock-free path takes from the head only; the call after the head runs out takes the slow path, which
    wakes the refiller. So the head ends where the level reaches ``low_water``, and below it holds ``LOW_STEP``."""
    clock = Clock()
    buffer = make(clock, batch=1000, low_water=400)
    refill(buffer, {A: FakeServer()}, clock)
    assert buffer.take_one(clock.now) is not None
    assert buffer.head.left() == 599 and buffer.level == 999  # cut at 600: 1000 - 400
    buffer.take(599, clock.now)
    assert buffer.level == 400 and buffer.head.left() == 0
    buffer.take_one(clock.now)
    assert buffer.head.left() == LOW_STEP - 1 and buffer.level == 399


def test_ids_older_than_max_age_are_dropped_never_handed_out() -> None:
    clock = Clock()
    buffer = make(clock, max_age=5.0)
    refill(buffer, {A: FakeServer()}, clock)
    assert buffer.take_one(clock.now + 4.9) is not None
    assert buffer.take_one(clock.now + 5.0) is None and buffer.level == 0
    [status] = buffer.status()
    assert (status.fetched, status.expired, status.discarded, status.handed_out) == (100, 99, 99, 1)


def test_ids_taken_before_a_wait_are_dropped_if_their_server_refused_or_they_grew_old() -> None:
    clock, a, b = Clock(), FakeServer(worker=1), FakeServer(worker=2)
    buffer = make(clock, urls=[A, B], low_water=0, max_age=5.0)
    with buffer.waiting(100, clock.now):
        refill(buffer, {A: a, B: b}, clock)
    parts = buffer.take(60, clock.now)
    buffer.failed(buffer.servers[0], Refused("HTTP 503 no_lease", 1.0), clock.now)  # A refuses meanwhile
    assert buffer.top_up(parts, 60, clock.now) == []  # all 60 were A's: dropped; the buffer is empty
    assert buffer.status()[0].discarded == 100  # the 60 taken, the 40 left buffered

    a.down = True
    with buffer.waiting(100, clock.now):
        refill(buffer, {A: a, B: b}, clock)  # B's IDs this time
    old = buffer.take(10, clock.now)
    clock.now += 5.0
    assert buffer.top_up(old, 10, clock.now) == []  # too old, and so is the rest of the buffer
    assert buffer.status()[1].expired == 100


# -- refill decisions ----------------------------------------------------------------------------------------------


def test_a_refill_is_due_below_low_water_and_not_at_or_above_it() -> None:
    clock = Clock()
    buffer = make(clock, batch=100, low_water=40)
    refill(buffer, {A: FakeServer()}, clock)
    buffer.take(60, clock.now)
    assert buffer.level == 40 and buffer.next_step(clock.now) == (None, None)
    buffer.take_one(clock.now)
    steps, _ = buffer.next_step(clock.now)
    assert steps is not None


def test_with_low_water_0_only_a_waiting_caller_starts_a_refill() -> None:
    clock = Clock()
    buffer = make(clock, low_water=0)
    assert buffer.next_step(clock.now) == (None, None)
    with buffer.waiting(1, clock.now) as wait:
        assert buffer.demand == 1
        assert buffer.wait_left(wait, clock.now) == pytest.approx(buffer.max_wait)
        refill(buffer, {A: FakeServer()}, clock)
        assert buffer.wait_left(wait, clock.now) is None  # the buffer holds what it waits for
    assert buffer.demand == 0


def test_after_a_failed_round_background_refills_cool_down_but_a_new_caller_does_not() -> None:
    clock, a, b = Clock(), FakeServer(), FakeServer(worker=2)
    a.down = b.down = True
    buffer = make(clock, urls=[A, B])
    with buffer.waiting(1, clock.now) as wait:
        asked = refill(buffer, {A: a, B: b}, clock)
        assert asked == [(A, "/info"), (B, "/info")]
        with pytest.raises(AllServersFailed) as failed:  # the round that failed since the wait began
            buffer.wait_left(wait, clock.now)
    assert failed.value.failures == {A: "connection refused", B: "connection refused"}
    assert buffer.next_step(clock.now) == (None, pytest.approx(RETRY_COOLDOWN_S))  # the level is below low_water
    steps, _ = buffer.next_step(clock.now + RETRY_COOLDOWN_S)
    assert steps is not None
    with buffer.waiting(1, clock.now):
        steps, _ = buffer.next_step(clock.now)
        assert steps is not None


def test_a_caller_waits_at_most_max_wait() -> None:
    clock = Clock()
    buffer = make(clock, max_wait=3.0)
    with buffer.waiting(1, clock.now) as wait:
        assert buffer.wait_left(wait, clock.now + 1.0) == pytest.approx(2.0)
        with pytest.raises(AllServersFailed, match="within 3 s"):
            buffer.wait_left(wait, clock.now + 3.0)


# -- the batch -----------------------------------------------------------------------------------------------------


def counts_asked(asked: list[Any]) -> list[int]:
    return [int(path.removeprefix("/id?count=")) for _, path in asked if path.startswith("/id")]


def test_an_adaptive_batch_doubles_with_demand_halves_without_and_stays_under_max_count() -> None:
    clock, server = Clock(), FakeServer(max_count=1000)
    buffer = make(clock, batch=None)
    counts, batches = [], []
    for _ in range(4):  # rounds closer than GROW_S
        with buffer.waiting(1, clock.now):
            counts += counts_asked(refill(buffer, {A: server}, clock))
        batches.append(buffer.batch)
        assert buffer.low_water == 2 * buffer.batch
        clock.now += GROW_S / 2
    assert batches == [MIN_BATCH, 2 * MIN_BATCH, 1000, 1000]  # 1000: the server's --max-count, from its /info
    assert counts == batches  # a round asks for the batch it decided on, not the one before (it lagged a round)
    clock.now += SHRINK_S + 0.1
    buffer.take(buffer.level, clock.now)
    refill(buffer, {A: server}, clock)
    assert buffer.batch == 500 and buffer.low_water == 1000


def test_no_request_asks_for_more_than_the_servers_max_count() -> None:
    clock, server = Clock(), FakeServer(max_count=100)
    buffer = make(clock, batch=300)
    assert refill(buffer, {A: server}, clock) == [(A, "/info"), (A, "/id?count=100")]


def test_invalid_count_has_the_server_read_again_once() -> None:
    """A server redeployed with a smaller ``--max-count``: its 400 ``invalid_count`` has its ``/info`` asked
    again, and the same attempt asks for what it now allows."""
    clock, server = Clock(), FakeServer(max_count=4096)
    buffer = make(clock, batch=200, low_water=0)
    with buffer.waiting(1, clock.now):
        refill(buffer, {A: server}, clock)
    server.max_count = 150
    buffer.take(200, clock.now)
    with buffer.waiting(1, clock.now):
        asked = refill(buffer, {A: server}, clock)
    assert asked == [(A, "/id?count=200"), (A, "/info"), (A, "/id?count=150")]
    assert buffer.level == 150 and buffer.servers[0].last_error is None


# -- answers that are not taken ------------------------------------------------------------------------------------


def test_a_replayed_answer_is_dropped_whole_counted_and_failed_over() -> None:
    clock, cache, b = Clock(), FakeServer(worker=1), FakeServer(worker=2)
    buffer = make(clock, urls=[A, B], low_water=0)
    with buffer.waiting(1, clock.now):
        refill(buffer, {A: cache, B: b}, clock)
    buffer.take(100, clock.now)
    cache.replay = True
    with buffer.waiting(1, clock.now):
        asked = refill(buffer, {A: cache, B: b}, clock)
    assert asked == [(A, "/id?count=100"), (B, "/info"), (B, "/id?count=100")]
    a_status, b_status = buffer.status()
    assert a_status.replays == 1 and "replayed answer" in str(a_status.last_error)
    assert a_status.fetched == 100  # the replay never counted as fetched
    assert b_status.buffered == 100 and buffer.preferred == 1


def test_floors_are_per_worker_id_and_refuse_anything_at_or_below() -> None:
    clock = Clock()
    buffer = make(clock)
    refill(buffer, {A: FakeServer(worker=5)}, clock)
    floors = buffer.servers[0].floors
    top = LAYOUT.compose(1, 5, 99)
    assert floors.highest == {5: top}
    with pytest.raises(Replayed):  # an older ID of the same worker ID
        floors.raise_to([range(top - 10, top - 9)])
    with pytest.raises(Replayed):  # the highest itself, in a run that goes above it
        floors.raise_to([range(top, top + 2)])
    assert floors.highest == {5: top}  # a refused answer moves no floor
    # Another worker ID has its own floor: its IDs may lie below worker 5's (a switch of worker IDs).
    other = LAYOUT.compose(1, 3, 0)
    assert other < top
    floors.raise_to([range(other, other + 4)])
    assert floors.highest == {5: top, 3: other + 3}
    # A run that crosses worker IDs is checked ID by ID: this one starts in worker 4 (no floor) and runs on into
    # worker 5's IDs already handed over.
    with pytest.raises(Replayed, match="worker ID 5"):
        floors.raise_to([range(LAYOUT.compose(1, 4, 4095), LAYOUT.compose(1, 5, 10) + 1)])


def test_a_malformed_answer_fails_the_attempt_over_to_the_next_server() -> None:
    clock, b = Clock(), FakeServer(worker=2)
    broken = FakeServer()

    def garbage(request: Request) -> Answer | Failed:
        answer = broken(request)
        if request.path.startswith("/id"):
            return Answer(200, {"Content-Type": RUNS_TYPE}, b'{"runs": [["5", 2], ["5", 1]]}')
        return answer

    buffer = make(clock, urls=[A, B])
    refill(buffer, {A: garbage, B: b}, clock)
    a_status, b_status = buffer.status()
    assert "malformed answer" in str(a_status.last_error) and a_status.fetched == 0
    assert b_status.buffered == 100


# -- refusals, Retry-After and probes ------------------------------------------------------------------------------


def test_a_refusal_drops_every_id_buffered_from_that_server_only() -> None:
    clock, a, b = Clock(), FakeServer(worker=1), FakeServer(worker=2)
    buffer = make(clock, urls=[A, B], batch=100, low_water=150, probe_interval=1.0)
    refill(buffer, {A: a, B: b}, clock)
    a.down = True
    refill(buffer, {A: a, B: b}, clock)  # B's, as A fails this round
    a.down = False
    assert [s.buffered for s in buffer.status()] == [100, 100]
    buffer.take_one(clock.now)  # the head is A's now
    a.refuse = "7"
    clock.now += 1.0
    asked = refill(buffer, {A: a, B: b}, clock)  # the probe, due for both: A's first
    assert asked == [(A, "/readyz")]
    a_status, b_status = buffer.status()
    assert (a_status.buffered, a_status.discarded, a_status.refusals) == (0, 99, 1)
    assert a_status.last_error == "HTTP 503 no_lease: lease lost (Retry-After 7 s)"
    assert b_status.buffered == 100 and all(buffer.take_one(clock.now) is not None for _ in range(100))


def test_an_idle_buffer_probes_each_server_it_holds_ids_of_every_probe_interval() -> None:
    clock = Clock()
    buffer = make(clock, batch=100, low_water=0, probe_interval=2.0)
    with buffer.waiting(1, clock.now):
        refill(buffer, {A: FakeServer()}, clock)
    assert buffer.next_step(clock.now) == (None, pytest.approx(2.0))
    clock.now += 2.0
    assert refill(buffer, {A: FakeServer()}, clock) == [(A, "/readyz")]
    assert buffer.next_step(clock.now) == (None, pytest.approx(2.0))  # it answered: the next probe in 2 s
    buffer.take(100, clock.now)
    assert buffer.next_step(clock.now + 10) == (None, None)  # nothing buffered from it: nothing to probe


def test_all_servers_failed_carries_the_shortest_retry_after_of_the_round() -> None:
    clock, a, b = Clock(), FakeServer(worker=1), FakeServer(worker=2)
    a.refuse, b.refuse = "7", "30"
    buffer = make(clock, urls=[A, B])
    with buffer.waiting(1, clock.now) as wait:
        refill(buffer, {A: a, B: b}, clock)
        with pytest.raises(AllServersFailed) as failed:
            buffer.wait_left(wait, clock.now)
    assert failed.value.retry_after == 7.0
    assert [s.refusals for s in buffer.status()] == [1, 1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(None, 1.0), ("7", 7.0), ("2.5", 2.5), ("0", 1.0), ("99999", 3600.0), ("inf", 1.0), ("nan", 1.0),
     ("\u0667", 1.0), ("soon", 1.0), ("1e3", 1.0)],
)  # fmt: skip
def test_retry_after_is_clamped_to_1_to_3600_seconds(text: str | None, seconds: float) -> None:
    assert retry_after_s(text, 1_700_000_000.0) == seconds


def test_retry_after_may_be_an_http_date() -> None:
    now = 1_700_000_000.0
    assert retry_after_s(email.utils.formatdate(now + 120, usegmt=True), now) == pytest.approx(120.0)
    assert retry_after_s(email.utils.formatdate(now - 120, usegmt=True), now) == 1.0  # in the past: at least 1 s


# -- failover ------------------------------------------------------------------------------------------------------


def test_a_round_asks_the_server_that_answered_last_first_with_backoff_between_passes() -> None:
    clock, a, b, c = Clock(), FakeServer(worker=1), FakeServer(worker=2), FakeServer(worker=3)
    a.down = b.down = c.down = True
    buffer = make(clock, urls=[A, B, C], retries=2, backoff=0.1)
    with buffer.waiting(1, clock.now):
        asked = refill(buffer, {A: a, B: b, C: c}, clock)
    one_pass = [(A, "/info"), (B, "/info"), (C, "/info")]
    assert asked == [*one_pass, 0.1, *one_pass, 0.2, *one_pass]
    a.down = c.down = False
    with buffer.waiting(1, clock.now):
        assert [url for url, _ in refill(buffer, {A: a, B: b, C: c}, clock)[:2]] == [A, A]  # B still down
    assert buffer.preferred == 0
    buffer.take(100, clock.now)
    a.down = True
    with buffer.waiting(1, clock.now):
        refill(buffer, {A: a, B: b, C: c}, clock)
    assert buffer.preferred == 2
    buffer.take(100, clock.now)
    with buffer.waiting(1, clock.now):
        assert refill(buffer, {A: a, B: b, C: c}, clock)[0] == (C, "/id?count=100")  # C answered last


def test_each_request_of_an_attempt_shares_one_deadline_and_its_byte_bound() -> None:
    clock = Clock()
    buffer = make(clock, batch=100, timeout=2.0)
    requests: list[Request] = []

    def server(request: Request) -> Answer | Failed:
        requests.append(request)
        clock.now += 0.5
        return FakeServer()(request)

    refill(buffer, {A: server}, clock)
    info, ids = requests
    assert info.deadline == ids.deadline == 1002.0 and info.limit_bytes == ANSWER_SLACK_BYTES
    assert ids.limit_bytes == answer_limit_bytes(100)
    assert ids.seconds_left(1001.5) == 0.5
    with pytest.raises(Failed, match="no answer within 2 s"):
        ids.seconds_left(1002.0)
    with pytest.raises(Failed, match="answer larger than"):
        check_length({"Content-Length": str(answer_limit_bytes(100) + 1)}, answer_limit_bytes(100))
    check_length({"Content-Length": str(answer_limit_bytes(100))}, answer_limit_bytes(100))


def test_json_answers_are_checked_as_strictly_as_runs() -> None:
    json_type = {"Content-Type": "application/json"}
    assert ids_answer(200, json_type, b'{"ids": ["1", "2", "4"]}', 3) == [range(1, 3), range(4, 5)]
    for body in [b'{"ids": ["1", "1", "2"]}', b'{"ids": ["1", "2"]}', b'{"ids": [1, 2, 3]}', b'{"ids": "123"}']:
        with pytest.raises(Failed, match="malformed answer"):
            ids_answer(200, json_type, body, 3)


# -- the end -------------------------------------------------------------------------------------------------------


def test_a_closed_buffer_hands_out_nothing_more_and_a_fork_starts_afresh() -> None:
    clock = Clock()
    buffer = make(clock, batch=100, low_water=40)
    refill(buffer, {A: FakeServer()}, clock)
    fresh = buffer.fresh()
    assert (fresh.level, fresh.status()[0].fetched, fresh.urls, fresh.batch) == (0, 0, [A], 100)

    buffer.take_one(clock.now)
    head = buffer.head
    buffer.close()
    assert head.expires == float("-inf")  # the lock-free path, which checks it, takes no more from it
    with pytest.raises(ClientClosed):
        buffer.check_open()
    assert buffer.fresh().closed
    [status] = buffer.status()
    assert (status.handed_out, status.discarded, status.buffered) == (1, 59, 40)  # the head's 59 left, dropped


def test_bad_settings_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="batch must be a whole number"):
        make(Clock(), batch=0)
    with pytest.raises(InvalidInput, match="timeout must be above 0"):
        make(Clock(), timeout=0)
