"""Benchmark of the audit archive (issue 5): appends, checkpoints and ``verify`` on a large event log.

Target: ``mssecure archive verify`` checks at least 200,000 events per second; appending an event costs the SMTP path
little (one short transaction).

    .venv/bin/python bench/bench_archive.py [--events 1000000] [--runs 3] [--out bench/results/archive.json]

For each database (SQLite always; PostgreSQL when its server binaries are installed, in a throwaway cluster), in a
fresh schema:

* fill: ``Archive.append_many`` in batches of ``--batch`` events (realistic events: addresses, Message-ID, hashes),
  events per second;
* append: ``Archive.append`` of single events, one transaction each (what the relay does per decision): the latency
  of each, median and 99th percentile, and the rate;
* checkpoint: ``Archive.checkpoint()`` (reads the chain head and its Merkle frontier, signs): its latency;
* verify: ``verify_archive`` over everything, ``--runs`` times: wall time and events per second. Each report must be
  clean and cover every event, so that a broken verification cannot pass for a fast one.

Results are printed as a table and written as JSON with the machine, its load and the software versions. On a shared
machine compare runs made at the same time; the load average is recorded with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.support.postgres, when run as ``python bench/bench_archive.py``

from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402

from mssecure.archive import Archive, verify_archive  # noqa: E402
from mssecure.db import make_engine, upgrade_schema  # noqa: E402
from mssecure.smtp.events import Event  # noqa: E402
from tests.support.postgres import find_server_binaries, postgres_cluster  # noqa: E402

TARGET_EVENTS_PER_SECOND = 200_000
START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
TYPES = ("submission.accepted", "signed", "encrypted", "relayed", "delivered", "mdn.received")


def event(i: int) -> Event:
    """A realistic event: what the relay archives for a prescription on its way."""
    return Event(
        TYPES[i % len(TYPES)],
        "ok",
        actor=f"dr.{i % 5000:04d}@chu-nord.mssante.test",
        peer=f"10.0.{i % 256}.{i % 250 + 1}",
        queue_id=f"{i:016X}",
        message_id=f"<{i:x}.{i * 7919 % 1000003:x}@chu-nord.mssante.test>",
        sha256=f"{i * 2654435761 % 2**256:064x}",
        sender=f"dr.{i % 5000:04d}@chu-nord.mssante.test",
        recipients=(f"pharmacie.{i % 900:03d}@officine.mssante.test",),
        reply="250 2.0.0 Ok: queued",
        time=START + timedelta(milliseconds=i * 37),
    )


def load() -> float:
    return os.getloadavg()[0]


def measure(url: str, events: int, batch: int, singles: int, runs: int) -> dict[str, Any]:
    engine = make_engine(url)
    upgrade_schema(engine)
    key = ed25519.Ed25519PrivateKey.generate()
    archive = Archive(engine, key=key, origin="chu-nord.mssante.test")
    result: dict[str, Any] = {"events": events}

    started, load_before = time.perf_counter(), load()
    for first in range(0, events - singles, batch):
        archive.append_many(event(i) for i in range(first, min(events - singles, first + batch)))
    seconds = time.perf_counter() - started
    filled = events - singles
    result["fill"] = {"events": filled, "batch": batch, "seconds": round(seconds, 3),
                      "events_per_second": round(filled / seconds), "load": [load_before, load()]}  # fmt: skip

    latencies = []
    for i in range(events - singles, events):
        t = time.perf_counter()
        archive.append(event(i))
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    result["append"] = {
        "events": singles,
        "median_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
        "events_per_second": round(singles / sum(latencies)),
    }

    t = time.perf_counter()
    checkpoint = archive.checkpoint()
    result["checkpoint"] = {"ms": round((time.perf_counter() - t) * 1000, 3), "sequence": checkpoint.sequence}

    verifications = []
    for _ in range(runs):
        load_before = load()
        report = verify_archive(engine, key.public_key())
        if not report.ok or report.events != events or report.checkpoints_matched != 1:
            raise SystemExit(f"verification is wrong: {report.to_json()}")
        verifications.append({"seconds": round(report.seconds, 3), "events_per_second": round(events / report.seconds),
                              "load": [load_before, load()]})  # fmt: skip
    rates = [v["events_per_second"] for v in verifications]
    result["verify"] = {"runs": verifications, "median_events_per_second": round(statistics.median(rates)),
                        "best_events_per_second": max(rates)}  # fmt: skip
    engine.dispose()
    return result


@contextmanager
def databases(no_postgres: bool) -> Iterator[list[tuple[str, str]]]:
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-archive-")))
        found = [("sqlite", f"sqlite:///{root / 'archive.db'}")]
        bindir = None if no_postgres else find_server_binaries()
        if bindir is not None:
            cluster = stack.enter_context(postgres_cluster(bindir))
            found.append(("postgresql", stack.enter_context(cluster.database())))
        yield found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="events per append_many while filling")
    parser.add_argument("--singles", type=int, default=2000, help="events appended one by one (latency)")
    parser.add_argument("--runs", type=int, default=3, help="verifications per database")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "archive.json")
    args = parser.parse_args()

    results: dict[str, Any] = {
        "benchmark": "archive",
        "target_verify_events_per_second": TARGET_EVENTS_PER_SECOND,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "sqlalchemy": version("sqlalchemy"),
            "psycopg": version("psycopg"),
            "load_at_start": os.getloadavg(),
        },
        "databases": {},
    }
    with databases(args.no_postgres) as found:
        for name, url in found:
            print(f"{name}: {args.events:,} events…", file=sys.stderr, flush=True)
            results["databases"][name] = measure(url, args.events, args.batch, args.singles, args.runs)

    print(f"{'database':<11} {'fill ev/s':>10} {'append ms (p50/p99)':>20} {'checkpoint ms':>14} "
          f"{'verify ev/s (median, best)':>28}")  # fmt: skip
    for name, r in results["databases"].items():
        print(f"{name:<11} {r['fill']['events_per_second']:>10,} "
              f"{r['append']['median_ms']:>10.2f}/{r['append']['p99_ms']:<9.2f} {r['checkpoint']['ms']:>14.1f} "
              f"{r['verify']['median_events_per_second']:>18,}, {r['verify']['best_events_per_second']:,}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
