"""How well the simulator predicts the live stack: one workload, run both ways.

``run_fidelity`` (``kvfleet bench fidelity``):

1. measures the calibration: the engine's step times over a grid of batch shapes
   (``kvfleet bench engine --sweep``), in this process, with the workers' engine settings;
2. starts a live stack (Redis, planner, scheduler, workers, gateway as processes) with the
   policy set and reads the workers' occupancy reports (pages, tokens per page);
3. measures the stack's hops on it (``kvfleet bench gateway``'s ``overheads``);
4. replays the workload on it with the load generator over gRPC, and reads each request's
   path back from Redis;
5. simulates the same workload on workers shaped like the live ones, with the same policy
   set, SLOs, engine limits, calibration and hops;
6. reports sim/live ratios of the load generator's mean and p99 TTFT, TPOT and E2E latency,
   and where the time went in each (queue wait, decision to first token, decode per token).

A calibration or hops file from an earlier run may be given instead of measuring again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field

from kvfleet.common.config import EngineSettings
from kvfleet.workload.options import WorkloadOptions

log = logging.getLogger(__name__)

METRICS = ("mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "mean_e2el_ms",
           "p99_e2el_ms")
MEAN_TARGET = 0.20  # sim/live within 1 +- this for means
P99_TARGET = 0.35  # ... and for p99s


class FidelityOptions(WorkloadOptions):
    """The workload (the load generator's options) and the fleet both runs use."""

    workers: int = Field(2, ge=1, le=64, description="workers in the live stack and the sim")
    policy: str = Field("vllm", description="policy set (kvfleet.policies)")
    memory_bytes: int = Field(1_200_000_000, ge=1 << 24, description="each worker's budget")
    engine: EngineSettings = Field(
        default_factory=lambda: EngineSettings(num_threads=1),
        description="every worker's engine settings (and the calibration engine's)",
    )
    scheduler: dict[str, Any] = Field(default_factory=dict, description="extra scheduler settings")
    worker: dict[str, Any] = Field(default_factory=dict, description="extra worker settings")
    slo: list[str] = Field(default_factory=list, description="[MODEL:]ttft=..,tpot=.. sent along")
    calibration: Path | None = Field(None, description="a step sweep to use instead of measuring")
    overheads: Path | None = Field(None, description="a hops file to use instead of measuring")
    sweep_batches: tuple[int, ...] | None = Field(None, description="sweep batch sizes")
    sweep_contexts: tuple[int, ...] | None = Field(None, description="sweep KV lengths")
    sweep_chunks: tuple[int, ...] | None = Field(None, description="sweep prefill chunks")
    sweep_repeats: int = Field(2, ge=1, description="sweep repeats per point")
    sweep_memory_bytes: int = Field(2_500_000_000, ge=1 << 24,
                                    description="the calibration engine's budget")
    gateway_iterations: int = Field(8, ge=1, description="requests per hop measurement")
    drain_timeout_s: float = Field(900.0, gt=0, description="wait for the live run's stragglers")
    out: Path | None = Field(None, description="folder for every file of the run")
    progress: bool = True


def model_shape(model: str):  # type: ignore[no-untyped-def]
    """The simulator's view of a servable model (its preset when there is one)."""
    from kvfleet.common.models import read_spec, resolve_model
    from kvfleet.sim.presets import MODEL_PRESETS, ModelShape

    spec = read_spec(resolve_model(model))
    for preset in MODEL_PRESETS.values():
        if preset.name.lower() == model.lower():
            return preset
    return ModelShape(model, float(spec.param_count(0, spec.num_layers)), spec.num_layers,
                      spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim,
                      spec.vocab_size, 4)


def default_grid(opts: FidelityOptions, specs: list) -> Any:  # type: ignore[type-arg]
    """A sweep that covers what the workload makes the engine do, and no more."""
    from kvfleet.services.worker.engine.step_sweep import SweepGrid

    budget = opts.engine.max_num_batched_tokens
    longest = max((s.input_tokens + s.output_tokens for s in specs), default=512)
    prompt = min(budget, max((s.input_tokens for s in specs), default=512))
    contexts = tuple(sorted({c for c in (32, 128, 512, 2048) if c < longest} | {longest}))
    chunks = tuple(sorted({c for c in (16, 64, 256) if c < prompt} | {prompt}))
    batches = tuple(b for b in (1, 2, 4, 8, 16, 32, 64) if b <= opts.engine.max_num_seqs)
    return SweepGrid(
        batch_sizes=opts.sweep_batches or batches,
        contexts=opts.sweep_contexts or contexts,
        prefill_chunks=opts.sweep_chunks or chunks,
        prefill_contexts=(0, min(longest, 1024)),
        prefill_batch_chunks=tuple(sorted({16, 128, prompt})),
        repeats=opts.sweep_repeats,
        max_kv_tokens=min(16384, 64 * longest),
    )


def _ratio(sim: Any, live: Any) -> float | None:
    if not isinstance(sim, int | float) or not isinstance(live, int | float) or live <= 0:
        return None
    return float(sim) / float(live)


def compare(live: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    """sim/live of every metric, and whether each is within its target."""
    ratios = {k: _ratio(sim.get(k), live.get(k)) for k in METRICS}
    within = {
        k: r is not None and abs(r - 1.0) <= (MEAN_TARGET if k.startswith("mean") else P99_TARGET)
        for k, r in ratios.items()
    }
    return {"sim_over_live": ratios, "within_target": within,
            "all_within_target": all(within.values())}


def sim_phases(result: Any, overheads: Any) -> dict[str, Any]:
    """The simulated requests' phases, as ``kvfleet.load.timeline.phases`` has the live ones."""
    from kvfleet.load.timeline import describe

    seqs = [s for s in result.seqs if s.finish_s >= 0]
    # queued by the gateway: the scheduler's hop counts as waiting, as it does live
    queued = [s.arrival_s + overheads.intake_s(s.num_prompt_tokens) - overheads.queue_hop_s
              for s in seqs]
    return {
        "queue_wait": describe([s.dispatch_s - q for s, q in zip(seqs, queued, strict=True)]),
        "to_first_token": describe([s.first_token_s - s.dispatch_s for s in seqs]),
        "decode_per_token": describe([(s.finish_s - s.first_token_s) / (s.num_output - 1)
                                      for s in seqs if s.num_output > 1]),
    }


def step_check(steps: list, model: Any, overheads: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    """Live steps against the calibrated step model: their measured over predicted times,
    as calibrated and with the CPU sharing the simulator applies (all workers busy)."""
    from kvfleet.sim.step_model import StepShape

    if not steps or model is None:
        return {"count": len(steps)}
    extra = overheads.step_extra_s / (overheads.calibration_share if overheads.cpu_cores else 1)
    ratios = [s.duration_s / (model.step_s(StepShape.of_chunks(s.chunks)) + extra)
              for s in steps]
    busy = overheads.cpu_factor(len({s.worker_id for s in steps}))
    by_busy: dict[int, list[float]] = {}
    for n, r in zip(_busy_workers(steps), ratios, strict=True):
        by_busy.setdefault(n, []).append(r)
    return {"count": len(steps), "median_live_over_model": statistics.median(ratios),
            "mean_live_over_model": statistics.fmean(ratios),
            "cpu_factor_all_busy": busy,
            "mean_live_over_sim": statistics.fmean(ratios) / busy,
            # live over model by how many workers were stepping at each step's middle, next
            # to the factor the simulator applies then: CPU sharing the model leaves out
            # (memory bandwidth, caches, SMT siblings) shows as a gap growing with the count
            "by_busy_workers": {
                str(n): {"count": len(rs), "mean_live_over_model": statistics.fmean(rs),
                         "sim_cpu_factor": overheads.cpu_factor(n)}
                for n, rs in sorted(by_busy.items())},
            }


def _busy_workers(steps: list) -> list[int]:  # type: ignore[type-arg]
    """For each step, the workers (itself included) with a step spanning its middle."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for s in steps:
        spans.setdefault(s.worker_id, []).append((s.end_s - s.duration_s, s.end_s))
    out = []
    for s in steps:
        mid = s.end_s - s.duration_s / 2
        out.append(1 + sum(1 for w, iv in spans.items() if w != s.worker_id
                           and any(a <= mid <= b for a, b in iv)))
    return out


def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpu_count": os.cpu_count(), "load_average": list(load)}


def run_fidelity(opts: FidelityOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure, run live, simulate, compare (see the module docstring). Returns the report."""
    from kvfleet.common.config import FleetConfig, ModelConfig, WorkerConfig
    from kvfleet.common.launcher import launch
    from kvfleet.load.options import LoadOptions, build_workload
    from kvfleet.load.slo import parse_slos
    from kvfleet.policies import policy_set

    started = time.perf_counter()
    out = opts.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    policy_set(opts.policy)  # unknown names fail before anything starts
    specs = build_workload(opts)
    if not specs:
        raise ValueError("the workload is empty (check --start/--duration/--rate)")
    model = opts.model or specs[0].model
    others = sorted({s.model for s in specs} - {model})
    if others:
        raise ValueError(f"the fleet serves {model!r} only; the workload also asks for "
                         f"{', '.join(others)}")
    slos = parse_slos(opts.slo)
    report: dict[str, Any] = {"model": model, "workers": opts.workers, "policy": opts.policy,
                              "num_requests": len(specs), "machine_before": _machine()}
    es = opts.engine

    # 1. calibration
    from kvfleet.services.worker.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(memory_bytes=opts.sweep_memory_bytes,
                                 page_size_bytes=es.page_size_bytes,
                                 max_num_batched_tokens=es.max_num_batched_tokens,
                                 max_num_seqs=es.max_num_seqs, num_threads=es.num_threads))
    engine.load_model(model)
    calibration_share = weight = 1.0
    if opts.calibration is not None:
        calibration_path = opts.calibration
        say(f"calibration: {calibration_path}")
    else:
        from kvfleet.load.machine import MachineSampler, background_weight
        from kvfleet.services.worker.engine.step_sweep import sweep_on

        grid = default_grid(opts, specs)
        say(f"measuring engine steps ({len(grid.batch_sizes)} batch sizes, contexts "
            f"{list(grid.contexts)}, chunks {list(grid.prefill_chunks)})")
        with MachineSampler({"calibration": os.getpid()}) as sampler:
            sweep = sweep_on(engine, model, grid, progress=lambda m: say(f"  {m}"))
        report["machine_sweep"] = sampler.load.to_dict()
        threads = float(es.num_threads or 1)
        # how hard the machine's other runnable threads competed with the sweep's
        weight = background_weight(sampler.load, "calibration", threads)
        cpu = sampler.load.cpu_s["calibration"]
        if sampler.load.wall_s > 0 and cpu > 0:
            calibration_share = min(1.0, max(0.01, cpu / sampler.load.wall_s / threads))
        if out is not None:
            calibration_path = out / "steps.json"
        else:  # nowhere asked for: a scratch file, not the working directory
            calibration_path = Path(tempfile.mkdtemp(prefix="kvfleet-fidelity-")) / "steps.json"
        calibration_path.write_text(json.dumps(sweep.to_dict(), indent=1) + "\n")
        say(f"  {len(sweep.steps)} steps in {sweep.wall_s:.0f} s -> {calibration_path}")
    from kvfleet.sim.cost_model import CostModel, load_calibration
    from kvfleet.sim.presets import gpu_preset

    shape = model_shape(model)
    base = CostModel(gpu_preset("CPU"), shape)
    calib = load_calibration(calibration_path, base)
    if calib.cpu_time:  # fitted to CPU seconds: what the engine takes with a core to itself
        calibration_share = 1.0
    cost = CostModel(gpu_preset("CPU"), shape, calibration=calib)

    # 2. the live stack
    fleet = FleetConfig(
        models=[ModelConfig(name=model)],
        workers=[WorkerConfig(id=f"w{i}", memory_bytes=opts.memory_bytes)
                 for i in range(opts.workers)],
        policy=opts.policy, http_port=0, grpc_port=0, engine=es,
        scheduler=opts.scheduler, worker=opts.worker,
        open_gateway=True,  # a loopback stack for one measurement
    )
    say(f"starting a stack of {opts.workers} workers ({model}, policy {opts.policy})")
    stack = launch(fleet, (out / "stack") if out is not None else None)
    try:
        live = asyncio.run(_live(stack, engine, model, opts, say))
        del engine
        views = live.pop("views")
        say("replaying the workload on the live stack")
        load_opts = LoadOptions(
            **opts.model_dump(include=set(WorkloadOptions.model_fields)),
            target=f"grpc://{stack.grpc_address}", slo=opts.slo, plots=False,
            out=(out / "live") if out is not None else None, label="live",
            drain_timeout_s=opts.drain_timeout_s,
        )
        live_run = asyncio.run(_replay(stack, load_opts, opts.progress))
    finally:
        stack.stop()
    machine = live_run["machine"]
    report["machine_live"] = machine.to_dict()
    # the machine as it was during the live run: the stack's other processes' CPU, and
    # what else ran there (other people's work on a shared machine), second by second,
    # weighed as it competed with the sweep
    t0 = live_run["t0_wall"]
    overheads = replace(
        live["overheads"], cpu_cores=float(machine.cores),
        worker_threads=float(es.num_threads or 1),
        stack_cores=machine.cores_used([n for n in machine.cpu_s if not n.startswith("worker-")]),
        background_threads=weight * machine.background, calibration_share=calibration_share,
        background_series=tuple((t, weight * b) for t, b in machine.background_series(t0)),
    )
    report["background_weight"] = weight
    report["overheads"] = overheads.to_dict()
    report["live_steps"] = step_check(live_run["steps"], calib.step_model, overheads)
    report["hops_ms"] = live.get("hops_ms")

    # 5. the simulator
    from kvfleet.sim.engine import Simulator
    from kvfleet.sim.fleet import SimConfig
    from kvfleet.sim.report import summarize, write_outputs

    config = SimConfig(
        gpu="CPU", models=[shape.name], num_gpus=len(views), tp=1, policy=opts.policy,
        token_budget=es.max_num_batched_tokens, max_num_seqs=es.max_num_seqs,
        dispatch_interval_s=overheads.tick_s, seed=opts.seed,
        worker_queue_fraction=float(opts.scheduler.get("worker_queue_fraction", 1.0)),
        calibration=str(calibration_path),
    )
    say("simulating the same workload")
    result = Simulator(config, specs, workers=views, slos=slos, overheads=overheads,
                       cost=cost).run()
    options = {"fidelity": "sim", "workload": opts.model_dump(mode="json")}
    if out is not None:
        sim_summary = write_outputs(result, out / "sim", slos, options)
    else:
        sim_summary = summarize(result, slos, options=options)

    live_summary = live_run["summary"]
    report.update(compare(live_summary, sim_summary))
    # What each part of the model contributes: the same simulation without the machine's
    # background (an idle machine), and with the calibrated engines alone (no stack at all).
    variants = {
        "no_background": replace(overheads, background_threads=0.0, background_series=()),
        "engines_only": None,
    }
    report["variants"] = {}
    for name, variant in variants.items():
        r = Simulator(config, specs, workers=views, slos=slos, overheads=variant,
                      cost=cost).run()
        report["variants"][name] = compare(live_summary, summarize(r, slos))["sim_over_live"]
    report["live"] = {k: live_summary.get(k) for k in (*METRICS, "completed", "failed",
                                                       "duration", "output_throughput")}
    report["sim"] = {k: sim_summary.get(k) for k in (*METRICS, "completed", "failed",
                                                     "duration", "output_throughput")}
    report["phases"] = {"live": live_run["phases"], "sim": sim_phases(result, overheads)}
    report["calibration"] = {
        "path": str(calibration_path),
        "step_model": calib.step_model.to_dict() if calib.step_model else None,
    }
    report["live_workers"] = [{"worker_id": v.worker_id, "num_total_pages": v.num_total_pages,
                               "tokens_per_page": v.tokens_per_page} for v in views]
    report["targets"] = {"mean": MEAN_TARGET, "p99": P99_TARGET}
    report["machine_after"] = _machine()
    report["wall_s"] = time.perf_counter() - started
    return report


async def _live(stack: Any, engine: Any, model: str, opts: FidelityOptions,
                say: Callable[[str], None]) -> dict[str, Any]:
    """The live workers' views, and the stack's hops (measured or read)."""
    from kvfleet.cli.bench_gateway import measure_on
    from kvfleet.common.models import load_tokenizer
    from kvfleet.common.redis_store import RedisStore
    from kvfleet.services.scheduler.core.types import WorkerView
    from kvfleet.sim.overhead import load_overheads

    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        views = []
        for wid, (_info, occ) in sorted((await store.workers()).items()):
            if occ is None or not occ.models:
                raise RuntimeError(f"worker {wid} has no occupancy report")
            views.append(WorkerView(wid, tuple(occ.models), occ.num_total_pages,
                                    occ.num_total_pages, dict(occ.tokens_per_page)))
    finally:
        await store.close()
    out: dict[str, Any] = {"views": views}
    if opts.overheads is not None:
        out["overheads"] = load_overheads(opts.overheads)
        say(f"hops: {opts.overheads}")
        return out
    say("measuring the stack's hops")
    ids = list(load_tokenizer(model).encode("Explain how a fleet of GPUs serves models."))
    figures = await measure_on(stack, engine, model, ids, max_tokens=8,
                               iterations=opts.gateway_iterations, http=False)
    from kvfleet.sim.overhead import StackOverheads

    out["overheads"] = StackOverheads.from_dict(figures["overheads"], "measured")
    out["hops_ms"] = figures["hops_ms"]
    if opts.out is not None:
        (opts.out / "overheads.json").write_text(json.dumps(figures, indent=2) + "\n")
    return out


async def _replay(stack: Any, load_opts: Any, progress: bool) -> dict[str, Any]:
    from kvfleet.common.redis_store import RedisStore
    from kvfleet.load.machine import MachineSampler
    from kvfleet.load.session import execute
    from kvfleet.load.timeline import dumps, phases, read_timelines, worker_steps

    t0 = time.time()
    pids = {s.name: s.popen.pid for s in stack.services}
    if stack.redis.process is not None:
        pids["redis"] = stack.redis.process.pid
    pids["load-generator"] = os.getpid()
    with MachineSampler(pids) as sampler:
        run = await execute(load_opts, progress=progress)
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        timelines = [t for t in await read_timelines(store) if t.queued_s >= t0]
        steps = await worker_steps(store, timelines)
    finally:
        await store.close()
    if load_opts.out is not None:
        (load_opts.out / "timelines.jsonl").write_text(dumps(timelines))
    # when the load generator's clock started, on the wall clock: its first request was
    # queued a moment after its scheduled time
    first = min(run.result.records, key=lambda r: r.scheduled_s)
    t0_wall = min((t.queued_s for t in timelines), default=t0) - first.start_s
    return {"summary": run.summary, "phases": phases(timelines),
            "machine": sampler.load, "steps": steps, "t0_wall": t0_wall}
