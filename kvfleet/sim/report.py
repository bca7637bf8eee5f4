"""What a simulation run writes: per-request records, summary.json and fleet.csv.

``requests.csv`` and ``summary.json`` are the load generator's (``kvfleet.load``), built
from the same ``RequestRecord``s, so the same summary, comparison and plot code reads both.
The simulated client sends each request at its arrival time. The simulator keeps no
timestamp per token, so the ITL figures pool each request's mean inter-token gap, weighted
by its number of gaps (vLLM pools every gap). ``sim_requests.csv`` adds what only the
simulator knows: the worker, dispatch time, preemptions and migrations of each request.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from kvfleet.load.metrics import DEFAULT_PERCENTILES, RequestRecord, percentile_key
from kvfleet.load.metrics import summarize as summarize_records
from kvfleet.load.report import write_requests_csv, write_summary
from kvfleet.load.slo import SloSet
from kvfleet.sim.engine import FLEET_COLUMNS, SimResult

log = logging.getLogger(__name__)

SIM_RECORD_COLUMNS = (
    "request_id", "worker_id", "dispatch_s", "first_token_s", "finish_s",
    "num_preemptions", "num_migrations", "dropped_reason",
)


def to_records(result: SimResult) -> list[RequestRecord]:
    """One load-generator record per request (failed ones carry the drop reason). Times are
    the client's: a token reaches it ``result.relay_s`` after the worker made it."""
    out: list[RequestRecord] = []
    relay = result.relay_s  # worker -> client, when the stack's overheads are simulated
    for s in result.seqs:
        ok = s.finish_s >= 0.0
        out.append(RequestRecord(
            s.request_id, s.model, s.arrival_s, s.arrival_s, s.num_prompt_tokens,
            s.max_tokens, s.num_output if ok else 0, ok,
            s.first_token_s + relay - s.arrival_s if ok else None,
            s.finish_s + relay - s.arrival_s if ok else None,
            (), "" if ok else f"dropped: {s.drop_reason}",
            s.ttft_slo_s, s.tpot_slo_s, s.predicted_output_tokens, s.isolated_s,
        ))
    return out


def _weighted_itl(records: list[RequestRecord], percentiles: tuple[float, ...]) -> dict[str, float | None]:
    pairs = [(t, r.output_tokens - 1) for r in records if (t := r.tpot_s) is not None]
    keys = ["mean_itl_ms", "median_itl_ms", "std_itl_ms"] + [
        f"{percentile_key(p)}_itl_ms" for p in percentiles
    ]
    if not pairs:
        return dict.fromkeys(keys, None)
    arr = np.array(pairs, dtype=float)
    order = np.argsort(arr[:, 0], kind="stable")
    ms, w = arr[order, 0] * 1000.0, arr[order, 1]
    cum = np.cumsum(w)
    total = cum[-1]
    mean = float((ms * w).sum() / total)

    def q(frac: float) -> float:
        return float(ms[min(int(np.searchsorted(cum, frac * total)), ms.size - 1)])

    out: dict[str, float | None] = {
        "mean_itl_ms": mean,
        "median_itl_ms": q(0.5),
        "std_itl_ms": float(np.sqrt(((ms - mean) ** 2 * w).sum() / total)),
    }
    for p in percentiles:
        out[f"{percentile_key(p)}_itl_ms"] = q(p / 100.0)
    return out


def summarize(
    result: SimResult,
    slos: SloSet | None = None,
    records: list[RequestRecord] | None = None,
    options: dict[str, object] | None = None,
) -> dict[str, object]:
    """The load generator's summary of the simulated run, plus a ``sim`` block."""
    records = records if records is not None else to_records(result)
    start = min((s.arrival_s for s in result.seqs), default=0.0)
    end = max((s.finish_s for s in result.seqs), default=start)
    duration = max(end - start, 1e-9)
    percentiles = tuple(DEFAULT_PERCENTILES)
    summary = summarize_records(records, duration, slos, percentiles, options)
    summary.update(_weighted_itl(records, percentiles))
    reasons: dict[str, int] = {}
    for s in result.seqs:
        if s.drop_reason:
            reasons[s.drop_reason] = reasons.get(s.drop_reason, 0) + 1
    first = next((w for w in result.workers if w.costs), result.workers[0])
    rows = result.fleet_rows
    summary["sim"] = {
        "policy": result.config.policy,
        "gpu": result.config.gpu,
        "models": list(result.config.models),
        "num_gpus": result.config.num_gpus,
        "tp": first.costs[next(iter(first.costs))].tp,
        "num_workers": len(result.workers),
        "dropped_reasons": reasons,
        "num_preemptions": int(sum(s.num_preemptions for s in result.seqs)),
        "num_migrations": result.num_migrations,
        "parallel_degrees": [w.parallel_degree for w in result.workers],
        "placement": {w.worker_id: list(w.models) for w in result.workers},
        "num_replacements": len(result.replacements),
        "replacements": [{"t_s": t, "loads": a, "unloads": u} for t, a, u in result.replacements],
        "num_model_loads": sum(w.num_loads for w in result.workers),
        "num_model_unloads": sum(w.num_unloads for w in result.workers),
        "num_events": result.num_events,
        "num_plans": result.num_plans,
        "num_steps": result.num_steps,
        "wall_s": result.wall_s,
        "cpu_s": result.cpu_s,
        "events_per_s": result.events_per_s,
        "virtual_end_s": result.end_s,
        "mean_active_gpus": float(np.mean([r[1] for r in rows])) if rows else 0.0,
        "peak_active_gpus": int(max((r[1] for r in rows), default=0)),
        "mean_idle_gpus": float(np.mean([r[9] for r in rows])) if rows else 0.0,
        "migrations_per_s": result.num_migrations / duration,
        "mean_kv_utilization": float(np.mean([r[2] for r in rows])) if rows else 0.0,
        "mean_kv_utilization_active": float(np.mean([r[10] for r in rows if r[1] > 0]))
        if any(r[1] > 0 for r in rows) else 0.0,
        "migrations_by_mode": dict(sorted(result.migration_stats.by_mode.items())),
        "migrations_aborted": result.migration_stats.aborted,
        **_pauses(result.migration_stats.pauses_s),
        "itl_note": "pooled per-request mean gaps (no per-token timestamps in the simulator)",
    }
    return summary


def _pauses(pauses_s: list[float]) -> dict[str, float | None]:
    """How long migrated requests stood still (KV modes: stop at the source to resume)."""
    if not pauses_s:
        return {"mean_migration_pause_ms": None, "p99_migration_pause_ms": None}
    arr = np.array(pauses_s) * 1000.0
    return {"mean_migration_pause_ms": float(arr.mean()),
            "p99_migration_pause_ms": float(np.percentile(arr, 99))}


def write_outputs(
    result: SimResult,
    out_dir: Path,
    slos: SloSet | None = None,
    options: dict[str, object] | None = None,
) -> dict[str, object]:
    """Write requests.csv, sim_requests.csv, summary.json and fleet.csv; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = to_records(result)
    write_requests_csv(records, out_dir / "requests.csv", slos)
    workers = result.workers
    with (out_dir / "sim_requests.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SIM_RECORD_COLUMNS)
        for s in result.seqs:
            w.writerow((
                s.request_id, workers[s.worker_idx].worker_id if s.worker_idx >= 0 else "",
                f"{s.dispatch_s:.6f}" if s.dispatch_s >= 0 else "",
                f"{s.first_token_s:.6f}" if s.first_token_s >= 0 else "",
                f"{s.finish_s:.6f}" if s.finish_s >= 0 else "",
                s.num_preemptions, s.num_migrations, s.drop_reason,
            ))
    with (out_dir / "fleet.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FLEET_COLUMNS)
        w.writerows(result.fleet_rows)
    summary = summarize(result, slos, records, options)
    write_summary(summary, out_dir / "summary.json")
    return summary
