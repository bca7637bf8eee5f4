"""Scoring placements of several models on several workers. Pure.

An ``Assignment`` maps each worker to the models it holds. ``PlacementEvaluator`` splits
every model's measured load between its replicas (in proportion to how fast each replica's
worker runs it alone) and sums, over every worker, the requests per second times their
predicted normalised latency (``latency_model.estimate_worker``). Lower is better; the
latency-aware placement, its re-placement and the baselines' placements all use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kvfleet.services.planner.core.latency_model import (
    ModelShare,
    WorkerEstimate,
    estimate_worker,
)
from kvfleet.services.planner.core.types import (
    NOMINAL_OUTPUT_TOKENS,
    FleetSpec,
    ModelLoad,
    ModelSpecRef,
    Placement,
    Plan,
    WorkerSpec,
)
from kvfleet.services.worker.core.step_cost import UNIT_STEP_COST, ModelStepCost

Assignment = dict[str, tuple[str, ...]]  # worker id -> models it holds

NOMINAL_LOAD = ModelLoad("", request_rate=1.0, mean_prompt_tokens=256,
                         mean_output_tokens=NOMINAL_OUTPUT_TOKENS)
"""What a model is assumed to carry before any load was measured."""

KV_MIN_FRACTION = 0.1
"""Share of a worker's memory that must stay for KV after the weights it holds."""


def assignment_of(plan: Plan, fleet: FleetSpec) -> Assignment:
    return {w.worker_id: plan.models_of(w.worker_id) for w in fleet.workers}


def plan_of(assignment: Assignment, version: int) -> Plan:
    return Plan(version, tuple(
        Placement(w, m) for w, models in sorted(assignment.items()) for m in sorted(models)
    ))


def effective_loads(fleet: FleetSpec, load: Mapping[str, ModelLoad]) -> dict[str, ModelLoad]:
    """Each model's load; with nothing measured at all, every model carries the nominal load
    (an equal share), so a first placement still spreads the models."""
    measured = {m.name: load.get(m.name) for m in fleet.models}
    if not any(v is not None and v.request_rate > 0 for v in measured.values()):
        return {m.name: ModelLoad(m.name, NOMINAL_LOAD.request_rate,
                                  NOMINAL_LOAD.mean_prompt_tokens,
                                  NOMINAL_LOAD.mean_output_tokens) for m in fleet.models}
    return {
        name: v if v is not None else ModelLoad(name)
        for name, v in measured.items()
    }


@dataclass(frozen=True, slots=True)
class Scored:
    score: float
    estimates: Mapping[str, WorkerEstimate]


class PlacementEvaluator:
    """Scores assignments of ``fleet``'s models to its workers under ``load``."""

    def __init__(self, fleet: FleetSpec, load: Mapping[str, ModelLoad]) -> None:
        self.fleet = fleet
        self.load = effective_loads(fleet, load)
        self.models = {m.name: m for m in fleet.models}
        self.workers = {w.worker_id: w for w in fleet.workers}
        self.isolated = {m.name: self._isolated_s(m) for m in fleet.models}
        self._cache: dict[tuple[str, tuple[tuple[str, float], ...]], WorkerEstimate] = {}

    # ----- costs and memory -----
    def cost(self, model: str, worker: WorkerSpec) -> ModelStepCost:
        return self.fleet.step_costs.get((model, worker.parallel_degree), UNIT_STEP_COST)

    def reference_cost(self, model: str) -> ModelStepCost:
        """The model's cost at the smallest parallel degree it has figures for."""
        degrees = sorted(d for (m, d) in self.fleet.step_costs if m == model)
        return self.fleet.step_costs[(model, degrees[0])] if degrees else UNIT_STEP_COST

    def _isolated_s(self, m: ModelSpecRef) -> float:
        ld = self.load[m.name]
        return self.reference_cost(m.name).isolated_s(
            max(int(ld.mean_prompt_tokens), 1), max(int(ld.mean_output_tokens), 1))

    def weight_bytes(self, models: tuple[str, ...]) -> int:
        return sum(self.models[m].weight_bytes for m in models)

    def kv_pool_bytes(self, worker: WorkerSpec, models: tuple[str, ...]) -> int:
        reserve = self.fleet.reserve_bytes * worker.parallel_degree
        return worker.memory_bytes - reserve - self.weight_bytes(models)

    def fits(self, worker: WorkerSpec, models: tuple[str, ...]) -> bool:
        return self.kv_pool_bytes(worker, models) >= KV_MIN_FRACTION * worker.memory_bytes

    # ----- scoring -----
    def shares(self, assignment: Assignment) -> dict[str, dict[str, float]]:
        """worker -> model -> the share of the model's rate it gets."""
        speed: dict[str, dict[str, float]] = {}
        for wid, models in assignment.items():
            w = self.workers[wid]
            for m in models:
                ld = self.load[m]
                t = self.cost(m, w).decode_s(1, ld.mean_prompt_tokens)
                speed.setdefault(m, {})[wid] = 1.0 / max(t, 1e-9)
        out: dict[str, dict[str, float]] = {wid: {} for wid in assignment}
        for m, per in speed.items():
            total = sum(per.values())
            for wid, v in per.items():
                out[wid][m] = v / total
        return out

    def worker_estimate(self, wid: str, models: tuple[str, ...], shares: Mapping[str, float]
                        ) -> tuple[WorkerEstimate, list[ModelShare]]:
        w = self.workers[wid]
        key = (wid, tuple(sorted((m, round(shares[m], 9)) for m in models)))
        items = [
            ModelShare(
                m,
                ModelLoad(m, self.load[m].request_rate * shares[m],
                          self.load[m].mean_prompt_tokens, self.load[m].mean_output_tokens),
                self.cost(m, w), self.models[m].kv_bytes_per_token, self.isolated[m],
            )
            for m in models
        ]
        est = self._cache.get(key)
        if est is None:
            est = estimate_worker(items, self.kv_pool_bytes(w, models))
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[key] = est
        return est, items

    def score(self, assignment: Assignment) -> Scored:
        """Requests per second times their predicted normalised latency, summed; a model no
        worker holds counts as overloaded."""
        shares = self.shares(assignment)
        total = 0.0
        estimates: dict[str, WorkerEstimate] = {}
        for wid, models in assignment.items():
            if not models:
                continue
            est, items = self.worker_estimate(wid, models, shares[wid])
            estimates[wid] = est
            total += est.weighted(items)
        held = {m for models in assignment.values() for m in models}
        for m in self.models:
            if m not in held:
                total += self.load[m].request_rate * 1e6 + 1e6
        return Scored(total, estimates)

    def mean_normalized(self, assignment: Assignment) -> float:
        """The predicted mean normalised latency over all requests."""
        rate = sum(ld.request_rate for ld in self.load.values())
        return self.score(assignment).score / rate if rate > 0 else 1.0
