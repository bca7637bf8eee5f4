"""Rate sweeps: how much load each policy sustains within an SLO, in the simulator.

A workload (a trace slice) is replayed at increasing speeds. Each policy runs at each of
several token budgets, so every policy is reported at its best budget (a baseline's budget is
swept to its best, and the others get the same chance). From the runs:

- the highest rate a policy *sustains*: every swept rate up to it meets the SLO (p99 TTFT and
  p99 TPOT within their thresholds, no request refused or dropped);
- at the reference policy's highest such rate: each policy's SLO attainment, goodput (the
  offered rate times the attainment: requests per second served within the SLO) and mean
  job completion time (E2E latency);
- optionally, the fewest GPUs (of a list) with which each policy sustains that rate.

``sweep.csv`` has every run, ``sweep.json`` the analysis, ``goodput_vs_rate.png`` the plot.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from kvfleet.load.slo import Slo, SloSet
from kvfleet.sim.engine import RequestLike, simulate
from kvfleet.sim.fleet import SimConfig
from kvfleet.sim.report import summarize

log = logging.getLogger(__name__)

POINT_COLUMNS = (
    "policy", "token_budget", "num_gpus", "speed", "rate", "num_requests", "completed",
    "p99_ttft_s", "p99_tpot_s", "mean_ttft_s", "mean_tpot_s", "mean_e2el_s",
    "slo_attainment", "goodput", "output_throughput", "num_preemptions",
    "prediction_mae_tokens", "meets_slo",
)


@dataclass(frozen=True, slots=True)
class SweepPoint:
    policy: str
    token_budget: int
    num_gpus: int
    speed: float
    rate: float  # requests per second of the replayed workload
    num_requests: int
    completed: int
    p99_ttft_s: float | None
    p99_tpot_s: float | None
    mean_ttft_s: float | None
    mean_tpot_s: float | None
    mean_e2el_s: float | None
    slo_attainment: float
    goodput: float
    output_throughput: float
    num_preemptions: int
    prediction_mae_tokens: float | None
    meets_slo: bool


def arrival_rate(requests: Sequence[RequestLike]) -> float:
    if len(requests) < 2:
        return 0.0
    times = [r.arrival_s for r in requests]
    span = max(times) - min(times)
    return (len(requests) - 1) / span if span > 0 else math.inf


def meets(summary: dict, slo: Slo) -> bool:  # type: ignore[type-arg]
    """p99 TTFT and p99 TPOT within the SLO, and every request served."""
    if summary["failed"]:
        return False
    for key, bound in (("p99_ttft_ms", slo.ttft_s), ("p99_tpot_ms", slo.tpot_s)):
        value = summary.get(key)
        if bound is not None and value is not None and value / 1000.0 > bound:
            return False
    return True


def _s(ms: object) -> float | None:
    return None if ms is None else float(ms) / 1000.0  # type: ignore[arg-type]


def run_point(
    config: SimConfig, requests: Sequence[RequestLike], slo: Slo, speed: float
) -> SweepPoint:
    """One simulation of ``requests`` (already replayed at ``speed``)."""
    slos = SloSet(slo)
    result = simulate(config, requests, slos=slos)
    summary = summarize(result, slos)
    return SweepPoint(
        config.policy, config.token_budget, config.num_gpus, speed,
        arrival_rate(requests), len(requests), int(summary["completed"]),  # type: ignore[arg-type]
        _s(summary["p99_ttft_ms"]), _s(summary["p99_tpot_ms"]), _s(summary["mean_ttft_ms"]),
        _s(summary["mean_tpot_ms"]), _s(summary["mean_e2el_ms"]),
        float(summary["slo_attainment"] or 0.0),  # type: ignore[arg-type]
        arrival_rate(requests) * float(summary["slo_attainment"] or 0.0),  # type: ignore[arg-type]
        float(summary["output_throughput"]),  # type: ignore[arg-type]
        int(summary["sim"]["num_preemptions"]),  # type: ignore[index]
        summary["prediction_mae_tokens"],  # type: ignore[arg-type]
        meets(summary, slo),
    )


@dataclass(frozen=True, slots=True)
class Job:
    config: SimConfig
    speed: float


def _run_job(args: tuple[Job, Callable[[float], Sequence[RequestLike]], Slo]) -> SweepPoint:
    job, workload, slo = args
    return run_point(job.config, workload(job.speed), slo, job.speed)


def run_jobs(
    jobs: Sequence[Job],
    workload: Callable[[float], Sequence[RequestLike]],
    slo: Slo,
    processes: int = 1,
) -> list[SweepPoint]:
    """Run every job (``workload(speed)`` gives its requests); in parallel processes when
    asked (``workload`` must then be picklable)."""
    args = [(j, workload, slo) for j in jobs]
    if processes <= 1:
        return [_run_job(a) for a in args]
    with ProcessPoolExecutor(processes) as pool:
        return list(pool.map(_run_job, args))


def sustained_rate(points: Sequence[SweepPoint]) -> float:
    """The highest rate such that every swept rate up to it meets the SLO (0: none does)."""
    best = 0.0
    for p in sorted(points, key=lambda p: p.rate):
        if not p.meets_slo:
            break
        best = p.rate
    return best


def best_budgets(points: Sequence[SweepPoint], num_gpus: int) -> dict[str, int]:
    """Each policy's token budget with the highest sustained rate (ties: the smaller)."""
    out: dict[str, int] = {}
    for policy in dict.fromkeys(p.policy for p in points):
        by_budget: dict[int, list[SweepPoint]] = {}
        for p in points:
            if p.policy == policy and p.num_gpus == num_gpus:
                by_budget.setdefault(p.token_budget, []).append(p)
        out[policy] = max(sorted(by_budget), key=lambda b: sustained_rate(by_budget[b]))
    return out


def analyse(points: Sequence[SweepPoint], reference: str, num_gpus: int) -> dict[str, object]:
    """The figures of the closing note: sustained rates and their ratios to ``reference``,
    and every policy at the reference's highest sustained rate."""
    budgets = best_budgets(points, num_gpus)

    def line(policy: str) -> list[SweepPoint]:
        return sorted((p for p in points if p.policy == policy and p.num_gpus == num_gpus
                       and p.token_budget == budgets[policy]), key=lambda p: p.rate)

    ref_rate = sustained_rate(line(reference))
    ref_point = next((p for p in line(reference) if p.rate == ref_rate), None)
    policies: dict[str, object] = {}
    for policy, budget in budgets.items():
        pts = line(policy)
        rate = sustained_rate(pts)
        at_ref = next((p for p in pts if ref_point is not None and p.speed == ref_point.speed),
                      None)
        policies[policy] = {
            "best_token_budget": budget,
            "sustained_rate": rate,
            "rate_ratio_to_reference": rate / ref_rate if ref_rate > 0 else None,
            "at_reference_rate": asdict(at_ref) if at_ref is not None else None,
            "budgets": {
                str(b): sustained_rate([p for p in points if p.policy == policy
                                        and p.num_gpus == num_gpus and p.token_budget == b])
                for b in sorted({p.token_budget for p in points if p.policy == policy})
            },
        }
    return {
        "reference": reference,
        "num_gpus": num_gpus,
        "reference_rate": ref_rate,
        "reference_speed": ref_point.speed if ref_point is not None else None,
        "policies": policies,
    }


def gpus_needed(points: Sequence[SweepPoint], speed: float) -> dict[str, int | None]:
    """Per policy, the fewest GPUs whose run at ``speed`` meets the SLO (None: none did)."""
    out: dict[str, int | None] = {}
    for policy in dict.fromkeys(p.policy for p in points):
        ok = [p.num_gpus for p in points
              if p.policy == policy and p.speed == speed and p.meets_slo]
        out[policy] = min(ok) if ok else None
    return out


def write_csv(points: Sequence[SweepPoint], path: Path) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(POINT_COLUMNS)
        for p in points:
            w.writerow([getattr(p, c) for c in POINT_COLUMNS])


def write_json(data: dict[str, object], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def plot(points: Sequence[SweepPoint], analysis: dict, path: Path, title: str) -> Path:  # type: ignore[type-arg]
    """Goodput and SLO attainment against rate, each policy at its best budget."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    gpus = analysis["num_gpus"]
    for policy, info in analysis["policies"].items():
        budget = info["best_token_budget"]
        pts = sorted((p for p in points if p.policy == policy and p.num_gpus == gpus
                      and p.token_budget == budget), key=lambda p: p.rate)
        label = f"{policy} (budget {budget})"
        ax1.plot([p.rate for p in pts], [p.goodput for p in pts], marker="o", label=label)
        ax2.plot([p.rate for p in pts], [p.slo_attainment for p in pts], marker="o", label=label)
    ax1.set_xlabel("request rate (req/s)")
    ax1.set_ylabel("goodput (req/s within SLO)")
    ax2.set_xlabel("request rate (req/s)")
    ax2.set_ylabel("SLO attainment")
    ax2.set_ylim(0, 1.05)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass(frozen=True, slots=True)
class WorkloadAt:
    """A workload (``WorkloadOptions`` fields) replayed at a speed-up; picklable, so sweep
    jobs can run in other processes."""

    options: tuple[tuple[str, object], ...]

    def __call__(self, speed: float) -> Sequence[RequestLike]:
        return _build(self.options, speed)


def _build(options: tuple[tuple[str, object], ...], speed: float) -> Sequence[RequestLike]:
    from kvfleet.workload.options import WorkloadOptions, build_workload

    kw = dict(options)
    kw["speed"] = float(kw.get("speed") or 1.0) * speed  # type: ignore[arg-type]
    return build_workload(WorkloadOptions(**kw), require_model=False)  # type: ignore[arg-type]
