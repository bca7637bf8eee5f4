"""`kvfleet bench gateway`: the latency the service stack adds over the engine alone.

One run starts a stack (Redis, planner, scheduler, workers, gateway as processes), then
alternates the same greedy request between an in-process engine (same engine settings as
a worker) and the stack's gRPC and HTTP front doors, measuring TTFT and end-to-end latency
at the client. Added latency = stack median - engine median, from the same run.

It also splits the gRPC path into hops, from the client's clock and the timestamps the
stack writes to Redis (one machine, one wall clock): the gateway's intake (send -> queued,
at two prompt lengths for the per-token part), the scheduler's hop (queued -> its decision),
the Assign call and the worker's wake-up (decision -> first token, less the engine's own
TTFT), the per-step extra of a live worker (its decode step interval over the engine's),
and the token relay (made on the worker -> at the client). ``--json`` writes them under
``overheads``, the form ``kvfleet sim --overheads`` reads.
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
    _CPU[0] -= time.thread_time()
    ttft = 0.0
    engine.add_request(EngineRequest(rid, model, tuple(ids),
                                     SamplingParams(max_tokens=max_tokens, ignore_eos=True)))
    while engine.has_unfinished():
        for ev in engine.step():
            if ev.token_id is not None and not ttft:
                ttft = time.perf_counter() - t0
    _CPU[0] += time.thread_time()
    return ttft, time.perf_counter() - t0


_CPU = [0.0]  # CPU time the in-process engine has spent in _engine_once


async def _grpc_once(client: Any, model: str, ids: list[int], max_tokens: int,
                     request_id: str = "") -> tuple[float, float, dict[str, float]]:
    """(TTFT, E2E) at the client, and the wall-clock times of send, first and last token."""
    from kvfleet.common.client import sampling

    wall = {"sent": time.time()}
    t0 = time.perf_counter()
    ttft = 0.0
    async for msg in client.stream(model, prompt_token_ids=ids, request_id=request_id,
                                   params=sampling(max_tokens, ignore_eos=True)):
        if msg.token_ids:
            wall["last"] = time.time()
            if not ttft:
                ttft = time.perf_counter() - t0
                wall["first"] = wall["last"]
    return ttft, time.perf_counter() - t0, wall


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


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def stack_settings(stack: Any) -> dict[str, float]:
    """The scheduler's tick and a worker's heartbeat settings, as the stack was started."""
    from kvfleet.common.config import SchedulerSettings, WorkerSettings

    out = {"tick_s": SchedulerSettings.model_fields["tick_s"].default,
           "heartbeat_min_s": WorkerSettings.model_fields["occupancy_min_s"].default,
           "heartbeat_s": WorkerSettings.model_fields["heartbeat_s"].default}
    for _name, (kind, cfg) in getattr(stack, "configs", {}).items():
        if kind == "scheduler" and "tick_s" in cfg:
            out["tick_s"] = float(cfg["tick_s"])
        if kind == "worker":
            out["heartbeat_min_s"] = float(cfg.get("occupancy_min_s", out["heartbeat_min_s"]))
            out["heartbeat_s"] = float(cfg.get("heartbeat_s", out["heartbeat_s"]))
    return out


async def measure_on(stack: Any, engine: Any, model: str, ids: list[int], max_tokens: int = 32,
                     iterations: int = 20, http: bool = True,
                     long_ids: list[int] | None = None) -> dict[str, Any]:
    """Alternate the request between ``engine`` (in this process) and the running ``stack``;
    figures in milliseconds, and the stack's ``overheads`` in seconds."""
    import secrets

    import httpx

    from kvfleet.common.client import GatewayClient
    from kvfleet.common.redis_store import RedisStore
    from kvfleet.load.machine import cpu_seconds
    from kvfleet.load.timeline import read_timelines
    from kvfleet.sim.overhead import StackOverheads

    long_ids = long_ids or (ids * (1 + 240 // max(1, len(ids))))[:256]
    tag = secrets.token_hex(4)
    worker_pids = [s.popen.pid for s in stack.services if s.kind == "worker"]
    worker_cpu = 0.0  # what the workers spent serving the short gRPC requests
    samples: dict[str, list[tuple[float, float]]] = {"engine": [], "grpc": [], "http": []}
    walls: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}  # request id -> "s" (short prompt) or "l" (long)
    async with GatewayClient(stack.grpc_address) as client, \
            httpx.AsyncClient(base_url=stack.http_url, timeout=600) as hc:
        t1 = time.perf_counter()
        await _grpc_once(client, model, ids, max_tokens)  # first answer (and warm-up)
        first_s = time.perf_counter() - t1
        if http:
            await _http_once(hc, model, ids, max_tokens)
        _engine_once(engine, model, ids, max_tokens, f"warm-{tag}")
        engine_cpu0 = _CPU[0]
        for i in range(iterations):
            samples["engine"].append(_engine_once(engine, model, ids, max_tokens, f"e{i}-{tag}"))
            for kind, prompt in (("s", ids), ("l", long_ids)):
                rid = f"gwbench-{tag}-{kind}{i}"
                if kind == "s":
                    worker_cpu -= sum(cpu_seconds(p) for p in worker_pids)
                ttft, e2e, wall = await _grpc_once(client, model, prompt, max_tokens, rid)
                if kind == "s":
                    worker_cpu += sum(cpu_seconds(p) for p in worker_pids)
                walls[rid], kinds[rid] = wall, kind
                if kind == "s":
                    samples["grpc"].append((ttft, e2e))
            if http:
                samples["http"].append(await _http_once(hc, model, ids, max_tokens))
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        timelines = {t.request_id: t for t in await read_timelines(store, walls)}
    finally:
        await store.close()

    def med(name: str, k: int) -> float:
        return _median([s[k] for s in samples[name]])

    out: dict[str, Any] = {"model": model, "prompt_tokens": len(ids), "max_tokens": max_tokens,
                           "iterations": iterations, "first_answer_s": first_s}
    for name in samples:
        if samples[name]:
            out[f"{name}_ttft_ms"] = med(name, 0) * 1000
            out[f"{name}_e2e_ms"] = med(name, 1) * 1000
    for name in ("grpc", "http"):
        if samples[name]:
            out[f"{name}_added_ttft_ms"] = out[f"{name}_ttft_ms"] - out["engine_ttft_ms"]
            out[f"{name}_added_e2e_ms"] = out[f"{name}_e2e_ms"] - out["engine_e2e_ms"]

    # ----- hops of the gRPC path
    def hop(kind: str, fn: Any) -> float:
        xs = [fn(t, walls[rid]) for rid, t in timelines.items() if kinds[rid] == kind]
        return _median([x for x in xs if x is not None])

    n_short, n_long = len(ids), len(long_ids)
    front = {k: hop(k, lambda t, w: t.queued_s - w["sent"]) for k in ("s", "l")}
    per_token = max(0.0, (front["l"] - front["s"]) / max(1, n_long - n_short))
    engine_ttft = med("engine", 0)
    engine_tpot = _median([(e - t) / max(1, max_tokens - 1) for t, e in samples["engine"]])
    live_tpot = hop("s", lambda t, w: t.decode_per_token_s)
    # A live worker's step costs more CPU than the engine's alone (token publishing,
    # heartbeats, the event loop): compared in CPU seconds per step, which hold on a busy
    # machine where wall times do not (/proc's CPU times tick at 10 ms: many steps count).
    steps = iterations * max_tokens
    engine_cpu_step = (_CPU[0] - engine_cpu0) / steps
    worker_cpu_step = worker_cpu / steps
    step_extra = max(0.0, worker_cpu_step - engine_cpu_step)
    to_first = hop("s", lambda t, w: t.to_first_token_s)
    overheads = StackOverheads(
        front_s=max(0.0, front["s"] - per_token * n_short),
        front_per_token_s=per_token,
        queue_hop_s=max(0.0, hop("s", lambda t, w: t.queue_wait_s)),
        assign_s=max(0.0, to_first - engine_ttft - step_extra),
        step_extra_s=step_extra,
        relay_s=max(0.0, hop("s", lambda t, w: w["first"] - t.first_token_s
                             if t.first_token_s is not None else None)),
        **stack_settings(stack),
    )
    out["hops_ms"] = {
        "front_short": front["s"] * 1000, "front_long": front["l"] * 1000,
        "long_prompt_tokens": n_long,
        "queue_hop": overheads.queue_hop_s * 1000,
        "decided_to_first_token": to_first * 1000,
        "engine_ttft": engine_ttft * 1000,
        "worker_tpot": live_tpot * 1000, "engine_tpot": engine_tpot * 1000,
        "worker_cpu_per_step": worker_cpu_step * 1000,
        "engine_cpu_per_step": engine_cpu_step * 1000,
        "relay": overheads.relay_s * 1000,
        "relay_last": hop("s", lambda t, w: w["last"] - t.last_token_s
                          if t.last_token_s is not None else None) * 1000,
    }
    out["overheads"] = {k: v for k, v in overheads.to_dict().items() if k != "source"}
    return out


def measure(model: str = "tiny-llama", prompt: str = "Explain how a fleet of GPUs serves models.",
            max_tokens: int = 32, iterations: int = 20, run_dir: Path | None = None,
            num_threads: int = 1) -> dict[str, Any]:
    """Start a one-worker stack, run the comparison, stop the stack; returns the figures."""
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
    try:
        out = asyncio.run(measure_on(stack, engine, model, ids, max_tokens, iterations))
    finally:
        stack.stop()
    return {"stack_up_s": up_s, **out}


def register(app: typer.Typer) -> None:
    """Add `gateway` to the `bench` group."""

    @app.command("gateway")
    def gateway(
        model: Annotated[str, typer.Option(help="Model to serve.")] = "tiny-llama",
        max_tokens: Annotated[int, typer.Option(min=1)] = 32,
        iterations: Annotated[int, typer.Option(min=1)] = 20,
        json_out: Annotated[
            Path | None,
            typer.Option("--json", help="Write figures here (kvfleet sim --overheads reads it)."),
        ] = None,
    ) -> None:
        """Latency the stack adds over the engine alone (same prompt, same run), by hop."""
        out = measure(model=model, max_tokens=max_tokens, iterations=iterations)
        text = json.dumps(out, indent=2)
        typer.echo(text)
        if json_out:
            json_out.write_text(text + "\n")
