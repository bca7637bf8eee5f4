"""How busy the machine is while something is measured (Linux ``/proc``).

A ``MachineSampler`` watches, on a background thread, how many threads are runnable on the
whole machine (``/proc/loadavg``) and how many of them belong to given processes (their
tasks in state R), and reads those processes' CPU time at the start and the end. What is
runnable and not ours is the background: other people's work on a shared machine. Where
``/proc`` is missing everything reads as zero.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def runnable_threads() -> int:
    """Threads runnable on the machine now (this one included)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0


def own_runnable(pids: list[int]) -> int:
    """Threads of ``pids`` in state R now."""
    n = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2] == "R":
                n += 1
    return n


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class MachineLoad:
    """What a sampler saw: means over its samples, CPU seconds per named process."""

    wall_s: float = 0.0
    num_samples: int = 0
    runnable: float = 0.0  # threads runnable on the machine
    ours: float = 0.0  # ... of them, the watched processes'
    cpu_s: dict[str, float] = field(default_factory=dict)
    cores: int = 1
    samples: list[tuple[float, int, int]] = field(default_factory=list, repr=False)
    """(wall clock, runnable, ours) of every sample."""

    @property
    def background(self) -> float:
        """Runnable threads that are not the watched processes' (mean)."""
        return max(0.0, self.runnable - self.ours)

    def cores_used(self, names: list[str] | None = None) -> float:
        """Mean cores the named processes (default: all) used."""
        if self.wall_s <= 0:
            return 0.0
        total = sum(v for k, v in self.cpu_s.items() if names is None or k in names)
        return total / self.wall_s

    def background_series(self, t0: float, window_s: float = 1.0) -> list[tuple[float, float]]:
        """The background over windows of ``window_s``: ``(start - t0, mean threads)``."""
        out: list[tuple[float, float]] = []
        if not self.samples:
            return out
        start = self.samples[0][0]
        acc: list[float] = []
        for t, total, ours in self.samples:
            while t >= start + window_s:
                if acc:
                    out.append((start - t0, sum(acc) / len(acc)))
                    acc = []
                start += window_s
            acc.append(max(0.0, float(total - ours)))
        if acc:
            out.append((start - t0, sum(acc) / len(acc)))
        return out

    def to_dict(self) -> dict[str, object]:
        return {"wall_s": self.wall_s, "num_samples": self.num_samples,
                "runnable_threads": self.runnable, "our_runnable_threads": self.ours,
                "background_threads": self.background, "cores": self.cores,
                "cpu_s": dict(self.cpu_s)}


def background_weight(load: MachineLoad, name: str, threads: float = 1.0) -> float:
    """How hard one runnable background thread competes with a busy one, from a measurement
    in which process ``name`` kept ``threads`` threads busy: it got ``cpu / wall`` cores
    where fair sharing among ``threads + w x background`` would give ``cores / (...)``.
    Runnable threads that are not all CPU-bound, or that share a scheduling group, weigh
    less than 1. 1 when the measurement says nothing (an idle machine)."""
    cpu = load.cpu_s.get(name, 0.0)
    if load.wall_s <= 0 or cpu <= 0 or load.background < 0.5:
        return 1.0
    share = cpu / load.wall_s / threads  # of a core, per thread
    if share >= 0.9 * min(1.0, load.cores / threads):
        return 1.0  # not limited by the background
    return min(2.0, max(0.1, (load.cores / share - threads) / load.background))


class MachineSampler:
    """``with MachineSampler({"gateway": pid, ...}) as s: ...``; then ``s.load``."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self.load = MachineLoad(cores=cpu_cores())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self._sums = [0, 0, 0]  # samples, runnable, ours

    def __enter__(self) -> MachineSampler:
        self._t0 = time.perf_counter()
        self._cpu0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self._thread = threading.Thread(target=self._run, name="machine-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        pids = list(self.pids.values())
        while not self._stop.wait(self.interval_s):
            total = runnable_threads()
            ours = own_runnable(pids)
            self.load.samples.append((time.time(), total, ours))
            self._sums[0] += 1
            self._sums[1] += total
            self._sums[2] += ours

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        n = self._sums[0]
        self.load.wall_s = time.perf_counter() - self._t0
        self.load.num_samples = n
        if n:
            self.load.runnable = self._sums[1] / n
            self.load.ours = self._sums[2] / n
        self.load.cpu_s = {k: max(0.0, cpu_seconds(p) - self._cpu0.get(k, 0.0))
                           for k, p in self.pids.items()}
