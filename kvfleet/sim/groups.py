"""Pipeline groups in the simulator (KunServe): memory that changes during a run, a pipeline
step-time model, and the costs of forming and dissolving a group.

The overload policy's actions are carried out as on the live fleet, at step boundaries:

- **drop**: every member stops at its next step boundary; each request's KV for the layers
  that change hands is sent over the link between the members (or recomputed, whichever
  ``kv_move`` says is cheaper), members sending one after another; the leader then holds the
  group's requests in a pool of ``min over stages (pages + freed weight pages)`` pages at the
  group's tokens per page, and steps them with a ``PipelineCost``. The group waits for the
  exchange (and the KV re-layout, at HBM speed) before it steps again.
- **restore**: every member reads its missing layers over ``reload_link`` in the background
  while the group serves; then the leader stops at a step boundary, each request goes home
  (``assign_homes``) with its KV slices (or is recomputed), and the members step alone again
  with their own pools and cost models once the exchange is over.

``PipelineCost`` is a step-time model of ``g`` stages with one micro-batch in flight per
stage, as the live group runs them: a round of lanes through the stages, the stages
overlapping across lanes, activation hops between stages, bubbles when there are fewer
requests than stages.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvfleet.services.planner.core.drop_plan import freed_pages
from kvfleet.services.planner.core.overload import LayerAction
from kvfleet.services.scheduler.core.stages import ModelShapeView, StageView
from kvfleet.services.worker.core.pipeline_policy import (
    SEND,
    ExchangeCosts,
    assign_homes,
    kv_move,
)
from kvfleet.sim.cost_model import CostModel, DecodeRun, StepCost
from kvfleet.sim.presets import LinkSpec, ModelShape
from kvfleet.sim.seq import SimSeq
from kvfleet.sim.worker import SimWorker, WorkerConfig

log = logging.getLogger(__name__)


def shape_view(shape: ModelShape) -> ModelShapeView:
    """The planner's view of a model preset (untied embedding and LM head)."""
    dt = shape.dtype_bytes
    embed = shape.vocab_size * shape.hidden_size * dt
    last = embed + shape.hidden_size * dt
    layer = max(0, (shape.weight_bytes - embed - last) // shape.num_layers)
    kv_layer = 2 * shape.num_kv_heads * shape.head_dim * dt
    return ModelShapeView(shape.num_layers, layer, embed, last, kv_layer)


class PipelineCost:
    """Step times of a model served by ``len(ranges)`` stages of one kind of worker.

    The live group keeps one micro-batch in flight per stage (``lane_limits``), each with a
    replica's token budget, so a step of the group (every request one chunk further, up to
    ``g`` replicas' budgets) is a round of ``K = min(g, requests)`` lanes through ``g``
    stages: each stage runs each lane's micro-batch (its share ``f`` of the
    layers' FLOPs; its weights, and the lane's KV, read once per micro-batch), and a lane
    needs every stage in turn plus a hop of its activations between stages. The round takes
    ``g`` lane-stage times (the stages overlap across lanes; with fewer lanes than stages the
    rest are bubbles).
    """

    def __init__(self, base: CostModel, ranges: tuple[tuple[int, int], ...],
                 link: LinkSpec) -> None:
        self.base = base
        self.model = base.model
        self.tp = base.tp
        self.kv_bytes_per_token = base.kv_bytes_per_token
        self.num_stages = len(ranges)
        self.frac = max(b - a for a, b in ranges) / base.model.num_layers  # slowest stage
        self.link = link
        self.hidden_bytes = base.model.hidden_size * base.model.dtype_bytes
        self._weights_s = base._weights / base.bytes_per_s

    def lanes(self, num_seqs: int) -> int:
        """Micro-batches a round runs (one lane per stage, one request at least each)."""
        return max(1, min(self.num_stages, num_seqs))

    def _hop_s(self, tokens_per_micro_batch: float) -> float:
        return self.link.latency_s + tokens_per_micro_batch * self.hidden_bytes / self.link.bytes_per_s

    def step_cost(self, num_tokens: int, attn_pairs: float, kv_read_tokens: float,
                  num_seqs: int, max_q: int | None = None,
                  max_kv: int | None = None) -> StepCost:
        k = self.lanes(num_seqs)
        full = self.base.step_cost(num_tokens, attn_pairs, kv_read_tokens, num_seqs, max_q,
                                   max_kv)
        g, f = self.num_stages, self.frac
        compute = g * f * full.compute_s / k
        memory = g * f * (self._weights_s + (full.memory_s - self._weights_s) / k)
        overhead = g * (self.base.step_overhead_s + self.base.seq_overhead_s * num_seqs / k
                        + self._hop_s(num_tokens / k))
        return StepCost(compute, memory, overhead)

    def step_s(self, num_tokens: int, attn_pairs: float, kv_read_tokens: float,
               num_seqs: int, max_q: int = 0, max_kv: int = 0) -> float:
        return self.step_cost(num_tokens, attn_pairs, kv_read_tokens, num_seqs,
                              max_q or None, max_kv or None).total_s

    def prefill_s(self, num_tokens: int, context_tokens: int = 0) -> float:
        pairs = num_tokens * context_tokens + num_tokens * (num_tokens + 1) / 2
        return self.step_cost(num_tokens, pairs, context_tokens + num_tokens, 1).total_s

    def decode_run(self, batch: int, context_tokens: int,
                   max_context: int | None = None) -> DecodeRun:
        run = self.base.decode_run(batch, context_tokens, max_context)
        k = self.lanes(batch)
        gf = self.num_stages * self.frac
        w = self._weights_s
        overhead = self.num_stages * (self.base.step_overhead_s
                                      + self.base.seq_overhead_s * batch / k
                                      + self._hop_s(batch / k))
        return DecodeRun(gf * run.c0 / k, gf * run.c1 / k, gf * (w + (run.m0 - w) / k),
                         gf * run.m1 / k, overhead)


@dataclass
class _Saved:
    """A member's own state before it joined a group."""

    total_pages: int
    tpp: dict[str, int]
    costs: dict[str, CostModel]
    config: WorkerConfig


@dataclass
class SimGroup:
    action: LayerAction
    members: list[SimWorker]
    saved: dict[int, _Saved]
    link: LinkSpec
    formed_s: float = 0.0


@dataclass
class _Pending:
    kind: str  # "drop" or "restore"
    action: LayerAction
    members: list[SimWorker]
    decided_s: float
    reloaded_s: float = 0.0
    reload_s: float = 0.0


@dataclass
class GroupKeeper:
    """Carries out the overload policy's actions on the simulated fleet."""

    workers: list[SimWorker]
    intra_link: LinkSpec
    inter_link: LinkSpec
    reload_link: LinkSpec
    push_worker: Callable[[SimWorker, float | None], None]
    push_resume: Callable[[SimWorker, float], None]
    push_reloaded: Callable[[str, float], None]
    groups: dict[str, SimGroup] = field(default_factory=dict)
    pending: dict[str, _Pending] = field(default_factory=dict)
    actions: list[dict[str, object]] = field(default_factory=list)  # for the report

    def __post_init__(self) -> None:
        self._index = {w.worker_id: w for w in self.workers}

    def busy(self) -> set[str]:
        return {w.worker_id for p in self.pending.values() for w in p.members}

    # ----- the policy's actions
    def start(self, action: LayerAction, now: float) -> None:
        if action.group_id in self.pending:
            return
        if action.kind == "drop":
            members = [self._index[s.worker_id] for s in action.stages]
            if any(w.groups or w.frozen or w.freezing for w in members):
                return
            self.pending[action.group_id] = _Pending("drop", action, members, now)
            for w in members:
                self.push_worker(w, w.request_freeze(now))
            self.check(now)
            return
        group = self.groups.get(action.group_id)
        if group is None:
            return
        reload_s = max(self._reload_s(group, w, k) for k, w in enumerate(group.members))
        self.pending[action.group_id] = _Pending("restore", action, group.members, now,
                                                 reload_s=reload_s)
        self.push_reloaded(action.group_id, now + reload_s)

    def _reload_s(self, group: SimGroup, w: SimWorker, k: int) -> float:
        shape = w.shapes[group.action.model]
        missing = shape.full_bytes - shape.weight_bytes(*_range(group, k))
        return self.reload_link.transfer_s(missing)

    def reloaded(self, group_id: str, now: float) -> None:
        """The members hold their missing layers in host memory: stop the leader."""
        p = self.pending.get(group_id)
        if p is None:
            return
        p.reloaded_s = now
        leader = p.members[0]
        self.push_worker(leader, leader.request_freeze(now))
        self.check(now)

    def check(self, now: float) -> None:
        """Run every pending action whose members have all stopped."""
        for gid, p in list(self.pending.items()):
            if p.kind == "drop" and all(w.frozen for w in p.members):
                del self.pending[gid]
                self._drop(p, now)
            elif p.kind == "restore" and p.reloaded_s > 0 and p.members[0].frozen:
                del self.pending[gid]
                self._restore(p, now)

    # ----- forming
    def _link(self, members: list[SimWorker]) -> LinkSpec:
        return self.intra_link if len({w.config.node for w in members}) == 1 else self.inter_link

    def _drop(self, p: _Pending, now: float) -> None:
        action = p.action
        model = action.model
        members = p.members
        leader = members[0]
        shape = leader.shapes[model]
        num_layers = shape.num_layers
        link = self._link(members)
        ranges = tuple((s.first_layer, s.last_layer) for s in action.stages)
        base = leader.costs[model]
        assert isinstance(base, CostModel)
        kvpt = base.kv_bytes_per_token
        sent = recomputed = 0
        exchange_s = relayout_s = 0.0
        total_bytes = 0
        moved_run: list[SimSeq] = []
        moved_wait: list[SimSeq] = []
        for k, w in enumerate(members):
            held = ranges[k][1] - ranges[k][0]
            out_bytes = 0
            for s in w.running:
                n = s.num_computed
                nbytes = n * kvpt * (num_layers - held) // num_layers
                costs = ExchangeCosts(link.bytes_per_s, link.latency_s,
                                      n / max(base.prefill_s(max(n, 1)), 1e-9))
                if n > 0 and kv_move(n, nbytes, costs) == SEND:
                    out_bytes += nbytes
                    sent += 1
                    moved_run.append(s)
                else:
                    recomputed += int(n > 0)
                    _reset(s)
                    moved_wait.append(s)
            moved_wait.extend(w.waiting)
            if out_bytes:
                exchange_s += link.transfer_s(out_bytes)
            total_bytes += out_bytes
            # the KV kept is rewritten at the new tokens per page: read and write at HBM speed
            relayout_s = max(relayout_s,
                             2 * sum(s.num_computed for s in moved_run if s in w.running)
                             * kvpt / base.bytes_per_s)
        page = leader.config.page_size_bytes
        pools = [w.total_pages + freed_pages(shape, r, page) for w, r in zip(members, ranges,
                                                                             strict=True)]
        saved = {w.idx: _Saved(w.total_pages, dict(w.tpp), dict(w.costs), w.config)
                 for w in members}
        # a round of the group runs one micro-batch per stage, each with a replica's limits
        g = len(members)
        leader.config = dataclasses.replace(
            leader.config, token_budget=g * leader.config.token_budget,
            max_num_seqs=g * leader.config.max_num_seqs)
        tpp = action.tokens_per_page
        cost = PipelineCost(base, ranges, link)
        for k, w in enumerate(members):
            w.running = []
            w.waiting = deque()
            w.by_id = {}
            w.pending = []
            w._queued_pages = 0
            w.layers = {model: ranges[k]}
            w.groups = {model: StageView(action.group_id, k,
                                         tuple(m.worker_id for m in members), ranges)}
            w.total_pages = w.free_pages = pools[k]
            w.tpp = {model: tpp}
            w._tpp_min = tpp
        _install(leader, min(pools), tpp, cost, moved_run, moved_wait)
        for w in members:
            w._publish(now)
        group = SimGroup(action, members, saved, link, now)
        self.groups[action.group_id] = group
        ready = now + exchange_s + relayout_s
        self.push_resume(leader, ready)
        self.actions.append({
            "kind": "drop", "group_id": action.group_id, "model": model,
            "members": [w.worker_id for w in members], "ranges": [list(r) for r in ranges],
            "decided_s": p.decided_s, "stopped_s": now, "serving_s": ready,
            "time_to_drop_s": ready - p.decided_s, "exchange_s": exchange_s,
            "relayout_s": relayout_s, "bytes": total_bytes, "num_sent": sent,
            "num_recomputed": recomputed, "pool_pages": min(pools), "tokens_per_page": tpp,
        })
        log.info("t=%.2f group %s formed: %s, %d requests' KV sent, %d recomputed, serving "
                 "at t=%.2f", now, action.group_id, [w.worker_id for w in members], sent,
                 recomputed, ready)

    # ----- dissolving
    def _restore(self, p: _Pending, now: float) -> None:
        group = self.groups.pop(p.action.group_id)
        model = group.action.model
        members = group.members
        leader = members[0]
        shape = leader.shapes[model]
        num_layers = shape.num_layers
        ranges = tuple((s.first_layer, s.last_layer) for s in group.action.stages)
        link = group.link
        seqs = [*leader.running, *leader.waiting]
        tpp_full = group.saved[members[0].idx].tpp[model]
        base = group.saved[members[0].idx].costs[model]
        assert isinstance(base, CostModel)
        kvpt = base.kv_bytes_per_token
        pages = {s.request_id: -(-s.num_computed // tpp_full) for s in seqs}
        rooms = {w.worker_id: group.saved[w.idx].total_pages for w in members}
        homes, overflow = assign_homes(pages, rooms)
        by_home: dict[str, tuple[list[SimSeq], list[SimSeq]]] = {
            w.worker_id: ([], []) for w in members}
        out_bytes = [0] * len(members)
        sent = recomputed = 0
        pos = {w.worker_id: k for k, w in enumerate(members)}
        for s in seqs:
            home = homes[s.request_id]
            h = pos[home]
            n = s.num_computed
            held = ranges[h][1] - ranges[h][0]
            nbytes = n * kvpt * (num_layers - held) // num_layers
            costs = ExchangeCosts(link.bytes_per_s, link.latency_s,
                                  n / max(base.prefill_s(max(n, 1)), 1e-9))
            if n > 0 and s.request_id not in overflow and kv_move(n, nbytes, costs) == SEND:
                for k, (a, b) in enumerate(ranges):
                    if k != h:
                        out_bytes[k] += n * kvpt * (b - a) // num_layers
                sent += 1
                by_home[home][0].append(s)
            else:
                recomputed += int(n > 0)
                _reset(s)
                by_home[home][1].append(s)
        exchange_s = sum(link.transfer_s(b) for b in out_bytes if b)
        for w in members:
            saved = group.saved[w.idx]
            w.config = saved.config
            w.layers = {}
            w.groups = {}
            w._set_costs(saved.costs)
            w.tpp = saved.tpp
            w._tpp_min = min(saved.tpp.values())
            w.total_pages = w.free_pages = saved.total_pages
            run, wait = by_home[w.worker_id]
            w.running, w.waiting, w.by_id, w._queued_pages = [], deque(), {}, 0
            _place(w, run, wait)
            w._publish(now)
        ready = now + exchange_s
        for w in members:
            self.push_resume(w, ready)
        self.actions.append({
            "kind": "restore", "group_id": group.action.group_id, "model": model,
            "members": [w.worker_id for w in members], "decided_s": p.decided_s,
            "reload_s": p.reload_s, "stopped_s": now, "serving_s": ready,
            "time_to_restore_s": ready - p.decided_s, "exchange_s": exchange_s,
            "bytes": sum(out_bytes), "num_sent": sent, "num_recomputed": recomputed,
            "group_lifetime_s": ready - group.formed_s,
        })
        log.info("t=%.2f group %s dissolved: %d requests' KV sent, %d recomputed",
                 now, group.action.group_id, sent, recomputed)


def _range(group: SimGroup, k: int) -> tuple[int, int]:
    s = group.action.stages[k]
    return s.first_layer, s.last_layer


def _reset(s: SimSeq) -> None:
    s.num_computed = 0
    s.num_pages = 0
    s.num_preemptions += 1
    s._view = None


def _install(w: SimWorker, total: int, tpp: int, cost: PipelineCost,
             running: list[SimSeq], waiting: list[SimSeq]) -> None:
    w.costs = {m: cost for m in w.models}  # type: ignore[misc]
    w._single = cost  # type: ignore[assignment]
    w.total_pages = w.free_pages = total
    _place(w, running, waiting)


def _place(w: SimWorker, running: list[SimSeq], waiting: list[SimSeq]) -> None:
    """Give ``w`` these sequences (the running ones with their KV), oldest first."""
    for s in running:
        tpp = w.tpp[s.model]
        s.tokens_per_page = tpp
        s.num_pages = -(-s.num_computed // tpp)
        s.worker_idx = w.idx
        s._view = None
        w.free_pages -= s.num_pages
        w.by_id[s.request_id] = s
    w.running = sorted(running, key=lambda s: s.arrival_s)
    for s in sorted(waiting, key=lambda s: s.arrival_s):
        s.tokens_per_page = w.tpp[s.model]
        s.num_pages = 0
        s.worker_idx = w.idx
        s._view = None
        w.by_id[s.request_id] = s
        w.waiting.append(s)
        w._to_waiting(s)
    if w.free_pages < 0:  # the plan said it fits; recompute the newest until it does
        for s in sorted(w.running, key=lambda s: -s.arrival_s):
            if w.free_pages >= 0:
                break
            w.running.remove(s)
            w.free_pages += s.num_pages
            _reset(s)
            w.waiting.appendleft(s)
            w._to_waiting(s)
        w.waiting = deque(sorted(w.waiting, key=lambda s: s.arrival_s))
    w._invalidate()
