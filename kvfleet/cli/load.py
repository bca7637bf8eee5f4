"""`kvfleet load`: replay a trace or synthetic load against a target, and compare runs.

    kvfleet load --target grpc://127.0.0.1:50051 --trace azure_llm_2023/AzureLLMInferenceTrace_conv.csv \\
        --model smollm2-135m --duration 60 --speed 0.5 --max-input 512 --max-output 64 --out runs/a
    kvfleet load --target http://127.0.0.1:8000/v1 --arrivals gamma --rate 2 --cv 3 --model M ...
    kvfleet load compare runs/a/summary.json runs/b/summary.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=False, invoke_without_command=True)

_WORKLOAD = "Workload"
_SHAPING = "Shaping"
_RUN = "Run"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.callback(invoke_without_command=True)
def load(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Option(help="grpc://HOST:PORT or http://HOST:PORT/v1", rich_help_panel=_RUN)
    ] = "grpc://127.0.0.1:50051",
    allow_remote: Annotated[
        bool, typer.Option(help="Allow a non-loopback target.", rich_help_panel=_RUN)
    ] = False,
    trace: Annotated[
        str | None,
        typer.Option(
            help="Trace file (.csv Azure/kvfleet, .jsonl Mooncake; relative paths also under $KVFLEET_TRACES_DIR) or servegen:POOL[,POOL].",
            rich_help_panel=_WORKLOAD,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model of the requests (comma list: one per ServeGen pool).",
            rich_help_panel=_WORKLOAD,
        ),
    ] = None,
    arrivals: Annotated[
        str | None,
        typer.Option(help="Synthetic arrivals: poisson or gamma.", rich_help_panel=_WORKLOAD),
    ] = None,
    rate: Annotated[
        float, typer.Option(help="Synthetic rate (req/s).", rich_help_panel=_WORKLOAD)
    ] = 1.0,
    cv: Annotated[
        float,
        typer.Option(
            help="Gamma burstiness: CV of inter-arrival times.", rich_help_panel=_WORKLOAD
        ),
    ] = 1.0,
    ramp: Annotated[
        float, typer.Option(help="Linear ramp-up length (s).", rich_help_panel=_WORKLOAD)
    ] = 0.0,
    ramp_from: Annotated[
        float, typer.Option(help="Rate at the start of the ramp.", rich_help_panel=_WORKLOAD)
    ] = 0.0,
    spike_rate: Annotated[
        float, typer.Option(help="Rate during spikes (req/s).", rich_help_panel=_WORKLOAD)
    ] = 0.0,
    spike_len: Annotated[
        float, typer.Option(help="Spike length (s).", rich_help_panel=_WORKLOAD)
    ] = 0.0,
    spike_period: Annotated[
        float,
        typer.Option(
            help="Time between spike starts (s); 0: one spike.", rich_help_panel=_WORKLOAD
        ),
    ] = 0.0,
    spike_start: Annotated[
        float, typer.Option(help="First spike start (s).", rich_help_panel=_WORKLOAD)
    ] = 0.0,
    input_len: Annotated[
        str, typer.Option(help="Synthetic input length: N or LO-HI.", rich_help_panel=_WORKLOAD)
    ] = "256",
    output_len: Annotated[
        str, typer.Option(help="Synthetic output length: N or LO-HI.", rich_help_panel=_WORKLOAD)
    ] = "64",
    mix: Annotated[
        list[str] | None,
        typer.Option(
            help="Per-model load MODEL:rate=..,arrivals=..,cv=..,input=..,output=.. (repeat).",
            rich_help_panel=_WORKLOAD,
        ),
    ] = None,
    rate_scale: Annotated[
        float, typer.Option(help="Scale of ServeGen pools' rates.", rich_help_panel=_WORKLOAD)
    ] = 1.0,
    seed: Annotated[
        int, typer.Option(help="Seed of every random choice.", rich_help_panel=_WORKLOAD)
    ] = 0,
    start: Annotated[
        float, typer.Option(help="Slice start in trace time (s).", rich_help_panel=_SHAPING)
    ] = 0.0,
    duration: Annotated[
        float | None,
        typer.Option(
            help="Slice length in trace time (s); synthetic: run length (default 60).",
            rich_help_panel=_SHAPING,
        ),
    ] = None,
    speed: Annotated[
        float, typer.Option(help="Replay speed-up (2 = twice as fast).", rich_help_panel=_SHAPING)
    ] = 1.0,
    length_scale: Annotated[
        float,
        typer.Option(help="Multiply every input and output length (before the caps).",
                     rich_help_panel=_SHAPING),
    ] = 1.0,
    max_input: Annotated[
        int | None, typer.Option(help="Cap on input tokens.", rich_help_panel=_SHAPING)
    ] = None,
    max_output: Annotated[
        int | None, typer.Option(help="Cap on output tokens.", rich_help_panel=_SHAPING)
    ] = None,
    num_requests: Annotated[
        int | None, typer.Option(help="Stop after this many requests.", rich_help_panel=_SHAPING)
    ] = None,
    spread_ties: Annotated[
        bool,
        typer.Option(help="Spread Mooncake's 3 s timestamp batches.", rich_help_panel=_SHAPING),
    ] = False,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Cap on requests in flight.", rich_help_panel=_RUN)
    ] = None,
    drain_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for stragglers after the last arrival.", rich_help_panel=_RUN
        ),
    ] = 120.0,
    request_timeout: Annotated[
        float, typer.Option(help="Per-request timeout (s).", rich_help_panel=_RUN)
    ] = 600.0,
    slo: Annotated[
        list[str] | None,
        typer.Option(
            help="SLO for goodput: [MODEL:]ttft=500ms,tpot=50ms,e2el=10s (bare numbers are ms; repeat per model).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    send_slo: Annotated[
        bool,
        typer.Option(
            help="Send each request's TTFT/TPOT SLO to the server (kvfleet's extension field).",
            rich_help_panel=_RUN,
        ),
    ] = True,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="Tokenizer (model name, checkpoint dir or .gguf); default: the model's.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    length_control: Annotated[
        str,
        typer.Option(
            help="HTTP: how to force output length: auto, ignore_eos, generation_config, none.",
            rich_help_panel=_RUN,
        ),
    ] = "auto",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Results folder (requests.csv, summary.json, plots).", rich_help_panel=_RUN
        ),
    ] = None,
    plots: Annotated[bool, typer.Option(help="Write PNG plots.", rich_help_panel=_RUN)] = True,
    isolation_probe: Annotated[
        bool,
        typer.Option(
            help="First probe each model alone on the idle target, for the normalised latency.",
            rich_help_panel=_RUN,
        ),
    ] = False,
    progress: Annotated[
        bool, typer.Option(help="Show a progress bar.", rich_help_panel=_RUN)
    ] = True,
    label: Annotated[
        str, typer.Option(help="Name of this run in comparisons.", rich_help_panel=_RUN)
    ] = "",
    dry_run: Annotated[
        bool,
        typer.Option(help="Only build the workload and print its figures.", rich_help_panel=_RUN),
    ] = False,
) -> None:
    """Send a trace or synthetic load to a target and report vLLM-style metrics."""
    if ctx.invoked_subcommand is not None:
        return
    from pydantic import ValidationError

    from kvfleet.load.options import LoadOptions

    values: dict[str, Any] = dict(
        target=target,
        allow_remote=allow_remote,
        trace=trace,
        model=model,
        arrivals=arrivals,
        rate=rate,
        cv=cv,
        ramp_s=ramp,
        ramp_from_rate=ramp_from,
        spike_rate=spike_rate,
        spike_s=spike_len,
        spike_period_s=spike_period,
        spike_start_s=spike_start,
        input_len=input_len,
        output_len=output_len,
        mix=mix or [],
        rate_scale=rate_scale,
        seed=seed,
        start_s=start,
        duration_s=duration,
        speed=speed,
        length_scale=length_scale,
        max_input=max_input,
        max_output=max_output,
        num_requests=num_requests,
        spread_ties=spread_ties,
        max_concurrency=max_concurrency,
        drain_timeout_s=drain_timeout,
        request_timeout_s=request_timeout,
        slo=slo or [],
        send_slo=send_slo,
        tokenizer=tokenizer,
        length_control=length_control,
        out=out,
        plots=plots,
        isolation_probe=isolation_probe,
        label=label,
    )
    try:
        opts = LoadOptions(**values)
    except ValidationError as exc:
        _fail(
            "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors()
            )
        )
    run_options(opts, progress=progress, dry_run=dry_run)


def run_options(
    opts: Any, progress: bool = True, dry_run: bool = False
) -> dict[str, object] | None:
    """Run validated options, turning bad input into a clear error and exit code 2."""
    from rich.console import Console

    from kvfleet.load.slo import SloSpecError, parse_slos
    from kvfleet.load.target import TargetError, parse_target
    from kvfleet.workload import TraceFormatError

    console = Console()
    try:
        parse_target(opts.target, allow_remote=opts.allow_remote)
        parse_slos(opts.slo)
        if dry_run:
            from kvfleet.load.options import build_workload
            from kvfleet.workload import workload_stats

            specs = build_workload(opts)
            if not specs:
                _fail("the workload is empty")
            console.print(workload_stats(specs))
            return None
        from kvfleet.load.session import run_sync

        output = run_sync(opts, progress=progress)
    except (TargetError, SloSpecError, TraceFormatError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return None
    print_summary(output.summary, console)
    if output.out_dir is not None:
        console.print(f"results in {output.out_dir}")
    return output.summary


def print_summary(summary: dict[str, object], console: Any) -> None:
    from rich.table import Table

    table = Table(title=str(summary.get("label", "load run")))
    table.add_column("metric")
    table.add_column("value", justify="right")
    keys = [
        "completed",
        "failed",
        "duration",
        "request_throughput",
        "request_goodput",
        "slo_attainment",
        "mean_normalized_latency",
        "p99_normalized_latency",
        "output_throughput",
        "max_concurrent_requests",
    ]
    for metric in ("ttft", "tpot", "itl", "e2el"):
        keys += [f"mean_{metric}_ms", f"median_{metric}_ms", f"p90_{metric}_ms", f"p99_{metric}_ms"]
    for key in keys:
        v = summary.get(key)
        table.add_row(key, "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
    console.print(table)
    errors = summary.get("errors")
    if errors:
        console.print(f"errors: {errors}")


@app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="summary.json (or its folder) of run A")],
    b: Annotated[Path, typer.Argument(help="summary.json (or its folder) of run B")],
) -> None:
    """Print two runs' metrics side by side with their ratios (B / A)."""
    from rich.console import Console

    from kvfleet.load.compare import compare, render
    from kvfleet.load.report import read_summary

    try:
        sa, sb = read_summary(a), read_summary(b)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return
    name_a = str(sa.get("label") or a)
    name_b = str(sb.get("label") or b)
    if name_a == name_b:
        name_a, name_b = f"A: {name_a}", f"B: {name_b}"
    Console().print(render(compare(sa, sb), name_a, name_b))
