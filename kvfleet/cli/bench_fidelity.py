"""`kvfleet bench fidelity`: one workload on the live stack and in the simulator.

    kvfleet bench fidelity --trace azure_llm_2023/AzureLLMInferenceTrace_conv.csv \\
        --model smollm2-135m --workers 2 --start 600 --duration 60 --speed 0.1 \\
        --max-input 512 --max-output 64 --num-requests 60 --json fidelity.json

Prints sim/live ratios of mean and p99 TTFT, TPOT and E2E latency (see kvfleet.sim.fidelity).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kvfleet.cli.sim import (
    Arrivals,
    Cv,
    DurationS,
    InputLen,
    LengthScale,
    MaxInput,
    MaxOutput,
    Mix,
    NumRequests,
    OutputLen,
    RampFrom,
    RampS,
    Rate,
    RateScale,
    Seed,
    Speed,
    SpikePeriod,
    SpikeRate,
    SpikeS,
    SpikeStart,
    SpreadTies,
    StartS,
    Trace,
)


def _ints(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected a comma list of integers, got {text!r}") from None


def register(app: typer.Typer) -> None:
    """Add `fidelity` to the `bench` group."""

    @app.command("fidelity")
    def fidelity(
        trace: Trace = None,
        model: Annotated[str, typer.Option(help="Model served by the stack and asked for by the requests.")] = "smollm2-135m",
        arrivals: Arrivals = None, rate: Rate = 1.0, cv: Cv = 1.0, ramp_s: RampS = 0.0,
        ramp_from_rate: RampFrom = 0.0, spike_rate: SpikeRate = 0.0, spike_s: SpikeS = 0.0,
        spike_period_s: SpikePeriod = 0.0, spike_start_s: SpikeStart = 0.0,
        input_len: InputLen = "256", output_len: OutputLen = "64", mix: Mix = None,
        rate_scale: RateScale = 1.0, seed: Seed = 0, start_s: StartS = 0.0,
        duration_s: DurationS = None, speed: Speed = 1.0, length_scale: LengthScale = 1.0,
        max_input: MaxInput = None,
        max_output: MaxOutput = None, num_requests: NumRequests = None,
        spread_ties: SpreadTies = False,
        workers: Annotated[int, typer.Option(min=1, help="Workers (live and simulated).")] = 2,
        policy: Annotated[str, typer.Option(help="Policy set (kvfleet policies).")] = "vllm",
        memory_bytes: Annotated[int, typer.Option(help="Each worker's memory budget.")] = 1_200_000_000,
        threads: Annotated[int, typer.Option(min=1, help="torch threads per worker (and for the calibration).")] = 1,
        max_num_batched_tokens: Annotated[int, typer.Option(min=16, help="Per-step token budget.")] = 2048,
        max_num_seqs: Annotated[int, typer.Option(min=1, help="Sequences per step at most.")] = 64,
        page_size_bytes: Annotated[int, typer.Option(min=1024, help="KV page size.")] = 1 << 20,
        slo: Annotated[list[str] | None, typer.Option(help="[MODEL:]ttft=..,tpot=.. (sent with each request, both runs).")] = None,
        calibration: Annotated[Path | None, typer.Option(help="Use this step sweep (bench engine --sweep) instead of measuring one.")] = None,
        overheads: Annotated[Path | None, typer.Option(help="Use these hops (bench gateway --json) instead of measuring them.")] = None,
        sweep_batches: Annotated[str | None, typer.Option(help="Sweep batch sizes (default: from the workload).")] = None,
        sweep_contexts: Annotated[str | None, typer.Option(help="Sweep KV lengths (default: from the workload).")] = None,
        sweep_chunks: Annotated[str | None, typer.Option(help="Sweep prefill chunks (default: up to the token budget).")] = None,
        sweep_repeats: Annotated[int, typer.Option(min=1, help="Sweep repeats per point.")] = 2,
        gateway_iterations: Annotated[int, typer.Option(min=1, help="Requests per hop measurement.")] = 8,
        drain_timeout: Annotated[float, typer.Option(help="Seconds to wait for the live run's stragglers.")] = 900.0,
        out: Annotated[Path | None, typer.Option(help="Folder for the calibration, hops, both runs' results.")] = None,
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
        progress: Annotated[bool, typer.Option(help="Show the live run's progress bar.")] = True,
    ) -> None:
        """Replay one workload on the live stack and in the simulator (same policy, workers,
        calibration); print sim/live ratios of mean and p99 TTFT, TPOT and E2E."""
        from pydantic import ValidationError

        from kvfleet.common.config import EngineSettings
        from kvfleet.sim.fidelity import FidelityOptions, run_fidelity

        try:
            opts = FidelityOptions(
                trace=trace, model=model, arrivals=arrivals, rate=rate, cv=cv, ramp_s=ramp_s,
                ramp_from_rate=ramp_from_rate, spike_rate=spike_rate, spike_s=spike_s,
                spike_period_s=spike_period_s, spike_start_s=spike_start_s,
                input_len=input_len, output_len=output_len, mix=mix or [],
                rate_scale=rate_scale, seed=seed, start_s=start_s, duration_s=duration_s,
                speed=speed, length_scale=length_scale, max_input=max_input,
                max_output=max_output, num_requests=num_requests, spread_ties=spread_ties, workers=workers,
                policy=policy, memory_bytes=memory_bytes,
                engine=EngineSettings(num_threads=threads, page_size_bytes=page_size_bytes,
                                      max_num_batched_tokens=max_num_batched_tokens,
                                      max_num_seqs=max_num_seqs),
                slo=slo or [], calibration=calibration, overheads=overheads,
                sweep_batches=_ints(sweep_batches), sweep_contexts=_ints(sweep_contexts),
                sweep_chunks=_ints(sweep_chunks), sweep_repeats=sweep_repeats,
                gateway_iterations=gateway_iterations, drain_timeout_s=drain_timeout,
                out=out, progress=progress,
            )
            report = run_fidelity(opts, say=typer.echo)
        except (ValidationError, ValueError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        print_report(report)
        if json_path is not None:
            json_path.write_text(json.dumps(report, indent=2) + "\n")
            typer.echo(f"report in {json_path}")


def print_report(report: dict) -> None:  # type: ignore[type-arg]
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(title=f"{report['model']}, {report['workers']} workers, policy "
                        f"{report['policy']}, {report['num_requests']} requests")
    for col in ("metric", "live", "sim", "sim/live", "target", "ok"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    targets = report["targets"]
    for key, ratio in report["sim_over_live"].items():
        live, sim = report["live"].get(key), report["sim"].get(key)
        target = targets["mean"] if key.startswith("mean") else targets["p99"]
        table.add_row(
            key, "-" if live is None else f"{live:.1f}", "-" if sim is None else f"{sim:.1f}",
            "-" if ratio is None else f"{ratio:.2f}", f"1 +- {target:.2f}",
            "yes" if report["within_target"][key] else "NO",
        )
    console.print(table)
    labels = {"no_background": "as if the machine were idle otherwise",
              "engines_only": "the calibrated engines alone (no stack)"}
    for name, ratios in report.get("variants", {}).items():
        cells = ", ".join(f"{k.removesuffix('_ms')} {'-' if v is None else f'{v:.2f}'}"
                          for k, v in ratios.items())
        console.print(f"sim/live, {labels.get(name, name)}: {cells}")
    phases = Table(title="where the time went (ms): live / sim")
    for col in ("phase", "mean", "median", "p99"):
        phases.add_column(col, justify="left" if col == "phase" else "right")
    for name in report["phases"]["live"]:
        live, sim = report["phases"]["live"][name], report["phases"]["sim"][name]

        def cell(k: str, live: dict = live, sim: dict = sim) -> str:  # type: ignore[type-arg]
            a, b = live.get(k), sim.get(k)
            return f"{'-' if a is None else f'{a:.1f}'} / {'-' if b is None else f'{b:.1f}'}"

        phases.add_row(name, cell("mean_ms"), cell("median_ms"), cell("p99_ms"))
    console.print(phases)
    live, sim = report["live"], report["sim"]
    console.print(f"completed live {live.get('completed')}, sim {sim.get('completed')}; "
                  f"failed live {live.get('failed')}, sim {sim.get('failed')}; "
                  f"took {report['wall_s']:.0f} s")
