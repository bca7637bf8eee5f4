"""`kvfleet bench gateway`: the latency the service stack adds over the engine alone.

One run starts a stack (Redis, planner, scheduler, workers, gateway as processes), then
alternates the same greedy request between an in-process engine (same engine settings as
a worker) and the stack's gRPC and HTTP front doors, measuring TTFT and end-to-end latency
at the client. Added latency = stack median - engine median, from the same run.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import typer


def _engine_once(engine: Any, model: str, ids: list[int], max_tokens: int, rid: str) -> tuple[float, float]:
    from kvfleet.services.worker.engine import EngineRequest, SamplingParams

    t0 = time.perf_counter()
    ttft = 0.0
    engine.add_request(EngineRequest(rid, model, tuple(ids),
                                     SamplingParams(max_tokens=max_tokens, ignore_eos=True)))
    while engine.has_unfinished():
        for ev in engine.step():
            if ev.token_id is not None and not ttft:
                ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


async def _grpc_once(client: Any, model: str, ids: list[int], max_tokens: int) -> tuple[float, float]:
    from kvfleet.common.client import sampling

    t0 = time.perf_counter()
    ttft = 0.0
    async for msg in client.stream(model, prompt_token_ids=ids,
                                   params=sampling(max_tokens, ignore_eos=True)):
        if msg.token_ids and not ttft:
            ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


async def _http_once(http: Any, model: str, ids: list[int], max_tokens: int) -> tuple[float, float]:
    body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}
    t0 = time.perf_counter()
    ttft = 0.0
    async with http.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {") and not ttft:
                ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


def measure(model: str = "tiny-llama", prompt: str = "Explain how a fleet of GPUs serves models.",
            max_tokens: int = 32, iterations: int = 20, run_dir: Path | None = None,
            num_threads: int = 1) -> dict[str, Any]:
    """Start a one-worker stack, run the comparison, stop the stack; returns the figures."""
    import httpx

    from kvfleet.common.client import GatewayClient
    from kvfleet.common.config import EngineSettings, FleetConfig, ModelConfig, WorkerConfig
    from kvfleet.common.launcher import launch
    from kvfleet.common.models import load_tokenizer
    from kvfleet.services.worker.engine import Engine, EngineConfig

    memory = 2_000_000_000
    engine_settings = EngineSettings(num_threads=num_threads)
    engine = Engine(EngineConfig(memory_bytes=memory, **engine_settings.model_dump()))
    engine.load_model(model)
    ids = list(load_tokenizer(model).encode(prompt))
    fleet = FleetConfig(models=[ModelConfig(name=model)],
                        workers=[WorkerConfig(id="w0", memory_bytes=memory)],
                        http_port=0, grpc_port=0, engine=engine_settings,
                        open_gateway=True)  # loopback, for one measurement
    t0 = time.perf_counter()
    stack = launch(fleet, run_dir)
    up_s = time.perf_counter() - t0
    samples: dict[str, list[tuple[float, float]]] = {"engine": [], "grpc": [], "http": []}

    async def run() -> float:
        async with GatewayClient(stack.grpc_address) as client, \
                httpx.AsyncClient(base_url=stack.http_url, timeout=120) as http:
            t1 = time.perf_counter()
            await _grpc_once(client, model, ids, max_tokens)  # first answer (and warm-up)
            first_s = time.perf_counter() - t1
            await _http_once(http, model, ids, max_tokens)
            _engine_once(engine, model, ids, max_tokens, "warm")
            for i in range(iterations):
                samples["engine"].append(_engine_once(engine, model, ids, max_tokens, f"e{i}"))
                samples["grpc"].append(await _grpc_once(client, model, ids, max_tokens))
                samples["http"].append(await _http_once(http, model, ids, max_tokens))
            return first_s

    try:
        first_s = asyncio.run(run())
    finally:
        stack.stop()

    def med(name: str, k: int) -> float:
        return statistics.median(s[k] for s in samples[name])

    out: dict[str, Any] = {"model": model, "prompt_tokens": len(ids), "max_tokens": max_tokens,
                           "iterations": iterations, "stack_up_s": up_s,
                           "first_answer_s": first_s}
    for name in samples:
        out[f"{name}_ttft_ms"] = med(name, 0) * 1000
        out[f"{name}_e2e_ms"] = med(name, 1) * 1000
    for name in ("grpc", "http"):
        out[f"{name}_added_ttft_ms"] = out[f"{name}_ttft_ms"] - out["engine_ttft_ms"]
        out[f"{name}_added_e2e_ms"] = out[f"{name}_e2e_ms"] - out["engine_e2e_ms"]
    return out


def register(app: typer.Typer) -> None:
    """Add `gateway` to the `bench` group."""

    @app.command("gateway")
    def gateway(
        model: Annotated[str, typer.Option(help="Model to serve.")] = "tiny-llama",
        max_tokens: Annotated[int, typer.Option(min=1)] = 32,
        iterations: Annotated[int, typer.Option(min=1)] = 20,
        json_out: Annotated[Path | None, typer.Option("--json", help="Write figures here.")] = None,
    ) -> None:
        """Latency the stack adds over the engine alone (same prompt, same run)."""
        out = measure(model=model, max_tokens=max_tokens, iterations=iterations)
        text = json.dumps(out, indent=2)
        typer.echo(text)
        if json_out:
            json_out.write_text(text)
