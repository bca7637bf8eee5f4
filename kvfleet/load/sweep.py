"""A request-rate sweep: the same trace slice replayed at several mean rates against one server,
and the highest rate it sustains within the SLO.

The slice keeps its requests, lengths and burstiness; only its clock is scaled (``speed``) so
that its mean arrival rate is the one asked for. A rate is *sustained* when the share of
requests that succeed within the SLO (vLLM's SLO attainment) is at least ``min_attainment``.
Pure arithmetic over summaries; the runs themselves are in ``bench.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kvfleet.workload.spec import RequestSpec


def slice_rate(specs: Sequence[RequestSpec]) -> float:
    """Mean arrival rate of a slice at speed 1: (n - 1) gaps over its span."""
    times = sorted(s.arrival_s for s in specs)
    span = times[-1] - times[0] if times else 0.0
    if len(times) < 2 or span <= 0:
        raise ValueError("a rate sweep needs a slice of at least two requests spread in time")
    return (len(times) - 1) / span


def speed_for_rate(base_rate: float, rate: float) -> float:
    """The replay speed that gives mean ``rate`` to a slice with ``base_rate`` at speed 1."""
    if rate <= 0:
        raise ValueError("rates must be > 0")
    return rate / base_rate


@dataclass(frozen=True, slots=True)
class RatePoint:
    """One server at one offered rate."""

    server: str
    rate: float  # offered mean rate (req/s)
    attainment: float  # SLO attainment over all requests sent
    goodput: float  # req/s that met the SLO
    throughput: float  # req/s completed
    p99_ttft_ms: float | None
    p99_tpot_ms: float | None
    mean_e2el_ms: float | None

    @classmethod
    def from_summary(cls, server: str, rate: float, summary: dict[str, object]) -> RatePoint:
        def num(key: str) -> float | None:
            v = summary.get(key)
            return float(v) if isinstance(v, int | float) else None

        return cls(
            server=server,
            rate=rate,
            attainment=num("slo_attainment") or 0.0,
            goodput=num("request_goodput") or 0.0,
            throughput=num("request_throughput") or 0.0,
            p99_ttft_ms=num("p99_ttft_ms"),
            p99_tpot_ms=num("p99_tpot_ms"),
            mean_e2el_ms=num("mean_e2el_ms"),
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Sustained:
    """The highest rate a server sustains within the SLO."""

    server: str
    tested_rate: float | None  # the highest tested rate that passed (None: none passed)
    interpolated_rate: float | None  # where attainment crosses the threshold (log-rate)
    stopped_at: float | None  # the first failing rate above the last passing one

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sustained_rate(points: Sequence[RatePoint], min_attainment: float) -> Sustained:
    """From one server's points: the highest passing rate below the first failing one, and the
    rate where attainment crosses ``min_attainment`` between them (linear in log rate)."""
    pts = sorted(points, key=lambda p: p.rate)
    server = pts[0].server if pts else ""
    best: RatePoint | None = None
    fail: RatePoint | None = None
    for p in pts:
        if p.attainment >= min_attainment:
            best = p
        else:
            fail = p
            break
    if best is None:
        return Sustained(server, None, None, fail.rate if fail else None)
    if fail is None:
        return Sustained(server, best.rate, best.rate, None)
    a0, a1 = best.attainment, fail.attainment
    x0, x1 = math.log(best.rate), math.log(fail.rate)
    frac = (a0 - min_attainment) / (a0 - a1) if a0 > a1 else 0.0
    return Sustained(server, best.rate, math.exp(x0 + frac * (x1 - x0)), fail.rate)


def should_stop(points: Sequence[RatePoint], min_attainment: float, misses: int = 2) -> bool:
    """Past saturation: the last ``misses`` rates all failed (higher rates only fail more)."""
    tail = sorted(points, key=lambda p: p.rate)[-misses:]
    return len(tail) == misses and all(p.attainment < min_attainment for p in tail)


def plot_sweep(points: Sequence[RatePoint], min_attainment: float, path: Path) -> Path:
    """Goodput and SLO attainment against offered rate, one line per server."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (ax_g, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    for server in dict.fromkeys(p.server for p in points):
        pts = sorted((p for p in points if p.server == server), key=lambda p: p.rate)
        rates = [p.rate for p in pts]
        ax_g.plot(rates, [p.goodput for p in pts], marker="o", label=server)
        ax_a.plot(rates, [p.attainment for p in pts], marker="o", label=server)
    top = max((p.rate for p in points), default=1.0)
    ax_g.plot([0, top], [0, top], color="grey", linestyle=":", label="offered")
    ax_g.set(xlabel="offered rate (req/s)", ylabel="goodput (req/s)", title="goodput at the SLO")
    ax_a.axhline(min_attainment, color="grey", linestyle="--", label="sustained threshold")
    ax_a.set(
        xlabel="offered rate (req/s)",
        ylabel="SLO attainment",
        ylim=(0, 1.05),
        title="SLO attainment",
    )
    for ax in (ax_g, ax_a):
        ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
