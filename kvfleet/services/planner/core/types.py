"""Plain data the planner's policy core decides over."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelSpecRef:
    """A model the fleet serves, by name, with the bytes its weights take."""

    name: str
    weight_bytes: int


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    worker_id: str
    memory_bytes: int
    models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What the operator configured: models, and workers with budgets and (optionally) models."""

    models: tuple[ModelSpecRef, ...]
    workers: tuple[WorkerSpec, ...]


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
