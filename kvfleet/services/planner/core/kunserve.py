"""KunServe's overload policy: detect KV overload per model, drop replicated layers into
pipeline groups that cover the deficit, and restore them once the burst has passed. Pure.

Per model, *demand* is the tokens its workers hold, have reserved and have queued, plus the
prompt tokens waiting in the scheduler's queue; *capacity* is the tokens their pools hold (a
group counts once, through its leader's pooled report). It is a KV overload when demand is
above ``overload_ratio`` of capacity while the pools are full (held and reserved tokens at
least ``min_held_ratio`` of capacity): a queue behind free pages waits for compute, which
dropping layers would not add. An overload lasting ``overload_hold_s`` drops layers: ``plan_drops`` forms groups from the replicas
still holding the whole model until their gain covers the deficit. A group is restored when
demand stays below ``restore_ratio`` of the capacity the fleet would have after restoring it
for ``restore_hold_s``. After any action a model waits ``cooldown_s``, and nothing is decided
for a model while one of its actions is in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvfleet.services.planner.core.drop_plan import DropCandidate, plan_drops
from kvfleet.services.planner.core.overload import (
    FleetLoad,
    LayerAction,
    OverloadThresholds,
    OverloadWorkerView,
    StagePlan,
)


@dataclass(frozen=True, slots=True)
class ModelLoadView:
    """A model's KV demand and capacity, in tokens."""

    model: str
    demand_tokens: int
    capacity_tokens: int
    held_tokens: int = 0

    @property
    def held_ratio(self) -> float:
        return self.held_tokens / self.capacity_tokens if self.capacity_tokens > 0 else 0.0

    @property
    def ratio(self) -> float:
        if self.capacity_tokens <= 0:
            return float("inf") if self.demand_tokens > 0 else 0.0
        return self.demand_tokens / self.capacity_tokens


def model_load(fleet: FleetLoad, model: str) -> ModelLoadView:
    demand = fleet.queued_tokens.get(model, 0)
    capacity = held = 0
    for w in fleet.workers:
        if not w.counts_for(model):
            continue
        tpp = w.tokens_per_page.get(model, 0)
        demand += w.num_demand_pages * tpp
        held += w.num_held_pages * tpp
        capacity += w.num_total_pages * tpp
    return ModelLoadView(model, demand, capacity, held)


def restored_tokens(fleet: FleetLoad, model: str, group_id: str) -> tuple[int, int]:
    """(tokens the group holds now, tokens its members would hold with the whole model)."""
    members = [w for w in fleet.workers
               if (g := w.groups.get(model)) is not None and g.group_id == group_id]
    now = after = 0
    for w in members:
        group = w.groups[model]
        shape = w.shapes.get(model)
        if group.rank == 0:
            now = w.num_total_pages * w.tokens_per_page.get(model, 0)
        if shape is None or w.page_size_bytes <= 0:
            continue
        page = w.page_size_bytes
        rng = w.layers.get(model, group.ranges[group.rank])
        reload_pages = -(-(shape.full_bytes - shape.weight_bytes(*rng)) // page)
        after += max(0, w.num_total_pages - reload_pages) * shape.tokens_per_page(
            page, shape.num_layers)
    return now, after


class KunServeOverloadPolicy:
    """Drop layers into pipeline groups under KV overload; restore when it has passed."""

    name = "kunserve"

    def __init__(self, thresholds: OverloadThresholds | None = None) -> None:
        self.t = thresholds or OverloadThresholds()
        self._over_since: dict[str, float] = {}
        self._under_since: dict[str, float] = {}  # group id -> since
        self._last_action: dict[str, float] = {}
        self._groups = 0

    def configure(self, thresholds: OverloadThresholds) -> None:
        self.t = thresholds

    def decide(self, fleet: FleetLoad, now_s: float) -> tuple[LayerAction, ...]:
        models = sorted({m for w in fleet.workers for m in w.models})
        actions: list[LayerAction] = []
        live_groups: set[str] = set()
        for model in models:
            workers = [w for w in fleet.workers if model in w.models]
            groups = sorted({w.groups[model].group_id for w in workers if model in w.groups})
            live_groups.update(groups)
            load = model_load(fleet, model)
            if load.ratio > self.t.overload_ratio and load.held_ratio >= self.t.min_held_ratio:
                self._over_since.setdefault(model, now_s)
            else:
                self._over_since.pop(model, None)
            if any(w.busy for w in workers):
                continue
            if now_s - self._last_action.get(model, -1e18) < self.t.cooldown_s:
                continue
            action = self._drop(fleet, model, workers, load, now_s)
            if action:
                actions.extend(action)
            else:
                restore = self._restore(fleet, model, groups, load, now_s)
                if restore is not None:
                    actions.append(restore)
            if any(a.model == model for a in actions):
                self._last_action[model] = now_s
        for gid in list(self._under_since):
            if gid not in live_groups:
                del self._under_since[gid]
        return tuple(actions)

    def _drop(
        self, fleet: FleetLoad, model: str, workers: list[OverloadWorkerView],
        load: ModelLoadView, now_s: float,
    ) -> list[LayerAction]:
        since = self._over_since.get(model)
        if since is None or now_s - since < self.t.overload_hold_s:
            return []
        shape = next((w.shapes[model] for w in workers if model in w.shapes), None)
        if shape is None:
            return []
        candidates = [
            DropCandidate(w.worker_id, w.node, w.num_total_pages, w.page_size_bytes)
            for w in workers
            if w.models == (model,) and w.holds_full(model) and model not in w.groups
            and w.page_size_bytes > 0
        ]
        deficit = load.demand_tokens - int(load.capacity_tokens * self.t.overload_ratio)
        plans = plan_drops(shape, candidates, max(deficit, 1), self.t.max_group_size,
                           self.t.head_cost_layers)
        actions = []
        for plan in plans:
            self._groups += 1
            actions.append(LayerAction(
                "drop", model, f"{model}/g{self._groups}",
                tuple(StagePlan(w, a, b) for w, (a, b) in zip(plan.members, plan.ranges,
                                                              strict=True)),
                plan.tokens_per_page,
                f"demand {load.demand_tokens} > {self.t.overload_ratio:g} x capacity "
                f"{load.capacity_tokens} tokens ({load.held_ratio:.0%} held) for "
                f"{now_s - since:.1f}s; gain "
                f"{plan.gain_tokens}",
            ))
        if actions:
            self._over_since.pop(model, None)
        return actions

    def _restore(
        self, fleet: FleetLoad, model: str, groups: list[str], load: ModelLoadView,
        now_s: float,
    ) -> LayerAction | None:
        chosen: LayerAction | None = None
        for gid in sorted(groups, reverse=True):  # the newest group first
            now_tokens, after_tokens = restored_tokens(fleet, model, gid)
            capacity_after = load.capacity_tokens - now_tokens + after_tokens
            if load.demand_tokens < self.t.restore_ratio * capacity_after:
                since = self._under_since.setdefault(gid, now_s)
                if chosen is None and now_s - since >= self.t.restore_hold_s:
                    view = next(w.groups[model] for w in fleet.workers
                                if (g := w.groups.get(model)) is not None and g.group_id == gid)
                    chosen = LayerAction(
                        "restore", model, gid,
                        tuple(StagePlan(w, a, b)
                              for w, (a, b) in zip(view.members, view.ranges, strict=True)),
                        reason=f"demand {load.demand_tokens} < {self.t.restore_ratio:g} x "
                        f"{capacity_after} tokens for {now_s - since:.1f}s",
                    )
            else:
                self._under_since.pop(gid, None)
        if chosen is not None:
            self._under_since.pop(chosen.group_id, None)
        return chosen
