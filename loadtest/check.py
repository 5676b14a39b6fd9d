"""Verdict on a load test: reads the ``ids-*.jsonl`` files the locustfile wrote and reports, in one table,
total IDs, duplicates (must be 0), IDs out of order within one worker ID, responses by status, p50/p99.

Order: each locust user sends its requests one after another to one server, so the IDs one user receives
from one worker ID must be strictly increasing. Exit code 1 on any duplicate or order violation.

    python loadtest/check.py loadtest/results [--layout idgen]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from idgen import get_layout


def summarize(results: Path, layout_name: str = "idgen") -> dict[str, Any]:
    layout = get_layout(layout_name)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    seen: set[int] = set()
    duplicates = 0
    out_of_order = 0
    last: dict[tuple[str, int], int] = {}
    total = 0
    for path in sorted(results.glob("ids-*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            statuses[record["status"]] += 1
            latencies.append(record["ms"])
            for text in record["ids"]:
                id_ = int(text)
                total += 1
                if id_ in seen:
                    duplicates += 1
                seen.add(id_)
                key = (record["user"], layout.split(id_)["worker"])
                if key in last and id_ <= last[key]:
                    out_of_order += 1
                last[key] = id_
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return {
        "ids": total,
        "distinct": len(seen),
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "responses": sum(statuses.values()),
        "by_status": dict(sorted(statuses.items())),
        "p50_ms": round(quantiles[49], 2),
        "p99_ms": round(quantiles[98], 2),
    }


def render(summary: dict[str, Any]) -> str:
    rows = [
        ("IDs received", f"{summary['ids']:,}"),
        ("duplicates", str(summary["duplicates"])),
        ("out of order within a worker ID", str(summary["out_of_order"])),
        ("responses", f"{summary['responses']:,}"),
        ("by status", ", ".join(f"{s}: {n:,}" for s, n in summary["by_status"].items()) or "-"),
        ("latency p50 / p99 (client side, locust)", f"{summary['p50_ms']} ms / {summary['p99_ms']} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="directory with ids-*.jsonl files")
    parser.add_argument("--layout", default="idgen")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    summary = summarize(args.results, args.layout)
    print(json.dumps(summary) if args.json else render(summary))
    return 1 if summary["duplicates"] or summary["out_of_order"] or not summary["ids"] else 0


if __name__ == "__main__":
    sys.exit(main())
