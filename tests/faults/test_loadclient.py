"""The verdict itself can fail: the checker finds duplicates, disorder, 503s without Retry-After and errors a
scenario does not allow, and measures recovery to steady 200s. Records are built by hand; nothing runs."""

from __future__ import annotations

from loadclient import Record, check, recovery_time, render

from idgen import DEFAULT_LAYOUT


def _id(tick: int, worker: int, sequence: int = 0) -> int:
    return DEFAULT_LAYOUT.compose(tick, worker, sequence)


def _ok(at: float, *ids: int, thread: int = 0, server: str = "a") -> Record:
    return Record(at, at + 0.001, thread, server, 200, "", None, ids)


def _error(at: float, status: int = 503, code: str = "fence_reached", retry_after: str | None = "1") -> Record:
    return Record(at, at + 0.001, 0, "a", status, code, retry_after, ())


def test_a_clean_run_has_no_problems() -> None:
    records = [_ok(1, _id(10, 1)), _ok(2, _id(11, 1), _id(11, 1, 1)), _ok(3, _id(5, 2))]
    report = check(records, "clean")
    assert (report.ids, report.duplicates, report.out_of_order, report.problems()) == (4, 0, 0, [])


def test_duplicates_and_disorder_within_a_worker_and_thread_are_found() -> None:
    records = [_ok(1, _id(10, 1)), _ok(2, _id(10, 1)), _ok(3, _id(9, 1)), _ok(4, _id(1, 2))]
    report = check(records, "broken")
    assert (report.duplicates, report.out_of_order) == (1, 2)
    assert len(report.problems()) == 2


def test_order_is_per_thread_and_per_worker() -> None:
    records = [_ok(1, _id(10, 1), thread=0), _ok(2, _id(9, 1), thread=1), _ok(3, _id(8, 2), thread=0)]
    assert check(records, "interleaved").out_of_order == 0


def test_errors_must_be_allowed_and_503s_must_carry_retry_after() -> None:
    records = [_ok(1, _id(10, 1)), _error(2), _error(3, retry_after=None), _error(4, 500, "internal_error")]
    report = check(records, "errors", allow=lambda r: r.status == 503)
    assert report.without_retry_after == 1
    assert [r.status for r in report.unexpected] == [500]
    assert report.errors == {"503 fence_reached": 2, "500 internal_error": 1}
    assert check(records[:2], "allowed", allow=lambda r: r.status == 503).problems() == []
    assert check(records[:2], "not allowed").problems()


def test_recovery_is_the_first_200_after_the_last_error() -> None:
    records = [_ok(1, _id(1, 1)), _error(2), _ok(3, _id(3, 1)), _error(4), _ok(5, _id(5, 1)), _ok(6, _id(6, 1))]
    assert recovery_time(records, since=1.5) == 5.001 - 1.5
    assert recovery_time(records[:4], since=1.5) is None  # still failing at the end
    assert recovery_time(records, since=5.5) == 6.001 - 5.5
    assert recovery_time(records, since=1.5, servers=["b"]) is None


def test_the_table_has_one_row_per_report() -> None:
    table = render([check([_ok(1, _id(1, 1))], "one"), check([_ok(1, _id(1, 1)), _error(2)], "two")])
    rows = table.splitlines()
    assert rows[2].startswith("| one | 1 | 0 | 0 | none | no outage |")
    assert rows[3].startswith("| two | 1 | 0 | 0 | 503 fence_reached: 1 | - |")
