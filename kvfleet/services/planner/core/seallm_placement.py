"""SeaLLM's placement: two stages, then adaptive re-placement. Pure.

Stage 1 groups the fleet's GPUs into workers, each with a parallel degree (``group_gpus``):
it tries uniform partitions and mixed ones (some groups at the degree the largest models need,
the rest at the smallest), runs stage 2 on each and keeps the partition that scores best.

Stage 2 assigns models to the workers (``greedy_assign``): each model once, the largest first
(and again, the busiest first), each to the worker where it adds the least predicted latency;
then replicas, one at a time, the one that lowers the score most, while it does; then a local
search (add, drop or move a replica; else swap two; else give one worker a new set of one or
two models) while a move lowers the score; the better of the two starts is kept
(``PlacementEvaluator``: requests per second times their predicted normalised latency, from
the simulator's cost model).

Re-placement (``improve``): on every planner tick, with the load measured over the last
window, the policy looks for moves (add a replica, drop one, move a model, replace a model
that has replicas elsewhere with another) whose predicted gain
over ``horizon_s`` seconds exceeds their cost: loading the weights (``weight_load_bytes_per_s``)
during which the worker serves with less KV, and, for a model that would have no replica while
its new one loads, its requests waiting for it. It applies at most ``max_moves`` moves a tick
and waits ``min_interval_s`` between re-placements, so the interval adapts: a steady load
keeps the plan; a shift large enough to pay for a swap gets one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kvfleet.services.planner.core.placement_eval import (
    Assignment,
    PlacementEvaluator,
    assignment_of,
    plan_of,
)
from kvfleet.services.planner.core.policy import PlacementError, static_plan
from kvfleet.services.planner.core.types import FleetSpec, ModelLoad, Plan, WorkerSpec


@dataclass(frozen=True, slots=True)
class GpuPool:
    """The GPUs stage 1 groups into workers."""

    num_gpus: int
    gpu_memory_bytes: int  # usable memory of one GPU
    degrees: tuple[int, ...] = (1, 2, 4, 8)


def min_degree(weight_bytes: int, pool: GpuPool) -> int:
    """Fewest GPUs (a degree of the pool) whose memory holds the weights with half left."""
    for d in sorted(pool.degrees):
        if weight_bytes <= 0.5 * pool.gpu_memory_bytes * d:
            return d
    return max(pool.degrees)


def workers_for(groups: Sequence[int], pool: GpuPool) -> tuple[WorkerSpec, ...]:
    return tuple(
        WorkerSpec(f"w{i:04d}", pool.gpu_memory_bytes * d, (), d) for i, d in enumerate(groups)
    )


ORDERS = (
    lambda ev, m: (-m.weight_bytes, -ev.load[m.name].request_rate, m.name),  # largest first
    lambda ev, m: (-ev.load[m.name].request_rate * ev.isolated[m.name], m.name),  # busiest first
)
"""The orders stage 2 places models in; with ``refine`` each is tried and the best kept."""


def greedy_assign(ev: PlacementEvaluator, max_rounds: int = 256, refine: bool = True
                  ) -> Assignment:
    """Stage 2: each model once (in one of ``ORDERS``, where it adds least), then replicas
    while one lowers the score, then (``refine``) the local search; with ``refine`` every
    order is tried and the best result kept (a greedy start can trap the local search)."""
    if not refine:
        return _greedy(ev, ORDERS[0], max_rounds)
    best: tuple[float, Assignment] | None = None
    for order in ORDERS:
        assign = local_search(ev, _greedy(ev, order, max_rounds), max_rounds)
        s = ev.score(assign).score
        if best is None or s < best[0]:
            best = (s, assign)
    assert best is not None
    return best[1]


def _greedy(ev: PlacementEvaluator, key, max_rounds: int) -> Assignment:  # type: ignore[no-untyped-def]
    fleet = ev.fleet
    assign: Assignment = {w.worker_id: () for w in fleet.workers}
    order = sorted(fleet.models, key=lambda m: key(ev, m))
    for m in order:
        best: tuple[float, str] | None = None
        for w in fleet.workers:
            trial = assign[w.worker_id] + (m.name,)
            if not ev.fits(w, trial):
                continue
            s = ev.score({**assign, w.worker_id: trial}).score
            if best is None or s < best[0]:
                best = (s, w.worker_id)
        if best is None:
            raise PlacementError(f"model {m.name!r} fits no worker's memory")
        assign[best[1]] = assign[best[1]] + (m.name,)
    current = ev.score(assign).score
    for _ in range(max_rounds):
        best_move: tuple[float, str, str] | None = None
        for w in fleet.workers:
            for m in fleet.models:
                if m.name in assign[w.worker_id]:
                    continue
                trial = assign[w.worker_id] + (m.name,)
                if not ev.fits(w, trial):
                    continue
                s = ev.score({**assign, w.worker_id: trial}).score
                if best_move is None or s < best_move[0]:
                    best_move = (s, w.worker_id, m.name)
        if best_move is None or best_move[0] >= current * (1 - 1e-3):
            break
        current, wid, name = best_move
        assign[wid] = assign[wid] + (name,)
    return assign


def local_search(ev: PlacementEvaluator, assign: Assignment, max_rounds: int = 64) -> Assignment:
    """Take the best neighbour (add, drop or move a replica) while it lowers the score."""
    current = ev.score(assign).score
    for _ in range(max_rounds):
        best: tuple[float, Assignment] | None = None
        for moves in (_neighbours, _swaps, _rebuilds):  # each only when the last did not help
            for trial in moves(ev, assign):
                s = ev.score(trial).score
                if best is None or s < best[0]:
                    best = (s, trial)
            if best is not None and best[0] < current * (1 - 1e-3):
                break
        if best is None or best[0] >= current * (1 - 1e-3):
            break
        current, assign = best
    return assign


def _rebuilds(ev: PlacementEvaluator, assign: Assignment):  # type: ignore[no-untyped-def]
    """Give one worker a new set of one or two models (every model keeps a replica): the
    step out of a layout where every single move makes things worse first."""
    names = [m.name for m in ev.fleet.models]
    held = {m for ms in assign.values() for m in ms}
    sets = [(a,) for a in names] + [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    for w in ev.fleet.workers:
        have = assign.get(w.worker_id, ())
        rest = {m for wid, ms in assign.items() if wid != w.worker_id for m in ms}
        for ms in sets:
            if set(ms) == set(have) or not (held <= rest | set(ms)) or not ev.fits(w, ms):
                continue
            yield {**assign, w.worker_id: ms}


def _swaps(ev: PlacementEvaluator, assign: Assignment):  # type: ignore[no-untyped-def]
    """Exchange a model ``x`` of one worker with a model ``y`` of another (``x`` is not added
    where it already is); every model keeps a replica."""
    workers = ev.fleet.workers
    names = {m.name for m in ev.fleet.models}
    for w1 in workers:
        a1 = assign.get(w1.worker_id, ())
        for w2 in workers:
            if w2 is w1:
                continue
            a2 = assign.get(w2.worker_id, ())
            for x in a1:
                for y in a2:
                    if y in a1 or (x not in a2 and w1.worker_id > w2.worker_id):
                        continue  # a plain exchange is tried once, from the first worker
                    n1 = tuple(m for m in a1 if m != x) + (y,)
                    n2 = tuple(m for m in a2 if m != y) + (() if x in a2 else (x,))
                    if not (ev.fits(w1, n1) and ev.fits(w2, n2)):
                        continue
                    trial = {**assign, w1.worker_id: n1, w2.worker_id: n2}
                    if {m for ms in trial.values() for m in ms} >= names:
                        yield trial


def group_gpus(
    pool: GpuPool, fleet: FleetSpec, load: Mapping[str, ModelLoad]
) -> tuple[int, ...]:
    """Stage 1: the parallel degrees of the workers (see the module doc)."""
    needs = sorted({min_degree(m.weight_bytes, pool) for m in fleet.models})
    big, small = needs[-1], needs[0]
    candidates: list[tuple[int, ...]] = []
    for d in sorted(pool.degrees):
        if d >= big and pool.num_gpus // d >= 1:
            candidates.append((d,) * (pool.num_gpus // d))
    if big > small:
        for k in range(1, pool.num_gpus // big + 1):
            rest = pool.num_gpus - k * big
            candidates.append((big,) * k + (small,) * (rest // small))
    return best_grouping(candidates, pool, fleet, load, "no grouping of the GPUs holds every model")


def grouped_spec(fleet: FleetSpec, groups: tuple[int, ...], pool: GpuPool) -> FleetSpec:
    """``fleet`` with its workers laid out as ``groups`` (a parallel degree per worker)."""
    return FleetSpec(fleet.models, workers_for(groups, pool), fleet.step_costs,
                     fleet.reserve_bytes, fleet.weight_load_bytes_per_s)


def best_grouping(
    candidates: list[tuple[int, ...]], pool: GpuPool, fleet: FleetSpec,
    load: Mapping[str, ModelLoad], none_fits: str,
) -> tuple[int, ...]:
    """The candidate grouping whose quick greedy placement scores best."""
    best: tuple[float, tuple[int, ...]] | None = None
    for groups in dict.fromkeys(candidates):
        ev = PlacementEvaluator(grouped_spec(fleet, groups, pool), load)
        try:
            s = ev.score(greedy_assign(ev, refine=False)).score
        except PlacementError:
            continue
        if best is None or s < best[0]:
            best = (s, groups)
    if best is None:
        raise PlacementError(none_fits)
    return best[1]


def change_cost(ev: PlacementEvaluator, old: Assignment, new: Assignment) -> float:
    """What a change costs, in the score's units times seconds (see the module doc)."""
    bw = ev.fleet.weight_load_bytes_per_s
    if bw <= 0:
        return 0.0
    before = ev.score(old)
    held_old = {m for ms in old.values() for m in ms}
    kept = {m for wid, ms in new.items() for m in ms if m in old.get(wid, ())}
    cost = 0.0
    for wid, models in new.items():
        added = [m for m in models if m not in old.get(wid, ())]
        if not added:
            continue
        load_s = sum(ev.models[m].weight_bytes for m in added) / bw
        est = before.estimates.get(wid)
        if est is not None:  # the worker serves with less KV while it loads: half its load
            cost += 0.5 * load_s * sum(
                ev.load[m].request_rate * est.normalized.get(m, 1.0) for m in old[wid])
        for m in added:
            if m in held_old and m not in kept:  # moved: its requests wait for the load
                ld = ev.load[m]
                cost += ld.request_rate * load_s * (0.5 * load_s / max(ev.isolated[m], 1e-9))
    return cost


def load_time_s(ev: PlacementEvaluator, old: Assignment, new: Assignment) -> float:
    """The longest time a worker spends loading the weights a change adds to it."""
    bw = ev.fleet.weight_load_bytes_per_s
    if bw <= 0:
        return 0.0
    return max((sum(ev.models[m].weight_bytes for m in ms if m not in old.get(wid, ())) / bw
                for wid, ms in new.items()), default=0.0)


def improve(
    ev: PlacementEvaluator, current: Assignment, horizon_s: float, max_moves: int
) -> tuple[Assignment, int]:
    """Apply, one at a time, the move whose gain over ``horizon_s`` minus its cost is
    largest, while positive; returns the new assignment and the number of moves."""
    fleet = ev.fleet
    assign = dict(current)
    moves = 0
    for _ in range(max_moves):
        now = ev.score(assign).score
        best: tuple[float, Assignment] | None = None
        for trial in _neighbours(ev, assign):
            # The new layout helps only once its weights are in.
            useful_s = max(horizon_s - load_time_s(ev, assign, trial), 0.0)
            gain = (now - ev.score(trial).score) * useful_s - change_cost(ev, assign, trial)
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, trial)
        if best is None:
            break
        assign = best[1]
        moves += 1
    del fleet
    return assign, moves


def _neighbours(ev: PlacementEvaluator, assign: Assignment):  # type: ignore[no-untyped-def]
    fleet = ev.fleet
    holders: dict[str, list[str]] = {}
    for wid, ms in assign.items():
        for name in ms:
            holders.setdefault(name, []).append(wid)
    for w in fleet.workers:
        wid = w.worker_id
        have = assign.get(wid, ())
        for m in fleet.models:
            if m.name in have:
                if len(holders.get(m.name, ())) > 1:  # drop a replica
                    yield {**assign, wid: tuple(x for x in have if x != m.name)}
                continue
            grown = have + (m.name,)
            if ev.fits(w, grown):  # add a replica
                yield {**assign, wid: grown}
            for src in holders.get(m.name, ()):  # move one here
                if src != wid and ev.fits(w, grown):
                    yield {**assign, wid: grown,
                           src: tuple(x for x in assign[src] if x != m.name)}
            for x in have:  # replace a model held elsewhere too with this one
                if len(holders.get(x, ())) > 1:
                    swapped = tuple(v for v in have if v != x) + (m.name,)
                    if ev.fits(w, swapped):
                        yield {**assign, wid: swapped}


class SeaLlmPlacementPolicy:
    """Latency-aware two-stage placement with adaptive re-placement (see the module doc)."""

    name = "seallm"

    def __init__(self, horizon_s: float = 300.0, max_moves: int = 2,
                 min_interval_s: float = 0.0) -> None:
        self.horizon_s = horizon_s
        self.max_moves = max_moves
        self.min_interval_s = min_interval_s
        self.num_replacements = 0
        self._last_change_s: float | None = None

    def groups(self, pool: GpuPool, fleet: FleetSpec, load: Mapping[str, ModelLoad]
               ) -> tuple[int, ...]:
        return group_gpus(pool, fleet, load)

    def place(self, fleet: FleetSpec, current: Plan | None, load: Mapping[str, ModelLoad],
              now_s: float) -> Plan:
        if current is None and fleet.workers and all(w.models for w in fleet.workers):
            return static_plan(fleet)  # the configured placement is where it starts
        ev = PlacementEvaluator(fleet, load)
        if current is None or not current.placements:
            return plan_of(greedy_assign(ev), current.version if current else 1)
        if self._last_change_s is not None and now_s - self._last_change_s < self.min_interval_s:
            return current
        old = assignment_of(current, fleet)
        new, moves = improve(ev, old, self.horizon_s, self.max_moves)
        if moves == 0:
            return current
        self.num_replacements += 1
        self._last_change_s = now_s
        return plan_of(new, current.version + 1)
