"""Building a simulated fleet: configuration, model placement (the planner's core), page
pools sized from the memory budget, and one cost model per (model, worker kind)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from kvfleet.common.config import OverloadSettings
from kvfleet.policies import PolicySet, policy_names
from kvfleet.services.planner.core.policy import static_plan
from kvfleet.services.planner.core.seallm_placement import GpuPool, min_degree, workers_for
from kvfleet.services.planner.core.types import FleetSpec, ModelLoad, ModelSpecRef, Plan, WorkerSpec
from kvfleet.services.scheduler.core.admission import (
    DEFAULT_MAX_QUEUED_REQUESTS,
    DEFAULT_MAX_QUEUED_TOKENS,
)
from kvfleet.services.scheduler.core.types import WorkerView
from kvfleet.services.worker.core.step_cost import ModelStepCost
from kvfleet.sim.cost_model import CostModel, load_calibration
from kvfleet.sim.groups import shape_view
from kvfleet.sim.presets import GiB, gpu_preset, link_preset, model_preset
from kvfleet.sim.worker import SimWorker, WorkerConfig

log = logging.getLogger(__name__)


class SimConfig(BaseModel):
    """One simulated fleet and how it is run."""

    gpu: str = Field(default="H100", description="GPU preset (A100-40G, A100-80G, H100, H200, RTX4090, CPU).")
    models: list[str] = Field(default_factory=lambda: ["Llama-2-7B"], min_length=1,
                              description="Model presets; workers are split evenly between them.")
    num_gpus: int = Field(default=16, ge=1, description="GPUs in the fleet.")
    tp: int | None = Field(default=None, ge=1, description="GPUs per worker; default: fewest that fit.")
    policy: str = Field(default="vllm", description="Policy set (see kvfleet.policies).")
    link: str = Field(default="100gbe", description="Link preset for KV migration.")
    dispatch_interval_s: float = Field(default=0.005, ge=0.0, description="Scheduler batching tick.")
    worker_queue_fraction: float = Field(
        default=1.0, ge=0.0,
        description="A worker takes requests until committed this share of its pool beyond "
        "its free pages (the scheduler's worker_queue_fraction).",
    )
    max_queued_requests: int = Field(
        default=DEFAULT_MAX_QUEUED_REQUESTS, ge=1,
        description="A model's scheduler-queue bound in requests (429 past it).",
    )
    max_queued_tokens: int = Field(
        default=DEFAULT_MAX_QUEUED_TOKENS, ge=1,
        description="A model's scheduler-queue bound in prompt tokens.",
    )
    migration_interval_s: float = Field(default=0.5, gt=0.0, description="Migration policy tick.")
    sample_interval_s: float = Field(default=1.0, gt=0.0, description="fleet.csv row interval.")
    token_budget: int = Field(default=2048, ge=1, description="Max tokens per engine step.")
    max_num_seqs: int = Field(default=256, ge=1, description="Max sequences per engine step.")
    page_tokens: int = Field(default=16, ge=1, description="Tokens per KV page of the largest model.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0, description="Usable memory share.")
    activation_reserve_gib: float = Field(default=1.0, ge=0.0, description="Per-GPU activation reserve.")
    horizon_s: float | None = Field(default=None, gt=0.0, description="Stop here; unfinished are dropped.")
    calibration: str | None = Field(default=None, description="Calibration JSON (see load_calibration).")
    overheads: str | None = Field(
        default=None,
        description="The service stack's hops (kvfleet bench gateway --json); none: engines only.",
    )
    predictor: str = Field(
        default="online", description="Output-length predictor: online, oracle or noisy-oracle."
    )
    predictor_spread: float = Field(
        default=0.25, ge=0.0, lt=1.0, description="noisy-oracle: relative error spread."
    )
    predictor_quantile: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="online: the quantile predicted."
    )
    seed: int = Field(default=0, description="Seed for the workload generator.")
    max_tokens: int | None = Field(
        default=None, ge=1,
        description="The max_tokens every request carries (a client's cap); outputs end at "
        "the trace's length (as at an EOS), cut at this cap. None: the trace's length, as "
        "`kvfleet load` forces output lengths.",
    )
    fast_forward: bool = Field(
        default=True,
        description="Run unchanged decode batches as one event (exact); off: every step is "
        "its own event (slow; for checking).",
    )
    replan_interval_s: float = Field(
        default=60.0, gt=0.0,
        description="Re-placement tick of placements that adapt (the planner's placement loop).",
    )
    load_window_s: float = Field(
        default=120.0, gt=0.0, description="Window the measured per-model load is taken over."
    )
    weight_load_bytes_per_s: float = Field(
        default=16e9, gt=0.0,
        description="How fast a worker loads a model's weights (host to GPU) on re-placement.",
    )
    gpus_per_node: int = Field(default=8, ge=1, description="GPUs per machine (node).")
    intra_node_link: str = Field(
        default="nvlink", description="Link preset between workers of one node (KV exchange "
        "and activations of a pipeline group on one node).")
    reload_link: str = Field(
        default="pcie", description="Link preset a dropped layer is reloaded over (from host "
        "memory).")
    overload: OverloadSettings = Field(
        default_factory=lambda: OverloadSettings(),
        description="The overload policy's thresholds (the planner's `overload` settings).")

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, name: str) -> str:
        if name not in policy_names():
            raise ValueError(f"unknown policy {name!r}; known: {', '.join(policy_names())}")
        return name


def pick_tp(config: SimConfig) -> int:
    """Fewest GPUs (a power of two) whose memory holds the largest model with half left."""
    if config.tp is not None:
        return config.tp
    gpu = gpu_preset(config.gpu)
    biggest = max(model_preset(m).weight_bytes for m in config.models)
    tp = 1
    while biggest > 0.5 * gpu.memory_bytes * tp * config.gpu_memory_utilization and tp < 8:
        tp *= 2
    return tp


def cost_model(config: SimConfig, model: str, tp: int) -> CostModel:
    """The cost model of ``model`` on ``tp`` GPUs of the fleet's kind (calibrated if asked)."""
    gpu, shape = gpu_preset(config.gpu), model_preset(model)
    cost = CostModel(gpu, shape, tp, gpu_memory_utilization=config.gpu_memory_utilization)
    if config.calibration:
        calib = load_calibration(Path(config.calibration), cost)
        cost = CostModel(gpu, shape, tp, calib, config.gpu_memory_utilization)
    return cost


def gpu_pool(config: SimConfig) -> GpuPool:
    gpu = gpu_preset(config.gpu)
    degrees = (config.tp,) if config.tp else (1, 2, 4, 8)
    return GpuPool(config.num_gpus, int(gpu.memory_bytes * config.gpu_memory_utilization),
                   degrees)


def reference_costs(config: SimConfig, models: Sequence[str]) -> dict[str, ModelStepCost]:
    """Each model alone on the fewest GPUs that hold it with half their memory left (what a
    request's normalised latency is relative to); names that are no preset use
    ``config.models[0]``'s shape."""
    pool = gpu_pool(config)
    out: dict[str, ModelStepCost] = {}
    for m in models:
        try:
            shape = model_preset(m)
        except ValueError:
            shape = model_preset(config.models[0])
        tp = config.tp or min_degree(shape.weight_bytes, pool)
        out[m] = cost_model(config, shape.name, tp).coefficients()
    return out


def adapts_placement(policies: PolicySet) -> bool:
    """Whether the set's placement decides the fleet's layout itself (stage 1 grouping)."""
    return hasattr(policies.placement(), "groups")


def fleet_spec(config: SimConfig, workers: Sequence[WorkerSpec] = ()) -> FleetSpec:
    """The planner's view of the simulated fleet: models with weights, KV bytes and costs at
    every parallel degree."""
    pool = gpu_pool(config)
    shapes = {m: model_preset(m) for m in config.models}
    return FleetSpec(
        models=tuple(ModelSpecRef(n, s.weight_bytes, s.kv_bytes_per_token)
                     for n, s in shapes.items()),
        workers=tuple(workers),
        step_costs={(m, d): cost_model(config, m, d).coefficients()
                    for m in shapes for d in pool.degrees},
        reserve_bytes=int(config.activation_reserve_gib * GiB),
        weight_load_bytes_per_s=config.weight_load_bytes_per_s,
    )


def build_placed_fleet(
    config: SimConfig, policies: PolicySet, load: Mapping[str, ModelLoad]
) -> tuple[list[SimWorker], FleetSpec, Plan, object]:
    """A fleet laid out by the set's placement: stage 1 groups the GPUs into workers of
    their own parallel degrees, stage 2 places the models (several per worker). Pages are one
    size across the fleet (``page_tokens`` tokens of the model with the most KV per token),
    so any model can be loaded anywhere later. Returns the workers, the planner's fleet
    spec, the plan and the placement policy (kept for re-placement)."""
    placement = policies.placement()
    pool = gpu_pool(config)
    template = fleet_spec(config)
    groups = placement.groups(pool, template, load)  # type: ignore[attr-defined]
    spec = fleet_spec(config, workers_for(groups, pool))
    plan = placement.place(spec, None, load, 0.0)
    shapes = {m: model_preset(m) for m in config.models}
    page_bytes = config.page_tokens * max(s.kv_bytes_per_token for s in shapes.values())
    reserve = int(config.activation_reserve_gib * GiB)
    workers: list[SimWorker] = []
    for i, wspec in enumerate(spec.workers):
        d = wspec.parallel_degree
        models = plan.models_of(wspec.worker_id)
        kv_bytes = wspec.memory_bytes - sum(shapes[m].weight_bytes for m in models) - reserve * d
        pages = kv_bytes // page_bytes
        if pages <= 0:
            raise ValueError(f"{', '.join(models)} leaves no KV memory on {d}x {config.gpu}")
        tpp_all = {m: page_bytes // shapes[m].kv_bytes_per_token for m in shapes}
        costs_all = {m: cost_model(config, m, d) for m in shapes}
        wcfg = WorkerConfig(wspec.worker_id, models, int(pages),
                            {m: tpp_all[m] for m in models}, config.token_budget,
                            config.max_num_seqs, config.worker_queue_fraction,
                            fast_forward=config.fast_forward, parallel_degree=d)
        worker = SimWorker(i, wcfg, {m: costs_all[m] for m in models}, policies.batch())
        worker.catalog(costs_all, tpp_all, {m: shapes[m].weight_bytes for m in shapes},
                       page_bytes)
        workers.append(worker)
    log.info("fleet: %d workers (degrees %s) of %s, placement %s: %s", len(workers), groups,
             config.gpu, getattr(placement, "name", "?"),
             {w.worker_id: w.models for w in workers})
    return workers, spec, plan, placement


def build_fleet(config: SimConfig, policies: PolicySet) -> list[SimWorker]:
    gpu = gpu_preset(config.gpu)
    shapes = {m: model_preset(m) for m in config.models}
    tp = pick_tp(config)
    num_workers = config.num_gpus // tp
    if num_workers < len(shapes):
        raise ValueError(
            f"{config.num_gpus} GPUs at tp={tp} make {num_workers} workers, fewer than "
            f"{len(shapes)} models"
        )
    costs: dict[str, CostModel] = {}
    for name, shape in shapes.items():
        cost = CostModel(gpu, shape, tp, gpu_memory_utilization=config.gpu_memory_utilization)
        if config.calibration:
            calib = load_calibration(Path(config.calibration), cost)
            cost = CostModel(gpu, shape, tp, calib, config.gpu_memory_utilization)
        costs[name] = cost
    names = list(shapes)
    memory = int(gpu.memory_bytes * tp * config.gpu_memory_utilization)
    spec = FleetSpec(
        models=tuple(ModelSpecRef(n, shapes[n].weight_bytes) for n in names),
        workers=tuple(
            WorkerSpec(f"w{i:04d}", memory, (names[i % len(names)],)) for i in range(num_workers)
        ),
    )
    plan = static_plan(spec)
    reserve = int(config.activation_reserve_gib * GiB * tp)
    workers: list[SimWorker] = []
    for i, wspec in enumerate(spec.workers):
        models = plan.models_of(wspec.worker_id)
        page_bytes = config.page_tokens * max(shapes[m].kv_bytes_per_token for m in models)
        kv_bytes = memory - sum(shapes[m].weight_bytes for m in models) - reserve
        pages = kv_bytes // page_bytes
        if pages <= 0:
            raise ValueError(f"{', '.join(models)} leaves no KV memory on {tp}x {gpu.name}")
        tpp = {m: page_bytes // shapes[m].kv_bytes_per_token for m in models}
        node = f"node{(i * tp) // max(config.gpus_per_node, tp)}"
        wcfg = WorkerConfig(wspec.worker_id, models, int(pages), tpp,
                            config.token_budget, config.max_num_seqs, config.worker_queue_fraction,
                            fast_forward=config.fast_forward, page_size_bytes=int(page_bytes),
                            node=node)
        worker = SimWorker(i, wcfg, {m: costs[m] for m in models}, policies.batch())
        worker.shapes = {m: shape_view(shapes[m]) for m in models}
        worker._publish(0.0)
        workers.append(worker)
    log.info("fleet: %d workers of %dx %s, models %s, %d pages each (%d tokens/page)",
             num_workers, tp, gpu.name, names, workers[0].total_pages,
             next(iter(workers[0].tpp.values())))
    return workers


def build_workers_like(
    config: SimConfig, policies: PolicySet, views: Sequence[WorkerView],
    cost: CostModel | None = None,
) -> list[SimWorker]:
    """Workers shaped like given occupancy views (ids, models, pages, tokens per page), e.g.
    a live fleet's; every model's step times come from ``cost``, by default
    ``config.models[0]``'s cost model."""
    if cost is None:
        gpu = gpu_preset(config.gpu)
        shape = model_preset(config.models[0])
        cost = CostModel(gpu, shape, config.tp or 1,
                         gpu_memory_utilization=config.gpu_memory_utilization)
        if config.calibration:
            calib = load_calibration(Path(config.calibration), cost)
            cost = CostModel(gpu, shape, config.tp or 1, calib, config.gpu_memory_utilization)
    workers = []
    for i, v in enumerate(views):
        if not v.models or v.num_total_pages <= 0:
            raise ValueError(f"worker {v.worker_id}: needs models and pages")
        tpp = {m: v.tokens_per_page.get(m, config.page_tokens) for m in v.models}
        page_bytes = max(tpp.values()) * int(cost.kv_bytes_per_token)
        wcfg = WorkerConfig(v.worker_id, v.models, v.num_total_pages, tpp,
                            config.token_budget, config.max_num_seqs, config.worker_queue_fraction,
                            fast_forward=config.fast_forward,
                            page_size_bytes=page_bytes, node="node0")
        worker = SimWorker(i, wcfg, dict.fromkeys(v.models, cost), policies.batch())
        worker.shapes = dict.fromkeys(v.models, shape_view(cost.model))
        worker._publish(0.0)
        workers.append(worker)
    return workers


def migration_link(config: SimConfig):  # type: ignore[no-untyped-def]
    return link_preset(config.link)
