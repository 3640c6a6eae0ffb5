"""Benchmark of the audit archive (issues 5 and 7): ``verify`` on a large event log, and what archiving adds to the
SMTP path.

Targets: ``mssecure archive verify`` checks at least 200,000 events per second; archiving does not slow the SMTP path
noticeably.

    .venv/bin/python bench/bench_archive.py [--events 1000000] [--runs 3] [--out bench/results/archive.json]

For each database (SQLite always; PostgreSQL when its server binaries are installed, in a throwaway cluster), in a
fresh schema:

* fill: ``Archive.append_many`` in batches of ``--batch`` events (realistic events: addresses, Message-ID, hashes),
  events per second;
* append: ``Archive.append`` of single events, one transaction each: the latency of each, median and 99th percentile;
* checkpoint: ``Archive.checkpoint()`` (reads the chain head and its Merkle frontier, signs): its latency;
* verify: ``verify_archive`` over everything, side by side, ``--runs`` times each, in turns (which one goes first
  rotates): the *reference* (the single pass of commit ``--reference``, loaded from git), the new code in *one
  process* (``workers=0``) and with its *worker processes* (the default). Wall time, events per second, and the CPU
  seconds of this process and its workers (not PostgreSQL's server). Each report must be clean and cover every
  event, so that a broken verification cannot pass for a fast one;
* relay path: ``Queue.enqueue`` of one message, as the relay calls it after DATA (spool file written and fsynced,
  queue rows, the acceptance events made by an ``events`` factory), with the relay's ``Journal`` (see
  ``Relay.start``) in three variants measured in turns: *no archive* (the events only logged), *events* (appended
  to the archive in the queue's transaction) and *events + copy* (and the message sealed into the encrypted message
  store in that same transaction); for a 60 KB and a 2 MB message: median and 99th percentile latency, and their
  ratio to *no archive*;
* writer: the background ``ArchiveWriter`` (refusals, logins): events handed to it, until all are written.

Results are printed as a table and written as JSON with the machine, its load and the software versions. On a shared
machine compare the variants of one run (they are measured in turns, under the same load), not runs of other days.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.support.postgres, when run as ``python bench/bench_archive.py``

import sqlalchemy as sa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519  # noqa: E402

from mssecure.archive import Archive, MessageStore, VerifyReport, verify_archive  # noqa: E402
from mssecure.archive.writer import ArchiveWriter  # noqa: E402
from mssecure.db import make_engine, make_sessionmaker, upgrade_schema  # noqa: E402
from mssecure.smtp.events import Event, Journal  # noqa: E402
from mssecure.smtp.queue import Outgoing, Queue, Spool  # noqa: E402
from tests.support.postgres import find_server_binaries, postgres_cluster  # noqa: E402

TARGET_EVENTS_PER_SECOND = 200_000
REFERENCE = "263a006"  # the single-pass verify (before the worker processes)
START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
TYPES = ("submission.accepted", "signed", "encrypted", "relayed", "delivered", "mdn.received")
SIZES = {"60KB": 60 * 1024, "2MB": 2 * 1024 * 1024}
RELAY_VARIANTS = ("no archive", "events", "events + copy")


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


def cpu_seconds() -> float:
    """CPU time of this process and of its children reaped so far (the verification's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def reference_verify(revision: str) -> Callable[..., VerifyReport] | None:
    """``verify_archive`` as of ``revision`` (``git show``), for a side-by-side comparison; None without git."""
    try:
        source = subprocess.run(["git", "show", f"{revision}:mssecure/archive/verify.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"no reference verify ({revision}): {exc}", file=sys.stderr)
        return None
    spec = importlib.util.spec_from_loader("bench_verify_reference", loader=None)
    assert spec is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    exec(compile(source, f"{revision}:mssecure/archive/verify.py", "exec"), module.__dict__)  # noqa: S102
    verify: Callable[..., VerifyReport] = module.verify_archive
    return verify


# -- verify


def fill(archive: Archive, events: int, batch: int, singles: int) -> dict[str, Any]:
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
    result["append"] = {
        "events": singles,
        "median_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "events_per_second": round(singles / sum(latencies)),
    }
    t = time.perf_counter()
    checkpoint = archive.checkpoint()
    result["checkpoint"] = {"ms": round((time.perf_counter() - t) * 1000, 3), "sequence": checkpoint.sequence}
    return result


def measure_verify(
    engine: sa.Engine, key: ed25519.Ed25519PrivateKey, events: int, runs: int, reference: Callable[..., VerifyReport]
) -> dict[str, Any]:
    public = key.public_key()
    variants: dict[str, Callable[[], VerifyReport]] = {
        "one process": lambda: verify_archive(engine, public, workers=0),
        "workers": lambda: verify_archive(engine, public),
    }
    if reference is not None:
        variants = {"reference": lambda: reference(engine, public), **variants}
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    names = list(variants)
    for run in range(runs):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            load_before, cpu = load(), cpu_seconds()
            report = variants[name]()
            cpu = cpu_seconds() - cpu
            if not report.ok or report.events != events or report.checkpoints_matched != 1:
                raise SystemExit(f"verification ({name}) is wrong: {report.to_json()}")
            rate = round(events / report.seconds)
            samples[name].append({"seconds": round(report.seconds, 3), "events_per_second": rate,
                                  "cpu_seconds": round(cpu, 3), "load": [load_before, load()]})  # fmt: skip
            print(f"  verify, {name}: {events / report.seconds:,.0f} events/s", file=sys.stderr, flush=True)
    result: dict[str, Any] = {}
    for name, runs_of in samples.items():
        rates = [s["events_per_second"] for s in runs_of]
        cpu_per_event = statistics.median(s["cpu_seconds"] for s in runs_of) / events
        result[name] = {"runs": runs_of, "median_events_per_second": round(statistics.median(rates)),
                        "best_events_per_second": max(rates),
                        "cpu_microseconds_per_event": round(cpu_per_event * 1e6, 2)}  # fmt: skip
    if "reference" in result:
        for name in ("one process", "workers"):
            result[name]["ratio_to_reference"] = round(
                result[name]["median_events_per_second"] / result["reference"]["median_events_per_second"], 2
            )
    return result


# -- the relay path


def message(size: int, n: int) -> bytes:
    """A message of about ``size`` bytes, different for each ``n`` (the store deduplicates identical bytes)."""
    head = (f"From: dr.martin@chu-nord.mssante.test\r\nTo: pharmacie@officine.mssante.test\r\n"
            f"Message-ID: <{n}.bench@chu-nord.mssante.test>\r\nSubject: ordonnance\r\n\r\n").encode()  # fmt: skip
    line = os.urandom(57).hex()[:76].encode() + b"\r\n"
    return head + line * ((size - len(head)) // len(line) + 1)


def accepted_events(item: Outgoing, data: bytes) -> Callable[[list[str]], list[Event]]:
    """The events the relay archives with a submission (see ``server._accept_data``): processing, then acceptance
    (which carries the bytes, for the message store)."""
    context: dict[str, Any] = {"actor": item.actor, "sender": item.sender, "recipients": item.recipients}

    def accepted(queue_ids: list[str]) -> list[Event]:
        queue_id = ",".join(queue_ids)
        return [
            Event("signed", "ok", queue_id=queue_id, message_id=item.message_id, **context),
            Event("encrypted", "ok", queue_id=queue_id, message_id=item.message_id, **context),
            Event("submission.accepted", "ok", peer="127.0.0.1", queue_id=queue_id, message_id=item.message_id,
                  sha256="0" * 64, reply="250 2.0.0 queued as " + queue_ids[0], body=data, copy="received",
                  **context),
        ]  # fmt: skip

    return accepted


def relay_queues(engine: sa.Engine, archive: Archive, spool: Spool) -> dict[str, Queue]:
    """A queue per variant, with the journal ``Relay.start`` builds (no ``ArchiveWriter``: nothing here uses it)."""
    store = MessageStore(engine, public_key=x25519.X25519PrivateKey.generate().public_key())

    def within(connection: sa.Connection, events: Sequence[Event]) -> None:
        archive.append_many(events, connection=connection)

    journals = {
        "no archive": Journal(),
        "events": Journal(transactional=within),
        "events + copy": Journal(transactional=within, keep=store.keep),
    }
    sessions = make_sessionmaker(engine)
    return {name: Queue(sessions, spool, retry_schedule=(300,), max_lifetime=86400, journal=journal)
            for name, journal in journals.items()}  # fmt: skip


def measure_relay(engine: sa.Engine, archive: Archive, spool: Spool, messages: int) -> dict[str, Any]:
    queues = relay_queues(engine, archive, spool)
    result: dict[str, Any] = {}
    n = 0
    for label, size in SIZES.items():
        count = messages if size < 1_000_000 else max(20, messages // 5)
        latencies: dict[str, list[float]] = {name: [] for name in RELAY_VARIANTS}
        load_before = load()
        for i in range(count + 5):  # the first 5 rounds warm up
            for name in RELAY_VARIANTS[i % 3 :] + RELAY_VARIANTS[: i % 3]:
                n += 1
                data = message(size, n)
                item = Outgoing("local", ("pharmacie@officine.mssante.test",), data, "submission", "message",
                                "dr.martin@chu-nord.mssante.test", "dr.martin@chu-nord.mssante.test",
                                message_id=f"<{n}.bench@chu-nord.mssante.test>")  # fmt: skip
                t = time.perf_counter()
                queues[name].enqueue([item], accepted_events(item, data))
                if i >= 5:
                    latencies[name].append(time.perf_counter() - t)
        by_variant: dict[str, Any] = {}
        base = statistics.median(latencies["no archive"])
        base_p99 = percentile(latencies["no archive"], 0.99)
        for name, samples in latencies.items():
            median, p99 = statistics.median(samples), percentile(samples, 0.99)
            by_variant[name] = {"messages": len(samples), "median_ms": round(median * 1000, 2),
                                "p99_ms": round(p99 * 1000, 2), "median_ratio": round(median / base, 2),
                                "p99_ratio": round(p99 / base_p99, 2)}  # fmt: skip
        result[label] = {"bytes": len(message(size, 0)), "load": [load_before, load()], "variants": by_variant}
    return result


def measure_writer(archive: Archive, events: int) -> dict[str, Any]:
    writer = ArchiveWriter(archive, checkpoint_interval=0)
    batch = [event(i) for i in range(events)]
    started = time.perf_counter()
    for item in batch:
        writer(item)
    writer.flush()
    seconds = time.perf_counter() - started
    writer.close()
    return {"events": events, "seconds": round(seconds, 3), "events_per_second": round(events / seconds)}


def measure(url: str, args: argparse.Namespace, reference: Callable[..., VerifyReport] | None) -> dict[str, Any]:
    engine = make_engine(url)
    upgrade_schema(engine)
    key = ed25519.Ed25519PrivateKey.generate()
    archive = Archive(engine, key=key, origin="chu-nord.mssante.test")
    result = fill(archive, args.events, args.batch, args.singles)
    result["verify"] = measure_verify(engine, key, args.events, args.runs, reference)
    with tempfile.TemporaryDirectory(prefix="bench-spool-", dir=args.spool) as spool:
        result["relay"] = measure_relay(engine, archive, Spool(Path(spool)), args.messages)
    result["writer"] = measure_writer(archive, args.writer_events)
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


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def print_table(results: dict[str, Any]) -> None:
    print(f"{'database':<11} {'fill ev/s':>10} {'append ms p50/p99':>18} {'checkpoint ms':>14}")
    for name, r in results["databases"].items():
        append = f"{r['append']['median_ms']:.2f}/{r['append']['p99_ms']:.2f}"
        print(f"{name:<11} {r['fill']['events_per_second']:>10,} {append:>18} {r['checkpoint']['ms']:>14.1f}")
    print(f"\n{'verify':<11} {'variant':<12} {'ev/s median':>12} {'best':>10} {'cpu µs/ev':>10} {'× reference':>12}")
    for name, r in results["databases"].items():
        for variant, v in r["verify"].items():
            ratio = v.get("ratio_to_reference")
            print(f"{name:<11} {variant:<12} {v['median_events_per_second']:>12,} {v['best_events_per_second']:>10,} "
                  f"{v['cpu_microseconds_per_event']:>10.2f} {'' if ratio is None else ratio:>12}")  # fmt: skip
    print(f"\n{'enqueue':<11} {'message':<8} {'variant':<14} {'p50 ms':>8} {'p99 ms':>8} {'p50 ×':>6} {'p99 ×':>6}")
    for name, r in results["databases"].items():
        for label, sized in r["relay"].items():
            for variant, v in sized["variants"].items():
                print(f"{name:<11} {label:<8} {variant:<14} {v['median_ms']:>8.2f} {v['p99_ms']:>8.2f} "
                      f"{v['median_ratio']:>6.2f} {v['p99_ratio']:>6.2f}")  # fmt: skip
    print(f"\n{'writer':<11} {'ev/s':>10}")
    for name, r in results["databases"].items():
        print(f"{name:<11} {r['writer']['events_per_second']:>10,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="events per append_many while filling")
    parser.add_argument("--singles", type=int, default=2000, help="events appended one by one (latency)")
    parser.add_argument("--runs", type=int, default=3, help="verifications per variant and database")
    parser.add_argument("--reference", default=REFERENCE, help="git revision of the reference verify (the old one)")
    parser.add_argument("--messages", type=int, default=200,
                        help="60 KB messages enqueued per relay variant (2 MB: a fifth, at least 20)")  # fmt: skip
    parser.add_argument("--writer-events", type=int, default=20_000, help="events handed to the ArchiveWriter")
    parser.add_argument("--spool", type=Path, default=None, help="where the spool files go (default: the temp dir)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "archive.json")
    args = parser.parse_args()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip() or None  # fmt: skip
    results: dict[str, Any] = {
        "benchmark": "archive",
        "target_verify_events_per_second": TARGET_EVENTS_PER_SECOND,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "reference": args.reference,
        "machine": {
            "cpu_model": _cpu_model(),
            "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "sqlalchemy": version("sqlalchemy"),
            "psycopg": version("psycopg"),
            "load_at_start": os.getloadavg(),
        },
        "databases": {},
    }
    reference = reference_verify(args.reference)
    with databases(args.no_postgres) as found:
        for name, url in found:
            print(f"{name}: {args.events:,} events…", file=sys.stderr, flush=True)
            results["databases"][name] = measure(url, args, reference)
    results["machine"]["load_at_end"] = os.getloadavg()

    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
