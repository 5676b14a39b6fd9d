"""Model-based test: random interleavings of everything that happens to the generators of one worker-ID space.

``LeaseModel`` (hypothesis stateful testing) drives up to 5 generators, each on its own lease, over one worker-ID
space of 4 worker IDs (so they are reused all the time) and one manual clock shared by all of them. It runs on
each backend of tests/lease_backends.py: local leases over one state directory, ZooKeeper leases (with
credentials) in one namespace, and etcd leases likewise. Its rules mint one and many, close, crash, restart, lose
the claim (the lock file removed; the session or etcd lease expired) and regain it, extend, step the clock both
ways (by up to an hour), and tamper with fence records. Each generator gets its own ``max_lead_ms`` (0: never
rides a clock step; 50 ms: rides small steps and switches worker IDs on larger ones; the 15 s default), so riding
and switching meet every other rule.
After every step it checks that:

1. no ID was issued twice;
2. IDs are in order: each generator's strictly increase (except across a switch of worker IDs), and on one worker
   ID every ID of a later holder is above every ID of an earlier holder; each ID lies inside a reservation its
   generator was given, at or below the durable fence when it was minted, and at most ``max_lead_ms`` ahead of the
   clock;
3. every ID traces (``Lease.trace``) to the holder that minted it.

A refusal (:class:`~idgen.errors.Unavailable`, or :class:`~idgen.errors.LeaseUnavailable` at start) is an
allowed outcome of any rule: it means "not now", never a wrong ID.

A fork copies a whole process, so it gets its own property test with real ``fork()`` calls below.

CI runs a fixed budget (100 examples on local leases, 5 each on ZooKeeper and etcd), derandomized: the same examples
every run. To explore others, pass a seed: ``pytest tests/test_model.py --hypothesis-seed=N``;
``IDGEN_MODEL_EXAMPLES=3000`` runs a longer hunt (a twentieth of it on ZooKeeper and etcd). A failure prints the seed in
use, the shrunk steps, and a ``@reproduce_failure`` blob that replays them exactly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from forks import FORKS, Child
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from lease_backends import Backend, EtcdBackend, LocalBackend, ZooKeeperBackend, observe
from polling import eventually

from idgen import DEFAULT_LAYOUT, Generator, Layout, switching
from idgen.clock import ManualClock
from idgen.errors import FenceReached, LeaseUnavailable, Unavailable
from idgen.leases.base import Lease, LeaseState, Reservation
from idgen.leases.local import LocalLease

# 16 IDs per 1 ms tick, so batches overflow into the next tick; 4 worker IDs for up to 5 generators, so they are
# reused all the time, yet one is often free for a switch. (With 2 worker IDs and 3 generators, the CI budget saw 4
# switches and 368 reuses; with these, 75 and 548.)
LAYOUT = Layout("model", (("time", 57), ("worker_id", 2), ("sequence", 4)), epoch_ms=DEFAULT_LAYOUT.epoch_ms)
WORKER_IDS = range(LAYOUT.worker_capacity)
WINDOW_MS = 10_000  # large next to most clock steps, so most steps stay inside a window
START_MS = 1_800_000_000_000
MAX_LIVE = 5  # one more than the worker IDs: the space runs out
JUNK = (b"", b"\x00\xff", b'{"fence_ms": 17', b'{"fence_ms": "x"}', b"[]", b'{"fence_ms": -5}', b'{"fence_ms": 1e40}')
EXAMPLES = int(os.environ.get("IDGEN_MODEL_EXAMPLES", "100"))
ZK_EXAMPLES = max(EXAMPLES // 20, 1)  # a ZooKeeper (or etcd) lease costs a connection and round trips


@dataclass
class Slot:
    """One running generator, as a process would hold it, and what its lease published."""

    name: str
    gen: Generator
    published: list[Reservation | None]
    ids: list[int] = field(default_factory=list)
    switches: int = 0  # the generator's worker-ID switches when its last IDs were recorded

    @property
    def lease(self) -> Lease:
        return self.gen.lease


def stamp(id_: int) -> int:
    return LAYOUT.decode(id_)["timestamp_ms"]


def worker(id_: int) -> int:
    return LAYOUT.split(id_)["worker"]


class LeaseModel(RuleBasedStateMachine):
    """The machine; a subclass provides the backend (one fresh worker-ID space per example)."""

    def make_backend(self) -> Backend:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.backend = self.make_backend()
        self.clock = ManualClock(START_MS)
        self.log: list[Reservation | None] = []  # every publication of every lease: the order of acquisitions
        self.live: list[Slot] = []
        self.made = 0
        self.issued: dict[int, str] = {}  # every ID ever returned -> the lease ID it was minted under
        self.by_holder: dict[str, list[int]] = {}
        self.tampered: set[int] = set()  # worker IDs whose history an outsider destroyed: not traceable
        self.fresh: list[int] = []  # IDs minted by the last step
        self.reader = self.backend.lease(LAYOUT, clock=self.clock)  # never started: reads histories for trace()

    # -- helpers ----------------------------------------------------------------------------------

    def slot(self, index: int) -> Slot:
        return self.live[index % len(self.live)]

    def record(self, slot: Slot, ids: list[int]) -> None:
        """Check and keep IDs just returned by ``slot``'s generator."""
        switched = slot.gen.worker_switches != slot.switches  # a switch may start lower: only its own IDs increase
        previous = slot.ids[-1] if slot.ids and not switched else -1
        slot.switches = slot.gen.worker_switches
        assert ids == sorted(set(ids)) and ids[0] > previous, f"{slot.name} went backwards: {previous} then {ids}"
        lead = stamp(ids[-1]) - self.clock.now_ms()
        assert lead <= slot.gen.max_lead_ms, f"{slot.name} minted {lead} ms ahead of the clock"
        for id_ in ids:
            lease_id = self.holder_of(slot, id_)
            assert id_ not in self.issued, f"{id_} issued twice: under {self.issued[id_]} and {lease_id}"
            self.issued[id_] = lease_id
            self.by_holder.setdefault(lease_id, []).append(id_)
        slot.ids += ids
        self.fresh += ids
        self.check_durable_fence(ids[-1])

    def holder_of(self, slot: Slot, id_: int) -> str:
        """The reservation ``slot`` was given that covers ``id_``: the latest on its worker ID with ``after_ms``
        below its stamp; the stamp must also be at or below the highest fence of that reservation."""
        w, t = worker(id_), stamp(id_)
        given = [r for r in slot.published if r is not None]
        for reservation in reversed(given):
            if reservation.worker_id == w and reservation.after_ms < t:
                fence = max(r.fence_ms for r in given if r.lease_id == reservation.lease_id)
                assert t <= fence, f"{slot.name} minted {id_} stamped {t}, above its fence {fence}"
                return reservation.lease_id
        raise AssertionError(f"{slot.name} minted {id_} (worker {w}, stamp {t}) outside every reservation it had")

    def check_durable_fence(self, id_: int) -> None:
        w = worker(id_)
        if w in self.tampered:
            return
        fence = self.backend.fence(LAYOUT, w)
        assert fence is not None and stamp(id_) <= fence, f"{id_} minted above the durable fence {fence} of worker {w}"

    def mint(self, slot: Slot, how: Callable[[Generator], list[int]]) -> None:
        try:
            ids = how(slot.gen)
        except FenceReached:  # the generator woke its renewal thread: let the extension land before the next step
            eventually(
                lambda: (held := slot.lease.status().reservation) is None or held.fence_ms >= self.clock.now_ms(),
                0.5,
                0.002,
            )
            return
        except Unavailable:
            return  # refused: allowed, it mints nothing
        self.record(slot, ids)

    # -- rules ------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.live) < MAX_LIVE)
    @rule(max_lead_ms=st.sampled_from([15_000, 50, 0]))
    def start(self, max_lead_ms: int) -> None:
        """A process starts (or restarts) and leases a worker ID in the shared space."""
        self.made += 1
        lease = self.backend.lease(LAYOUT, clock=self.clock, window_ms=WINDOW_MS, history_size=1_000)
        published = observe(lease, self.log)
        try:
            gen = Generator(LAYOUT, lease, clock=self.clock, max_lead_ms=max_lead_ms)
        except LeaseUnavailable:
            return  # every worker ID held (or unusable): refused
        self.live.append(Slot(f"g{self.made}", gen, published))

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, MAX_LIVE))
    def mint_one(self, index: int) -> None:
        self.mint(self.slot(index), lambda gen: [gen.next_id()])

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, MAX_LIVE), count=st.integers(1, 40))
    def mint_many(self, index: int, count: int) -> None:
        self.mint(self.slot(index), lambda gen: gen.next_ids(count))

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, MAX_LIVE))
    def close(self, index: int) -> None:
        slot = self.slot(index)
        self.live.remove(slot)
        slot.gen.close()

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, MAX_LIVE))
    def crash(self, index: int) -> None:
        """kill -9: the process stops where it is, its renewal thread too, and the backend frees its claim as the
        OS (local) or the session timeout (ZooKeeper) would."""
        slot = self.slot(index)
        self.live.remove(slot)
        self.backend.crash(slot.lease)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, MAX_LIVE))
    def lose_claim(self, index: int) -> None:
        """The claim goes away under a live holder: lock file removed (local), session expired (ZooKeeper)."""
        self.backend.lose_claim(self.slot(index).lease)

    @precondition(lambda self: self.live)  # not on lease states: the renewal threads change them in the background
    @rule()
    def regain(self) -> None:
        """Let leases that lost their claim try to acquire afresh now, as their renewal threads do by themselves, and
        let switches of worker IDs under way finish."""
        waiting = [s.lease for s in self.live if s.lease.status().state in (LeaseState.LOST, LeaseState.ACQUIRING)]
        for lease in waiting:
            lease.renew_soon()
        eventually(
            lambda: (
                all(lease.status().state is LeaseState.HELD for lease in waiting)
                and all(s.gen._switching.thread is None for s in self.live)
            ),
            timeout=0.2,
            interval=0.002,
        )

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, MAX_LIVE))
    def extend(self, index: int) -> None:
        """Move the clock past this lease's renewal point, then let its renewal thread extend the fence."""
        lease = self.slot(index).lease
        held = lease.status().reservation
        if held is None:
            return
        lag = held.fence_ms - WINDOW_MS + 1 - self.clock.now_ms()
        if lag > 0:
            self.clock.advance(lag)
        lease.renew_soon()

        def extended() -> bool:
            now = lease.status().reservation
            return now is None or now.fence_ms >= self.clock.now_ms() + WINDOW_MS

        eventually(
            extended, timeout=0.5, interval=0.002
        )  # an extension that fails is a refusal to come, not a wrong ID

    @rule(ms=st.one_of(st.integers(-20, 20), st.integers(-15_000, 15_000), st.sampled_from([-3_600_000, 3_600_000])))
    def step_clock(self, ms: int) -> None:
        """An NTP step or an operator's ``date -s``, either way; an hour: a clock that visits the future."""
        self.clock.advance(ms)

    @precondition(lambda self: self.live)
    @rule(
        index=st.integers(0, MAX_LIVE), ms=st.one_of(st.integers(1, 100), st.integers(100, 20_000), st.just(3_600_000))
    )
    def step_back_then_mint(self, index: int, ms: int) -> None:
        """The clock steps back under a generator that mints at once: a ride, or beyond its ``max_lead_ms`` a
        refusal that starts a switch of worker IDs."""
        self.clock.advance(-ms)
        self.mint(self.slot(index), lambda gen: gen.next_ids(20))

    @precondition(lambda self: any(s.gen.max_lead_ms for s in self.live))
    @rule(index=st.integers(0, MAX_LIVE), beyond_ms=st.integers(1, 1_000), back_ms=st.integers(0, 2_000))
    def batches_race_a_switch(self, index: int, beyond_ms: int, back_ms: int) -> None:
        """The clock steps back beyond a generator's ``max_lead_ms``: a refusal starts a switch of worker IDs on a
        thread of its own. While it claims, another thread mints batches and the clock comes back by ``back_ms``,
        within ``max_lead_ms`` again if that is more than ``beyond_ms``. The switch may land inside a batch, or find
        that it is no longer needed; either way every batch strictly increases (``record``)."""
        slot = next(s for s in self.live[index % len(self.live) :] + self.live if s.gen.max_lead_ms)
        self.clock.advance(-(slot.gen.max_lead_ms + beyond_ms))
        self.mint(slot, lambda gen: gen.next_ids(20))  # refused: starts the switch
        failures: list[BaseException] = []

        def race() -> None:
            try:
                for _ in range(8):
                    self.mint(slot, lambda gen: gen.next_ids(40))
            except BaseException as exc:  # an assertion of record(): fail the step in the main thread
                failures.append(exc)

        racer = threading.Thread(target=race)
        racer.start()
        for _ in range(4):
            self.clock.advance(back_ms / 4)
        racer.join(10)
        eventually(lambda: slot.gen._switching.thread is None, timeout=0.5, interval=0.002)
        if failures:
            raise failures[0]

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, MAX_LIVE))
    def visit_the_future(self, index: int) -> None:
        """The clock jumps an hour ahead, a generator's fence is extended there and it mints, and the clock comes
        back: its worker ID is fenced an hour ahead of the clock. Beyond its ``max_lead_ms`` it refuses and switches
        to a worker ID whose fence is below the clock, if one is free."""
        slot = self.slot(index)
        self.clock.advance(3_600_000)
        self.extend(index)
        self.mint(slot, lambda gen: gen.next_ids(5))
        self.clock.advance(-3_600_000)
        self.mint(slot, lambda gen: gen.next_ids(5))
        eventually(lambda: slot.gen._switching.thread is None, timeout=0.5, interval=0.002)
        self.mint(slot, lambda gen: gen.next_ids(5))

    @rule(ms=st.integers(1, 5))
    def tick(self, ms: int) -> None:
        """Time passes a little."""
        self.clock.advance(ms)

    @rule(worker_id=st.sampled_from(WORKER_IDS), junk=st.sampled_from(JUNK))
    def tamper(self, worker_id: int, junk: bytes) -> None:
        """Junk replaces a worker ID's fence record: a torn copy, a bad restore, a hand edit."""
        self.tampered.add(worker_id)
        self.backend.tamper(LAYOUT, worker_id, junk)

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def later_holders_of_a_worker_id_mint_above_earlier_ones(self) -> None:
        seen: set[str] = set()
        highest: dict[int, tuple[int, str]] = {}  # worker ID -> the highest ID of its holders so far, and whose
        for reservation in list(self.log):  # acquisition order
            if reservation is None or reservation.lease_id in seen:
                continue
            seen.add(reservation.lease_id)
            ids = self.by_holder.get(reservation.lease_id)
            if not ids:
                continue
            w = reservation.worker_id
            if w in highest:
                top, earlier = highest[w]
                assert min(ids) > top, (
                    f"worker {w}: holder {reservation.lease_id} minted {min(ids)}, not above {top} of {earlier}"
                )
            highest[w] = (max(ids), reservation.lease_id)

    @invariant()
    def every_id_traces_to_the_holder_that_minted_it(self) -> None:
        sample = set(self.fresh)
        for ids in self.by_holder.values():
            sample |= {min(ids), max(ids)}
        self.fresh = []
        for id_ in sorted(sample):
            w = worker(id_)
            if w in self.tampered:
                continue
            traced = self.reader.trace(w, stamp(id_)).holder
            assert traced is not None and traced.lease_id == self.issued[id_], (
                f"{id_} (worker {w}, stamp {stamp(id_)}) was minted by {self.issued[id_]}"
                f" but traces to {traced.lease_id if traced else None}"
            )

    def teardown(self) -> None:
        for slot in self.live:
            with contextlib.suppress(Exception):
                slot.gen.close()
        self.reader.close()
        self.backend.close()


def model_settings(request: pytest.FixtureRequest, **budget: Any) -> settings:
    """Derandomized unless ``--hypothesis-seed`` is given; prints what to rerun with."""
    seed = request.config.getoption("hypothesis_seed", None)
    print(f"hypothesis seed: {seed}" if seed is not None else "derandomized; explore with --hypothesis-seed=N")
    return settings(
        deadline=None,
        derandomize=seed is None,
        print_blob=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # explain: slow on threads
        **budget,
    )


def run_model(request: pytest.FixtureRequest, backend: Callable[[], Backend], examples: int, steps: int) -> None:
    class Model(LeaseModel):
        def make_backend(self) -> Backend:
            return backend()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            switching, "SWITCH_RETRY_S", 0.0
        )  # the model's steps take microseconds, not the seconds it spaces
        run_state_machine_as_test(
            Model, settings=model_settings(request, max_examples=examples, stateful_step_count=steps)
        )


@pytest.mark.timeout(600)  # a passing run takes well under a minute; shrinking a failure may take longer
def test_model_of_one_worker_id_space_on_local_leases(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run_model(request, lambda: LocalBackend(Path(tempfile.mkdtemp(dir=tmp_path))), EXAMPLES, 60)


@pytest.mark.timeout(600)
def test_model_of_one_worker_id_space_on_zookeeper_leases(
    request: pytest.FixtureRequest, zk_hosts: str, zk_namespace: str
) -> None:
    run_model(request, lambda: ZooKeeperBackend(zk_hosts, f"{zk_namespace}/{uuid.uuid4().hex}"), ZK_EXAMPLES, 30)


@pytest.mark.timeout(600)
def test_model_of_one_worker_id_space_on_etcd_leases(
    request: pytest.FixtureRequest, etcd_endpoints: str, etcd_namespace: str
) -> None:
    run_model(request, lambda: EtcdBackend(etcd_endpoints, f"{etcd_namespace}/{uuid.uuid4().hex}"), ZK_EXAMPLES, 30)


# -- fork: a copied process ----------------------------------------------------------------------------


def _mint_steps(gen: Generator, clock: ManualClock, steps: list[tuple[int, int]]) -> list[int]:
    """For each (count, ms): mint ``count`` IDs (refusals allowed), then advance the clock ``ms``."""
    out: list[int] = []
    for count, ms in steps:
        with contextlib.suppress(Unavailable):
            out += gen.next_ids(count)
        clock.advance(ms)
    return out


STEPS = st.lists(st.tuples(st.integers(1, 40), st.integers(0, 3)), min_size=1, max_size=6)


@pytest.mark.parametrize("fork", FORKS.values(), ids=FORKS.keys())
def test_model_of_a_fork(request: pytest.FixtureRequest, fork: Callable[[], int]) -> None:
    """Mint, fork (a real one), mint in both: the two never share an ID and each traces to its own holder."""

    @given(before=STEPS, parent=STEPS, child=STEPS)
    @model_settings(request, max_examples=8)
    def run(before: list[tuple[int, int]], parent: list[tuple[int, int]], child: list[tuple[int, int]]) -> None:
        state = Path(tempfile.mkdtemp(prefix="idgen-fork-"))
        clock = ManualClock(START_MS)
        try:
            lease = LocalLease(LAYOUT, state, WORKER_IDS, clock=clock, window_ms=WINDOW_MS)
            with Generator(LAYOUT, lease, clock=clock) as gen:
                earlier = _mint_steps(gen, clock, before)
                forked = Child(fork, lambda report: report([os.getpid(), _mint_steps(gen, clock, child)]))
                try:
                    mine = _mint_steps(gen, clock, parent)
                    child_pid, theirs = forked.next()
                finally:
                    forked.close()
            shared = set(theirs) & set(earlier + mine)
            assert not shared, f"parent and child both minted {len(shared)} IDs, such as {min(shared)}"
            for pid, ids in ((os.getpid(), earlier + mine), (child_pid, theirs)):
                for id_ in ids:
                    traced = lease.trace(worker(id_), stamp(id_)).holder
                    assert traced is not None and traced.pid == pid, f"{id_} minted by pid {pid} traces to {traced}"
        finally:
            shutil.rmtree(state, ignore_errors=True)

    run()
