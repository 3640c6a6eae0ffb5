"""Benchmark of the secure path (issue 7), side by side with Postfix: two mssecure operators on this machine, and
two Postfix instances doing the same hops without S/MIME, fed by the same load generator in the same run.

    .venv/bin/python bench/bench_relay.py [--quick] [--out bench/results/relay.json] [--no-postfix]
                                          [--profile DIR] [--database sqlite|postgresql]

* **secure path**: a client submits to operator A (STARTTLS + AUTH PLAIN on submission → policy → S/MIME sign →
  encrypt → DKIM → archive → durable queue → relay over mutual TLS) → operator B (verify → decrypt → archive →
  Maildir, fsynced). Both are real ``mssecure serve`` processes made by ``mssecure init`` (``tests/support/relay``).
* **Postfix baseline** (when Postfix can run here, see ``bench/relay/postfix.py``): Postfix A (STARTTLS + SASL AUTH
  PLAIN) relays over mutual TLS to Postfix B, which delivers to Maildir: the same hops and the same durability,
  without S/MIME, DKIM and the archive.
* For each message kind (a 60 KB-PDF prescription, a report with a 2 MB attachment, a 25 MB imaging report) and
  concurrency (1, 10, 50 connections; 1 and 2 for 25 MB): both pairs are restarted (fresh processes: their peak
  memory is the point's), one message is sent and delivered to warm them up, then the point's messages are sent
  over N connections opened and authenticated beforehand (closed loop: each connection sends its next message when
  the previous one is accepted). Figures: messages delivered per second (the count over the time from the first
  submission to the last file in B's Maildir), end-to-end latency p50/p95/p99 (submission start → file renamed into
  B's ``new/``), CPU seconds per message of each operator's process tree (``/proc``: user + system, reaped children
  included) and of the load generator, peak RSS (``VmHWM``) of each, and the load average.
* **paced**: the 60 KB prescription in open loop at half the secure path's best 60 KB rate (the issue's latency
  target is "p99 < 250 ms at half the maximum throughput"), on both systems at the same rate.
* **crypto ceiling**: what RSA-2048, AES-256 and SHA-256 on this machine allow for the 60 KB message
  (``bench/relay/ceiling.py``).

With ``--profile DIR``, py-spy (``pip install py-spy`` into the venv; a measuring tool, not a dependency) samples
both mssecure relays during the 60 KB point at the highest concurrency and writes their collapsed stacks there;
the figures of that point are then taken under the profiler's overhead (marked in the JSON).

Results: a table, and every figure as JSON with the machine (CPU, cores, memory, kernel), the software versions and
the load average. On a shared machine compare the two systems within one run (each point runs both, in turns).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.support and bench.relay, when run as ``python bench/bench_relay.py``

from bench.relay.ceiling import crypto_ceiling  # noqa: E402
from bench.relay.load import MaildirWatcher, Target, run_load, summarise  # noqa: E402
from bench.relay.messages import KINDS, MessageKind, render  # noqa: E402
from bench.relay.postfix import PostfixPair, postfix_problem, postfix_version  # noqa: E402
from bench.relay.procs import TreeSample, sample_tree  # noqa: E402
from mssecure.smtp.maildir import Maildirs  # noqa: E402
from tests.support.postgres import find_server_binaries, postgres_cluster  # noqa: E402
from tests.support.relay import PASSWORD, RelayOperator, free_port  # noqa: E402

A_DOMAIN = "chu-nord.mssante.test"
B_DOMAIN = "pharma-sud.mssante.test"
MIB = 1 << 20

# (kind, connections, messages): the full plan, and the --quick one
PLAN = [("60KB", 1, 60), ("60KB", 10, 300), ("60KB", 50, 1000),
        ("2MB", 1, 15), ("2MB", 10, 60), ("2MB", 50, 150),
        ("25MB", 1, 4), ("25MB", 2, 6)]  # fmt: skip
QUICK = [("60KB", 1, 15), ("60KB", 10, 60), ("60KB", 50, 150),
         ("2MB", 1, 4), ("2MB", 10, 20), ("2MB", 50, 50),
         ("25MB", 1, 2), ("25MB", 2, 2)]  # fmt: skip


class System(Protocol):
    """One side of the comparison: two servers (A, B), restartable, fed through ``target``."""

    name: str

    @property
    def target(self) -> Target: ...

    @property
    def maildirs(self) -> list[Path]: ...

    def restart(self) -> dict[str, int]: ...

    def stop(self) -> None: ...

    def logs(self) -> str: ...


class SecurePath:
    """Two mssecure operators (A: the doctors, B: the pharmacies) trusting each other, on loopback ports."""

    name = "mssecure"

    def __init__(
        self,
        root: Path,
        *,
        connect_timeout: int,
        databases: tuple[str | None, str | None] = (None, None),
        senders: int = 2,
        recipients: int = 2,
        workers: int | None = None,
    ) -> None:
        self.workers = workers  # `serve --workers N` for both relays (None: the configuration's, 1)
        # The production defaults but two: a deferred delivery is retried after 1 s (not 60: the point would wait),
        # and ``connect_timeout`` (which aiosmtplib applies to every reply, the one after DATA included) is an option.
        delivery: dict[str, Any] = {"retry_schedule": [1], "connect_timeout": connect_timeout,
                                    "connections_per_destination": 4}  # fmt: skip
        self.a = RelayOperator(root / "a", A_DOMAIN, database_url=databases[0], **delivery)
        self.b = RelayOperator(root / "b", B_DOMAIN, database_url=databases[1], **delivery)
        self.senders = tuple(self.a.person(f"dr.bench{i}", 1 + i, last=f"BENCH{i}") for i in range(senders))
        self.recipients = tuple(self.b.organization(f"pharmacie{i}", 100 + i, f"Pharmacie {i}", password=False)
                                for i in range(recipients))  # fmt: skip
        self.a.trust(self.b)
        self.b.trust(self.a)
        boxes = Maildirs(self.b.directory / "data" / "mail")
        self._maildirs = [boxes.ensure(address) / "new" for address in self.recipients]
        self._starts = 0
        self.left_over = 0

    @property
    def target(self) -> Target:
        return Target(self.name, "127.0.0.1", self.a.ports["submission"], self.senders, self.recipients, PASSWORD)

    @property
    def maildirs(self) -> list[Path]:
        return self._maildirs

    def restart(self) -> dict[str, int]:
        self.stop()
        self.left_over = self._purge()
        self._starts += 1
        for operator in (self.b, self.a):
            # RelayOperator.start waits for "ready (" in serve.log, which it appends to: each start gets a fresh
            # log, the previous one kept beside it.
            if operator.log.exists():
                operator.log.rename(operator.log.with_name(f"serve-{self._starts - 1}.log"))
            operator.start(workers=self.workers)
        assert self.a.process is not None
        assert self.b.process is not None
        return {"A": self.a.process.pid, "B": self.b.process.pid}

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()

    def logs(self) -> str:
        return "\n".join(f"{name}:\n" + "\n".join(op.log.read_text(errors="replace").splitlines()[-15:])
                         for name, op in (("A", self.a), ("B", self.b)))  # fmt: skip

    def _purge(self) -> int:
        """Delete what a previous point left undelivered in either queue (a failed point's messages would otherwise
        be retried during the next one, and their work counted in it); how many there were."""
        purged = 0
        for operator in (self.a, self.b):
            for state in ("queued", "delivering", "deferred"):
                listed = json.loads(operator.ok("queue", "list", "--state", state, "--json").output or "[]")
                for message in listed:
                    operator.ok("queue", "delete", message["id"])
                    purged += 1
        return purged

    def deferrals(self) -> int:
        """Deliveries A deferred since its start (each one a retry: the message crossed the wire again)."""
        return self.a.log.read_text(errors="replace").count('"type": "deferred"')


class PostfixBaseline:
    name = "postfix"

    def __init__(self, root: Path) -> None:
        self.pair = PostfixPair(root, (free_port(), free_port()), PASSWORD)

    @property
    def target(self) -> Target:
        return self.pair.target

    @property
    def maildirs(self) -> list[Path]:
        return self.pair.maildirs

    def restart(self) -> dict[str, int]:
        self.pair.stop()
        a, b = self.pair.start()
        return {"A": a, "B": b}

    def stop(self) -> None:
        self.pair.stop()

    def logs(self) -> str:
        return self.pair.logs()


def load() -> float:
    return round(os.getloadavg()[0], 2)


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Profiler:
    """py-spy sampling the two mssecure relays of one point (collapsed stacks, for flame graphs or grep)."""

    directory: Path
    processes: list[subprocess.Popen[bytes]]

    @classmethod
    def start(cls, directory: Path, pids: dict[str, int], label: str) -> Profiler | None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            print("--profile: py-spy is not installed (.venv/bin/pip install py-spy)", file=sys.stderr)
            return None
        directory.mkdir(parents=True, exist_ok=True)
        processes = [
            subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "100", "--threads",
                              "--nonblocking", "--output", str(directory / f"{label}-{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items()
        ]  # fmt: skip
        time.sleep(1.0)  # attached before the load starts
        return cls(directory, processes)

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def _delivery_timeout(kind: MessageKind, count: int) -> float:
    return 120.0 + count * max(0.5, kind.attachment_bytes / MIB * 1.5)


async def _warm_up(system: System, kind: MessageKind, watcher: MaildirWatcher, prefix: str) -> str | None:
    """None once one message went through; else what went wrong."""
    result = await run_load(system.target, kind, connections=1, count=1, prefix=prefix)
    ids = {s.bench_id for s in result.samples if s.accepted is not None}
    if not ids:
        return f"the warm-up message was refused: {[s.error for s in result.samples]} {result.connection_errors}"
    if not await watcher.wait_for(ids, _delivery_timeout(kind, 1)):
        return "the warm-up message was not delivered"
    return None


async def measure_point(
    system: System,
    kind: MessageKind,
    connections: int,
    count: int,
    *,
    prefix: str,
    rate: float | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One measurement point on freshly started servers."""
    pids = await asyncio.to_thread(system.restart)
    watcher = MaildirWatcher(system.maildirs)
    watcher.start()
    point: dict[str, Any] = {"system": system.name, "kind": kind.name, "connections": connections, "count": count,
                             "message_bytes": len(render(kind, system.target.senders[0], system.target.recipients[0],
                                                         f"{prefix}-0")),
                             "rate": rate, "load_before": load()}  # fmt: skip
    try:
        problem = await _warm_up(system, kind, watcher, f"{prefix}-warm")
        if problem is not None:
            point["error"] = problem
            point["log"] = system.logs()
            return point
        profiler = Profiler.start(profile, pids, f"{system.name}-{kind.name}-c{connections}") if profile else None
        before = {name: sample_tree(pid) for name, pid in pids.items()}
        generator_before = own_cpu()
        result = await run_load(system.target, kind, connections=connections, count=count, prefix=prefix, rate=rate)
        accepted = {s.bench_id for s in result.samples if s.accepted is not None}
        complete = await watcher.wait_for(accepted, _delivery_timeout(kind, count))
        generator_cpu = own_cpu() - generator_before
        await asyncio.sleep(0.5)  # A records the relayed events after B's 250
        after = {name: sample_tree(pid) for name, pid in pids.items()}
        if profiler is not None:
            profiler.stop()
            point["profiled"] = True
        point.update(summarise(result, watcher))
        point["complete"] = complete
        delivered = max(1, point["delivered"])
        point["cpu_ms_per_message"] = {
            name: round((after[name].cpu_seconds - before[name].cpu_seconds) / delivered * 1000, 2) for name in pids
        }
        point["cpu_ms_per_message"]["generator"] = round(generator_cpu / delivered * 1000, 2)
        point["cpu_ms_per_message"]["A+B"] = round(point["cpu_ms_per_message"]["A"]
                                                   + point["cpu_ms_per_message"]["B"], 2)  # fmt: skip
        point["processes"] = {name: sample.processes for name, sample in after.items()}
        if isinstance(system, SecurePath):
            point["deferrals"] = system.deferrals()
            point["purged_before"] = system.left_over
        point["peak_rss_mib"] = {name: _memory(sample) for name, sample in after.items()}
        if not complete:
            point["log"] = system.logs()
        return point
    finally:
        point["load_after"] = load()
        watcher.close()


def _memory(sample: TreeSample) -> dict[str, float]:
    return {"main": round(sample.peak_rss_root / MIB, 1), "largest": round(sample.peak_rss_max / MIB, 1),
            "sum": round(sample.peak_rss_sum / MIB, 1)}  # fmt: skip


def _ratios(secure: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """mssecure / Postfix for a point: above 1 means mssecure is higher (faster for a rate, slower for a latency)."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    return {
        "delivered_per_second": ratio(secure.get("delivered_per_second"), baseline.get("delivered_per_second")),
        "p50_ms": ratio(secure.get("end_to_end_ms", {}).get("p50"), baseline.get("end_to_end_ms", {}).get("p50")),
        "p99_ms": ratio(secure.get("end_to_end_ms", {}).get("p99"), baseline.get("end_to_end_ms", {}).get("p99")),
        "cpu_ms_per_message": ratio(secure.get("cpu_ms_per_message", {}).get("A+B"),
                                    baseline.get("cpu_ms_per_message", {}).get("A+B")),
    }  # fmt: skip


async def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    plan = [(k, c, n) for k, c, n in (QUICK if args.quick else PLAN) if k in args.kinds]
    if args.connections:
        plan = [(k, c, n) for k, c, n in plan if c in args.connections]
    root = Path(tempfile.mkdtemp(prefix="bench-relay-", dir=args.tmp))
    root.chmod(0o711)  # Postfix's users (postfix, nobody) pass through to their own directories
    systems: list[System] = []
    stack = ExitStack()  # the PostgreSQL cluster, with --database postgresql

    def interrupted() -> None:
        """Ctrl-C or SIGTERM: stop the servers (never leave a relay or a Postfix master behind), keep what was
        measured, and leave at once (cancelling the tasks could wait minutes for a point's delivery timeout)."""
        print("interrupted: stopping the servers…", file=sys.stderr, flush=True)
        for system in systems:
            try:
                system.stop()
            except Exception as exc:
                print(f"stopping {system.name}: {exc}", file=sys.stderr)
        stack.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        results["interrupted"] = True
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"partial results written to {args.out}", file=sys.stderr, flush=True)
        os._exit(130)

    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, interrupted)
    try:
        print("setting up the two mssecure operators…", file=sys.stderr, flush=True)
        urls: tuple[str | None, str | None] = (None, None)
        if args.database == "postgresql":
            bindir = find_server_binaries()
            if bindir is None:
                raise SystemExit("--database postgresql: no PostgreSQL server binaries (apt-get install postgresql)")
            cluster = stack.enter_context(postgres_cluster(bindir))
            urls = (stack.enter_context(cluster.database()), stack.enter_context(cluster.database()))
        systems.append(SecurePath(root / "mssecure", connect_timeout=args.connect_timeout, databases=urls,
                                  workers=args.workers))  # fmt: skip
        results["mssecure"] = {"connect_timeout": args.connect_timeout, "retry_schedule": [1],
                               "database": args.database}  # fmt: skip
        problem = "--no-postfix" if args.no_postfix else postfix_problem()
        if problem is None:
            try:
                systems.append(PostfixBaseline(root / "postfix"))
            except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
                problem = f"cannot set Postfix up: {type(exc).__name__}: {exc}"
        results["postfix"] = {"available": problem is None, "why_not": problem, "version": postfix_version()}
        if problem is not None:
            print(f"Postfix baseline skipped: {problem}", file=sys.stderr, flush=True)
        points: list[dict[str, Any]] = results["points"]
        for index, (kind_name, connections, count) in enumerate(plan):
            kind = KINDS[kind_name]
            order = systems if index % 2 == 0 else systems[::-1]  # which system goes first alternates
            for system in order:
                print(f"{system.name}: {kind.label}, {connections} connection(s), {count} messages…",
                      file=sys.stderr, flush=True)  # fmt: skip
                profile = None
                if (args.profile and system.name == "mssecure" and kind_name == "60KB"
                        and connections == max(c for k, c, _ in plan if k == "60KB")):  # fmt: skip
                    profile = args.profile
                try:
                    point = await measure_point(system, kind, connections, count, prefix=f"p{index}-{system.name}",
                                                profile=profile)  # fmt: skip
                except (OSError, RuntimeError, AssertionError) as exc:
                    point = {"system": system.name, "kind": kind_name, "connections": connections, "count": count,
                             "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
                points.append(point)
                _progress(point)
        best = [p.get("delivered_per_second", 0) for p in points if p["system"] == "mssecure"
                and p["kind"] == "60KB" and not p.get("profiled")]  # fmt: skip
        if best and max(best) > 0 and not args.no_paced:
            rate = round(max(best) / 2, 2)
            count = max(20, int(rate * args.paced_seconds))
            for system in systems:
                print(f"{system.name}: paced, {rate} messages/s over 10 connections, {count} messages…",
                      file=sys.stderr, flush=True)  # fmt: skip
                try:
                    point = await measure_point(system, KINDS["60KB"], 10, count, prefix=f"paced-{system.name}",
                                                rate=rate)  # fmt: skip
                except (OSError, RuntimeError, AssertionError) as exc:
                    point = {"system": system.name, "kind": "60KB", "error": f"{type(exc).__name__}: {exc}"}
                point["paced"] = True
                results["paced"].append(point)
                _progress(point)
    finally:
        for system in systems:
            try:
                system.stop()
            except Exception as exc:  # never leave a server behind because another failed to stop
                print(f"stopping {system.name}: {exc}", file=sys.stderr)
        stack.close()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    by_key = {(p["system"], p["kind"], p["connections"]): p for p in results["points"]}
    for (system, kind, connections), point in by_key.items():
        baseline = by_key.get(("postfix", kind, connections))
        if system == "mssecure" and baseline is not None:
            results["ratios"].append({"kind": kind, "connections": connections, **_ratios(point, baseline)})
    if len(results["paced"]) == 2:
        results["paced_ratio"] = _ratios(results["paced"][0], results["paced"][1])


def _progress(point: dict[str, Any]) -> None:
    if "error" in point:
        print(f"  error: {point['error']}", file=sys.stderr, flush=True)
        return
    latency = point.get("end_to_end_ms", {})
    print(f"  {point.get('delivered_per_second', 0):.2f} msg/s, p50 {latency.get('p50')} ms, "
          f"p99 {latency.get('p99')} ms, cpu {point['cpu_ms_per_message']} ms/msg, load {point['load_after']}",
          file=sys.stderr, flush=True)  # fmt: skip


def print_table(results: dict[str, Any]) -> None:
    ceiling = results["crypto_ceiling"]
    print(f"crypto ceiling (60 KB prescription): {ceiling['crypto_cpu_ms_per_message']} ms of crypto per message, "
          f"{ceiling['ceiling_messages_per_second']} msg/s on {ceiling['cores']} cores "
          f"(RSA-2048 sign {ceiling['primitives']['rsa2048_sign_per_s']:.0f}/s, "
          f"AES-256-CBC {ceiling['primitives']['aes256_cbc_encrypt_MB_per_s']:.0f} MiB/s, "
          f"SHA-256 {ceiling['primitives']['sha256_MB_per_s']:.0f} MiB/s)")  # fmt: skip
    if not results["postfix"]["available"]:
        print(f"Postfix baseline: not run ({results['postfix']['why_not']})")
    header = (f"\n{'system':<9} {'message':<6} {'conn':>4} {'msgs':>5} {'msg/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'p99 ms':>8} {'cpu A':>7} {'cpu B':>7} {'gen':>6} {'RSS A':>6} {'RSS B':>6} {'load':>5}")  # fmt: skip
    print(header + "\n" + " " * 40 + "(cpu: ms per message; RSS: peak MiB of the relay process, Postfix: its largest)")
    for point in [*results["points"], *results["paced"]]:
        _row(point)
    if results["ratios"]:
        print(f"\n{'mssecure / Postfix':<19} {'conn':>4} {'msg/s ×':>8} {'p50 ×':>7} {'p99 ×':>7} {'cpu ×':>7}")
        for r in [*results["ratios"], *([{"kind": "paced", "connections": 10, **results["paced_ratio"]}]
                                        if "paced_ratio" in results else [])]:  # fmt: skip
            print(f"{r['kind']:<19} {r['connections']:>4} {_f(r['delivered_per_second']):>8} {_f(r['p50_ms']):>7} "
                  f"{_f(r['p99_ms']):>7} {_f(r['cpu_ms_per_message']):>7}")  # fmt: skip


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(point: dict[str, Any]) -> None:
    kind = "paced" if point.get("paced") else point["kind"]
    if "error" in point:
        print(f"{point['system']:<9} {kind:<6} {point.get('connections', ''):>4}  error: {point['error']}")
        return
    latency, cpu, rss = point.get("end_to_end_ms", {}), point["cpu_ms_per_message"], point["peak_rss_mib"]
    memory = "largest" if point["system"] == "postfix" else "main"
    flag = "" if point.get("complete") else f"  incomplete: {point['delivered']}/{point['accepted']} delivered"
    print(f"{point['system']:<9} {kind:<6} {point['connections']:>4} {point['count']:>5} "
          f"{_f(point.get('delivered_per_second')):>7} {_f(latency.get('p50'), 1):>8} {_f(latency.get('p95'), 1):>8} "
          f"{_f(latency.get('p99'), 1):>8} {cpu['A']:>7.1f} {cpu['B']:>7.1f} {cpu['generator']:>6.1f} "
          f"{rss['A'][memory]:>6.0f} {rss['B'][memory]:>6.0f} {point['load_after']:>5.2f}{flag}")  # fmt: skip


def machine() -> dict[str, Any]:
    model: str | None = None
    memory: int | None = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))  # fmt: skip
    except (OSError, StopIteration):
        memory = None
    packages: dict[str, str | None] = {}
    for name in ("mssecure", "aiosmtpd", "aiosmtplib", "cryptography", "sqlalchemy", "dkimpy", "asn1crypto"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "cpu_model": model or platform.processor() or None,
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory / (1 << 30), 1) if memory else None,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "packages": packages,
        "load_at_start": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages per point (about 20 minutes on 2 cores)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS), help="message kinds")
    parser.add_argument("--connections", type=int, nargs="+", help="only these concurrencies of the plan")
    parser.add_argument("--no-postfix", action="store_true", help="skip the Postfix baseline")
    parser.add_argument("--no-paced", action="store_true", help="skip the open-loop point at half the best rate")
    parser.add_argument("--paced-seconds", type=float, default=30.0, help="length of the paced point")
    parser.add_argument("--profile", type=Path, help="py-spy the mssecure relays at the top 60 KB point into DIR")
    parser.add_argument("--connect-timeout", type=int, default=30,
                        help="mssecure's [delivery] connect_timeout (default: the production default)")  # fmt: skip
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the operators' database (postgresql: a throwaway local cluster, fsync=off)")  # fmt: skip
    parser.add_argument("--workers", type=int, help="relay processes per mssecure operator (serve --workers N)")
    parser.add_argument("--tmp", type=Path, default=None, help="where the operators and queues live (a disk)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, Maildirs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "relay.json")
    args = parser.parse_args(argv)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip() or None  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "mssecure"], cwd=ROOT, capture_output=True,
                           text=True, check=False).stdout.strip()  # fmt: skip
    results: dict[str, Any] = {
        "benchmark": "relay",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "mssecure_modified": bool(dirty),
        "quick": args.quick,
        "machine": machine(),
        "messages": {name: {"label": k.label, "attachment_bytes": k.attachment_bytes} for name, k in KINDS.items()},
        "points": [],
        "paced": [],
        "ratios": [],
    }
    print("crypto ceiling…", file=sys.stderr, flush=True)
    sixty = len(render(KINDS["60KB"], f"dr.bench0@{A_DOMAIN}", f"pharmacie0@{B_DOMAIN}", "ceiling"))
    results["crypto_ceiling"] = crypto_ceiling(sixty)
    results["crypto_ceiling"]["load"] = load()
    try:
        asyncio.run(run(args, results))
    finally:
        results["machine"]["load_at_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print_table(results)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
