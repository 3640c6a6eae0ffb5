"""CPU time and peak memory of a process tree, from ``/proc`` (Linux).

CPU: for every live process of the tree, ``utime + stime + cutime + cstime`` (``/proc/PID/stat``): a child that
exited and was reaped has its time folded into its parent's ``cutime/cstime``, so the sum over the live tree only
grows while its root lives, and the difference between two samples is the tree's CPU over the interval — Postfix's
short-lived ``smtpd``/``cleanup`` processes included. (A process reaped by someone outside the tree is lost; neither
relay does that.)

Memory: ``VmHWM`` (``/proc/PID/status``), the high-water mark of each live process's resident set since it started;
the relays are restarted for each measurement point, so it is the point's peak.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TreeSample", "descendants", "sample_tree"]

_TICKS = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found.setdefault(int(fields[1]), []).append(int(entry.name))
    return found


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children = _children()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


@dataclass(frozen=True)
class TreeSample:
    cpu_seconds: float  # user + system of the live tree and of the children it reaped
    processes: int
    peak_rss_max: int  # bytes: the largest single VmHWM
    peak_rss_sum: int  # bytes: the sum of the VmHWM of the live processes (an upper bound of the tree's peak)
    peak_rss_root: int  # bytes: the root process's VmHWM


def _cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICKS


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0  # a kernel thread, or a zombie


def sample_tree(root: int) -> TreeSample:
    cpu, peaks, root_peak, processes = 0.0, [], 0, 0
    for pid in descendants(root):
        try:
            cpu += _cpu(pid)
            peak = _hwm(pid)
        except (OSError, ValueError):
            continue  # exited meanwhile: its time is in its parent's cutime now
        processes += 1
        peaks.append(peak)
        if pid == root:
            root_peak = peak
    return TreeSample(round(cpu, 3), processes, max(peaks, default=0), sum(peaks), root_peak)
