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
        dtype: Annotated[
            str, typer.Option(help="float32 or bfloat16, for kvfleet and transformers alike.")
        ] = "float32",
        compile_mode: Annotated[
            str, typer.Option("--compile", help="The engine's compile setting: off, decode, all.")
        ] = "off",
        quick: Annotated[
            bool, typer.Option("--quick", help="A small workload, under a minute.")
        ] = False,
        json_path: Annotated[
            Path | None, typer.Option("--json", help="Write the results here.")
        ] = None,
        sweep: Annotated[
            bool,
            typer.Option(
                "--sweep",
                help="Measure step times over batch sizes, KV lengths and prefill chunks "
                "instead (the simulator's calibration: kvfleet sim --calibration).",
            ),
        ] = False,
        sweep_batches: Annotated[
            str, typer.Option(help="Sweep: batch sizes (comma list).")
        ] = "1,2,4,8,16,32,64",
        sweep_contexts: Annotated[
            str, typer.Option(help="Sweep: KV lengths of decoding sequences (comma list).")
        ] = "32,256,1024",
        sweep_chunks: Annotated[
            str, typer.Option(help="Sweep: prefill chunk sizes (comma list).")
        ] = "16,64,256,1024,2048",
        memory_bytes: Annotated[
            int, typer.Option(min=1 << 20, help="Sweep: the engine's memory budget.")
        ] = 3_000_000_000,
        page_size_bytes: Annotated[
            int, typer.Option(min=1024, help="Sweep: KV page size (as the workers').")
        ] = 1 << 20,
        max_num_batched_tokens: Annotated[
            int, typer.Option(min=16, help="Sweep: per-step token budget (as the workers').")
        ] = 2048,
        max_num_seqs: Annotated[
            int, typer.Option(min=1, help="Sweep: sequences per step at most (as the workers').")
        ] = 64,
    ) -> None:
        """kvfleet engine vs transformers generate, generate_batch, the bare forward passes and
        the machine's limits (measured GEMM FLOP/s and memory bandwidth); with --sweep, the
        engine's step times for the simulator."""
        import logging

        if sweep:
            from kvfleet.services.worker.engine import EngineConfig
            from kvfleet.services.worker.engine.step_sweep import SweepGrid

            try:
                grid = SweepGrid(
                    batch_sizes=_ints(sweep_batches), contexts=_ints(sweep_contexts),
                    prefill_chunks=_ints(sweep_chunks), repeats=repeats if repeats > 2 else 3,
                )
                config = EngineConfig(
                    memory_bytes=memory_bytes, page_size_bytes=page_size_bytes,
                    max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                    num_threads=threads or None,
                )
            except ValueError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            run_sweep(model, config, grid, json_path)
            return

        from rich.console import Console
        from rich.table import Table

        from kvfleet.services.worker.engine.benchmark import Workload, run_benchmark

        logging.getLogger("transformers").setLevel(logging.ERROR)
        if dtype not in ("float32", "bfloat16"):
            raise typer.BadParameter("--dtype must be float32 or bfloat16")
        if compile_mode not in ("off", "decode", "all"):
            raise typer.BadParameter("--compile must be off, decode or all")
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
            dtype=dtype,
            compile=compile_mode,
        )
        r = run_benchmark(w)
        table = Table(
            title=f"{model} ({dtype}): {num_requests} x ({prompt_tokens} in, {output_tokens} out)"
        )
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
            ("bare forwards (faster of the two)", r.roofline_tok_s, "roofline", r.kvfleet_vs_roofline),
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
        console = Console()
        console.print(table)
        console.print(_hw_table(r))
        typer.echo(f"greedy outputs equal HF generate ({dtype}): {r.outputs_match_hf_generate}")
        same = r.tokens_before_divergence
        typer.echo(
            f"tokens before the first divergence from HF generate: min {min(same)}, "
            f"mean {sum(same) / len(same):.1f} of {output_tokens}"
        )
        if json_path is not None:
            json_path.write_text(json.dumps(r.to_dict(), indent=2) + "\n")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"expected a comma list of integers, got {text!r}") from None


def run_sweep(model: str, config, grid, json_path: Path | None) -> dict:  # type: ignore[no-untyped-def]
    """Measure, print each point's median step time beside the fitted model's, write JSON."""
    import statistics

    from rich.console import Console
    from rich.table import Table

    from kvfleet.services.worker.engine.step_sweep import sweep_steps
    from kvfleet.sim.cost_model import fit_step_model
    from kvfleet.sim.step_model import StepShape

    console = Console()
    result = sweep_steps(model, config, grid, progress=lambda m: console.print(m, highlight=False))
    data = result.to_dict()
    shapes = [StepShape(s.num_tokens, s.num_seqs, s.kv_tokens, s.attn_pairs, s.max_q, s.max_kv)
              for s in result.steps]
    fitted, report, cpu = fit_step_model(data["steps"], "sweep")
    data["step_model"] = fitted.to_dict()
    data["fit_report"] = {
        "num_points": report.num_samples,
        "fitted_to": "cpu_s" if cpu else "time_s",
        "rms_relative_error": report.rms_relative_error,
        "max_relative_error": report.max_relative_error,
    }
    table = Table(title=f"{model}: engine steps ({result.threads} threads, {result.wall_s:.0f} s)")
    for col in ("point", "tokens", "seqs", "wall ms", "CPU ms", "model ms"):
        table.add_column(col, justify="left" if col == "point" else "right")
    points: dict[str, list[int]] = {}
    for i, s in enumerate(result.steps):
        points.setdefault(s.scenario, []).append(i)
    for name, idx in points.items():
        wall = statistics.fmean(result.steps[i].time_s for i in idx)
        cpu_s = statistics.fmean(result.steps[i].cpu_s for i in idx)
        predicted = statistics.fmean(fitted.step_s(shapes[i]) for i in idx)
        first = result.steps[idx[0]]
        table.add_row(name, str(first.num_tokens), str(first.num_seqs), f"{wall * 1000:.1f}",
                      f"{cpu_s * 1000:.1f}", f"{predicted * 1000:.1f}")
    console.print(table)
    console.print(f"step model ({'CPU' if cpu else 'wall'} time): relative error rms "
                  f"{100 * report.rms_relative_error:.1f}%, max "
                  f"{100 * report.max_relative_error:.1f}% over {report.num_samples} points")
    if result.skipped:
        console.print(f"left out (too big for the pool): {', '.join(result.skipped)}")
    if json_path is not None:
        json_path.write_text(json.dumps(data, indent=1) + "\n")
        console.print(f"calibration in {json_path} (kvfleet sim --calibration {json_path})")
    return data


def _hw_table(r: object) -> object:
    from rich.table import Table

    hw = r.hw_roofline  # type: ignore[attr-defined]
    m = hw["machine"]
    secs = r.seconds  # type: ignore[attr-defined]
    dt = hw["dtype"]
    native = m["native_matmul_flops"][dt] / 1e9
    used = m["matmul_flops"][dt] / 1e9
    table = Table(
        title=(
            f"hardware roofline ({m['device']}, {m['threads']} threads): GEMM {used:.0f} "
            f"GFLOP/s for {dt} data (native {dt}: {native:.0f}), memory "
            f"{m['memory_bytes_s'] / 1e9:.0f} GB/s"
        )
    )
    table.add_column("phase")
    table.add_column("bound (s)", justify="right")
    table.add_column("kvfleet (s)", justify="right")
    table.add_column("kvfleet / bound", justify="right")
    table.add_column("bare forward (s)", justify="right")
    table.add_column("bare / bound", justify="right")
    for phase in ("prefill", "decode"):
        table.add_row(
            phase,
            f"{hw[phase + '_s']:.3f}",
            f"{secs['kvfleet_' + phase]:.3f}",
            f"{getattr(r, 'kvfleet_vs_hw_roofline_' + phase):.2f}",
            f"{secs['bare_forward_' + phase]:.3f}",
            f"{getattr(r, 'bare_forward_vs_hw_roofline_' + phase):.2f}",
        )
    return table
