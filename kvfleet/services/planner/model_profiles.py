"""What latency-aware placement needs to know of the live fleet's models: weight and KV bytes
from each model's own config, and step-time coefficients from the simulator's cost model (the
same roofline ``kvfleet sim`` uses, on the ``placement_gpu`` preset)."""

from __future__ import annotations

import logging

from kvfleet.common.config import PlannerSettings
from kvfleet.common.models import read_spec, resolve_model
from kvfleet.common.models.spec import ModelSpec
from kvfleet.services.planner.core.types import FleetSpec, ModelSpecRef, WorkerSpec
from kvfleet.sim.cost_model import CostModel
from kvfleet.sim.presets import ModelShape, gpu_preset

log = logging.getLogger(__name__)

# The engine's defaults (EngineSettings): a step of up to 2048 tokens over 64 sequences.
_STEP_TOKENS, _STEP_SEQS = 2048, 64


def shape_of(name: str, spec: ModelSpec, dtype_bytes: int) -> ModelShape:
    return ModelShape(name, float(spec.param_count(0, spec.num_layers)), spec.num_layers,
                      spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim,
                      spec.vocab_size, dtype_bytes)


def workspace_bytes(spec: ModelSpec, dtype_bytes: int) -> int:
    """The engine's activation workspace for a full step (as ``loaded_model.workspace_bytes``)."""
    qkv = (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim
    per_token = 4 * spec.hidden_size + 2 * qkv + 3 * spec.intermediate_size
    rope = 2 * spec.max_context_tokens * spec.head_dim
    return (_STEP_TOKENS * per_token + rope) * dtype_bytes + _STEP_SEQS * spec.vocab_size * 4


def placement_fleet_spec(settings: PlannerSettings) -> FleetSpec:
    """The fleet as latency-aware placement sees it. A worker's configured models are kept
    (they are the starting placement)."""
    gpu = gpu_preset(settings.placement_gpu)
    refs = []
    costs = {}
    reserve = 0
    for m in settings.models:
        spec = read_spec(resolve_model(m.name))
        shape = shape_of(m.name, spec, settings.dtype_bytes)
        weight = m.weight_bytes or shape.weight_bytes
        refs.append(ModelSpecRef(m.name, weight, shape.kv_bytes_per_token, m.slo.ttft_s,
                                 m.slo.tpot_s))
        costs[(m.name, 1)] = CostModel(gpu, shape, 1).coefficients()
        reserve = max(reserve, workspace_bytes(spec, settings.dtype_bytes))
    workers = tuple(WorkerSpec(w.id, w.memory_bytes, tuple(w.models)) for w in settings.workers)
    log.info("placement fleet: %s", {r.name: (r.weight_bytes, r.kv_bytes_per_token) for r in refs})
    return FleetSpec(tuple(refs), workers, costs, reserve, settings.weight_load_bytes_per_s)
