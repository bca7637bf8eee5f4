"""`kvfleet bench kunserve-sim`: KunServe against vLLM and Llumnix in the simulator, as the
paper compares them (tail and mean TTFT inside the overload windows and overall, TPOT as the
pipeline's cost, time to drop and to restore).

Fleets: Llama-3-8B on 8 H100s (one GPU per worker) and Llama-3-70B on 32 A100-80Gs (TP 4).
Every policy runs with the same fleet, memory and engine limits (``max_num_seqs`` high enough
that KV, not a sequence cap, bounds a batch: the baselines' best setting for these
workloads). Workloads:

- ``azure``: the Azure conversation trace, sped up to the fleet's ``azure_speed``;
- ``spike-KxL``: Poisson arrivals at 0.7x the fleet's sustainable rate with a spike of K x the
  sustainable rate for L seconds at t=60 s (lengths: ``spike_input``/``spike_output``).

The sustainable rate is the highest Poisson rate at which vLLM's pools do not fill
(``--sweep`` measures it). Overload windows: the spike for ``spike-*``; for ``azure``, the
sample intervals in which vLLM had requests waiting for KV (queued at the scheduler or on a
worker), the same windows for every policy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer


@dataclass(frozen=True)
class Fleet:
    name: str
    model: str
    gpu: str
    gpus: int
    tp: int
    sustainable: float  # req/s of the spike lengths (measured with --sweep)
    azure_speed: float
    spike_input: str = "512-2048"
    spike_output: str = "512-1536"


FLEETS = {
    "8b-h100": Fleet("8b-h100", "Llama-3-8B", "H100", 8, 1, 50.0, 30.0),
    "70b-a100": Fleet("70b-a100", "Llama-3-70B", "A100-80G", 32, 4, 10.0, 4.0,
                      "1024-3072", "1024-2048"),
}
POLICIES = ("vllm", "llumnix", "kunserve")
MAX_NUM_SEQS = 1024


def _workload(fleet: Fleet, name: str, seed: int, azure_start_s: float,
              azure_duration_s: float) -> tuple[list[Any], list[tuple[float, float]] | None]:
    from kvfleet.workload.options import WorkloadOptions, build_workload

    if name == "azure":
        opts = WorkloadOptions(trace="azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
                               start_s=azure_start_s, duration_s=azure_duration_s,
                               speed=fleet.azure_speed)
        return build_workload(opts, require_model=False), None
    if not name.startswith("spike-") or "x" not in name:
        raise typer.BadParameter(f"unknown workload {name!r}: azure or spike-KxL, e.g. spike-2x30")
    k, length = name.removeprefix("spike-").split("x")
    factor, spike_s = float(k), float(length)
    opts = WorkloadOptions(
        arrivals="poisson", rate=0.7 * fleet.sustainable, spike_rate=factor * fleet.sustainable,
        spike_s=spike_s, spike_period_s=1e9, spike_start_s=60.0, duration_s=120.0 + spike_s,
        input_len=fleet.spike_input, output_len=fleet.spike_output, seed=seed)
    return build_workload(opts, require_model=False), [(60.0, 60.0 + spike_s)]


def _config(fleet: Fleet, policy: str) -> Any:
    from kvfleet.sim import SimConfig

    return SimConfig(policy=policy, gpu=fleet.gpu, models=[fleet.model], num_gpus=fleet.gpus,
                     tp=fleet.tp, max_num_seqs=MAX_NUM_SEQS)


def _waiting_windows(result: Any, interval_s: float) -> list[tuple[float, float]]:
    """Sample intervals in which requests waited for KV (scheduler queue or worker queue)."""
    windows: list[tuple[float, float]] = []
    for row in result.fleet_rows:
        t, queue, waiting = row[0], row[4], row[5]
        if queue + waiting > 0:
            start = t - interval_s
            if windows and windows[-1][1] >= start:
                windows[-1] = (windows[-1][0], t)
            else:
                windows.append((start, t))
    return windows


def _inside(t: float, windows: list[tuple[float, float]]) -> bool:
    return any(a <= t < b for a, b in windows)


def _metrics(result: Any, windows: list[tuple[float, float]]) -> dict[str, Any]:
    done = [s for s in result.seqs if s.finish_s >= 0]
    ttft = np.array([s.first_token_s - s.arrival_s for s in done])
    tpot = np.array([(s.finish_s - s.first_token_s) / (s.num_output - 1)
                     for s in done if s.num_output > 1])
    win = np.array([s.first_token_s - s.arrival_s for s in done if _inside(s.arrival_s, windows)])

    def pct(a: np.ndarray, q: float) -> float | None:
        return float(np.percentile(a, q)) if a.size else None

    drops = [a for a in result.layer_actions if a["kind"] == "drop"]
    restores = [a for a in result.layer_actions if a["kind"] == "restore"]
    return {
        "completed": len(done), "failed": len(result.seqs) - len(done),
        "mean_ttft_s": float(ttft.mean()) if ttft.size else None, "p99_ttft_s": pct(ttft, 99),
        "window_requests": int(win.size),
        "window_mean_ttft_s": float(win.mean()) if win.size else None,
        "window_p99_ttft_s": pct(win, 99),
        "mean_tpot_s": float(tpot.mean()) if tpot.size else None, "p99_tpot_s": pct(tpot, 99),
        "num_preemptions": int(sum(s.num_preemptions for s in result.seqs)),
        "max_kv_utilization": max((r[2] for r in result.fleet_rows), default=0.0),
        "num_drops": len(drops), "num_restores": len(restores),
        "time_to_drop_s": [round(a["time_to_drop_s"], 3) for a in drops],
        "time_to_restore_s": [round(a["time_to_restore_s"], 3) for a in restores],
        "restore_reload_s": [round(a["reload_s"], 3) for a in restores],
        "drop_exchange_s": [round(a["exchange_s"], 3) for a in drops],
        "groups": [a["members"] for a in drops],
    }


def _ratio(base: float | None, ours: float | None) -> float | None:
    return base / ours if base is not None and ours else None


def run(fleets: list[str], workloads: list[str], out: Path, seed: int,
        azure_start_s: float, azure_duration_s: float) -> dict[str, Any]:
    from kvfleet.sim import simulate

    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for fname in fleets:
        fleet = FLEETS[fname]
        for wname in workloads:
            reqs, windows = _workload(fleet, wname, seed, azure_start_s, azure_duration_s)
            results: dict[str, Any] = {}
            for policy in POLICIES:
                t0 = time.perf_counter()
                res = simulate(_config(fleet, policy), reqs)
                if windows is None:  # azure: where the vLLM baseline had requests waiting
                    windows = _waiting_windows(res, _config(fleet, policy).sample_interval_s)
                results[policy] = (res, time.perf_counter() - t0)
            assert windows is not None
            key = f"{fname}/{wname}"
            entry: dict[str, Any] = {"requests": len(reqs), "windows": windows, "policies": {}}
            for policy, (res, wall) in results.items():
                m = _metrics(res, windows)
                m["wall_s"] = round(wall, 1)
                entry["policies"][policy] = m
            ks = entry["policies"]["kunserve"]
            entry["kunserve_vs"] = {
                b: {"window_p99_ttft_x": _ratio(entry["policies"][b]["window_p99_ttft_s"],
                                                ks["window_p99_ttft_s"]),
                    "window_mean_ttft_x": _ratio(entry["policies"][b]["window_mean_ttft_s"],
                                                 ks["window_mean_ttft_s"]),
                    "p99_ttft_x": _ratio(entry["policies"][b]["p99_ttft_s"], ks["p99_ttft_s"]),
                    "p99_tpot_cost_x": _ratio(ks["p99_tpot_s"], entry["policies"][b]["p99_tpot_s"])}
                for b in ("vllm", "llumnix")}
            report[key] = entry
            _print(key, entry)
            (out / "kunserve_sim.json").write_text(json.dumps(report, indent=2))
    return report


def _fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def _print(key: str, entry: dict[str, Any]) -> None:
    typer.echo(f"\n{key}: {entry['requests']} requests, overload windows "
               f"{[(round(a, 1), round(b, 1)) for a, b in entry['windows']][:6]}")
    typer.echo(f"{'policy':>9} | {'win p99 TTFT s':>14} {'win mean':>9} | {'p99 TTFT s':>10} "
               f"{'mean':>7} | {'p99 TPOT ms':>11} | preempt | drops (s to drop) | restores "
               f"(s to restore, reload)")
    for policy, m in entry["policies"].items():
        typer.echo(
            f"{policy:>9} | {_fmt(m['window_p99_ttft_s']):>14} {_fmt(m['window_mean_ttft_s']):>9}"
            f" | {_fmt(m['p99_ttft_s']):>10} {_fmt(m['mean_ttft_s']):>7} | "
            f"{_fmt(m['p99_tpot_s'], 1000, 1):>11} | {m['num_preemptions']:>7} | "
            f"{m['num_drops']} {m['time_to_drop_s'][:4]} | {m['num_restores']} "
            f"{m['time_to_restore_s'][:4]} {m['restore_reload_s'][:2]}")
    for base, r in entry["kunserve_vs"].items():
        typer.echo(f"  kunserve vs {base}: window p99 TTFT {_fmt(r['window_p99_ttft_x'])}x lower, "
                   f"window mean {_fmt(r['window_mean_ttft_x'])}x, overall p99 "
                   f"{_fmt(r['p99_ttft_x'])}x; p99 TPOT {_fmt(r['p99_tpot_cost_x'])}x")


def sweep(fleet: Fleet, rates: list[float], seed: int) -> None:
    """vLLM at steady Poisson rates of the spike lengths: the sustainable rate is the highest
    one whose pools do not fill (no request waits for KV)."""
    from kvfleet.sim import simulate
    from kvfleet.workload.options import WorkloadOptions, build_workload

    for rate in rates:
        reqs = build_workload(WorkloadOptions(
            arrivals="poisson", rate=rate, duration_s=240.0, input_len=fleet.spike_input,
            output_len=fleet.spike_output, seed=seed), require_model=False)
        res = simulate(_config(fleet, "vllm"), reqs)
        m = _metrics(res, [])
        waited = sum(1 for r in res.fleet_rows if r[4] + r[5] > 0)
        typer.echo(f"{fleet.name} rate {rate:g}: max KV {m['max_kv_utilization']:.2f}, samples "
                   f"with requests waiting {waited}, p99 TTFT {_fmt(m['p99_ttft_s'])}s, "
                   f"p99 TPOT {_fmt(m['p99_tpot_s'], 1000, 1)}ms")


def register(app: typer.Typer) -> None:
    @app.command("kunserve-sim")
    def kunserve_sim(
        fleet: Annotated[str, typer.Option(help="8b-h100, 70b-a100 or all.")] = "all",
        workload: Annotated[str, typer.Option(
            help="Comma list: azure, spike-KxL (K x the sustainable rate for L s).")]
        = "azure,spike-2x30,spike-3x60",
        seed: Annotated[int, typer.Option(help="Workload seed.")] = 1,
        azure_start_s: Annotated[float, typer.Option(help="Azure trace slice start.")] = 0.0,
        azure_duration_s: Annotated[float, typer.Option(
            help="Azure trace slice length (trace time).")] = 1800.0,
        sweep_rates: Annotated[str | None, typer.Option(
            "--sweep", help="Instead: vLLM at these steady rates (comma list), to find the "
            "sustainable rate.")] = None,
        out: Annotated[Path, typer.Option(help="Results folder.")] = Path("runs/kunserve-sim"),
    ) -> None:
        """KunServe vs vLLM and Llumnix in the simulator (TTFT in overload windows, TPOT,
        time to drop and restore)."""
        names = list(FLEETS) if fleet == "all" else [f.strip() for f in fleet.split(",")]
        unknown = [n for n in names if n not in FLEETS]
        if unknown:
            raise typer.BadParameter(f"unknown fleet {unknown}; known: {', '.join(FLEETS)}")
        if sweep_rates:
            for n in names:
                sweep(FLEETS[n], [float(r) for r in sweep_rates.split(",")], seed)
            return
        run(names, [w.strip() for w in workload.split(",") if w.strip()], out, seed,
            azure_start_s, azure_duration_s)
        typer.echo(f"\nresults in {out / 'kunserve_sim.json'}")
