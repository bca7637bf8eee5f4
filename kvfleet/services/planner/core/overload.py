"""Overload policies: what the planner does when KV demand outgrows the fleet's memory
(KunServe drops replicated layers and serves as a pipeline). Pure.

The planner calls its overload policy on every tick with a ``FleetLoad``: each worker's
occupancy, the layer ranges it holds, the pipeline group it belongs to, and the requests
waiting in the scheduler's queue. The policy answers with layer actions (form a pipeline
group by dropping layers, or dissolve one by restoring them) for the workers to carry out.
``overload_views`` builds the views from occupancy reports, the same function live (from
heartbeats) and in the simulator (from its workers' state).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvfleet.services.scheduler.core.occupancy import OccupancyReport
from kvfleet.services.scheduler.core.stages import ModelShapeView, StageView


@dataclass(frozen=True, slots=True)
class OverloadWorkerView:
    """One worker as an overload policy sees it.

    A pipeline group's leader reports the group's pooled pages (each request takes the same
    number of pages on every stage, so the tightest stage bounds the group); the other
    members report their own pool and are not counted again.
    """

    worker_id: str
    models: tuple[str, ...]
    num_total_pages: int
    num_free_pages: int
    num_reserved_pages: int = 0
    num_queued_pages: int = 0
    tokens_per_page: dict[str, int] = field(default_factory=dict)
    page_size_bytes: int = 0
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # held range per model
    shapes: dict[str, ModelShapeView] = field(default_factory=dict)
    groups: dict[str, StageView] = field(default_factory=dict)  # per grouped model
    node: str = ""
    busy: bool = False  # a drop or restore involving it is in flight

    @property
    def num_held_pages(self) -> int:
        """Pages held or reserved: what the pool cannot give to a waiting request."""
        return self.num_total_pages - self.num_free_pages + self.num_reserved_pages

    @property
    def num_demand_pages(self) -> int:
        """Pages held, reserved, and needed by the queue."""
        used = self.num_total_pages - self.num_free_pages
        return used + self.num_reserved_pages + self.num_queued_pages

    def holds_full(self, model: str) -> bool:
        """It holds every layer of ``model`` (a worker reporting no layers holds it whole)."""
        if model not in self.models:
            return False
        shape = self.shapes.get(model)
        rng = self.layers.get(model)
        return shape is None or rng is None or rng == (0, shape.num_layers)

    def counts_for(self, model: str) -> bool:
        """Whether the worker's pages count toward ``model``'s capacity: it serves the model
        on its own, or leads the model's pipeline group."""
        if model not in self.models:
            return False
        group = self.groups.get(model)
        if group is not None:
            return group.rank == 0
        return self.holds_full(model)


@dataclass(frozen=True, slots=True)
class FleetLoad:
    """What an overload policy decides on: the workers, and the prompt tokens each model has
    waiting in the scheduler's queue (no worker has room for them yet)."""

    workers: tuple[OverloadWorkerView, ...]
    queued_tokens: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One stage of a pipeline group: the worker and the layers it keeps."""

    worker_id: str
    first_layer: int
    last_layer: int


@dataclass(frozen=True, slots=True)
class LayerAction:
    """``kind="drop"``: the workers of ``stages`` (stage 0 leads) keep only their layer
    ranges of ``model`` and serve it together as a pipeline named ``group_id``, each request
    taking ``tokens_per_page`` tokens per page on every stage.
    ``kind="restore"``: the group reloads its layers and dissolves."""

    kind: str
    model: str
    group_id: str
    stages: tuple[StagePlan, ...] = ()
    tokens_per_page: int = 0
    reason: str = ""

    @property
    def leader_id(self) -> str:
        return self.stages[0].worker_id if self.stages else ""


@dataclass(frozen=True, slots=True)
class OverloadThresholds:
    """When an overload policy acts (the planner's ``overload`` settings)."""

    overload_ratio: float = 1.0  # demand / capacity above this is overload ...
    min_held_ratio: float = 0.9  # ... while the pools hold at least this share of capacity
    overload_hold_s: float = 1.0  # ... for this long before layers are dropped
    restore_ratio: float = 0.6  # demand / capacity-after-restore below this ...
    restore_hold_s: float = 5.0  # ... for this long before a group is restored
    cooldown_s: float = 2.0  # no new action for a model this soon after the last one
    max_group_size: int = 4  # most workers in one pipeline group
    head_cost_layers: float = 0.0  # the LM head's compute, in decoder layers (stage balance)


class OverloadPolicy(Protocol):
    name: str

    def configure(self, thresholds: OverloadThresholds) -> None: ...

    def decide(self, fleet: FleetLoad, now_s: float) -> tuple[LayerAction, ...]: ...


class NoOverloadPolicy:
    """Does nothing under overload: requests queue, or are preempted, on their workers."""

    name = "none"

    def configure(self, thresholds: OverloadThresholds) -> None:
        pass

    def decide(self, fleet: FleetLoad, now_s: float) -> tuple[LayerAction, ...]:
        return ()


def overload_views(
    reports: Sequence[OccupancyReport],
    busy: Collection[str] = (),
    nodes: Mapping[str, str] | None = None,
) -> list[OverloadWorkerView]:
    """The overload policy's view of each worker, from its report (live: its heartbeat;
    simulated: its state); ``busy`` names workers a layer action is still changing."""
    views = []
    for r in reports:
        views.append(OverloadWorkerView(
            r.worker_id, r.models, r.num_total_pages, r.num_free_pages, r.num_reserved_pages,
            r.num_queued_pages, dict(r.tokens_per_page), r.page_size_bytes, dict(r.layers),
            dict(r.shapes), dict(r.groups),
            (nodes or {}).get(r.worker_id, r.node), r.worker_id in busy,
        ))
    return views
