"""CPU of the relay's message processing (issue 7), in process: what ``Processor.submission`` (sign, encrypt, DKIM)
and ``Processor.inbound`` (DKIM, decrypt, verify) cost per message, without SMTP, queue or archive around them.

    .venv/bin/python bench/bench_processing.py                                  # the working tree, 60 KB
    .venv/bin/python bench/bench_processing.py --source dd1885a~1 --source HEAD # before/after, side by side
    .venv/bin/python bench/bench_processing.py --kind 25MB --messages 3         # memory of a large message

Each source (the working tree, or ``mssecure/`` of a git revision put first on ``PYTHONPATH``, as ``bench_import``
does) runs in its own child process: two operators made by the real ``mssecure init`` (``tests/support/relay``), a
doctor on A and a pharmacy on B that trust each other, two warm-up messages, then ``--messages`` messages of
``--kind`` (``bench/relay/messages``), each submitted at A and its encrypted form received at B. Figures per
message: CPU time (``time.process_time``) of each side, and the child's peak RSS. Runs alternate the sources, so
that a busy machine's noise falls on all of them; the table gives medians and the ratio to the first source.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for path in (str(ROOT), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_import import Source, machine, snapshot, source_state  # noqa: E402


def child(kind: str, messages: int) -> dict[str, Any]:
    """In the child process: the measurement itself, with the ``mssecure`` first on ``sys.path``."""
    from relay.messages import KINDS, render

    from mssecure.config import load_config
    from mssecure.crypto.authority import OperatorMaterial
    from mssecure.db import make_engine, make_sessionmaker
    from mssecure.smtp.processing import Envelope, Processor
    from tests.support.relay import RelayOperator

    work = Path(tempfile.mkdtemp(prefix="bench-processing-"))
    a = RelayOperator(work / "a", "chu-nord.mssante.test")
    b = RelayOperator(work / "b", "pharma-sud.mssante.test")
    doctor, pharmacy = a.person("camille.lefevre", 1), b.organization("pharmacie", 2)
    a.trust(b)
    b.trust(a)

    def processor(operator: RelayOperator) -> Processor:
        config = load_config(operator.config)
        return Processor(config, make_sessionmaker(make_engine(config.database_url)), OperatorMaterial(config))

    sender, receiver = processor(a), processor(b)
    submission, inbound = [], []
    for n in range(messages + 2):
        data = render(KINDS[kind], doctor, pharmacy, f"p{n}")
        started = time.process_time()
        (wire,) = sender.submission(Envelope(doctor, (pharmacy,), data, actor=doctor))
        middle = time.process_time()
        delivered = receiver.inbound(Envelope(doctor, (pharmacy,), wire.data, actor=a.domain), frozenset({a.domain}))
        ended = time.process_time()
        if not delivered or b"Authentication-Results" not in delivered[0].data[:4096]:
            raise SystemExit("the inbound side did not produce a verified message")
        if n >= 2:  # two warm-up messages: caches, first connections
            submission.append(middle - started)
            inbound.append(ended - middle)
    return {
        "submission_ms": [round(1000 * s, 3) for s in submission],
        "inbound_ms": [round(1000 * s, 3) for s in inbound],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "message_bytes": len(render(KINDS[kind], doctor, pharmacy, "size")),
    }


def _name(source: Source) -> str:
    return "worktree" if source.commit is None else source.commit[:12]


def run_child(source: Source, kind: str, messages: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSECURE_")}
    if source.path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source.path), str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--child", "--kind", kind, "--messages", str(messages)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{_name(source)} failed:\n{result.stderr[-3000:]}")
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", help="worktree (default) or a git revision; repeat to compare")
    parser.add_argument("--kind", default="60KB", choices=("60KB", "2MB", "25MB"))
    parser.add_argument("--messages", type=int, default=40, help="measured messages per run (after 2 warm-ups)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "processing.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.kind, args.messages)))
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-processing-sources-"))
    sources = [Source() if s == "worktree" else snapshot(s, work) for s in (args.source or ["worktree"])]
    commit, changes = source_state()
    samples: dict[str, list[dict[str, Any]]] = {_name(s): [] for s in sources}
    for run in range(args.runs):
        order = sources[run % len(sources) :] + sources[: run % len(sources)]  # who goes first rotates
        for source in order:
            print(f"run {run + 1}/{args.runs}: {_name(source)}, {args.messages} × {args.kind}…", flush=True)
            samples[_name(source)].append(run_child(source, args.kind, args.messages))

    results: dict[str, Any] = {}
    for label, runs in samples.items():
        submission = [v for r in runs for v in r["submission_ms"]]
        inbound = [v for r in runs for v in r["inbound_ms"]]
        results[label] = {
            "submission_ms_median": round(statistics.median(submission), 2),
            "inbound_ms_median": round(statistics.median(inbound), 2),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "runs": runs,
        }
    first = results[_name(sources[0])]
    print(f"\n{'source':<24} {'submission ms':>14} {'inbound ms':>11} {'×':>6} {'peak RSS MiB':>13}")
    for label, figures in results.items():
        total = figures["submission_ms_median"] + figures["inbound_ms_median"]
        ratio = total / (first["submission_ms_median"] + first["inbound_ms_median"])
        print(f"{label:<24} {figures['submission_ms_median']:>14} {figures['inbound_ms_median']:>11} "
              f"{ratio:>6.2f} {figures['peak_rss_mib']:>13}")  # fmt: skip
    machine_info = machine()
    machine_info["load_average_at_end"] = os.getloadavg()
    report = {
        "benchmark": "processing", "kind": args.kind, "messages": args.messages, "runs": args.runs,
        "commit": commit, "uncommitted_changes": bool(changes), "machine": machine_info, "results": results,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
