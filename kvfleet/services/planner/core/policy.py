"""Static placement: the baseline planner core. Pure."""

from __future__ import annotations

from kvfleet.services.planner.core.types import FleetSpec, Placement, Plan


class PlacementError(ValueError):
    """The configured placement cannot be honoured (unknown model, over budget)."""


def static_plan(fleet: FleetSpec, version: int = 1) -> Plan:
    """Place models as configured; a worker with no models listed gets every model.

    Refuses a placement whose weights alone exceed a worker's memory budget.
    """
    weights = {m.name: m.weight_bytes for m in fleet.models}
    placements: list[Placement] = []
    for worker in fleet.workers:
        models = worker.models or tuple(weights)
        total = 0
        for model in models:
            if model not in weights:
                raise PlacementError(f"worker {worker.worker_id}: unknown model {model!r}")
            total += weights[model]
            placements.append(Placement(worker.worker_id, model))
        if total > worker.memory_bytes:
            raise PlacementError(
                f"worker {worker.worker_id}: weights need {total} bytes, "
                f"budget is {worker.memory_bytes}"
            )
    return Plan(version, tuple(placements))
