"""Plain data the planner's policy core decides over."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kvfleet.services.worker.core.step_cost import ModelStepCost


@dataclass(frozen=True, slots=True)
class ModelSpecRef:
    """A model the fleet serves, by name, with the bytes its weights take (and, for
    latency-aware placement, the bytes one token of its KV takes and its SLO targets)."""

    name: str
    weight_bytes: int
    kv_bytes_per_token: int = 0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """A worker: its memory budget, the models configured for it (static placement), and how
    many GPUs it spans (its tensor-parallel degree)."""

    worker_id: str
    memory_bytes: int
    models: tuple[str, ...] = ()
    parallel_degree: int = 1


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What the operator configured: models, and workers with budgets and (optionally) models.

    Latency-aware placement also reads ``step_costs``: each (model, parallel degree)'s step
    time coefficients (the simulator's cost model, ``CostModel.coefficients()``),
    ``reserve_bytes`` that a worker keeps per GPU beyond weights and KV (activations), and
    ``weight_load_bytes_per_s``, how fast a worker loads weights (the cost of re-placing).
    """

    models: tuple[ModelSpecRef, ...]
    workers: tuple[WorkerSpec, ...]
    step_costs: Mapping[tuple[str, int], ModelStepCost] = field(default_factory=dict)
    reserve_bytes: int = 0
    weight_load_bytes_per_s: float = 0.0

    def model(self, name: str) -> ModelSpecRef:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Placement:
    worker_id: str
    model: str


@dataclass(frozen=True, slots=True)
class Plan:
    """A versioned placement: which models each worker holds."""

    version: int
    placements: tuple[Placement, ...]

    def models_of(self, worker_id: str) -> tuple[str, ...]:
        return tuple(p.model for p in self.placements if p.worker_id == worker_id)

    def workers_of(self, model: str) -> tuple[str, ...]:
        return tuple(p.worker_id for p in self.placements if p.model == model)


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """A model's measured load over the planner's recent window."""

    model: str
    request_rate: float = 0.0  # requests per second
    mean_prompt_tokens: float = 0.0
    mean_output_tokens: float = 0.0


NOMINAL_OUTPUT_TOKENS = 128
"""The mean output length assumed for a model before any of its requests were measured."""


def with_backlog(load: dict[str, ModelLoad], queued: dict[str, tuple[int, int]],
                 window_s: float) -> dict[str, ModelLoad]:
    """``load`` (arrivals over the last ``window_s``) plus the requests still queued for each
    model (``queued``: requests, prompt tokens), as if they had arrived in the window too: a
    queue that grows is demand the fleet did not serve, and a placement that sees only
    arrivals keeps a model that cannot keep up on too few workers."""
    out = dict(load)
    span = max(window_s, 1e-9)
    for model, (n, tokens) in queued.items():
        if n <= 0:
            continue
        have = out.get(model)
        if have is not None and have.request_rate > 0:
            arrived = have.request_rate * span
            total = arrived + n
            out[model] = ModelLoad(model, total / span,
                                   (have.mean_prompt_tokens * arrived + tokens) / total,
                                   have.mean_output_tokens)
        else:
            out[model] = ModelLoad(model, n / span, tokens / n, NOMINAL_OUTPUT_TOKENS)
    return out
