"""Operating idgen: the Prometheus alert rules and their promtool unit tests, the Grafana dashboard, the runbook, and
the metrics they rely on, checked against live ``idgen serve`` processes.

promtool comes from Debian's ``prometheus`` package (tests/run.sh installs it); no Prometheus server is started.
The namespace gauges come from :meth:`Lease.census`, checked here on every lease backend (real ZooKeeper included)
right after claims, releases, crashes and quarantine, and through live servers.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from holder import HolderProcess
from lease_backends import BACKENDS, ZK_AUTH, Backend, make_backend
from polling import poll
from prometheus_client.parser import text_string_to_metric_families
from serverproc import REPO
from serverproc import ServerProcess as Server
from zkharness import TEST_CREDENTIALS, ZkServer, four_letter_word

from idgen import DEFAULT_LAYOUT, Layout
from idgen.errors import LeaseUnavailable
from idgen.leases.base import Census, Lease
from idgen.leases.zookeeper import DEFAULT_CONNECT_TIMEOUT_S, ZkLease, connect

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "idgen.json"
RUNBOOK = REPO / "docs" / "RUNBOOK.md"
TINY = Layout("tiny", (("time", 41), ("worker_id", 2), ("sequence", 20)), epoch_ms=DEFAULT_LAYOUT.epoch_ms)
GARBAGE = b"\x00not json"
# promtool's linter takes "bits" in this name for the unit on about half of its runs (it tries units in a Go map's
# random order) and asks for bytes; the value is in seconds and the name is the one the issue asked for.
FALSE_LINT = 'idgen_time_bits_remaining_seconds use base unit "bytes" instead of "bits"'
# The live servers here count their namespace again every second (--census-interval) when scraped, instead of every
# CENSUS_INTERVAL_S: a change by another process shows within that, plus slack.
CENSUS_INTERVAL_S = 1
CENSUS_INTERVAL = ("--census-interval", str(CENSUS_INTERVAL_S))
CENSUS_WAIT_S = CENSUS_INTERVAL_S + 10
ZK_CALL_BOUND_S = DEFAULT_CONNECT_TIMEOUT_S  # the most a census waits on a frozen ZooKeeper


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: install Debian's prometheus package (tests/run.sh does)"
    return subprocess.run(
        [binary, *args], input=stdin.decode() if stdin else None, capture_output=True, text=True, timeout=60
    )


# -- the rules, their tests, the runbook ----------------------------------------------------------------------


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.mark.prometheus
def test_the_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_fired_and_resolved_by_its_unit_tests() -> None:
    """Each alert has an evaluation where it fires and a later one where it has resolved."""
    evaluations: dict[str, list[tuple[int, bool]]] = {}
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            minutes = int(check["eval_time"].removesuffix("m"))
            evaluations.setdefault(check["alertname"], []).append((minutes, bool(check["exp_alerts"])))
    for rule in alerts():
        seen = sorted(evaluations.get(rule["alert"], []))
        fired = [t for t, firing in seen if firing]
        assert fired, f"{rule['alert']} is never fired by {RULE_TESTS.name}"
        assert any(t > fired[0] and not firing for t, firing in seen), f"{rule['alert']} is never resolved"


def runbook_anchors() -> set[str]:
    """The anchors GitHub gives the runbook's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_has_a_severity_and_a_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/RUNBOOK.md" and anchor in anchors, (rule["alert"], sorted(anchors))
    linked = {"README.md": REPO / "README.md", "DEPLOY.md": REPO / "docs" / "DEPLOY.md"}
    for name, path in linked.items():
        assert "RUNBOOK.md" in path.read_text(), f"{name} does not link the runbook"


# -- metric names: the rules and the dashboard against a live server ------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values(expr, label)`` query) reads."""
    expr = re.sub(r"label_values\((.*),\s*\w+\s*\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings, e.g. in label matchers
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges ($__rate_interval)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][\w:]*", expr):
        following = expr[match.end() :].lstrip()
        if match.group() not in PROMQL_WORDS and not following.startswith("("):  # not a function
            names.add(match.group())
    return names


def test_metric_names_are_read_from_expressions() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(idgen_x_bucket{route="/id", a=~"b|c"}[$__rate_interval])))'
        " / ignoring (state) idgen_y > 1e3 and on (job) max without (pid) (idgen_z) offset 5m"
    ) == {"idgen_x_bucket", "idgen_y", "idgen_z"}
    assert metric_names('label_values(idgen_ready{job="$job"}, instance)') == {"idgen_ready"}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    queries = [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs + [q if isinstance(q, str) else q["query"] for q in queries]


def exported(text: str) -> tuple[set[str], set[str]]:
    """The sample names a ``/metrics`` text may carry (from its families and their types), and those it does."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    may, does = set(), set()
    for family in text_string_to_metric_families(text):
        may |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        does |= {sample.name for sample in family.samples}
    return may | does, does


def samples(server: Server, name: str) -> list[float]:
    """The values of the samples called ``name`` in ``server``'s ``/metrics``."""
    text = server.get("/metrics").body.decode()
    return [s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def census_of(server: Server) -> dict[str, float]:
    """The namespace gauges of ``server``'s ``/metrics`` ({} before its first census)."""
    return census_in(server.get("/metrics").body.decode())


def counts_every_process(server: Server, processes: int) -> None:
    """Wait until every process of ``server`` shows a census that counts them all. Each process shows its own last
    census and a scrape reaches either, so one scrape proves it of one process: wait for 12 in a row (a process whose
    census is stale takes a new one when it is scraped)."""
    in_a_row = 0

    def agreed() -> bool:
        nonlocal in_a_row
        in_a_row = in_a_row + 1 if census_of(server).get("held") == processes else 0
        return in_a_row >= 12

    poll(agreed, "the census of every process to count them all", CENSUS_WAIT_S)


def census_in(text: str) -> dict[str, float]:
    """The namespace gauges in a ``/metrics`` text."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "idgen_namespace_worker_ids":
                values[sample.labels["state"]] = sample.value
            elif sample.name == "idgen_namespace_worker_id_capacity":
                values["capacity"] = sample.value
    return values


@contextlib.contextmanager
def serving(state_dir: Path, processes: int) -> Iterator[Server]:
    """A live server on worker IDs 0-3 with ``processes`` processes, once its census counts all of them."""
    with Server(
        "--state-dir", str(state_dir), "--worker-ids", "0-3", "--processes", str(processes), *CENSUS_INTERVAL
    ) as server:
        counts_every_process(server, processes)
        yield server


@pytest.mark.prometheus
@pytest.mark.parametrize("processes", [1, 2])
def test_promtool_accepts_a_live_servers_metrics(processes: int, tmp_path: Path) -> None:
    with serving(tmp_path / "state", processes) as server:
        assert server.get("/id?count=3").status == 200
        assert server.get("/nowhere").status == 404
        body = server.get("/metrics").body
        assert census_of(server) == {"capacity": 4, "held": processes, "free": 4 - processes, "quarantined": 0}
    checked = promtool("check", "metrics", stdin=body)
    problems = [line for line in (checked.stdout + checked.stderr).splitlines() if line and line != FALSE_LINT]
    assert checked.returncode in (0, 3) and not problems, checked.stdout + checked.stderr  # 3: lint findings


def test_every_metric_the_rules_and_the_dashboard_read_is_one_a_server_exports(tmp_path: Path) -> None:
    """Names come from every expression, and from the runbook. A server with one process declares every family (a
    labelled one without samples too), so it is the reference; with two, every family with samples there is here."""
    used = {name for rule in alerts() for name in metric_names(rule["expr"])}
    used |= {name for expr in dashboard_expressions() for name in metric_names(expr)}
    used |= set(re.findall(r"`(idgen_\w+)", RUNBOOK.read_text()))  # what the runbook tells operators to look at
    assert {"idgen_namespace_worker_ids", "idgen_time_bits_remaining_seconds", "idgen_refusals_total"} <= used
    with serving(tmp_path / "one", 1) as single, serving(tmp_path / "two", 2) as double:
        for server in (single, double):
            assert server.get("/id").status == 200
        may, does = exported(single.get("/metrics").body.decode())
        assert used <= may, f"not exported: {sorted(used - may)}"

        def missing_with_two() -> list[str]:  # a process adds its request counts at its next flush (0.5 s)
            return sorted(used & does - exported(double.get("/metrics").body.decode())[1])

        poll(lambda: not missing_with_two(), "every family to be exported by two processes too")


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("ids/s", "refusals by reason", "latency", "lease state", "lead", "worker ids", "time bits"):
        assert topic in titles, f"no panel on {topic!r}: {titles}"
    assert all(panel.get("targets") for panel in dashboard["panels"] if panel["type"] != "row")


# -- the census: Lease.census on every backend ----------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = make_backend(request.param, tmp_path, request.getfixturevalue)
    yield made
    made.close()


@pytest.fixture
def leases() -> Iterator[list[Lease]]:
    made: list[Lease] = []
    yield made
    for lease in made:
        lease.close()


def started(leases: list[Lease], lease: Lease) -> Lease:
    leases.append(lease)
    lease.start(lambda _: None)
    return lease


def worker_of(lease: Lease) -> int:
    reservation = lease.status().reservation
    assert reservation is not None
    return reservation.worker_id


def test_the_census_follows_claims_releases_crashes_and_quarantine_at_once(
    backend: Backend, leases: list[Lease], spawn_holder: Callable[..., HolderProcess]
) -> None:
    first = started(leases, backend.lease(TINY))
    assert first.census() == Census(capacity=4, held=1, quarantined=0)
    second = started(leases, backend.lease(TINY))
    second_worker_id = worker_of(second)
    other = backend.holder(spawn_holder, TINY).ready()  # another process
    assert first.census() == second.census() == Census(4, 3, 0)
    assert first.census().free == 1
    second.close()
    assert first.census() == Census(4, 2, 0)  # released
    other.proc.kill()  # crashed: the claim goes with the process (local) or its session (ZooKeeper)
    poll(lambda: first.census() == Census(4, 1, 0), "the crashed holder's claim to go")
    # The one worker ID never held gets a garbage record: every free worker ID then has one, so the claim reads them
    # all, in whatever order it tries them (ZooKeeper's is random), and finds the garbage.
    never_held = sorted(set(range(4)) - {worker_of(first), second_worker_id, other.worker_id})
    backend.tamper(TINY, never_held[0], GARBAGE)
    third = started(leases, backend.lease(TINY))  # its claim finds the garbage record
    assert list(third.quarantined) == never_held
    assert third.census() == Census(4, held=2, quarantined=1)
    assert third.census().free == 1
    assert first.census() == Census(4, held=2, quarantined=0)  # quarantine is what a lease's own claims found
    third.close()
    assert first.census() == Census(4, held=1, quarantined=0)


def test_the_zookeeper_census_costs_one_request_however_many_workers_hold(zk_server: Any, zk_namespace: str) -> None:
    """1,020 claims held: the census still sends O(1) requests (it lists the claims, it reads none of them)."""
    lease = ZkLease(DEFAULT_LAYOUT, zk_server.hosts, zk_namespace, auth=ZK_AUTH, session_timeout_s=30)
    lease.start(lambda _: None)
    admin = connect(zk_server.hosts, ZK_AUTH)
    try:
        taken = [w for w in range(DEFAULT_LAYOUT.worker_capacity) if w != lease.status().reservation.worker_id]  # type: ignore[union-attr]
        pending = [admin.create_async(f"{zk_namespace}/leases/{w}", b"{}", ephemeral=True) for w in taken[:1020]]
        for request in pending:
            request.get(timeout=10)

        def received() -> int:
            reply = four_letter_word(zk_server.client_port, "srvr", timeout=5)
            assert reply is not None
            return int(re.search(r"^Received: (\d+)$", reply, re.MULTILINE).group(1))  # type: ignore[union-attr]

        before = received()
        census = lease.census()
        sent = received() - before
        assert census == Census(1024, held=1021, quarantined=0)
        assert sent <= 4, f"the census sent about {sent} requests"
    finally:
        admin.stop()
        admin.close()
        lease.close()


def test_the_census_of_a_zookeeper_lease_never_connects_by_itself(zk_hosts: str, zk_namespace: str) -> None:
    lease = ZkLease(TINY, zk_hosts, zk_namespace, auth=ZK_AUTH)
    with pytest.raises(LeaseUnavailable, match="not connected"):
        lease.census()
    assert lease._client is None


# -- the gauges of live servers ---------------------------------------------------------------------------------


def test_a_live_servers_namespace_gauges_follow_other_servers_and_quarantine_locally(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "worker-00003.json").write_bytes(GARBAGE)
    options = ("--state-dir", str(state), "--worker-ids", "0-3", *CENSUS_INTERVAL)
    with Server(*options) as first:
        expected = {"capacity": 4, "held": 1, "free": 2, "quarantined": 1}
        poll(lambda: census_of(first) == expected, f"{expected}", CENSUS_WAIT_S)
        with Server(*options) as second:
            expected = {"capacity": 4, "held": 2, "free": 1, "quarantined": 1}
            poll(lambda: census_of(first) == expected, f"{expected} after another server claimed", CENSUS_WAIT_S)
            second.stop()
        expected = {"capacity": 4, "held": 1, "free": 2, "quarantined": 1}
        poll(lambda: census_of(first) == expected, f"{expected} after it released", CENSUS_WAIT_S)
        (remaining,) = samples(first, "idgen_time_bits_remaining_seconds")
        assert abs(remaining - (DEFAULT_LAYOUT.expires_ms / 1000 - time.time())) < 60


def test_a_live_servers_namespace_gauges_on_zookeeper(zk_hosts: str, zk_namespace: str) -> None:
    admin = connect(zk_hosts, TEST_CREDENTIALS)  # the servers' credentials (tests/conftest.py)
    try:
        admin.create(f"{zk_namespace}/fences/3", GARBAGE, makepath=True)
        for used in (0, 1, 2):  # every worker ID used, so a claim reads the fences: it quarantines only what it reads
            admin.create(f"{zk_namespace}/fences/{used}", b'{"fence_ms": 1, "lease_id": "old"}')
    finally:
        admin.stop()
        admin.close()
    options = ("--zk", zk_hosts, "--namespace", zk_namespace, "--layout", TINY.spec_string(), *CENSUS_INTERVAL)
    with Server(*options) as first:
        expected = {"capacity": 4, "held": 1, "free": 2, "quarantined": 1}
        poll(lambda: census_of(first) == expected, f"{expected}", CENSUS_WAIT_S)
        with Server(*options) as second:
            expected = {"capacity": 4, "held": 2, "free": 1, "quarantined": 1}
            poll(lambda: census_of(first) == expected, f"{expected} after another server claimed", CENSUS_WAIT_S)
            second.stop()
        expected = {"capacity": 4, "held": 1, "free": 2, "quarantined": 1}
        poll(lambda: census_of(first) == expected, f"{expected} after it released", CENSUS_WAIT_S)


@pytest.mark.parametrize("processes", [1, 2])
def test_metrics_never_wait_on_a_frozen_zookeeper(fresh_zk: ZkServer, processes: int) -> None:
    """ZooKeeper frozen (SIGSTOP) while a census waits on it for its 5 s bound (the ZooKeeper call bound), on a thread
    of its own, and the next one begins; every ``/metrics`` meanwhile answers within half that, with the last census."""
    options = ("--zk", fresh_zk.hosts, "--namespace", "/frozen", "--layout", TINY.spec_string(), *CENSUS_INTERVAL)
    with Server(*options, "--processes", str(processes), "--zk-session-timeout", "30") as server:
        counts_every_process(server, processes)
        fresh_zk.pause()
        try:
            frozen_s = ZK_CALL_BOUND_S + 3  # a census waits out its bound on the frozen server, and the next begins
            frozen_until = time.monotonic() + frozen_s
            answers = 0
            while time.monotonic() < frozen_until:
                reply = server.get("/metrics", timeout=2.5)  # raises if it waits on the census
                assert reply.status == 200 and census_in(reply.body.decode())["held"] == processes
                answers += 1
                time.sleep(0.25)  # pacing the scrapes, not waiting for anything
        finally:
            fresh_zk.resume()
    assert answers >= 2 * frozen_s  # every scrape answered
