"""`kvfleet bench serve`: kvfleet against `transformers serve`, same workload, one run.

    kvfleet bench serve --trace azure_llm_2023/AzureLLMInferenceTrace_conv.csv --start 600 \\
        --duration 10 --speed 0.05 --num-requests 24 --max-input 128 --max-output 16

A saturation sweep (the same slice at several mean rates, each server until it misses the SLO
twice in a row; 1 and 2 kvfleet workers against one peer):

    kvfleet bench serve --kvfleet-api http --rates 0.5,1,2,4,8 --workers 1 --workers 2 \\
        --num-requests 32 --max-output 64

The defaults are sized for a small CPU machine (SmolLM2-135M on a few cores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this benchmark's command to the `bench` group."""

    @app.command("serve")
    def serve(
        model: Annotated[str, typer.Option(help="Model both servers serve.")] = "smollm2-135m",
        trace: Annotated[str, typer.Option(help="Trace (see `kvfleet load --help`).")] = (
            "azure_llm_2023/AzureLLMInferenceTrace_conv.csv"
        ),
        start: Annotated[float, typer.Option(help="Slice start in trace time (s).")] = 600.0,
        duration: Annotated[float, typer.Option(help="Slice length in trace time (s).")] = 10.0,
        speed: Annotated[float, typer.Option(help="Replay speed-up.")] = 0.05,
        max_input: Annotated[int | None, typer.Option(help="Input token cap.")] = 128,
        max_output: Annotated[int | None, typer.Option(help="Output token cap.")] = 16,
        num_requests: Annotated[int | None, typer.Option(help="Stop after N requests.")] = 24,
        slo: Annotated[list[str] | None, typer.Option(help="SLO(s) for goodput.")] = None,
        max_concurrency: Annotated[int | None, typer.Option(help="Cap in flight.")] = None,
        drain_timeout: Annotated[float, typer.Option(help="Straggler wait (s).")] = 180.0,
        kvfleet_api: Annotated[str, typer.Option(help="http, grpc or both.")] = "both",
        workers: Annotated[
            list[int] | None,
            typer.Option(min=1, help="kvfleet workers; repeat to compare fleet sizes."),
        ] = None,
        rates: Annotated[
            str | None,
            typer.Option(help="A rate sweep: mean request rates (req/s), comma separated."),
        ] = None,
        min_attainment: Annotated[
            float, typer.Option(min=0.0, max=1.0, help="SLO attainment that sustains a rate.")
        ] = 0.9,
        peer_block_size: Annotated[
            int, typer.Option(min=1, help="transformers serve --cb-block-size (tokens).")
        ] = 32,
        peer_cb: Annotated[
            bool,
            typer.Option(
                help="transformers serve --continuous-batching (its stronger mode under "
                "concurrent load, as measured here)."
            ),
        ] = True,
        threads: Annotated[int | None, typer.Option(help="torch threads for both servers.")] = None,
        seed: Annotated[int, typer.Option()] = 0,
        out: Annotated[Path, typer.Option(help="Results folder.")] = Path("runs/bench-serve"),
    ) -> None:
        """Run one trace slice against kvfleet and `transformers serve` and print the ratios."""
        from pydantic import ValidationError
        from rich.console import Console

        from kvfleet.load.bench import BenchPlan, headline_table, run_bench, sweep_tables
        from kvfleet.load.compare import compare, render
        from kvfleet.load.options import LoadOptions
        from kvfleet.load.slo import SloSpecError, parse_slos

        apis = {"both": ("http", "grpc"), "http": ("http",), "grpc": ("grpc",)}.get(kvfleet_api)
        if apis is None:
            raise typer.BadParameter("--kvfleet-api must be http, grpc or both")
        try:
            rate_list = tuple(float(r) for r in rates.split(",") if r.strip()) if rates else ()
        except ValueError:
            raise typer.BadParameter("--rates takes numbers, e.g. 0.5,1,2,4") from None
        if any(r <= 0 for r in rate_list):
            raise typer.BadParameter("--rates must be > 0")
        try:
            slos = slo or ["ttft=2s,tpot=200ms"]
            parse_slos(slos)
            load = LoadOptions(
                trace=trace,
                model=model,
                start_s=start,
                duration_s=duration,
                speed=speed,
                max_input=max_input,
                max_output=max_output,
                num_requests=num_requests,
                slo=slos,
                max_concurrency=max_concurrency,
                drain_timeout_s=drain_timeout,
                seed=seed,
            )
        except (ValidationError, SloSpecError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        console = Console()
        plan = BenchPlan(
            load=load,
            model=model,
            out=out,
            kvfleet_apis=apis,
            workers=tuple(workers or (1,)),
            peer_continuous_batching=peer_cb,
            peer_block_size=peer_block_size,
            threads=threads,
            rates=rate_list,
            min_attainment=min_attainment,
        )
        result = run_bench(plan, say=console.print)
        if "sweep" in result:
            for table in sweep_tables(result):
                console.print(table)
            console.print(f"results in {out} (bench.json, sweep.png, one folder per server)")
            return
        summaries = result["summaries"]
        assert isinstance(summaries, dict)
        for name in summaries:
            if name != "transformers-serve":
                console.print(
                    render(
                        compare(summaries["transformers-serve"], summaries[name]),
                        "transformers-serve",
                        name,
                    )
                )
        console.print(headline_table(result))
        console.print(f"results in {out} (bench.json, one folder per server)")
