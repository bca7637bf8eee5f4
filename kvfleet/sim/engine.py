"""The discrete-event simulator: a virtual clock, an event heap, and the fleet.

Arrivals are read in order from the workload (they never enter the heap). The scheduler's
dispatch policy runs on a short tick over the queued requests, as the live scheduler
batches what it reads from the queue; the planner's migration policy runs on its own tick;
each worker's batch policy runs at the worker's step boundaries. Nothing reads the wall
clock except the report of how long the run took.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvfleet.load.slo import SloSet
from kvfleet.policies import PolicySet, policy_set
from kvfleet.services.gateway.core.length_predictor import LengthQuery, make_predictor
from kvfleet.services.planner.core.migration import migration_views
from kvfleet.services.planner.core.overload import FleetLoad, overload_views
from kvfleet.services.planner.core.types import ModelLoad, Plan, with_backlog
from kvfleet.services.scheduler.core.admission import QueueBound, QueueDepth
from kvfleet.services.scheduler.core.dispatch import decide
from kvfleet.services.scheduler.core.types import ClusterView, WorkerView
from kvfleet.sim.cost_model import CostModel
from kvfleet.sim.fleet import (
    SimConfig,
    adapts_placement,
    build_fleet,
    build_placed_fleet,
    build_workers_like,
    migration_link,
    reference_costs,
)
from kvfleet.sim.groups import GroupKeeper
from kvfleet.sim.migration import MigrationStats, SimMigrations
from kvfleet.sim.overhead import StackOverheads, load_overheads
from kvfleet.sim.presets import link_preset
from kvfleet.sim.seq import SimSeq
from kvfleet.sim.worker import SharedCpu, SimWorker

log = logging.getLogger(__name__)

(_WORKER, _DISPATCH, _MIGRATE, _ARRIVE_MIGRATED, _SAMPLE, _REPLAN, _LOADED, _QUEUE, _ASSIGN,
 _HEARTBEAT, _CPU, _PRECOPIED) = range(12)
_OVERLOAD, _RESUME, _RELOADED = 12, 13, 14  # pipeline groups (kvfleet/sim/groups.py)
INF = float("inf")

FLEET_COLUMNS = (
    "time_s", "active_gpus", "kv_utilization", "migrations_per_s", "scheduler_queue",
    "worker_waiting", "worker_running", "finished", "dropped", "idle_gpus",
    "kv_utilization_active",
)


class RequestLike(Protocol):
    """What the simulator reads from a workload request (kvfleet.workload's RequestSpec)."""

    @property
    def request_id(self) -> str: ...
    @property
    def arrival_s(self) -> float: ...
    @property
    def model(self) -> str: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...


@dataclass
class SimResult:
    config: SimConfig
    seqs: list[SimSeq]
    fleet_rows: list[tuple[float, ...]]
    num_events: int
    wall_s: float
    cpu_s: float
    num_plans: int
    num_steps: int
    num_migrations: int
    end_s: float
    workers: list[SimWorker] = field(repr=False)
    replacements: list[tuple[float, int, int]] = field(default_factory=list)  # (t, loads, unloads)
    relay_s: float = 0.0  # added to every token's time at the client (StackOverheads)
    layer_actions: list[dict[str, object]] = field(default_factory=list)  # drops, restores
    migration_stats: MigrationStats = field(default_factory=MigrationStats, repr=False)

    @property
    def events_per_s(self) -> float:
        return self.num_events / self.wall_s if self.wall_s > 0 else 0.0


def map_models(requests: Sequence[RequestLike], presets: Sequence[str]) -> dict[str, str]:
    """Workload model name -> served model preset. One preset serves everything; otherwise
    names equal to a preset map to it and the rest are dealt to the presets in turn."""
    names = sorted({r.model for r in requests})
    if len(presets) == 1:
        return {n: presets[0] for n in names}
    mapping = {n: n for n in names if n in presets}
    rest = [n for n in names if n not in mapping]
    for i, n in enumerate(rest):
        mapping[n] = presets[i % len(presets)]
    return mapping


class Simulator:
    def __init__(
        self,
        config: SimConfig,
        requests: Sequence[RequestLike],
        policies: PolicySet | None = None,
        *,
        workers: Sequence[WorkerView] | None = None,
        check_invariants: bool = False,
        log_dispatch: bool = False,
        slos: SloSet | None = None,
        overheads: StackOverheads | None = None,
        cost: CostModel | None = None,
    ) -> None:
        """``workers`` replaces the fleet built from ``config`` by workers shaped like the
        given views (ids, models, pages), with step times from ``cost`` when given;
        ``check_invariants`` checks every worker's page accounting after each of its events
        (slow; tests); ``log_dispatch`` keeps every assignment in ``dispatch_log``; ``slos``
        gives each request its model's TTFT and TPOT targets (as the load generator sends
        them to a live fleet); ``overheads`` (default: ``config.overheads``'s file, if any)
        adds the service stack's hops around the engines."""
        self.config = config
        self.policies = policies or policy_set(config.policy)
        self.placement: object | None = None  # a placement that adapts during the run
        self.plan: Plan | None = None
        if workers is None and adapts_placement(self.policies):
            load = measured_load(requests, map_models(requests, config.models), 0.0, INF)
            self.workers, self.fleet, self.plan, self.placement = build_placed_fleet(
                config, self.policies, load)
        elif workers is None:
            self.workers = build_fleet(config, self.policies)
        else:
            self.workers = build_workers_like(config, self.policies, workers, cost)
        if overheads is None and config.overheads:
            overheads = load_overheads(config.overheads)
        self.overheads = overheads
        self._busy_until = 0.0  # the scheduler waits for its Assign calls until then
        self._cpu: SharedCpu | None = None
        if overheads is not None:
            cpu = None
            if overheads.cpu_cores > 0:
                cpu = self._cpu = SharedCpu(overheads.cpu_factor, self.workers, self._push_worker)
            for w in self.workers:
                # in the calibration's seconds, which the CPU share scales
                w.step_extra_s = overheads.step_extra_s / (
                    overheads.calibration_share if cpu is not None else 1.0)
                w.heartbeat_min_s = overheads.heartbeat_min_s
                w.heartbeat_s = overheads.heartbeat_s
                w.cpu = cpu
        self.check_invariants = check_invariants
        self.dispatch_log: list[tuple[str, str]] | None = [] if log_dispatch else None
        self.dispatch = self.policies.dispatch()
        self.migration = self.policies.migration()
        self.link = migration_link(config)
        self.overload = self.policies.overload()
        self.overload.configure(config.overload.thresholds())
        self.keeper: GroupKeeper | None = None
        if self.overload.name != "none":
            self.keeper = GroupKeeper(
                self.workers, link_preset(config.intra_node_link), self.link,
                link_preset(config.reload_link), self._push_worker, lambda w, t: self._push(t, _RESUME, w),
                lambda g, t: self._push(t, _RELOADED, g),
            )
        served = sorted({m for w in self.workers for m in w.models})
        if self.placement is not None:
            served = sorted(set(config.models))
        mapping = map_models(requests, served)
        if workers is None:
            reference = reference_costs(config, served)
        else:  # workers shaped like given ones (a live fleet): alone on one of them
            reference = {m: w.costs[m].coefficients() for w in self.workers for m in w.models}
        order = sorted(range(len(requests)), key=lambda i: requests[i].arrival_s)
        self.predictor = make_predictor(
            config.predictor, quantile=config.predictor_quantile,
            spread=config.predictor_spread, seed=config.seed,
        )
        self.seqs = []
        for idx, i in enumerate(order):
            r = requests[i]
            output = int(r.output_tokens)
            if config.max_tokens is not None:
                output = min(output, config.max_tokens)
            seq = SimSeq(idx, r.request_id, mapping[r.model], float(r.arrival_s),
                         int(r.input_tokens), output)
            if config.max_tokens is not None:
                seq.request_max_tokens = config.max_tokens
            slo = slos.for_model(r.model) if slos is not None else None
            if slo is not None:
                seq.ttft_slo_s, seq.tpot_slo_s = slo.ttft_s, slo.tpot_s
            seq.isolated_s = reference[seq.model].isolated_s(seq.num_prompt_tokens,
                                                             seq.max_tokens)
            self.seqs.append(seq)
        self._heap: list[tuple[float, int, int, object, object]] = []
        self._counter = 0
        self._pending: list[SimSeq] = []  # the scheduler's queue, in arrival order
        self._depth: dict[str, QueueDepth] = {}  # per model
        self._bound = QueueBound(config.max_queued_requests, config.max_queued_tokens)
        self._served = set(served)
        self._recent: deque[tuple[float, str, int, int]] = deque()  # arrivals in the window
        self.replacements: list[tuple[float, int, int]] = []
        self._unload_after: list[tuple[int, str]] = []  # (worker, model) once it is served elsewhere
        self._dispatch_at = INF
        self._num_done = 0
        self._num_dropped = 0
        self.migrations = SimMigrations(self.workers, self.link, self._push_named,
                                        self._push_worker)
        self._inflight = self.migrations.flights  # request -> migration in progress
        self._worker_index = {w.worker_id: w for w in self.workers}
        # The scheduler's picture of the fleet, refreshed for workers that changed.
        self._dirty: list[int] = []
        self._views = [w.worker_view() for w in self.workers]
        for w in self.workers:
            w._dirty_sink = self._dirty
        self.fleet_rows: list[tuple[float, ...]] = []

    # ----- event plumbing -----
    def _push(self, t: float, kind: int, a: object = None, b: object = None) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (t, self._counter, kind, a, b))

    def _push_named(self, t: float, what: str, a: object, b: object) -> None:
        self._push(t, _ARRIVE_MIGRATED if what == "arrive" else _PRECOPIED, a, b)

    def _push_worker(self, worker: SimWorker, t: float | None) -> None:
        if t is not None:
            self._counter += 1
            heapq.heappush(self._heap, (t, self._counter, _WORKER, worker, worker.version))

    def _drop(self, seq: SimSeq, reason: str) -> None:
        seq.drop_reason = reason
        self._num_done += 1
        self._num_dropped += 1

    # ----- the loop -----
    def run(self) -> SimResult:
        started = time.perf_counter()
        cpu_started = time.process_time()
        seqs = self.seqs
        n = len(seqs)
        heap = self._heap
        horizon = self.config.horizon_s if self.config.horizon_s is not None else INF
        self._push(0.0, _SAMPLE)
        if self._cpu is not None and self.overheads is not None:
            for t, _ in self.overheads.background_series:
                self._push(t, _CPU)
        if self.migration.name != "none":
            self._push(self.config.migration_interval_s, _MIGRATE)
        if self.placement is not None:
            self._push(self.config.replan_interval_s, _REPLAN)
        if self.keeper is not None:
            self._push(self.config.overload.interval_s, _OVERLOAD)
        i = 0
        events = 0
        now = 0.0
        finished: list[SimSeq] = []
        departed: list[SimSeq] = []
        interval = self.config.dispatch_interval_s
        ov = self.overheads
        while self._num_done < n:
            t_arr = seqs[i].arrival_s if i < n else INF
            t_ev = heap[0][0] if heap else INF
            if min(t_arr, t_ev) > horizon:
                now = horizon
                break
            events += 1
            if t_arr <= t_ev:
                now = t_arr
                if ov is not None:  # through the gateway and the queue first
                    self._push(now + ov.intake_s(seqs[i].num_prompt_tokens), _QUEUE, seqs[i])
                    i += 1
                    continue
                self._admit(seqs[i])
                i += 1
                if self._pending and self._dispatch_at == INF:
                    self._dispatch_at = now + interval
                    self._push(self._dispatch_at, _DISPATCH)
                continue
            now, _, kind, a, b = heapq.heappop(heap)
            if kind == _WORKER:
                worker: SimWorker = a  # type: ignore[assignment]
                if b != worker.version:
                    events -= 1
                    continue
                asked = tuple(worker._detach) if worker._detach else ()
                t_next = worker.on_boundary(now, finished, departed, self._accept)
                self._push_worker(worker, t_next)
                if worker.started_loads:
                    self._start_loads(worker, now)
                if self.keeper is not None and worker.frozen:
                    self.keeper.check(now)
                if self.check_invariants:
                    worker.check()
                if finished:
                    self._num_done += len(finished)
                    for s in finished:
                        self.predictor.observe(s.model, s.num_prompt_tokens, s.num_output)
                        if self._inflight:
                            self.migrations.finished(s)
                    finished.clear()
                if departed:
                    self._depart(departed, now)
                    departed.clear()
                if worker.heartbeat_due:
                    worker.heartbeat_due = False
                    self._push(worker.heartbeat_at, _HEARTBEAT, worker)
                if ov is not None:
                    pass  # a waiting request is dispatched at the scheduler's next poll
                elif self._pending and self._dispatch_at == INF:  # room may have opened
                    self._dispatch_at = now + interval
                    self._push(self._dispatch_at, _DISPATCH)
                if asked:  # orders the source could not honour are forgotten
                    self.migrations.unhonoured(asked)
            elif kind == _DISPATCH:
                self._dispatch(now)
            elif kind == _QUEUE:
                self._admit(a)  # type: ignore[arg-type]
                if self._pending and self._dispatch_at == INF:  # the idle scheduler wakes
                    self._dispatch_at = max(now, self._busy_until)
                    self._push(self._dispatch_at, _DISPATCH)
            elif kind == _ASSIGN:
                worker, (seq, pages) = a, b  # type: ignore[assignment,misc]
                self._push_worker(worker, worker.enqueue(seq, now, pages))
            elif kind == _HEARTBEAT:
                a.heartbeat(now)  # type: ignore[attr-defined]
            elif kind == _CPU:  # the background changed: steps from now on take longer
                self._cpu.change(0, None, now)  # type: ignore[union-attr]
            elif kind == _ARRIVE_MIGRATED:
                self.migrations.arrive(a, b, now)  # type: ignore[arg-type]
            elif kind == _PRECOPIED:
                self.migrations.precopied(a, b, now)  # type: ignore[arg-type]
            elif kind == _MIGRATE:
                self._migrate(now)
                if self._num_done < n:
                    self._push(now + self.config.migration_interval_s, _MIGRATE)
            elif kind == _SAMPLE:
                self._sample(now)
                if self._num_done < n:
                    self._push(now + self.config.sample_interval_s, _SAMPLE)
            elif kind == _REPLAN:
                self._replan(now)
                if self._num_done < n:
                    self._push(now + self.config.replan_interval_s, _REPLAN)
            elif kind == _LOADED:
                self._loaded(a, b, now)  # type: ignore[arg-type]
            elif kind == _OVERLOAD:
                self._overload(now)
                if self._num_done < n:
                    self._push(now + self.config.overload.interval_s, _OVERLOAD)
            elif kind == _RESUME:
                resumed: SimWorker = a  # type: ignore[assignment]
                self._push_worker(resumed, resumed.resume(now))
                if self._pending and self._dispatch_at == INF:
                    self._dispatch_at = now + interval
                    self._push(self._dispatch_at, _DISPATCH)
            elif kind == _RELOADED:
                assert self.keeper is not None
                self.keeper.reloaded(a, now)  # type: ignore[arg-type]
        if self._num_done < n:
            for seq in seqs:
                if not seq.done:
                    self._drop(seq, "unfinished_at_horizon")
        self._sample(now)
        for w in self.workers:
            if now < horizon:
                w.check()
        wall = time.perf_counter() - started
        result = SimResult(
            self.config, seqs, self.fleet_rows, events, wall, time.process_time() - cpu_started,
            sum(w.num_plans for w in self.workers), sum(w.num_steps for w in self.workers),
            self.migrations.num_migrations, now, self.workers, self.replacements,
            self.overheads.relay_s if self.overheads is not None else 0.0,
            list(self.keeper.actions) if self.keeper is not None else [],
            self.migrations.stats,
        )
        log.info("simulated %d requests to t=%.1fs: %d events in %.1fs wall, %.1fs CPU "
                 "(%.0f events/s)", n, now, events, wall, result.cpu_s, result.events_per_s)
        return result

    # ----- scheduler -----
    def _admit(self, seq: SimSeq) -> None:
        """The gateway's admission: a model nobody serves is not found; past the model's
        queue bound the request is refused (429); otherwise its length is predicted and it
        joins the scheduler's queue."""
        if seq.model not in self._served:
            self._drop(seq, "no_worker_for_model")
            return
        depth = self._depth.get(seq.model, QueueDepth())
        if not self._bound.admits(depth, seq.num_prompt_tokens):
            self._drop(seq, "queue_full")
            return
        self._depth[seq.model] = depth.add(seq.num_prompt_tokens)
        query = LengthQuery(seq.request_id, seq.model, seq.num_prompt_tokens,
                            seq.request_max_tokens, seq.max_tokens)
        seq.predicted_output_tokens = self.predictor.predict(query)
        self._pending.append(seq)
        if self.placement is not None:  # the load figures count mean lengths, as live
            self._recent.append((seq.arrival_s, seq.model, seq.num_prompt_tokens,
                                 self.predictor.expect(query)))

    def _dispatch(self, now: float) -> None:
        self._dispatch_at = INF
        pending = self._pending
        if not pending:
            return
        views = self._views
        if self._dirty:
            workers = self.workers
            for idx in self._dirty:
                views[idx] = workers[idx].worker_view()
            self._dirty.clear()
        out = decide(self.dispatch, [s.request_view() for s in pending], ClusterView(tuple(views)),
                     now)
        ov = self.overheads
        if not out.decisions.assignments:
            if ov is not None:  # the scheduler polls again
                self._dispatch_at = now + ov.tick_s
                self._push(self._dispatch_at, _DISPATCH)
            return
        by_id = {s.request_id: s for s in pending}
        index = self._worker_index
        for a in out.decisions.assignments:
            seq = by_id.pop(a.request_id)
            worker = index[a.worker_id]
            seq.dispatch_s = now
            self._depth[seq.model] = self._depth[seq.model].remove(seq.num_prompt_tokens)
            if self.dispatch_log is not None:
                self.dispatch_log.append((seq.request_id, worker.worker_id))
            if seq.num_prompt_tokens + seq.request_max_tokens > worker.capacity_tokens(seq.model):
                self._drop(seq, "exceeds_worker_kv_capacity")
                continue
            if ov is not None:  # the Assign call; the scheduler waits for all of them
                self._push(now + ov.assign_s, _ASSIGN, worker, (seq, out.pages[a.request_id]))
                continue
            self._push_worker(worker, worker.enqueue(seq, now, out.pages[a.request_id]))
        self._pending = [s for s in pending if s.request_id in by_id]
        if ov is not None:
            self._busy_until = now + ov.assign_s
            if self._pending:  # still waiting: the next poll
                self._dispatch_at = self._busy_until + ov.tick_s
                self._push(self._dispatch_at, _DISPATCH)

    # ----- migration -----
    def _migrate(self, now: float) -> None:
        views = migration_views(
            [w.report() for w in self.workers], self._inflight,
            link_bytes_per_s=self.link.bytes_per_s,
            reprefill_tokens_per_s={w.worker_id: w.spare_prefill_tokens_per_s()
                                    for w in self.workers},
        )
        for order in self.migration.decide(views, now):
            self.migrations.order(order, now)

    def _accept(self, seq: SimSeq) -> bool:
        """Called by a source worker at a boundary: can the destination take ``seq`` now?"""
        return self.migrations.accept(seq)

    def _depart(self, departed: list[SimSeq], now: float) -> None:
        self.migrations.depart(departed, now)

    # ----- re-placement -----
    def _replan(self, now: float) -> None:
        """The planner's placement tick: the load measured over the last window, the
        placement policy, and loads/unloads where the plan changed. A model leaving its last
        worker there is unloaded only once a new replica of it serves, or at once where its
        worker needs the room for a load (the live reconciler's rule)."""
        window = self.config.load_window_s
        recent = self._recent
        while recent and recent[0][0] < now - window:
            recent.popleft()
        span = min(window, now)
        queued = {m: (d.requests, d.tokens) for m, d in self._depth.items()}
        load = with_backlog(_load_of(recent, span), queued, span)
        plan = self.placement.place(self.fleet, self.plan, load, now)  # type: ignore[attr-defined]
        if plan is self.plan or plan == self.plan:
            self._unload_ready(now)
            return
        old = self.plan
        self.plan = plan
        loads = unloads = 0
        for w in self.workers:
            want = set(plan.models_of(w.worker_id))
            have = set(w.models) - w.draining
            for m in sorted(want - have):
                weight = self.fleet.model(m).weight_bytes
                w.begin_load(m, weight / self.config.weight_load_bytes_per_s, now)
                loads += 1
                if w.started_loads:
                    self._start_loads(w, now)
            for m in sorted(have - want):
                self._unload_after.append((w.idx, m))
                unloads += 1
        self._unload_ready(now)
        self.replacements.append((now, loads, unloads))
        log.info("t=%.1fs re-placement v%d -> v%d: %d loads, %d unloads", now,
                 old.version if old else 0, plan.version, loads, unloads)

    def _unload_ready(self, now: float) -> None:
        keep = []
        for idx, m in self._unload_after:
            w = self.workers[idx]
            if self.plan is not None and m in self.plan.models_of(w.worker_id):
                continue  # planned here again
            elsewhere = any(m in o.models and m not in o.draining
                            for o in self.workers if o is not w)
            # As live: a last replica waits for its new one, unless this worker needs the room
            # for a load it was refused.
            if elsewhere or not (self.plan and self.plan.workers_of(m)) or w.load_refused:
                w.begin_unload(m, now)
            else:
                keep.append((idx, m))
        self._unload_after = keep

    def _start_loads(self, worker: SimWorker, now: float) -> None:
        for model, load_s in worker.started_loads:
            self._push(now + load_s, _LOADED, worker, model)
        worker.started_loads.clear()

    def _loaded(self, worker: SimWorker, model: str, now: float) -> None:
        worker.finish_load(model, now)
        self._push_worker(worker, worker.wake_after_load(now))
        self._unload_ready(now)
        if self._pending and self._dispatch_at == INF:
            self._dispatch_at = now + self.config.dispatch_interval_s
            self._push(self._dispatch_at, _DISPATCH)

    # ----- overload (layer drops and restores) -----
    def _overload(self, now: float) -> None:
        assert self.keeper is not None
        views = overload_views([w._snapshot() for w in self.workers], self.keeper.busy())
        queued = {m: d.tokens for m, d in self._depth.items() if d.tokens > 0}
        for action in self.overload.decide(FleetLoad(tuple(views), queued), now):
            self.keeper.start(action, now)

    # ----- fleet time series -----
    def _sample(self, now: float) -> None:
        """One fleet.csv row. A worker is active while it (or the leader of its pipeline
        group) holds or expects a request (running, waiting, or a migration coming in), idle
        otherwise; KV utilisation is taken over all workers and over the active ones only."""
        active = used = total = waiting = running = used_active = total_active = 0
        leaders = {w.worker_id: w for w in self.workers}
        busy: list[SimWorker] = []
        for w in self.workers:
            group = next(iter(w.groups.values()), None)
            lead = leaders[group.leader_id] if group is not None else w
            if lead.active:
                active += 1
                busy.append(w)
            if group is not None and group.rank > 0:
                continue  # a later stage's pages are counted through its group's leader
            held = w.total_pages - w.free_pages
            if lead.active:
                used_active += held
                total_active += w.total_pages
            used += held
            total += w.total_pages
            waiting += len(w.waiting)
            running += len(w.running)
        interval = self.config.sample_interval_s
        gpus = sum(w.parallel_degree for w in busy)
        idle_gpus = sum(w.parallel_degree for w in self.workers) - gpus
        if self.placement is None:  # workers built from a tp setting: every one spans tp GPUs
            tp = self.workers[0].costs[next(iter(self.workers[0].costs))].tp
            gpus, idle_gpus = active * tp, (len(self.workers) - active) * tp
        finished = self._num_done - self._num_dropped
        self.fleet_rows.append((
            round(now, 6), gpus, round(used / total, 6) if total else 0.0,
            self.migrations.in_window / interval, len(self._pending), waiting, running,
            finished, self._num_dropped, idle_gpus,
            round(used_active / total_active, 6) if total_active else 0.0,
        ))
        self.migrations.in_window = 0


def _load_of(arrivals: Sequence[tuple[float, str, int, int]], span_s: float
             ) -> dict[str, ModelLoad]:
    """Per-model request rate and mean lengths of ``arrivals`` over ``span_s`` seconds."""
    acc: dict[str, list[float]] = {}
    for _, model, prompt, output in arrivals:
        a = acc.setdefault(model, [0.0, 0.0, 0.0])
        a[0] += 1
        a[1] += prompt
        a[2] += output
    span = max(span_s, 1e-9)
    return {m: ModelLoad(m, n / span, p / n, o / n) for m, (n, p, o) in acc.items()}


def measured_load(requests: Sequence[RequestLike], mapping: dict[str, str], start_s: float,
                  end_s: float) -> dict[str, ModelLoad]:
    """The load ``requests`` (mapped to served models) put on the fleet in [start, end): what
    a static placement is given (every policy gets the same figures)."""
    chosen = [r for r in requests if start_s <= r.arrival_s < end_s]
    if not chosen:
        return {}
    first = min(r.arrival_s for r in chosen)
    last = max(r.arrival_s for r in chosen)
    return _load_of([(r.arrival_s, mapping[r.model], r.input_tokens, r.output_tokens)
                     for r in chosen], max(last - first, 1.0))


def simulate(
    config: SimConfig,
    requests: Sequence[RequestLike],
    policies: PolicySet | None = None,
    slos: SloSet | None = None,
    overheads: StackOverheads | None = None,
) -> SimResult:
    """Run ``requests`` through a fleet built from ``config`` (each request carrying its
    model's SLO from ``slos``; the stack's ``overheads``, or ``config.overheads``'s, if any)."""
    return Simulator(config, requests, policies, slos=slos, overheads=overheads).run()
