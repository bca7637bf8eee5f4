"""`kvfleet bench soak` and `kvfleet bench overload`: a stack under long and excessive load.

Each starts its own stack (two CPU workers by default, with the stack's generated API key),
runs, writes its figures and stops the stack; the exit status is 1 when a check failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer


def _launch(model: str, num_workers: int, memory_bytes: int, run_dir: Path | None) -> Any:
    from kvfleet.common.config import FleetConfig, ModelConfig, WorkerConfig
    from kvfleet.common.launcher import launch

    fleet = FleetConfig(
        models=[ModelConfig(name=model)],
        workers=[WorkerConfig(id=f"w{i}", memory_bytes=memory_bytes) for i in range(num_workers)],
        http_port=0, grpc_port=0, scheduler_port=0, planner_port=0,
    )
    return launch(fleet, run_dir or Path(tempfile.mkdtemp(prefix="kvfleet-bench-")))


def register(app: typer.Typer) -> None:
    """Add `soak` and `overload` to the `bench` group."""

    @app.command("soak")
    def soak(
        out: Annotated[Path, typer.Option(help="Directory for summary.json and requests.csv.")]
        = Path("runs/soak"),
        model: Annotated[str, typer.Option()] = "smollm2-135m",
        workers: Annotated[int, typer.Option(min=1)] = 2,
        duration_s: Annotated[float, typer.Option(min=1)] = 600.0,
        warmup_s: Annotated[float, typer.Option(
            min=0, help="Seconds of the same arrivals before the measured soak.")] = 60.0,
        load: Annotated[float, typer.Option(min=0.01, max=2.0,
                                            help="Share of the measured capacity offered.")]
        = 0.65,
        level_s: Annotated[float, typer.Option(min=1, help="Seconds per capacity level.")]
        = 20.0,
        disconnect_fraction: Annotated[float, typer.Option(min=0, max=1)] = 0.1,
        prompt_tokens: Annotated[int, typer.Option(min=1)] = 64,
        max_tokens: Annotated[int, typer.Option(min=1)] = 32,
        window_s: Annotated[float, typer.Option(min=1)] = 60.0,
        run_dir: Annotated[Path | None, typer.Option(help="Stack run directory.")] = None,
    ) -> None:
        """Measure capacity, soak at it with disconnecting clients, check for leaks."""
        from kvfleet.load.soak import SoakOptions, write
        from kvfleet.load.soak import soak as run_soak

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)
        options = SoakOptions(model=model, num_workers=workers, duration_s=duration_s,
                              warmup_s=warmup_s, load=load, level_s=level_s,
                              disconnect_fraction=disconnect_fraction,
                              prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                              window_s=window_s)
        stack = _launch(model, workers, options.worker_memory_bytes, run_dir)
        try:
            result = asyncio.run(run_soak(stack, options))
        finally:
            stack.stop()
        write(result, out)
        summary = {k: v for k, v in result.summary.items() if k not in ("workers",)}
        typer.echo(json.dumps(summary, indent=2, default=str))
        raise typer.Exit(0 if result.summary["passed"] else 1)

    @app.command("overload")
    def overload(
        model: Annotated[str, typer.Option()] = "smollm2-135m",
        workers: Annotated[int, typer.Option(min=1)] = 2,
        burst: Annotated[int, typer.Option(min=1, help="Chat requests sent at once.")] = 300,
        big_prompts: Annotated[int, typer.Option(min=0)] = 3,
        big_prompt_bytes: Annotated[int, typer.Option(min=1)] = 3_000_000,
        json_out: Annotated[Path | None, typer.Option("--json", help="Write figures here.")]
        = None,
        run_dir: Annotated[Path | None, typer.Option(help="Stack run directory.")] = None,
    ) -> None:
        """A burst of chat requests (200 or 429, never 5xx) and multi-megabyte prompts
        (the gateway keeps answering /health)."""
        from kvfleet.load.overload import OverloadOptions, run

        options = OverloadOptions(model=model, num_workers=workers, burst=burst,
                                  num_big_prompts=big_prompts, big_prompt_bytes=big_prompt_bytes)
        stack = _launch(model, workers, options.worker_memory_bytes, run_dir)
        try:
            result = asyncio.run(run(stack, options))
        finally:
            stack.stop()
        text = json.dumps(result, indent=2)
        typer.echo(text)
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(text)
        raise typer.Exit(0 if result["passed"] else 1)
