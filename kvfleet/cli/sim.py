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
LengthScale = Annotated[float, typer.Option(help="Multiply every input and output length (before the caps).")]
MaxInput = Annotated[int | None, typer.Option(help="Input length cap (tokens).")]
MaxOutput = Annotated[int | None, typer.Option(help="Output length cap (tokens).")]
NumRequests = Annotated[int | None, typer.Option(help="Keep at most this many requests.")]
SpreadTies = Annotated[bool, typer.Option(help="Spread Mooncake's quantised timestamps.")]
# Fleet options.
Gpu = Annotated[str, typer.Option(help="GPU preset: A100-40G, A100-80G, H100, H200, RTX4090, CPU.")]
Model = Annotated[str, typer.Option(help="Served model preset(s), comma list (workers split evenly).")]
Tp = Annotated[int | None, typer.Option(help="GPUs per worker (default: fewest that fit).")]
Link = Annotated[str, typer.Option(help="KV migration link: nvlink, pcie, 100gbe, 25gbe, 10gbe.")]
Calibration = Annotated[Path | None, typer.Option(help="Calibration JSON (bench engine result, or its --sweep of measured steps).")]
Overheads = Annotated[Path | None, typer.Option(help="The service stack's hops (bench gateway --json): intake, polling dispatch, Assign, heartbeats, relay, shared CPU.")]
DispatchS = Annotated[float, typer.Option(help="Scheduler dispatch tick (s).")]
MigrationS = Annotated[float, typer.Option(help="Migration policy tick (s).")]
SampleS = Annotated[float, typer.Option(help="fleet.csv row interval (s).")]
HorizonS = Annotated[float | None, typer.Option(help="Stop at this virtual time; unfinished are dropped.")]
Slo = Annotated[list[str] | None, typer.Option(help="[MODEL:]ttft=..,tpot=..,e2el=.. for goodput (each request also carries its model's ttft/tpot to the policies).")]
Predictor = Annotated[str, typer.Option(help="Output-length predictor: online, oracle, noisy-oracle.")]
PredictorSpread = Annotated[float, typer.Option(help="noisy-oracle: relative error spread, e.g. 0.25.")]
QueueFraction = Annotated[float, typer.Option(help="Worker queue allowance, as a share of its pool.")]
MaxQueued = Annotated[int, typer.Option(help="Per-model scheduler-queue bound (requests); 429 past it.")]
TokenBudget = Annotated[int, typer.Option(help="Max tokens per engine step (the engine's max_num_batched_tokens).")]
MaxSeqs = Annotated[int, typer.Option(help="Max sequences per engine step.")]
MaxTokens = Annotated[int | None, typer.Option(help="max_tokens every request carries (outputs still end at the trace's length); default: the trace's length.")]
FastForward = Annotated[bool, typer.Option(help="Run unchanged decode batches as one event (exact); --no-fast-forward steps one by one.")]
ReplanS = Annotated[float, typer.Option(help="Re-placement tick of placements that adapt (s).")]
LoadWindowS = Annotated[float, typer.Option(help="Window the per-model load is measured over (s).")]
WeightLoad = Annotated[float, typer.Option(help="Weight loading bandwidth on re-placement (GB/s).")]


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
    duration_s: DurationS = None, speed: Speed = 1.0, length_scale: LengthScale = 1.0,
    max_input: MaxInput = None,
    max_output: MaxOutput = None, num_requests: NumRequests = None, spread_ties: SpreadTies = False,
    gpus: Annotated[int, typer.Option(help="GPUs in the fleet.")] = 16,
    gpu: Gpu = "H100", model: Model = "Llama-2-7B", tp: Tp = None,
    policy: Annotated[str, typer.Option(help="A policy set (kvfleet policies): vllm, llumnix, seallm, dedicated, ...")] = "vllm",
    link: Link = "100gbe", calibration: Calibration = None, overheads: Overheads = None,
    dispatch_interval_s: DispatchS = 0.005,
    migration_interval_s: MigrationS = 0.5, sample_interval_s: SampleS = 1.0,
    horizon_s: HorizonS = None, slo: Slo = None, predictor: Predictor = "online",
    predictor_spread: PredictorSpread = 0.25, worker_queue_fraction: QueueFraction = 1.0,
    max_queued_requests: MaxQueued = DEFAULT_MAX_QUEUED_REQUESTS,
    token_budget: TokenBudget = 2048, max_num_seqs: MaxSeqs = 256, max_tokens: MaxTokens = None,
    fast_forward: FastForward = True,
    replan_interval_s: ReplanS = 60.0, load_window_s: LoadWindowS = 120.0,
    weight_load_gbps: WeightLoad = 16.0,
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
        duration_s=duration_s, speed=speed, length_scale=length_scale, max_input=max_input,
        max_output=max_output, num_requests=num_requests, spread_ties=spread_ties,
    )
    config = _config(
        gpu=gpu, models=[m.strip() for m in model.split(",") if m.strip()], num_gpus=gpus, tp=tp,
        policy=policy, link=link, calibration=str(calibration) if calibration else None,
        overheads=str(overheads) if overheads else None,
        dispatch_interval_s=dispatch_interval_s, migration_interval_s=migration_interval_s,
        sample_interval_s=sample_interval_s, horizon_s=horizon_s, seed=seed,
        predictor=predictor, predictor_spread=predictor_spread,
        worker_queue_fraction=worker_queue_fraction, max_queued_requests=max_queued_requests,
        token_budget=token_budget, max_num_seqs=max_num_seqs, max_tokens=max_tokens,
        fast_forward=fast_forward,
        replan_interval_s=replan_interval_s, load_window_s=load_window_s,
        weight_load_bytes_per_s=weight_load_gbps * 1e9,
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
    requests = _workload(**{k: p[k] for k in WORKLOAD_KEYS})
    slos = _slos(p.get("slo"))
    rows = []
    for size in [int(x) for x in gpus_list.split(",") if x.strip()]:
        for name in [x.strip() for x in policies.split(",") if x.strip()]:
            config = _config(**_fleet_kwargs(p, policy=name, num_gpus=size))
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


WORKLOAD_KEYS = (
    "trace", "request_model", "arrivals", "rate", "cv", "ramp_s", "ramp_from_rate",
    "spike_rate", "spike_s", "spike_period_s", "spike_start_s", "input_len", "output_len",
    "mix", "rate_scale", "seed", "start_s", "duration_s", "speed", "length_scale", "max_input",
    "max_output", "num_requests", "spread_ties",
)


def _fleet_kwargs(p: dict, **overrides: object) -> dict:  # type: ignore[type-arg]
    """SimConfig fields from the `kvfleet sim` options (a subcommand's parent's)."""
    kw = dict(
        gpu=p["gpu"], models=[m.strip() for m in p["model"].split(",") if m.strip()],
        num_gpus=p["gpus"], tp=p["tp"], policy=p["policy"], link=p["link"],
        calibration=str(p["calibration"]) if p["calibration"] else None,
        overheads=str(p["overheads"]) if p["overheads"] else None,
        dispatch_interval_s=p["dispatch_interval_s"],
        migration_interval_s=p["migration_interval_s"],
        sample_interval_s=p["sample_interval_s"], horizon_s=p["horizon_s"], seed=p["seed"],
        predictor=p["predictor"], predictor_spread=p["predictor_spread"],
        worker_queue_fraction=p["worker_queue_fraction"],
        max_queued_requests=p["max_queued_requests"], token_budget=p["token_budget"],
        max_num_seqs=p["max_num_seqs"], max_tokens=p["max_tokens"],
        fast_forward=p["fast_forward"], replan_interval_s=p["replan_interval_s"],
        load_window_s=p["load_window_s"], weight_load_bytes_per_s=p["weight_load_gbps"] * 1e9,
    )
    kw.update(overrides)
    return kw


@app.command()
def sweep(
    ctx: typer.Context,
    policies: Annotated[str, typer.Option(help="Comma list of policies.")] = "vllm,ecoserve,vllm-v0,orca",
    speeds: Annotated[str, typer.Option(help="Comma list of replay speed-ups of the workload (rates scale with them).")] = "1,2,4,8",
    budgets: Annotated[str, typer.Option(help="Comma list of token budgets; each policy is reported at its best.")] = "512,1024,2048,4096",
    gpus_list: Annotated[str, typer.Option("--gpus-needed", help="Comma list of smaller fleet sizes: the fewest GPUs with which each policy sustains the reference's highest rate.")] = "",
    reference: Annotated[str, typer.Option(help="The baseline the ratios are taken against.")] = "vllm",
    jobs: Annotated[int, typer.Option(help="Simulations run in parallel processes.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Folder for sweep.csv, sweep.json and goodput_vs_rate.png.")] = None,
) -> None:
    """Replay the workload given to `kvfleet sim` at increasing speeds for each policy and
    token budget: the highest rate each sustains within the SLO (p99 TTFT and TPOT from
    --slo), the ratio to the reference, and each policy at the reference's highest rate."""
    from kvfleet.sim import sweep as sw

    p = ctx.parent.params if ctx.parent is not None else {}
    if p.get("trace") is None and p.get("arrivals") is None and not p.get("mix"):
        typer.echo("error: give the workload to `kvfleet sim` before `sweep`", err=True)
        raise typer.Exit(2)
    slos = _slos(p.get("slo"))
    if slos is None or slos.default is None or (
        slos.default.ttft_s is None and slos.default.tpot_s is None
    ):
        typer.echo("error: give `kvfleet sim --slo ttft=..,tpot=..` before `sweep`", err=True)
        raise typer.Exit(2)
    names = [x.strip() for x in policies.split(",") if x.strip()]
    if reference not in names:
        names.insert(0, reference)
    speed_list = sorted({float(x) for x in speeds.split(",") if x.strip()})
    budget_list = [int(x) for x in budgets.split(",") if x.strip()]
    kw = {k: p[k] for k in WORKLOAD_KEYS}
    kw["mix"] = kw.get("mix") or []
    kw["model"] = kw.pop("request_model", None)
    workload = sw.WorkloadAt(tuple(sorted(kw.items(), key=lambda i: i[0])))
    _workload(**{k: p[k] for k in WORKLOAD_KEYS})  # a bad workload fails here, clearly
    jobs_list = [
        sw.Job(_config(**_fleet_kwargs(p, policy=name, token_budget=b)), s)
        for name in names for b in budget_list for s in speed_list
    ]
    points = sw.run_jobs(jobs_list, workload, slos.default, jobs)
    analysis = sw.analyse(points, reference, p["gpus"])
    if gpus_list.strip() and analysis["reference_speed"] is not None:
        speed = float(analysis["reference_speed"])  # type: ignore[arg-type]
        best = {n: analysis["policies"][n]["best_token_budget"] for n in names}  # type: ignore[index]
        extra = [
            sw.Job(_config(**_fleet_kwargs(p, policy=n, token_budget=best[n], num_gpus=int(g))),
                   speed)
            for n in names for g in gpus_list.split(",") if g.strip()
        ]
        more = sw.run_jobs(extra, workload, slos.default, jobs)
        points += more
        same = [pt for pt in points if pt.speed == speed
                and pt.token_budget == best[pt.policy]]
        analysis["gpus_needed"] = sw.gpus_needed(same, speed)
    _print_sweep(analysis)
    if out is not None:
        sw.write_csv(points, out / "sweep.csv")
        sw.write_json({"slo": slos.as_dict(), "options": {k: str(v) for k, v in p.items()},
                       **analysis}, out / "sweep.json")
        sw.plot(points, analysis, out / "goodput_vs_rate.png",
                f"{p['model']} on {p['gpus']}x {p['gpu']}, {p.get('trace') or 'synthetic'}")
        typer.echo(f"results in {out}")


def _print_sweep(analysis: dict) -> None:  # type: ignore[type-arg]
    from rich.console import Console
    from rich.table import Table

    ref = analysis["reference"]
    table = Table(title=f"highest rate within the SLO; the others at {ref}'s "
                        f"({analysis['reference_rate']:.2f} req/s)")
    for h in ("policy", "best budget", "sustained req/s", f"x {ref}", "attainment",
              "goodput req/s", "mean JCT s", "p99 TTFT s", "p99 TPOT ms", "GPUs needed"):
        table.add_column(h, justify="left" if h == "policy" else "right")
    needed = analysis.get("gpus_needed", {})
    for name, info in analysis["policies"].items():
        at = info["at_reference_rate"] or {}

        def f(key: str, fmt: str, scale: float = 1.0, at: dict = at) -> str:  # type: ignore[type-arg]
            v = at.get(key)
            return "-" if v is None else fmt.format(v * scale)

        ratio = info["rate_ratio_to_reference"]
        table.add_row(
            name, str(info["best_token_budget"]), f"{info['sustained_rate']:.2f}",
            "-" if ratio is None else f"{ratio:.2f}", f("slo_attainment", "{:.3f}"),
            f("goodput", "{:.2f}"), f("mean_e2el_s", "{:.2f}"), f("p99_ttft_s", "{:.2f}"),
            f("p99_tpot_s", "{:.1f}", 1000.0), str(needed.get(name, "-")),
        )
    Console(width=200).print(table)


@app.command("seallm-eval")
def seallm_eval(
    models: Annotated[str, typer.Option(help="Scenario: 6 or 12 models (1B to 70B).")] = "12",
    gpus: Annotated[int, typer.Option(help="H100s in the fleet.")] = 32,
    policies: Annotated[str, typer.Option(help="Policies to compare.")] = "dedicated,muxserve,alpaserve,seallm",
    start_s: StartS = 36000.0,
    duration_s: Annotated[float, typer.Option("--duration", help="Slice of pool time (s).")] = 7200.0,
    speed: Speed = 4.0,
    rate_scale: RateScale = 1.0,
    slo_scale: Annotated[float, typer.Option(help="SLO = this x the isolated TTFT/TPOT.")] = 5.0,
    seed: Seed = 0,
    replan_interval_s: ReplanS = 60.0, load_window_s: LoadWindowS = 120.0,
    weight_load_gbps: WeightLoad = 16.0,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("runs/seallm-sim"),
) -> None:
    """SeaLLM's comparison: many models on a fleet of H100s, ServeGen per-model load, per-model
    SLOs; writes each run's files, seallm_eval.json (figures per model and the ratios against
    the best baseline) and prints the table."""
    import json

    from kvfleet.sim.engine import simulate
    from kvfleet.sim.report import write_outputs
    from kvfleet.sim.seallm_eval import SCENARIOS, Scenario, config_for, ratios

    if models not in SCENARIOS:
        typer.echo(f"error: --models must be one of {', '.join(SCENARIOS)}", err=True)
        raise typer.Exit(2)
    sc = Scenario(SCENARIOS[models], start_s, duration_s, speed, rate_scale, slo_scale=slo_scale,
                  seed=seed)
    try:
        requests = sc.workload()
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    names = [m for m, _ in sc.models]
    extra = dict(replan_interval_s=replan_interval_s, load_window_s=load_window_s,
                 weight_load_bytes_per_s=weight_load_gbps * 1e9)
    slos = sc.slos(config_for("seallm", names, gpus, **extra), requests)
    rows, summaries = [], {}
    for name in [p.strip() for p in policies.split(",") if p.strip()]:
        config = config_for(name, names, gpus, **extra)
        try:
            result = simulate(config, requests, slos=slos)
        except ValueError as exc:
            typer.echo(f"error: {name}: {exc}", err=True)
            raise typer.Exit(2) from None
        summary = write_outputs(result, out / name, slos,
                                {"scenario": f"seallm-eval {models} models", "sim": config.model_dump()})
        summaries[name] = summary
        rows.append((name, gpus, summary))
        typer.echo(f"{name}: {result.num_events} events in {result.wall_s:.0f} s")
    _print_table(rows)
    report = {
        "scenario": {"models": [list(m) for m in sc.models], "gpus": gpus, "start_s": start_s,
                     "duration_s": duration_s, "speed": speed, "rate_scale": rate_scale,
                     "slo_scale": slo_scale, "seed": seed, "num_requests": len(requests)},
        "slos_ms": {m: slos.for_model(m).as_ms() for m in names},  # type: ignore[union-attr]
        "policies": {
            p: {k: s.get(k) for k in ("mean_normalized_latency", "p99_normalized_latency",
                                      "p99_e2el_ms", "slo_attainment", "completed", "failed")}
            | {"num_replacements": s["sim"]["num_replacements"],  # type: ignore[index]
               "per_model": {m: {k: v.get(k) for k in (  # type: ignore[union-attr]
                   "mean_normalized_latency", "p99_normalized_latency", "p99_e2el_ms",
                   "slo_attainment")} for m, v in s["per_model"].items()}}  # type: ignore[union-attr]
            for p, s in summaries.items()
        },
    }
    if "seallm" in summaries and len(summaries) > 1:
        report["ratios"] = ratios(summaries)
        for r in report["ratios"].values():  # type: ignore[union-attr]
            typer.echo(f"{r['label']}: seallm {r['seallm']:.3f} vs {r['best_baseline']} "
                       f"{r['baseline']:.3f} -> {r['factor']:.2f}x" if r["factor"] else str(r))
    out.mkdir(parents=True, exist_ok=True)
    (out / "seallm_eval.json").write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(f"results in {out}")


COLUMNS = (
    ("completed", "completed", "{:d}"), ("failed", "failed", "{:d}"),
    ("mean TTFT ms", "mean_ttft_ms", "{:.1f}"), ("p99 TTFT ms", "p99_ttft_ms", "{:.1f}"),
    ("mean TPOT ms", "mean_tpot_ms", "{:.2f}"), ("p99 TPOT ms", "p99_tpot_ms", "{:.2f}"),
    ("mean E2E s", "mean_e2el_ms", "{:.2f}"), ("p99 E2E s", "p99_e2el_ms", "{:.2f}"),
    ("req/s", "request_throughput", "{:.2f}"), ("out tok/s", "output_throughput", "{:.0f}"),
    ("mean norm lat", "mean_normalized_latency", "{:.2f}"),
    ("p99 norm lat", "p99_normalized_latency", "{:.2f}"),
    ("SLO att", "slo_attainment", "{:.3f}"),
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
        f"{sim.get('migrations_per_s', 0.0):.2f}", str(sim["num_replacements"]),
        f"{sim['mean_active_gpus']:.1f}", str(sim.get("peak_active_gpus", "-")),
        f"{sim['mean_kv_utilization']:.2f}", f"{sim.get('mean_kv_utilization_active', 0.0):.2f}",
    ]
    return cells


HEADERS = ["policy", "GPUs"] + [c[0] for c in COLUMNS] + [
    "preempt", "migr", "migr/s", "re-place", "active GPUs", "peak GPUs", "KV util",
    "KV util active",
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
