"""`kvfleet sim` commands: `kvfleet sim --trace ... --gpus N ...` runs one simulation;
`kvfleet sim compare` runs several policies (and fleet sizes) on one workload."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvfleet.services.scheduler.core.admission import DEFAULT_MAX_QUEUED_REQUESTS

app = typer.Typer(
    invoke_without_command=True,
    help="Cluster simulator over kvfleet's policy cores (virtual clock, GPU cost model).",
)

# Workload options: the same flags as `kvfleet load` (--model there is --request-model here,
# since --model names the cost-model preset).
Trace = Annotated[str | None, typer.Option(help="Trace file (Azure CSV, Mooncake JSONL, kvfleet CSV; relative to the traces folder works), or servegen:POOL[,POOL].")]
ReqModel = Annotated[str | None, typer.Option("--request-model", help="Model name(s) given to the requests (comma list for ServeGen pools).")]
Arrivals = Annotated[str | None, typer.Option(help="Synthetic arrivals: poisson or gamma.")]
Rate = Annotated[float, typer.Option(help="Synthetic request rate (req/s).")]
Cv = Annotated[float, typer.Option(help="Gamma inter-arrival CV.")]
RampS = Annotated[float, typer.Option("--ramp", help="Linear ramp-up length (s).")]
RampFrom = Annotated[float, typer.Option("--ramp-from", help="Rate at the start of the ramp.")]
SpikeRate = Annotated[float, typer.Option(help="Rate during spikes (req/s).")]
SpikeS = Annotated[float, typer.Option("--spike-len", help="Spike length (s).")]
SpikePeriod = Annotated[float, typer.Option("--spike-period", help="Time between spike starts (s).")]
SpikeStart = Annotated[float, typer.Option("--spike-start", help="First spike start (s).")]
InputLen = Annotated[str, typer.Option(help="Synthetic input lengths: N or LO-HI.")]
OutputLen = Annotated[str, typer.Option(help="Synthetic output lengths: N or LO-HI.")]
Mix = Annotated[list[str] | None, typer.Option(help="MODEL:key=value,... per model (repeat).")]
RateScale = Annotated[float, typer.Option(help="Scale of ServeGen pools' rates.")]
Seed = Annotated[int, typer.Option(help="Seed of every random choice.")]
StartS = Annotated[float, typer.Option("--start", help="Slice start in trace time (s).")]
DurationS = Annotated[float | None, typer.Option("--duration", help="Slice / synthetic run length (s).")]
Speed = Annotated[float, typer.Option(help="Replay speed-up.")]
MaxInput = Annotated[int | None, typer.Option(help="Input length cap (tokens).")]
MaxOutput = Annotated[int | None, typer.Option(help="Output length cap (tokens).")]
NumRequests = Annotated[int | None, typer.Option(help="Keep at most this many requests.")]
SpreadTies = Annotated[bool, typer.Option(help="Spread Mooncake's quantised timestamps.")]
# Fleet options.
Gpu = Annotated[str, typer.Option(help="GPU preset: A100-40G, A100-80G, H100, H200, RTX4090, CPU.")]
Model = Annotated[str, typer.Option(help="Served model preset(s), comma list (workers split evenly).")]
Tp = Annotated[int | None, typer.Option(help="GPUs per worker (default: fewest that fit).")]
Link = Annotated[str, typer.Option(help="KV migration link: nvlink, pcie, 100gbe, 25gbe, 10gbe.")]
Calibration = Annotated[Path | None, typer.Option(help="Calibration JSON (bench engine result or measured steps).")]
DispatchS = Annotated[float, typer.Option(help="Scheduler dispatch tick (s).")]
MigrationS = Annotated[float, typer.Option(help="Migration policy tick (s).")]
SampleS = Annotated[float, typer.Option(help="fleet.csv row interval (s).")]
HorizonS = Annotated[float | None, typer.Option(help="Stop at this virtual time; unfinished are dropped.")]
Slo = Annotated[list[str] | None, typer.Option(help="[MODEL:]ttft=..,tpot=..,e2el=.. for goodput (each request also carries its model's ttft/tpot to the policies).")]
Predictor = Annotated[str, typer.Option(help="Output-length predictor: online, oracle, noisy-oracle.")]
PredictorSpread = Annotated[float, typer.Option(help="noisy-oracle: relative error spread, e.g. 0.25.")]
QueueFraction = Annotated[float, typer.Option(help="Worker queue allowance, as a share of its pool.")]
MaxQueued = Annotated[int, typer.Option(help="Per-model scheduler-queue bound (requests); 429 past it.")]


def _workload(**kw: object) -> list:  # type: ignore[type-arg]
    from kvfleet.workload.options import WorkloadOptions, build_workload

    kw["mix"] = kw.get("mix") or []
    kw["model"] = kw.pop("request_model", None)  # the sim's --model is a cost-model preset
    try:
        return build_workload(WorkloadOptions(**kw), require_model=False)  # type: ignore[arg-type]
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _slos(slo: list[str] | None):  # type: ignore[no-untyped-def]
    from kvfleet.load.slo import Slo as SloT
    from kvfleet.load.slo import SloSet, SloSpecError, parse_slo

    if not slo:
        return None
    default: SloT | None = None
    per_model: dict[str, SloT] = {}
    try:
        for text in slo:
            model, spec = parse_slo(text)
            if model is None:
                default = spec
            else:
                per_model[model] = spec
    except SloSpecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    return SloSet(default, per_model)


def _config(**kw: object):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from kvfleet.sim.fleet import SimConfig

    try:
        return SimConfig(**kw)  # type: ignore[arg-type]
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.callback()
def sim(
    ctx: typer.Context,
    trace: Trace = None, request_model: ReqModel = None, arrivals: Arrivals = None,
    rate: Rate = 1.0, cv: Cv = 1.0, ramp_s: RampS = 0.0, ramp_from_rate: RampFrom = 0.0,
    spike_rate: SpikeRate = 0.0, spike_s: SpikeS = 0.0, spike_period_s: SpikePeriod = 0.0,
    spike_start_s: SpikeStart = 0.0, input_len: InputLen = "256", output_len: OutputLen = "64",
    mix: Mix = None, rate_scale: RateScale = 1.0, seed: Seed = 0, start_s: StartS = 0.0,
    duration_s: DurationS = None, speed: Speed = 1.0, max_input: MaxInput = None,
    max_output: MaxOutput = None, num_requests: NumRequests = None, spread_ties: SpreadTies = False,
    gpus: Annotated[int, typer.Option(help="GPUs in the fleet.")] = 16,
    gpu: Gpu = "H100", model: Model = "Llama-2-7B", tp: Tp = None,
    policy: Annotated[str, typer.Option(help="vllm, round-robin, llumnix, best-fit, worst-fit.")] = "vllm",
    link: Link = "100gbe", calibration: Calibration = None, dispatch_interval_s: DispatchS = 0.005,
    migration_interval_s: MigrationS = 0.5, sample_interval_s: SampleS = 1.0,
    horizon_s: HorizonS = None, slo: Slo = None, predictor: Predictor = "online",
    predictor_spread: PredictorSpread = 0.25, worker_queue_fraction: QueueFraction = 1.0,
    max_queued_requests: MaxQueued = DEFAULT_MAX_QUEUED_REQUESTS,
    out: Annotated[Path | None, typer.Option(help="Results folder.")] = None,
) -> None:
    """Simulate one fleet on one workload: writes requests.csv, summary.json, fleet.csv."""
    if ctx.invoked_subcommand is not None:
        return
    if trace is None and arrivals is None and not mix:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    from kvfleet.sim.engine import simulate
    from kvfleet.sim.report import summarize, write_outputs

    requests = _workload(
        trace=trace, request_model=request_model, arrivals=arrivals, rate=rate, cv=cv,
        ramp_s=ramp_s, ramp_from_rate=ramp_from_rate, spike_rate=spike_rate, spike_s=spike_s,
        spike_period_s=spike_period_s, spike_start_s=spike_start_s, input_len=input_len,
        output_len=output_len, mix=mix, rate_scale=rate_scale, seed=seed, start_s=start_s,
        duration_s=duration_s, speed=speed, max_input=max_input, max_output=max_output,
        num_requests=num_requests, spread_ties=spread_ties,
    )
    config = _config(
        gpu=gpu, models=[m.strip() for m in model.split(",") if m.strip()], num_gpus=gpus, tp=tp,
        policy=policy, link=link, calibration=str(calibration) if calibration else None,
        dispatch_interval_s=dispatch_interval_s, migration_interval_s=migration_interval_s,
        sample_interval_s=sample_interval_s, horizon_s=horizon_s, seed=seed,
        predictor=predictor, predictor_spread=predictor_spread,
        worker_queue_fraction=worker_queue_fraction, max_queued_requests=max_queued_requests,
    )
    slos = _slos(slo)
    try:
        result = simulate(config, requests, slos=slos)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    options = {"workload": trace or (mix or arrivals), "sim": config.model_dump()}
    if out is not None:
        summary = write_outputs(result, out, slos, options)
    else:
        summary = summarize(result, slos, options=options)
    _print_table([(policy, gpus, summary)])
    typer.echo(
        f"{result.num_events} events in {result.wall_s:.1f} s wall, {result.cpu_s:.1f} s CPU "
        f"({result.events_per_s:,.0f} events/s wall, "
        f"{result.num_events / max(result.cpu_s, 1e-9):,.0f} per CPU second); "
        f"virtual time {result.end_s:.1f} s"
        + (f"; results in {out}" if out else "")
    )


@app.command()
def compare(
    ctx: typer.Context,
    policies: Annotated[str, typer.Option(help="Comma list of policies.")] = "vllm,round-robin",
    gpus_list: Annotated[str, typer.Option("--gpus", help="Comma list of fleet sizes.")] = "16",
    out: Annotated[Path | None, typer.Option(help="Folder for each run's results and compare.csv.")] = None,
) -> None:
    """Run several policies (and fleet sizes) on the workload and fleet given to `kvfleet sim`
    (put those options before `compare`), and print one table."""
    from kvfleet.sim.engine import simulate
    from kvfleet.sim.report import summarize, write_outputs

    p = ctx.parent.params if ctx.parent is not None else {}
    if p.get("trace") is None and p.get("arrivals") is None and not p.get("mix"):
        typer.echo("error: give the workload to `kvfleet sim` before `compare`, e.g. "
                   "kvfleet sim --trace T --gpu H100 compare --policies vllm,round-robin", err=True)
        raise typer.Exit(2)
    workload_keys = (
        "trace", "request_model", "arrivals", "rate", "cv", "ramp_s", "ramp_from_rate",
        "spike_rate", "spike_s", "spike_period_s", "spike_start_s", "input_len", "output_len",
        "mix", "rate_scale", "seed", "start_s", "duration_s", "speed", "max_input",
        "max_output", "num_requests", "spread_ties",
    )
    requests = _workload(**{k: p[k] for k in workload_keys})
    slos = _slos(p.get("slo"))
    rows = []
    for size in [int(x) for x in gpus_list.split(",") if x.strip()]:
        for name in [x.strip() for x in policies.split(",") if x.strip()]:
            config = _config(
                gpu=p["gpu"], models=[m.strip() for m in p["model"].split(",") if m.strip()],
                num_gpus=size, tp=p["tp"], policy=name, link=p["link"],
                calibration=str(p["calibration"]) if p["calibration"] else None,
                dispatch_interval_s=p["dispatch_interval_s"],
                migration_interval_s=p["migration_interval_s"],
                sample_interval_s=p["sample_interval_s"], horizon_s=p["horizon_s"], seed=p["seed"],
                predictor=p["predictor"], predictor_spread=p["predictor_spread"],
                worker_queue_fraction=p["worker_queue_fraction"],
                max_queued_requests=p["max_queued_requests"],
            )
            try:
                result = simulate(config, requests, slos=slos)
            except ValueError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            if out is not None:
                summary = write_outputs(result, out / f"{name}-{size}gpu", slos)
            else:
                summary = summarize(result, slos)
            rows.append((name, size, summary))
    _print_table(rows)
    if out is not None:
        _write_compare_csv(rows, out / "compare.csv")
        typer.echo(f"results in {out}")


COLUMNS = (
    ("completed", "completed", "{:d}"), ("failed", "failed", "{:d}"),
    ("mean TTFT ms", "mean_ttft_ms", "{:.1f}"), ("p99 TTFT ms", "p99_ttft_ms", "{:.1f}"),
    ("mean TPOT ms", "mean_tpot_ms", "{:.2f}"), ("p99 TPOT ms", "p99_tpot_ms", "{:.2f}"),
    ("mean E2E s", "mean_e2el_ms", "{:.2f}"), ("p99 E2E s", "p99_e2el_ms", "{:.2f}"),
    ("req/s", "request_throughput", "{:.2f}"), ("out tok/s", "output_throughput", "{:.0f}"),
)


def _cells(summary: dict) -> list[str]:  # type: ignore[type-arg]
    cells = []
    for _, key, fmt in COLUMNS:
        v = summary.get(key)
        if v is None:
            cells.append("-")
            continue
        if key.endswith("e2el_ms"):
            v = v / 1000.0
        cells.append(fmt.format(v))
    sim = summary["sim"]
    cells += [
        str(sim["num_preemptions"]), str(sim["num_migrations"]),
        f"{sim['mean_active_gpus']:.1f}", f"{sim['mean_kv_utilization']:.2f}",
    ]
    return cells


HEADERS = ["policy", "GPUs"] + [c[0] for c in COLUMNS] + [
    "preempt", "migr", "active GPUs", "KV util"
]


def _print_table(rows: list) -> None:  # type: ignore[type-arg]
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for h in HEADERS:
        table.add_column(h, justify="left" if h == "policy" else "right")
    for name, size, summary in rows:
        table.add_row(name, str(size), *_cells(summary))
    Console(width=220).print(table)


def _write_compare_csv(rows: list, path: Path) -> None:  # type: ignore[type-arg]
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADERS)
        for name, size, summary in rows:
            w.writerow([name, size, *_cells(summary)])
