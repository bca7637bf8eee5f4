"""What a simulation run writes: per-request records, summary.json and fleet.csv.

The summary uses the keys of vLLM's ``bench serve`` (TTFT, TPOT, ITL, E2E latency in ms;
throughputs per second of the run). The simulator does not keep a timestamp per token, so
the ITL figures pool each request's mean inter-token gap, weighted by its number of gaps.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from kvfleet.sim.engine import FLEET_COLUMNS, SimResult

log = logging.getLogger(__name__)

PERCENTILES = (50, 90, 95, 99)

RECORD_COLUMNS = (
    "request_id", "model", "worker_id", "arrival_s", "dispatch_s", "first_token_s",
    "finish_s", "input_tokens", "output_tokens", "ttft_s", "tpot_s", "e2e_s",
    "num_preemptions", "num_migrations", "dropped_reason",
)


def _stats(prefix: str, values_s: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    if values_s.size == 0:
        for k in ("mean", "median", "std"):
            out[f"{k}_{prefix}_ms"] = 0.0
        for p in PERCENTILES:
            out[f"p{p}_{prefix}_ms"] = 0.0
        return out
    ms = values_s * 1000.0
    if weights is None:
        out[f"mean_{prefix}_ms"] = float(ms.mean())
        out[f"median_{prefix}_ms"] = float(np.median(ms))
        out[f"std_{prefix}_ms"] = float(ms.std())
        for p in PERCENTILES:
            out[f"p{p}_{prefix}_ms"] = float(np.percentile(ms, p))
        return out
    order = np.argsort(ms, kind="stable")
    ms, w = ms[order], weights[order].astype(float)
    cum = np.cumsum(w)
    total = cum[-1]
    mean = float((ms * w).sum() / total)
    out[f"mean_{prefix}_ms"] = mean
    out[f"median_{prefix}_ms"] = float(ms[np.searchsorted(cum, 0.5 * total)])
    out[f"std_{prefix}_ms"] = float(np.sqrt(((ms - mean) ** 2 * w).sum() / total))
    for p in PERCENTILES:
        out[f"p{p}_{prefix}_ms"] = float(ms[min(np.searchsorted(cum, p / 100 * total), ms.size - 1)])
    return out


def summarize(result: SimResult) -> dict[str, object]:
    seqs = result.seqs
    done = [s for s in seqs if s.finish_s >= 0.0]
    arrival = np.array([s.arrival_s for s in done])
    first = np.array([s.first_token_s for s in done])
    finish = np.array([s.finish_s for s in done])
    n_in = np.array([s.num_prompt_tokens for s in done], dtype=np.int64)
    n_out = np.array([s.num_output for s in done], dtype=np.int64)
    start = min((s.arrival_s for s in seqs), default=0.0)
    end = float(finish.max()) if done else start
    duration = max(end - start, 1e-9)
    ttft = first - arrival
    e2e = finish - arrival
    gaps = np.maximum(n_out - 1, 0)
    multi = gaps > 0
    tpot = (finish[multi] - first[multi]) / gaps[multi]
    reasons: dict[str, int] = {}
    for s in seqs:
        if s.drop_reason:
            reasons[s.drop_reason] = reasons.get(s.drop_reason, 0) + 1
    summary: dict[str, object] = {
        "duration": duration,
        "completed": len(done),
        "num_requests": len(seqs),
        "failed": len(seqs) - len(done),
        "dropped_reasons": reasons,
        "total_input_tokens": int(n_in.sum()),
        "total_output_tokens": int(n_out.sum()),
        "request_throughput": len(done) / duration,
        "output_throughput": float(n_out.sum()) / duration,
        "total_token_throughput": float(n_in.sum() + n_out.sum()) / duration,
    }
    summary.update(_stats("ttft", ttft))
    summary.update(_stats("tpot", tpot))
    summary.update(_stats("itl", tpot, gaps[multi]))
    summary.update(_stats("e2el", e2e))
    cfg = result.config
    summary["sim"] = {
        "policy": cfg.policy,
        "gpu": cfg.gpu,
        "models": list(cfg.models),
        "num_gpus": cfg.num_gpus,
        "tp": result.workers[0].costs[next(iter(result.workers[0].costs))].tp,
        "num_workers": len(result.workers),
        "num_preemptions": int(sum(s.num_preemptions for s in seqs)),
        "num_migrations": result.num_migrations,
        "num_events": result.num_events,
        "num_plans": result.num_plans,
        "num_steps": result.num_steps,
        "wall_s": result.wall_s,
        "events_per_s": result.events_per_s,
        "virtual_end_s": result.end_s,
        "mean_active_gpus": (
            float(np.mean([r[1] for r in result.fleet_rows])) if result.fleet_rows else 0.0
        ),
    }
    return summary


def write_outputs(result: SimResult, out_dir: Path) -> dict[str, Path]:
    """Write requests.csv, summary.json and fleet.csv under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "requests": out_dir / "requests.csv",
        "summary": out_dir / "summary.json",
        "fleet": out_dir / "fleet.csv",
    }
    workers = result.workers
    with paths["requests"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RECORD_COLUMNS)
        for s in result.seqs:
            ok = s.finish_s >= 0.0
            ttft = s.first_token_s - s.arrival_s if ok else ""
            e2e = s.finish_s - s.arrival_s if ok else ""
            tpot = (s.finish_s - s.first_token_s) / (s.num_output - 1) if ok and s.num_output > 1 else ""
            w.writerow((
                s.request_id, s.model, workers[s.worker_idx].worker_id if s.worker_idx >= 0 else "",
                f"{s.arrival_s:.6f}", f"{s.dispatch_s:.6f}" if s.dispatch_s >= 0 else "",
                f"{s.first_token_s:.6f}" if s.first_token_s >= 0 else "",
                f"{s.finish_s:.6f}" if ok else "", s.num_prompt_tokens, s.num_output,
                f"{ttft:.6f}" if ok else "", f"{tpot:.6f}" if tpot != "" else "",
                f"{e2e:.6f}" if ok else "", s.num_preemptions, s.num_migrations, s.drop_reason,
            ))
    with paths["fleet"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FLEET_COLUMNS)
        w.writerows(result.fleet_rows)
    paths["summary"].write_text(json.dumps(summarize(result), indent=2) + "\n")
    return paths
