"""The multi-model baselines' placements: dedicated GPUs, MuxServe and AlpaServe. Pure.

Each is static (placed once from the load it is given, never re-placed) and is given its best
settings: the same load figures and cost model as SeaLLM's placement.

- ``DedicatedPlacementPolicy``: every worker holds one model. Stage 1 gives each model one
  group of the degree it needs, then hands out the remaining GPUs one group at a time to the
  model whose predicted latency drops most (so GPUs follow load).
- ``MuxServePlacementPolicy`` (Duan et al., ICML 2024): models sorted by compute demand
  (rate x isolated time), each placed on the group with the least demand per GPU that holds
  it, with as many replicas as its demand needs groups; co-located models share the unified
  KV pool (FCFS batches).
- ``AlpaServePlacementPolicy`` (Li et al., OSDI 2023): uniform model-parallel groups (the
  degree that scores best) and greedy replica placement for statistical multiplexing: every
  model once, then the replica that lowers the predicted latency most, until none does or
  memory is full.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvfleet.services.planner.core.placement_eval import (
    Assignment,
    PlacementEvaluator,
    plan_of,
)
from kvfleet.services.planner.core.policy import PlacementError, static_plan
from kvfleet.services.planner.core.seallm_placement import (
    GpuPool,
    best_grouping,
    greedy_assign,
    grouped_spec,
    min_degree,
)
from kvfleet.services.planner.core.types import FleetSpec, ModelLoad, Plan


class _StaticOnce:
    """Place once; keep the plan."""

    name = "static-once"

    def assign(self, ev: PlacementEvaluator) -> Assignment:
        raise NotImplementedError

    def place(self, fleet: FleetSpec, current: Plan | None, load: Mapping[str, ModelLoad],
              now_s: float) -> Plan:
        if current is not None and current.placements:
            return current
        if fleet.workers and all(w.models for w in fleet.workers):
            return static_plan(fleet)  # placed by hand in the configuration
        return plan_of(self.assign(PlacementEvaluator(fleet, load)), 1)


class DedicatedPlacementPolicy(_StaticOnce):
    name = "dedicated"

    def __init__(self) -> None:
        self._intended: list[tuple[int, str]] | None = None  # (degree, model) per group

    def groups(self, pool: GpuPool, fleet: FleetSpec, load: Mapping[str, ModelLoad]
               ) -> tuple[int, ...]:
        need = {m.name: min_degree(m.weight_bytes, pool) for m in fleet.models}
        counts = dict.fromkeys(need, 1)
        left = pool.num_gpus - sum(need.values())
        if left < 0:
            raise PlacementError(f"{pool.num_gpus} GPUs cannot give every model its own")
        while True:
            best: tuple[float, str] | None = None
            for m, d in need.items():
                if d > left:
                    continue
                trial = {**counts, m: counts[m] + 1}
                s = self._score(trial, need, pool, fleet, load)
                if best is None or s < best[0]:
                    best = (s, m)
            if best is None:
                break
            counts[best[1]] += 1
            left -= need[best[1]]
        self._intended = [(need[m], m) for m in sorted(need) for _ in range(counts[m])]
        return tuple(d for d, _ in self._intended)

    def _score(self, counts: dict[str, int], need: dict[str, int], pool: GpuPool,
               fleet: FleetSpec, load: Mapping[str, ModelLoad]) -> float:
        groups = tuple(need[m] for m in sorted(need) for _ in range(counts[m]))
        spec = grouped_spec(fleet, groups, pool)
        ev = PlacementEvaluator(spec, load)
        ids = [w.worker_id for w in spec.workers]
        assign: Assignment = {}
        i = 0
        for m in sorted(need):
            for _ in range(counts[m]):
                assign[ids[i]] = (m,)
                i += 1
        return ev.score(assign).score

    def assign(self, ev: PlacementEvaluator) -> Assignment:
        """Each worker one model: as ``groups`` laid them out when the fleet is the one it
        made; otherwise the largest model not yet placed, then the one with the most demand
        per copy, that fits each worker (largest workers first)."""
        fleet = ev.fleet
        intended = self._intended
        if intended is not None and [w.parallel_degree for w in fleet.workers] == [
                d for d, _ in intended]:
            return {w.worker_id: (m,) for w, (_, m) in zip(fleet.workers, intended, strict=True)}
        out: Assignment = {w.worker_id: () for w in fleet.workers}
        models = sorted(fleet.models, key=lambda m: (-m.weight_bytes, m.name))
        demand = {m.name: ev.load[m.name].request_rate * ev.isolated[m.name] for m in models}
        copies = dict.fromkeys(demand, 0)
        for w in sorted(fleet.workers, key=lambda w: (-w.memory_bytes, w.worker_id)):
            fitting = [m.name for m in models if ev.fits(w, (m.name,))]
            if not fitting:
                continue
            unplaced = [m for m in fitting if copies[m] == 0]
            pick = unplaced[0] if unplaced else max(
                fitting, key=lambda m: (demand[m] / (copies[m] + 1), m))
            out[w.worker_id] = (pick,)
            copies[pick] += 1
        if any(c == 0 for c in copies.values()):
            raise PlacementError("dedicated placement needs a worker per model")
        return out


class MuxServePlacementPolicy(_StaticOnce):
    name = "muxserve"

    def groups(self, pool: GpuPool, fleet: FleetSpec, load: Mapping[str, ModelLoad]
               ) -> tuple[int, ...]:
        need = max(min_degree(m.weight_bytes, pool) for m in fleet.models)
        return (need,) * (pool.num_gpus // need)

    def assign(self, ev: PlacementEvaluator) -> Assignment:
        fleet = ev.fleet
        out: Assignment = {w.worker_id: () for w in fleet.workers}
        per_gpu = {w.worker_id: 0.0 for w in fleet.workers}  # demand placed per GPU
        gpus = {w.worker_id: w.parallel_degree for w in fleet.workers}
        demand = {m.name: ev.load[m.name].request_rate * ev.isolated[m.name]
                  for m in fleet.models}
        total = sum(demand.values()) or 1.0
        capacity = sum(gpus.values())
        for m in sorted(fleet.models, key=lambda m: (-demand[m.name], m.name)):
            share = demand[m.name] / total * capacity  # GPUs' worth of its demand
            ranked = sorted(fleet.workers, key=lambda w: (per_gpu[w.worker_id], w.worker_id))
            hosts = [w for w in ranked if ev.fits(w, out[w.worker_id] + (m.name,))]
            if not hosts:
                raise PlacementError(f"model {m.name!r} fits no worker's memory")
            chosen, covered = [], 0.0
            for w in hosts:
                chosen.append(w)
                covered += gpus[w.worker_id]
                if covered >= share:
                    break
            for w in chosen:
                out[w.worker_id] = out[w.worker_id] + (m.name,)
                per_gpu[w.worker_id] += demand[m.name] / len(chosen) / gpus[w.worker_id]
        return out


class AlpaServePlacementPolicy(_StaticOnce):
    name = "alpaserve"

    def groups(self, pool: GpuPool, fleet: FleetSpec, load: Mapping[str, ModelLoad]
               ) -> tuple[int, ...]:
        need = max(min_degree(m.weight_bytes, pool) for m in fleet.models)
        uniform = [(d,) * (pool.num_gpus // d) for d in sorted(pool.degrees)
                   if d >= need and pool.num_gpus // d >= 1]
        return best_grouping(uniform, pool, fleet, load, "no uniform grouping holds every model")

    def assign(self, ev: PlacementEvaluator) -> Assignment:
        return greedy_assign(ev)
