"""`kvfleet bench engine`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this benchmark's command to the `bench` group."""

    @app.command("engine")
    def bench_engine(
        model: Annotated[str, typer.Option(help="Model name or checkpoint path.")] = "smollm2-135m",
        num_requests: Annotated[int, typer.Option(min=1, help="Requests in the workload.")] = 16,
        prompt_tokens: Annotated[int, typer.Option(min=1, help="Prompt length in tokens.")] = 128,
        output_tokens: Annotated[
            int, typer.Option(min=1, help="Generated tokens per request.")
        ] = 64,
        repeats: Annotated[
            int, typer.Option(min=1, help="Timed runs per path; the best counts.")
        ] = 2,
        threads: Annotated[
            int, typer.Option(min=0, help="torch threads (0: torch's default).")
        ] = 0,
        quick: Annotated[
            bool, typer.Option("--quick", help="A small workload, under a minute.")
        ] = False,
        json_path: Annotated[
            Path | None, typer.Option("--json", help="Write the results here.")
        ] = None,
    ) -> None:
        """kvfleet engine vs transformers generate, generate_batch and the bare forward passes."""
        import logging

        from rich.console import Console
        from rich.table import Table

        from kvfleet.services.worker.engine.benchmark import Workload, run_benchmark

        logging.getLogger("transformers").setLevel(logging.ERROR)
        if quick:
            num_requests, prompt_tokens, output_tokens, repeats = 8, 32, 8, 1
        w = Workload(
            model=model,
            num_requests=num_requests,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            repeats=repeats,
            num_threads=threads or None,
            default_cache_path=not quick,
        )
        r = run_benchmark(w)
        table = Table(title=f"{model}: {num_requests} x ({prompt_tokens} in, {output_tokens} out)")
        table.add_column("path")
        table.add_column("output tok/s", justify="right")
        table.add_column("seconds", justify="right")
        table.add_column("kvfleet / path", justify="right")
        rows = [
            ("kvfleet engine", r.kvfleet_tok_s, "kvfleet", 1.0),
            (
                "HF generate (static batch)",
                r.hf_generate_tok_s,
                "hf_generate",
                r.kvfleet_vs_hf_generate,
            ),
            (
                "HF generate_batch (cache sized to the workload)",
                r.hf_generate_batch_tok_s,
                "hf_generate_batch",
                r.kvfleet_vs_hf_generate_batch,
            ),
            ("roofline (bare forwards)", r.roofline_tok_s, "roofline", r.kvfleet_vs_roofline),
            (
                "  bare forwards, transformers",
                r.roofline_hf_forward_tok_s,
                "roofline_hf_forward",
                r.kvfleet_tok_s / r.roofline_hf_forward_tok_s,
            ),
            (
                "  bare forwards, kvfleet model",
                r.roofline_kvfleet_forward_tok_s,
                "roofline_kvfleet_forward",
                r.kvfleet_tok_s / r.roofline_kvfleet_forward_tok_s,
            ),
        ]
        for name, tok_s, key, ratio in rows:
            table.add_row(name, f"{tok_s:.1f}", f"{r.seconds[key]:.2f}", f"{ratio:.2f}x")
        if r.hf_generate_batch_default_cache_tok_s is not None:
            tok_s = r.hf_generate_batch_default_cache_tok_s
            table.add_row(
                "HF generate_batch (default cache sizing)",
                f"{tok_s:.1f}",
                f"{r.seconds['hf_generate_batch_default_cache']:.2f}",
                f"{r.kvfleet_tok_s / tok_s:.2f}x",
            )
        Console().print(table)
        typer.echo(f"greedy outputs equal HF generate: {r.outputs_match_hf_generate}")
        if json_path is not None:
            json_path.write_text(json.dumps(r.to_dict(), indent=2) + "\n")
