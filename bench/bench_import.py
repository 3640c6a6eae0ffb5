"""Benchmark of ``mssecure directory import`` on a synthetic national extraction (issue 2).

Target: the national extraction (~540,000 lines) imports in well under a minute, in bounded memory.

    .venv/bin/python bench/bench_import.py [--lines 540000] [--runs 3] [--out bench/results/import.json]

What is measured, for each run, each file size and each variant (SQLite always; PostgreSQL when its server binaries
are installed, in a throwaway cluster; each with the ``--workers`` settings asked for), in a fresh operator made by
the real ``mssecure init``:

* the first import of the file (every valid line is created), then
* a second import of the same file (every valid line is unchanged: the idempotent path),

each as the real CLI in a child process (``mssecure directory import FILE --json``): its wall time (interpreter
start-up included, as an operator would see it), lines per second, CPU time and memory. The import report is checked
against what the generator wrote, so that a broken import cannot pass for a fast one.

Two file sizes are imported (``--lines`` and ``--small-lines``, ten times fewer by default) so that the results show
whether the import's peak memory grows with the size of the file. Runs interleave the variants and rotate which goes
first, so that noise on a busy machine falls on all of them alike; compare medians.

The synthetic file is written once per size, with the error lines the generator knows (one per kind of rejection,
and duplicates), so that rejections and duplicate detection are on the measured path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.support.postgres, when run as ``python bench/bench_import.py``

from mssecure.directory.synthetic import SampleSummary, write_sample_extraction  # noqa: E402
from tests.support.postgres import PostgresCluster, find_server_binaries, postgres_cluster  # noqa: E402

TARGET_LINES = 540_000
TARGET_SECONDS = 60.0
DOMAIN = "chu-nord.mssante.test"
MSSECURE = Path(sys.executable).with_name("mssecure")
IMPORTS = ("first", "second")
POLL_S = 0.01  # how often the child is checked for exit: the resolution of the wall time
SAMPLE_EVERY = 25  # polls between two memory samples of the child's process tree (0.25 s)


@dataclass(frozen=True)
class Source:
    """The mssecure measured: the working tree as it is (``commit`` None), or a snapshot of a commit."""

    commit: str | None = None
    path: Path | None = None  # the snapshot, put first on the children's PYTHONPATH

    @property
    def label(self) -> str:
        return "" if self.commit is None else f" @{self.commit[:8]}"


WORKTREE = Source()


@dataclass(frozen=True)
class Variant:
    """What is compared: a database, the ``--workers`` given to the import (None: the CLI's default), the code."""

    backend: str
    workers: int | None = None
    source: Source = WORKTREE

    @property
    def label(self) -> str:
        workers = "" if self.workers is None else f" --workers {self.workers}"
        return f"{self.backend}{workers}{self.source.label}"

    @property
    def import_options(self) -> list[str]:
        return [] if self.workers is None else ["--workers", str(self.workers)]


@dataclass(frozen=True)
class Sample:
    """One measured child process (None figures: it was killed at the time limit)."""

    wall_s: float
    user_s: float
    sys_s: float
    peak_rss_kib: int
    peak_tree_pss_kib: int
    descendants_cpu_s: float
    processes: int
    timed_out: bool = False

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def tree_cpu_s(self) -> float:
        return self.cpu_s + self.descendants_cpu_s


@dataclass(frozen=True)
class Extraction:
    label: str
    path: Path
    summary: SampleSummary
    bytes: int

    @property
    def lines(self) -> int:
        return self.summary.lines


# --- measuring one child -----------------------------------------------------------------------------------------


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_tree(root: int) -> dict[int, float]:
    """``root`` and its descendants (the import's workers), from the parent ids in /proc: their own CPU seconds."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stream:
                fields = stream.read().rpartition(")")[2].split()  # after "(comm)": field 3 (state) onwards
        except OSError:
            continue  # gone meanwhile
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # field 4: ppid
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # fields 14, 15: utime, stime
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        tree[pid] = cpu.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return tree


def _pss_kib(pid: int) -> int:
    """The proportional set size of ``pid`` (shared pages divided among their users), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_measured(args: Sequence[str], env: dict[str, str], timeout_s: float) -> tuple[Sample, str]:
    """Run ``args`` to completion (or kill it at ``timeout_s``); what it cost, and its standard output.

    Memory, two figures, because the import may run worker processes beside the one writing to the database:

    * ``peak_rss_kib``: the ``ru_maxrss`` that ``os.wait4`` returns for this one child. It is exact, but it is the
      high-water mark of the *largest single process* of the child's tree (Linux folds the peaks of the
      descendants it reaped in as a maximum, not a sum). ``getrusage(RUSAGE_CHILDREN)`` would not do at all: it is
      the maximum over every child the benchmark reaped so far, so a small import measured after a large one
      would report the large one's peak.
    * ``peak_tree_pss_kib``: the highest *sum* over the child's whole process tree of each process's PSS
      (/proc/PID/smaps_rollup: shared pages are divided among the processes sharing them, so the forked workers'
      copy-on-write pages are not counted twice), sampled every 0.25 s: a spike shorter than that can be missed.

    CPU, likewise: the child's own user + system time is exact (``wait4``), but it does not include its parsing
    workers', which are children of multiprocessing's fork server, a process the child never reaps.
    ``descendants_cpu_s`` adds up the last CPU time sampled for each descendant: it can miss each one's last
    0.25 s.

    The mssecure entry point is a Python script run directly by the interpreter, so the child *is* the importer.
    It runs in its own session so that a time-out kills its workers too. Output goes to temporary files, not
    pipes, so that a chatty child cannot block while we wait for it.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )
        peak_pss, polls, timed_out = 0, 0, False
        descendants: dict[int, float] = {}
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            polls += 1
            if polls % SAMPLE_EVERY == 0:
                tree = _process_tree(process.pid)
                peak_pss = max(peak_pss, sum(_pss_kib(p) for p in tree))
                descendants.update((p, cpu) for p, cpu in tree.items() if p != process.pid)
            if not timed_out and time.perf_counter() - start > timeout_s:
                os.killpg(process.pid, signal.SIGKILL)  # not reaped yet: the group id is still the child's
                timed_out = True
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if process.returncode != 0 and not timed_out:
        raise RuntimeError(f"{' '.join(args)} exited with {process.returncode}:\n{stderr}")
    sample = Sample(
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        peak_rss_kib=usage.ru_maxrss,
        peak_tree_pss_kib=peak_pss,
        descendants_cpu_s=sum(descendants.values()),
        processes=1 + len(descendants),
        timed_out=timed_out,
    )
    return sample, stdout


def child_env(source: Source, config: Path | None) -> dict[str, str]:
    """The environment of the CLI: ours, minus any MSSECURE_* setting that could redirect it, plus the config.

    A snapshot goes first on PYTHONPATH: sys.path is searched before the editable install's finder.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSECURE_")}
    if source.path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source.path), env.get("PYTHONPATH")]))
    if config is not None:
        env["MSSECURE_CONFIG"] = str(config)
    return env


def init_operator(source: Source, directory: Path, database_url: str | None) -> Path:
    """A fresh operator made by the real ``mssecure init``; its configuration file."""
    args = [str(MSSECURE), "init", str(directory), "--domain", DOMAIN]
    if database_url:
        args += ["--database-url", database_url]
    subprocess.run(args, check=True, capture_output=True, env=child_env(source, None))
    return directory / "mssecure.toml"


def snapshot(revision: str, work: Path) -> Source:
    """``mssecure/`` as of ``revision`` (``git archive``), to measure a commit whatever the working tree holds."""
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    if commit is None:
        raise SystemExit(f"not a commit of {ROOT}: {revision}")
    path = work / f"source-{commit[:12]}"
    path.mkdir()
    archive = subprocess.run(["git", "archive", commit, "mssecure"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
    return Source(commit, path)


def check_report(report: dict[str, Any], summary: SampleSummary, which: str) -> None:
    """Fail loudly unless the import did what the generated file calls for."""
    valid = summary.valid
    expected = {
        "created": valid if which == "first" else 0,
        "updated": 0,
        "unchanged": 0 if which == "first" else valid,
        "duplicates": summary.duplicates,
        "rejected": summary.rejected,
    }
    got = {**report, "rejected": len(report["rejected"])}
    if got != expected:
        raise RuntimeError(f"{which} import reported {got}, expected {expected}")


@contextmanager
def database_url(backend: str, cluster: PostgresCluster | None) -> Iterator[str | None]:
    """None for SQLite (``init``'s default file in the operator directory), else a fresh PostgreSQL database."""
    if backend == "sqlite":
        yield None
        return
    assert cluster is not None
    with cluster.database() as url:
        yield url


def measure(
    extraction: Extraction, variant: Variant, cluster: PostgresCluster | None, work: Path, timeout_s: float
) -> dict[str, Sample]:
    """First and second import of ``extraction`` into a fresh operator (no second if the first timed out)."""
    prefix = f"{variant.backend}-"
    with tempfile.TemporaryDirectory(dir=work, prefix=prefix) as tmp, database_url(variant.backend, cluster) as url:
        config = init_operator(variant.source, Path(tmp) / "operator", url)
        command = [str(MSSECURE), "directory", "import", str(extraction.path), *variant.import_options, "--json"]
        samples = {}
        for which in IMPORTS:
            sample, stdout = run_measured(command, child_env(variant.source, config), timeout_s)
            samples[which] = sample
            if sample.timed_out:
                break
            check_report(json.loads(stdout), extraction.summary, which)
        return samples


def generate(work: Path, label: str, lines: int, seed: int) -> Extraction:
    path = work / f"extraction-{label}.txt"
    with path.open("w", encoding="utf-8") as stream:
        summary = write_sample_extraction(stream, lines, seed=seed, with_errors=True)
    return Extraction(label, path, summary, path.stat().st_size)


# --- the machine -------------------------------------------------------------------------------------------------


def _proc_field(path: str, name: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def machine() -> dict[str, Any]:
    memory = _proc_field("/proc/meminfo", "MemTotal")  # "24683540 kB"
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or None,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_mib": int(memory.split()[0]) // 1024 if memory else None,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def source_state() -> tuple[str | None, str | None]:
    """The commit and the uncommitted changes of the package measured, to notice edits made during a run."""
    return _git("rev-parse", "HEAD"), _git("status", "--porcelain", "--", "mssecure")


def software(bindir: Path | None) -> dict[str, Any]:
    postgres = None
    if bindir is not None:
        postgres = subprocess.run(
            [str(bindir / "postgres"), "--version"], check=True, capture_output=True, text=True
        ).stdout.strip()
    commit, status = source_state()
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": postgres,
        "sqlalchemy": version("sqlalchemy"),
        "psycopg": version("psycopg"),
        "worktree_commit": commit,
        "worktree_uncommitted_changes": bool(status) if status is not None else None,
    }


# --- figures -----------------------------------------------------------------------------------------------------


def figures(values: list[float | None], digits: int) -> dict[str, Any]:
    """Median of the completed samples, and every sample (None: timed out)."""
    done = [v for v in values if v is not None]
    return {
        "median": round(statistics.median(done), digits) if done else None,
        "samples": [None if v is None else round(v, digits) for v in values],
    }


def summarise(extraction: Extraction, samples: list[dict[str, Sample]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for which in IMPORTS:
        runs = [s.get(which) for s in samples]
        done = [s for s in runs if s is not None and not s.timed_out]

        def each(figure: Callable[[Sample], float], digits: int, runs: list[Sample | None] = runs) -> dict[str, Any]:
            return figures([None if s is None or s.timed_out else figure(s) for s in runs], digits)

        result[which] = {
            "wall_s": each(lambda s: s.wall_s, 2),
            "lines_per_s": each(lambda s: extraction.lines / s.wall_s, 0),
            "cpu_s": each(lambda s: s.cpu_s, 2),
            "tree_cpu_s": each(lambda s: s.tree_cpu_s, 2),
            "peak_rss_mib": each(lambda s: s.peak_rss_kib / 1024, 1),
            "peak_tree_pss_mib": each(lambda s: s.peak_tree_pss_kib / 1024, 1),
            "processes": max((s.processes for s in done), default=None),
            "timeouts": sum(1 for s in runs if s is not None and s.timed_out),
            "not_run": sum(1 for s in runs if s is None),
        }
    return result


def memory_growth(small: dict[str, Any], large: dict[str, Any], small_lines: int, large_lines: int) -> dict[str, Any]:
    """How the median peak memory moves from the small file to the large one, per import and measure."""
    growth: dict[str, Any] = {}
    for which in IMPORTS:
        growth[which] = {}
        for measure_ in ("peak_rss_mib", "peak_tree_pss_mib"):
            low, high = small[which][measure_]["median"], large[which][measure_]["median"]
            if low is None or high is None:
                growth[which][measure_] = None
                continue
            growth[which][measure_] = {
                "small_mib": low,
                "large_mib": high,
                "ratio": round(high / low, 2) if low else None,
                "bytes_per_extra_line": round((high - low) * 1024 * 1024 / (large_lines - small_lines), 1),
            }
    return growth


def _cell(value: float | None, spec: str, width: int) -> str:
    return f"{'—' if value is None else format(value, spec):>{width}}"


def print_table(results: dict[str, Any], extractions: dict[str, Extraction], timeout_s: float) -> None:
    width = max(len("variant"), *(len(label) for label in results)) + 2
    header = (
        f"{'variant':<{width}}{'lines':>9}  {'import':<7}{'wall s':>8}{'lines/s':>9}{'cpu s':>8}"
        f"{'tree cpu s':>12}{'RSS MiB':>9}{'tree PSS MiB':>14}"
    )
    print()
    print("directory import, medians (every sample in the JSON)")
    print("cpu, RSS: the importing process (RSS: its largest); tree cpu, tree PSS: with its parsing workers")
    print(header)
    print("-" * len(header))
    for label, sizes in results.items():
        for size, result in sizes.items():
            for which in IMPORTS:
                f = result[which]
                note = f"  {f['timeouts']} killed at {timeout_s:g} s" if f["timeouts"] else ""
                print(
                    f"{label:<{width}}{extractions[size].lines:>9,}  {which:<7}"
                    + _cell(f["wall_s"]["median"], ".1f", 8)
                    + _cell(f["lines_per_s"]["median"], ",.0f", 9)
                    + _cell(f["cpu_s"]["median"], ".1f", 8)
                    + _cell(f["tree_cpu_s"]["median"], ".1f", 12)
                    + _cell(f["peak_rss_mib"]["median"], ".0f", 9)
                    + _cell(f["peak_tree_pss_mib"]["median"], ".0f", 14)
                    + note
                )


def _workers(value: str) -> int | None:
    if value == "default":
        return None
    workers = int(value)
    if workers < 0:
        raise argparse.ArgumentTypeError("workers must be 0 or more, or 'default'")
    return workers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=TARGET_LINES, help="valid lines of the large file")
    parser.add_argument("--small-lines", type=int, help="valid lines of the small file (default: lines / 10)")
    parser.add_argument("--runs", type=int, default=3, help="fresh operators per variant and size")
    parser.add_argument(
        "--workers",
        type=_workers,
        action="append",
        metavar="N|default",
        help="--workers given to the import, repeatable to compare (default: only the CLI's own default)",
    )
    parser.add_argument(
        "--source",
        action="append",
        metavar="worktree|REV",
        help="the mssecure measured: the working tree, or a snapshot of a git revision; repeatable to compare "
        "(default: worktree)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before an import is killed")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic extraction")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only, even if PostgreSQL is installed")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "import.json")
    args = parser.parse_args(argv)
    small_lines = args.small_lines or max(1, args.lines // 10)
    if args.runs < 1 or small_lines >= args.lines:
        parser.error("need at least one run, and fewer small lines than lines")

    bindir = None if args.no_postgres else find_server_binaries()
    if bindir is None and not args.no_postgres:
        print("PostgreSQL server binaries not found: SQLite only", file=sys.stderr)
    backends = ["sqlite"] + (["postgresql"] if bindir else [])
    workers = list(dict.fromkeys(args.workers or [None]))
    revisions = list(dict.fromkeys(args.source or ["worktree"]))
    report: dict[str, Any] = {
        "benchmark": "directory import",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "target": {"lines": TARGET_LINES, "max_wall_s": TARGET_SECONDS},
        "machine": machine(),
        "software": software(bindir),
        "runs": args.runs,
        "timeout_s": args.timeout,
        "warnings": [],
    }
    source_at_start = source_state()

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mssecure-bench-")))
        sources = [WORKTREE if r == "worktree" else snapshot(r, work) for r in revisions]
        variants = [Variant(b, w, s) for s in sources for b in backends for w in workers]
        report["variants"] = {
            v.label: {"backend": v.backend, "workers": v.workers, "source": v.source.commit or "worktree"}
            for v in variants
        }
        cluster = stack.enter_context(postgres_cluster(bindir)) if bindir else None
        print(f"generating {args.lines:,} and {small_lines:,} lines…", file=sys.stderr)
        extractions = {
            "large": generate(work, "large", args.lines, args.seed),
            "small": generate(work, "small", small_lines, args.seed),
        }
        samples: dict[str, dict[str, list[dict[str, Sample]]]] = {
            v.label: {k: [] for k in extractions} for v in variants
        }
        for run in range(args.runs):
            shift = run % len(variants)
            order = variants[shift:] + variants[:shift]
            for size, extraction in extractions.items():
                for variant in order:
                    earlier = samples[variant.label][size]
                    if any(s.timed_out for measured in earlier for s in measured.values()):
                        earlier.append({})  # it timed out before: not worth another wait
                        continue
                    measured = measure(extraction, variant, cluster, work, args.timeout)
                    earlier.append(measured)
                    print(
                        f"run {run + 1}/{args.runs} {variant.label} {extraction.lines:,} lines: "
                        + ", ".join(
                            f"{w} {'killed at ' if s.timed_out else ''}{s.wall_s:.1f} s "
                            f"{s.peak_rss_kib / 1024:.0f} MiB RSS {s.peak_tree_pss_kib / 1024:.0f} MiB PSS"
                            for w, s in measured.items()
                        ),
                        file=sys.stderr,
                    )

    report["files"] = {
        label: {"lines": e.lines, "valid": e.summary.valid, "rejected": e.summary.rejected,
                "duplicates": e.summary.duplicates, "bytes": e.bytes}
        for label, e in extractions.items()
    }  # fmt: skip
    results = {
        label: {size: summarise(extractions[size], samples[label][size]) for size in extractions} for label in samples
    }
    report["results"] = results
    small, large = extractions["small"].lines, extractions["large"].lines
    report["memory"] = {label: memory_growth(r["small"], r["large"], small, large) for label, r in results.items()}
    report["target_met"] = (
        {
            label: (m := r["large"]["first"]["wall_s"]["median"]) is not None and m < TARGET_SECONDS
            for label, r in results.items()
        }
        if args.lines >= TARGET_LINES
        else None
    )
    report["machine"]["load_average_at_end"] = os.getloadavg()
    if WORKTREE in sources and source_state() != source_at_start:
        report["warnings"].append("mssecure/ changed (commit or working tree) while the benchmark ran")

    print_table(results, extractions, args.timeout)
    print()
    for label, growth in report["memory"].items():
        for measure_, name in (("peak_rss_mib", "RSS"), ("peak_tree_pss_mib", "tree PSS")):
            g = growth["first"][measure_]
            if g is not None:
                print(
                    f"{label}: first import peak {name} {g['small_mib']:.0f} → {g['large_mib']:.0f} MiB for "
                    f"{small:,} → {large:,} lines (×{g['ratio']}, {g['bytes_per_extra_line']:.0f} bytes per extra line)"
                )
    if report["target_met"] is not None:
        for label, met in report["target_met"].items():
            print(f"{label}: first import {'meets' if met else 'MISSES'} the {TARGET_SECONDS:.0f} s target")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
