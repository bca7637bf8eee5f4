"""One simulated worker: a unified KV page pool and a continuous-batching step loop driven
by the worker's own batch policy.

The policy is asked for a plan at every composition change (an arrival, a finish, a
preemption, a migration, a memory checkpoint). When its plan only continues every running
sequence by one decode token, the worker runs that batch for as many steps as it can before
the next finish or before the pool could run out, as one event whose duration is summed in
closed form (see ``DecodeRun``). An arrival in the middle of such a run cuts it short at the
end of the step in progress.
"""

from __future__ import annotations

import logging
import math
from bisect import insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kvfleet.services.scheduler.core.occupancy import (
    OccupancyReport,
    PendingAssignment,
    SeqReport,
    unreflected,
    worker_view,
)
from kvfleet.services.scheduler.core.stages import ModelShapeView, StageView
from kvfleet.services.scheduler.core.types import WorkerView
from kvfleet.services.worker.core.batch_policy import BatchPolicy, EngineView, StepPlan
from kvfleet.sim.cost_model import CostModel, DecodeRun
from kvfleet.sim.seq import SimSeq

log = logging.getLogger(__name__)
INF = float("inf")


class KvAccountingError(RuntimeError):
    """The page pool went negative or over capacity: a simulator or policy bug."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    worker_id: str
    models: tuple[str, ...]
    num_total_pages: int
    tokens_per_page: dict[str, int]
    token_budget: int = 2048
    max_num_seqs: int = 256
    queue_fraction: float = 1.0  # the scheduler's queue allowance for this worker
    fast_forward: bool = True  # run unchanged decode batches as one event (off: step by step)
    parallel_degree: int = 1  # GPUs the worker spans
    page_size_bytes: int = 0  # bytes of one page (tokens per page x a model's KV per token)
    node: str = ""  # workers of one node share its fastest links


class SimWorker:
    """State and step logic of one worker. The simulator owns the clock and the event heap;
    the worker tells it when its current step or run of steps ends."""

    def __init__(
        self, idx: int, config: WorkerConfig, costs: dict[str, CostModel], policy: BatchPolicy
    ) -> None:
        self.idx = idx
        self.worker_id = config.worker_id
        self.config = config
        self.models = config.models
        self.tpp = dict(config.tokens_per_page)
        self._tpp_min = min(config.tokens_per_page.values(), default=1)
        self.total_pages = config.num_total_pages
        self.free_pages = config.num_total_pages
        self.reserved_pages = 0  # held for migrations in flight to this worker
        self.policy_reserved_pages = 0  # free pages the batch policy's last plan holds back
        self.costs = costs
        self._single = next(iter(costs.values())) if len(costs) == 1 else None
        self.step_costs = {m: c.coefficients() for m, c in costs.items()}
        self._dirty_sink: list[int] | None = None  # the simulator's list of changed workers
        self.policy = policy
        self.running: list[SimSeq] = []
        self.waiting: deque[SimSeq] = deque()
        self.by_id: dict[str, SimSeq] = {}
        self.version = 0
        self.busy = False
        self.step_start_s = 0.0
        self.step_end_s = 0.0
        self._chunks: list[tuple[SimSeq, int]] = []
        self._run: list[DecodeRun] | None = None
        self._run_steps = 0
        self._detach: set[str] = set()
        self._incoming: list[SimSeq] = []
        self._run_claim = 0  # pages the current run of decode steps may still take
        self._view: WorkerView | None = None
        self.parallel_degree = config.parallel_degree
        # Re-placement (models loaded and unloaded during a run): what any model would cost
        # here, the weights' pages, loads claiming pages and models draining before unload.
        self._catalog_costs: dict[str, CostModel] = {}
        self._catalog_tpp: dict[str, int] = {}
        self._weight_pages: dict[str, int] = {}
        self._loading: dict[str, tuple[int, float]] = {}  # refused loads: model -> (pages, load_s)
        self._loads_running = 0  # loads whose weights hold their pages, not serving yet
        self.started_loads: list[tuple[str, float]] = []  # (model, load seconds) to time
        self.draining: set[str] = set()
        self.num_loads = 0
        self.num_unloads = 0
        # What the scheduler knows: the report published at the last step boundary (as a
        # heartbeat after a step) and the assignments it has not shown yet.
        self.intake_seq = 0
        self._queued_pages = 0  # pages the waiting sequences need (all hold none)
        self.pending: list[PendingAssignment] = []
        self.num_steps = 0
        self.num_plans = 0
        self.busy_s = 0.0
        # The live stack around the engine (StackOverheads; all off by default).
        self.step_extra_s = 0.0  # added to every step
        self.heartbeat_min_s = 0.0  # a report is published at most this often at boundaries
        self.heartbeat_s = 0.25  # ... and at every multiple of this when one is held back
        self.heartbeat_due = False  # a held-back report waits for ``heartbeat_at``
        self.heartbeat_at = INF
        self._published_s = -INF
        self._held: OccupancyReport | None = None
        self.cpu: SharedCpu | None = None  # cores shared with the other workers (CPU fleets)
        # Pipeline groups (kvfleet/sim/groups.py): what it holds of each model, the group it
        # is a stage of, and whether it stops at its next step boundary (to regroup).
        self.layers: dict[str, tuple[int, int]] = {}
        self.shapes: dict[str, ModelShapeView] = {}
        self.groups: dict[str, StageView] = {}
        self.freezing = False
        self.frozen = False
        self.published = self._snapshot()

    # ----- what the scheduler and planner see -----
    def _invalidate(self) -> None:
        if self._view is not None:
            self._view = None
            if self._dirty_sink is not None:
                self._dirty_sink.append(self.idx)

    def worker_view(self) -> WorkerView:
        """The scheduler's view: the last published report and the assignments it does not
        show yet, through the same ``worker_view`` as the live scheduler."""
        if self._view is None:
            self._view = worker_view(
                self.published, self.pending, queue_fraction=self.config.queue_fraction,
                draining=self.frozen or self.freezing,  # stopping to regroup: no new requests
            )
        return self._view

    def _snapshot(self) -> OccupancyReport:
        models = self.models
        if self.draining:
            models = tuple(m for m in models if m not in self.draining)
        return OccupancyReport(
            self.worker_id, models, self.total_pages, self.free_pages,
            min(self.policy_reserved_pages, self.free_pages), self._queued_pages, self.tpp,
            len(self.running), len(self.waiting), "sim",
            self.intake_seq, (), self.config.page_size_bytes, self.layers, self.shapes,
            self.groups, self.config.node, self._seq_pages(),
        )

    def _seq_pages(self) -> tuple[int, ...]:
        """Pages each request holds, or needs to start (the dispatcher's packing view)."""
        out = [s.num_pages for s in self.running]
        out.extend(-(-s.num_tokens // s.tokens_per_page) for s in self.waiting)
        return tuple(out)

    def _publish(self, now: float) -> None:
        snap = self._snapshot()
        if self.heartbeat_min_s > 0.0 and now - self._published_s < self.heartbeat_min_s:
            self._held = snap  # written by the next heartbeat (or a later boundary)
            if self.heartbeat_at == INF:
                self.heartbeat_at = (math.floor(now / self.heartbeat_s) + 1) * self.heartbeat_s
                self.heartbeat_due = True
            return
        self._held = None
        self._set_published(snap, now)

    def _set_published(self, snap: OccupancyReport, now: float) -> None:
        self.published = snap
        self._published_s = now
        if self.pending:
            self.pending = unreflected(self.pending, self.published)
        self._invalidate()

    def heartbeat(self, now: float) -> None:
        """The periodic heartbeat: publish the report held back at the last boundary."""
        self.heartbeat_at = INF
        if self._held is not None:
            snap, self._held = self._held, None
            self._set_published(snap, now)

    def report(self) -> OccupancyReport:
        """The worker's state now, with its requests (for the migration policy)."""
        seqs = tuple(
            SeqReport(s.request_id, s.model, s.num_pages, s.num_tokens, s.num_computed,
                      s.num_output, s.arrival_s, s.predicted_output_tokens)
            for s in (*self.running, *self.waiting)
        )
        snap = self._snapshot()
        return OccupancyReport(
            snap.worker_id, snap.models, snap.num_total_pages, snap.num_free_pages,
            snap.num_reserved_pages, snap.num_queued_pages, snap.tokens_per_page,
            snap.num_running, snap.num_waiting, snap.boot_id, snap.intake_seq, seqs,
            snap.page_size_bytes, snap.layers, snap.shapes, snap.groups, snap.node,
        )

    @property
    def used_pages(self) -> int:
        return self.total_pages - self.free_pages

    @property
    def active(self) -> bool:
        return bool(self.running or self.waiting or self.reserved_pages or self._incoming)

    def spare_prefill_tokens_per_s(self) -> float:
        """Re-prefill tokens per second this worker can take on without slowing its batch
        (the migration policy's computation budget)."""
        cost = self._single or next(iter(self.costs.values()))
        return cost.spare_prefill_tokens_per_s(
            len(self.running), sum(s.num_tokens for s in self.running))

    def capacity_tokens(self, model: str) -> int:
        return self.total_pages * self.tpp[model]

    # ----- arrivals -----
    def enqueue(self, seq: SimSeq, now: float, num_pages: int = 0) -> float | None:
        """Queue a dispatched request (the scheduler charged it ``num_pages``). Returns a new
        wake-up time if the worker's pending event must move (idle worker, or a run of decode
        steps to cut short)."""
        seq.tokens_per_page = self.tpp[seq.model]
        seq.worker_idx = self.idx
        self._to_waiting(seq)
        self.waiting.append(seq)
        self.by_id[seq.request_id] = seq
        self.intake_seq += 1
        self.pending.append(
            PendingAssignment(seq.request_id, self.worker_id, "sim", self.intake_seq, num_pages))
        self._invalidate()
        return self._wake(now)

    def _to_waiting(self, seq: SimSeq) -> None:
        """Count a sequence joining the waiting queue (with no pages, nothing computed)."""
        self._queued_pages += -(-seq.num_tokens // seq.tokens_per_page)

    def attach(self, seq: SimSeq, now: float) -> float | None:
        """A migrated sequence arrives with its KV (pages were reserved at departure)."""
        self._incoming.append(seq)
        return self._wake(now)

    def reserve(self, num_pages: int) -> bool:
        """Hold pages for a sequence migrating here, if they are free (net of what the
        current run of decode steps may still take)."""
        if self.free_pages - self._run_claim < num_pages:
            return False
        self.free_pages -= num_pages
        self.reserved_pages += num_pages
        self._invalidate()
        return True

    def unreserve(self, num_pages: int) -> None:
        """Give back pages held for a migration that will not come."""
        self.free_pages += num_pages
        self.reserved_pages -= num_pages
        self._invalidate()

    def attach_waiting(self, seq: SimSeq, now: float) -> float | None:
        """A request arrives as tokens (re-prefill migration, or one that had not started):
        it joins the waiting queue with nothing computed."""
        seq._view = None
        seq.num_pages = 0
        seq.num_computed = 0
        seq.tokens_per_page = self.tpp[seq.model]
        seq.worker_idx = self.idx
        self._to_waiting(seq)
        self.waiting.append(seq)
        self.by_id[seq.request_id] = seq
        self._invalidate()
        return self._wake(now)

    def request_detach(self, request_id: str, now: float) -> float | None:
        """Ask for a running sequence to leave at the next step boundary."""
        self._detach.add(request_id)
        return self._wake(now)

    def _wake(self, now: float) -> float | None:
        if not self.busy:
            self.busy = True
            self.step_start_s = self.step_end_s = now
            self._chunks = []
            self._run = None
            self.version += 1
            if self.cpu is not None:
                self.cpu.change(1, self, now)
            return now
        return self.cut_run(now)

    def cut_run(self, now: float) -> float | None:
        """End a run of decode steps in progress at the step running at ``now``; returns the
        run's new end, or None if nothing changed."""
        if self._run is not None and self._run_steps > 1:
            steps = _run_steps_by(self._run, now - self.step_start_s, self._run_steps)
            if steps < self._run_steps:
                self._run_steps = steps
                self.step_end_s = self.step_start_s + _run_time(self._run, steps)
                self.version += 1
                return self.step_end_s
        return None

    # ----- re-placement: loading and unloading models -----
    def catalog(self, costs: dict[str, CostModel], tokens_per_page: dict[str, int],
                weight_bytes: dict[str, int], page_bytes: int) -> None:
        """What every model the fleet serves would cost on this worker, so any can be loaded
        here later (its weights take ``ceil(weight_bytes / page_bytes)`` pages of the pool)."""
        self._catalog_costs = dict(costs)
        self._catalog_tpp = dict(tokens_per_page)
        self._weight_pages = {m: -(-b // page_bytes) for m, b in weight_bytes.items()}

    def begin_load(self, model: str, load_s: float, now: float) -> None:
        """Start loading ``model``: its weights claim free pages all at once, as soon as that
        many are free (checked at step boundaries), the way a live worker takes a Load only
        when the weights fit; then the load takes ``load_s`` (``started_loads``). Until then
        the load is refused (``load_refused``)."""
        if model in self.models or model in self._loading:
            self.draining.discard(model)
            return
        self._loading[model] = (self._weight_pages[model], load_s)
        if not self.busy:
            self._placement_step()
            self._publish(now)

    def begin_unload(self, model: str, now: float) -> None:
        """Stop taking ``model``'s requests; unload it once those here have finished."""
        self._loading.pop(model, None)  # a refused load holds no pages
        if model in self.models:
            self.draining.add(model)
        if not self.busy:
            self._placement_step()
            self._publish(now)

    def finish_load(self, model: str, now: float) -> None:
        """The weights are in: the model serves from now on."""
        need = self._weight_pages[model]
        self.reserved_pages -= need
        self.total_pages -= need
        self._loads_running -= 1
        self.models = (*self.models, model)
        self.tpp = {**self.tpp, model: self._catalog_tpp[model]}
        self._set_costs({**self.costs, model: self._catalog_costs[model]})
        self.num_loads += 1
        self._publish(now)

    def wake_after_load(self, now: float) -> float | None:
        """Wake an idle worker that has requests (after a load gave its pages back)."""
        if self.busy or not (self.waiting or self.running or self._incoming):
            return None
        return self._wake(now)

    def _set_costs(self, costs: dict[str, CostModel]) -> None:
        self.costs = costs
        self._single = next(iter(costs.values())) if len(costs) == 1 else None
        self.step_costs = {m: c.coefficients() for m, c in costs.items()}
        held = [self.tpp[m] for m in self.models if m in self.tpp]
        if held:
            self._tpp_min = min(held)

    @property
    def load_refused(self) -> bool:
        """A planned load is waiting for its weights' pages to be free."""
        return bool(self._loading)

    def _placement_step(self) -> None:
        """Unload drained models; claim free pages for pending loads."""
        self._unload_drained()
        for model, (need, load_s) in list(self._loading.items()):
            if need > self.free_pages - self._run_claim:
                continue  # refused for now: the weights do not fit yet
            self.free_pages -= need
            self.reserved_pages += need
            del self._loading[model]
            self._loads_running += 1
            self.started_loads.append((model, load_s))
        self._invalidate()

    def _unload_drained(self) -> None:
        for model in list(self.draining):
            busy = any(s.model == model for s in (*self.running, *self.waiting, *self._incoming))
            if busy:
                continue
            self.draining.discard(model)
            self.models = tuple(m for m in self.models if m != model)
            self.tpp = {m: t for m, t in self.tpp.items() if m != model}
            pages = self._weight_pages.get(model, 0)
            self.total_pages += pages
            self.free_pages += pages
            self._set_costs({m: c for m, c in self.costs.items() if m != model})
            self.num_unloads += 1

    # ----- the step loop -----
    def on_boundary(
        self,
        now: float,
        finished: list[SimSeq],
        departed: list[SimSeq],
        accept: Callable[[SimSeq], bool] | None = None,
    ) -> float | None:
        """The current step (or run) ended at ``now``: apply it, then plan the next one.
        Returns when the next one ends, or None when the worker goes idle."""
        self.busy_s += now - self.step_start_s
        if self._run is not None:
            self._finish_run(now, finished)
        elif self._chunks:
            self._finish_step(now, finished)
        self._chunks = []
        self._run = None
        self._run_claim = 0
        self._invalidate()
        if self._incoming:
            for seq in self._incoming:
                self.reserved_pages -= seq.num_pages
                seq.worker_idx = self.idx
                insort(self.running, seq, key=lambda s: s.arrival_s)  # oldest first
                self.by_id[seq.request_id] = seq
            self._incoming.clear()
        if self._detach:
            self._do_detach(departed, accept)
        if self._loading or self.draining:
            self._placement_step()
        self._publish(now)
        if self.freezing:  # it stops here: its group is being formed or dissolved
            self.freezing = False
            self.frozen = True
            self.busy = False
            return None
        return self._plan(now)

    def request_freeze(self, now: float) -> float | None:
        """Stop at the next step boundary (cutting a run of decode steps short); an idle
        worker stops at once. Returns a new wake-up time, as ``enqueue`` does."""
        self._invalidate()
        if not self.busy:
            self.frozen = True
            return None
        self.freezing = True
        return self._wake(now)

    def resume(self, now: float) -> float | None:
        """Step again after a freeze."""
        self.frozen = self.freezing = False
        self._invalidate()
        return self._wake(now)

    def _finish_step(self, now: float, finished: list[SimSeq]) -> None:
        done = False
        for seq, n in self._chunks:
            seq._view = None
            seq.num_computed += n
            if seq.num_computed == seq.num_tokens:
                seq.num_tokens += 1
                seq.num_output += 1
                if seq.first_token_s < 0.0:
                    seq.first_token_s = now
                if seq.num_output >= seq.max_tokens:
                    done = True
        if done:
            self._retire(now, finished)

    def _finish_run(self, now: float, finished: list[SimSeq]) -> None:
        k = self._run_steps
        free = self.free_pages
        done = False
        first_step_end = -1.0
        for seq in self.running:
            seq._view = None
            if seq.first_token_s < 0.0:  # the run's first step fed its last prompt token
                if first_step_end < 0.0:
                    first_step_end = self.step_start_s + _run_time(self._run, 1)  # type: ignore[arg-type]
                seq.first_token_s = first_step_end
            c = seq.num_computed = seq.num_computed + k
            seq.num_tokens += k
            out = seq.num_output = seq.num_output + k
            pages = -(-c // seq.tokens_per_page)
            free -= pages - seq.num_pages
            seq.num_pages = pages
            if out >= seq.max_tokens:
                done = True
        if free < 0:
            raise KvAccountingError(f"worker {self.worker_id}: free pages {free} < 0")
        self.free_pages = free
        if done:
            self._retire(now, finished)

    def _retire(self, now: float, finished: list[SimSeq]) -> None:
        keep: list[SimSeq] = []
        for seq in self.running:
            if seq.num_output >= seq.max_tokens:
                seq.finish_s = now
                self.free_pages += seq.num_pages
                seq.num_pages = 0
                del self.by_id[seq.request_id]
                finished.append(seq)
            else:
                keep.append(seq)
        self.running = keep

    def _do_detach(
        self, departed: list[SimSeq], accept: Callable[[SimSeq], bool] | None
    ) -> None:
        keep: list[SimSeq] = []
        for seq in self.running:  # decoding, or in the middle of its prefill
            if seq.request_id in self._detach and accept is not None and accept(seq):
                self.free_pages += seq.num_pages
                del self.by_id[seq.request_id]
                departed.append(seq)
            else:
                keep.append(seq)
        self.running = keep
        if any(s.request_id in self._detach for s in self.waiting):
            stay: deque[SimSeq] = deque()
            for seq in self.waiting:  # not started: it moves as tokens
                if seq.request_id in self._detach and accept is not None and accept(seq):
                    self._queued_pages -= -(-seq.num_tokens // seq.tokens_per_page)
                    del self.by_id[seq.request_id]
                    departed.append(seq)
                else:
                    stay.append(seq)
            self.waiting = stay
        self._detach.clear()

    def _plan(self, now: float) -> float | None:
        while True:
            if not self.running and not self.waiting:
                self._idle(now)
                return None
            view = EngineView(
                tuple([s._view or s.view() for s in self.running]),
                tuple([s._view or s.view() for s in self.waiting]),
                self.free_pages, self.config.token_budget, self.config.max_num_seqs,
                self.step_costs,
            )
            plan = self.policy.plan(view, now)
            self.num_plans += 1
            self.policy_reserved_pages = plan.num_reserved_pages
            if plan.preempt:
                self._preempt(plan)
            if plan.chunks:
                return self._start(plan, now)
            if not plan.preempt:
                if self._loads_running:  # weights loading hold the pages: wait for them
                    self._idle(now)
                return None
                # Nothing can run: only possible when the pool is too small for the queue head.
                raise KvAccountingError(
                    f"worker {self.worker_id}: policy planned nothing with "
                    f"{len(self.running)} running, {len(self.waiting)} waiting, "
                    f"{self.free_pages} free pages"
                )

    def _idle(self, now: float) -> None:
        self.busy = False
        self.policy_reserved_pages = 0
        if self.cpu is not None:
            self.cpu.change(-1, self, now)

    def _preempt(self, plan: StepPlan) -> None:
        gone = set(plan.preempt)
        victims = [s for s in self.running if s.request_id in gone]
        self.running = [s for s in self.running if s.request_id not in gone]
        for seq in victims:
            seq._view = None
            self.free_pages += seq.num_pages
            seq.num_pages = 0
            seq.num_computed = 0
            seq.num_preemptions += 1
            self._to_waiting(seq)
        victims.sort(key=lambda s: s.arrival_s)
        self.waiting.extendleft(reversed(victims))

    def _start(self, plan: StepPlan, now: float) -> float:
        by_id = self.by_id
        chunks = [(by_id[c.seq_id], c.num_tokens) for c in plan.chunks]
        pure_decode = len(chunks) == len(self.running)
        new: list[SimSeq] = []
        free = self.free_pages
        for seq, n in chunks:
            if seq.num_pages == 0:
                new.append(seq)  # only waiting sequences hold no pages
            if n != 1 or seq.num_tokens - seq.num_computed != 1:
                pure_decode = False
            pages = -(-(seq.num_computed + n) // seq.tokens_per_page)
            if pages > seq.num_pages:
                free -= pages - seq.num_pages
                seq.num_pages = pages
                seq._view = None
        if free < 0:
            raise KvAccountingError(f"worker {self.worker_id}: plan overdraws the pool ({free})")
        self.free_pages = free
        if new:
            pure_decode = False
            self._admit(new)
        self.step_start_s = now
        self.num_steps += 1
        self.version += 1
        f = self.cpu.factor(now) if self.cpu is not None else 1.0
        if pure_decode and self.config.fast_forward:
            steps = self._safe_run_steps()
            if plan.repeat_steps is not None:  # the policy would plan differently after
                steps = min(steps, plan.repeat_steps)
            run = self._decode_runs() if steps > 1 else None
            if run is not None and f != 1.0:  # the machine's CPU is shared: slower steps
                run = [DecodeRun(r.c0 * f, r.c1 * f, r.m0 * f, r.m1 * f, r.overhead * f)
                       for r in run]
            if run is not None and plan.replan_at_s is not None:
                # ...or at the first step boundary from its re-plan time on
                steps = _run_steps_by(run, plan.replan_at_s - now, steps)
            if run is not None and steps > 1:
                self._run = run
                self._run_steps = steps
                b = len(self.running)
                self._run_claim = min(self.free_pages, b * -(-steps // self._tpp_min))
                self.step_end_s = now + _run_time(self._run, steps)
                self.num_steps += steps - 1
                return self.step_end_s
        self._chunks = chunks
        self.step_end_s = now + (self._step_time(chunks) + self.step_extra_s) * f
        return self.step_end_s

    def _admit(self, new: list[SimSeq]) -> None:
        """Move newly scheduled waiting sequences to running, in plan order."""
        for s in new:
            self._queued_pages -= -(-s.num_tokens // s.tokens_per_page)
        waiting = self.waiting
        if all(i < len(waiting) and waiting[i] is s for i, s in enumerate(new)):
            for _ in new:
                waiting.popleft()
        else:
            ids = {id(s) for s in new}
            self.waiting = deque(s for s in waiting if id(s) not in ids)
        self.running.extend(new)

    def _safe_run_steps(self) -> int:
        """Decode steps the current batch can run before a finish or before the pool could
        run short (then the policy decides again)."""
        running = self.running
        limit = min([s.max_tokens - s.num_output for s in running])
        if limit <= 1:
            return 1
        b = len(running)
        tpp_min = self._tpp_min
        free = self.free_pages
        # Each sequence gains at most ceil(j / tpp) pages in j steps.
        bound = (free // b) * tpp_min
        if bound >= limit:
            return limit
        lo, hi = max(1, bound), limit  # extra(lo) <= free; find the largest such j
        slack = [s.num_pages * s.tokens_per_page - s.num_computed for s in running]
        tpps = [s.tokens_per_page for s in running]

        def extra(j: int) -> int:
            return sum(-(-(j - sl) // t) for sl, t in zip(slack, tpps, strict=True) if j > sl)

        while lo < hi:
            mid = (lo + hi + 1) // 2
            if extra(mid) <= free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _decode_runs(self) -> list[DecodeRun]:
        runs = self._model_decode_runs()
        if self.step_extra_s:
            r = runs[0]
            runs[0] = DecodeRun(r.c0, r.c1, r.m0, r.m1, r.overhead + self.step_extra_s)
        return runs

    def _model_decode_runs(self) -> list[DecodeRun]:
        if self._single is not None:
            running = self.running
            lengths = [s.num_tokens for s in running]
            return [self._single.decode_run(len(running), sum(lengths), max(lengths))]
        per_model: dict[str, list[int]] = {}
        for s in self.running:
            acc = per_model.get(s.model)
            if acc is None:
                per_model[s.model] = [1, s.num_tokens, s.num_tokens]
            else:
                acc[0] += 1
                acc[1] += s.num_tokens
                acc[2] = max(acc[2], s.num_tokens)
        runs: list[DecodeRun] = []
        for i, (model, (b, ctx, longest)) in enumerate(per_model.items()):
            run = self.costs[model].decode_run(b, ctx, longest)
            if i:
                run = DecodeRun(run.c0, run.c1, run.m0, run.m1, 0.0)
            runs.append(run)
        return runs

    def _step_time(self, chunks: list[tuple[SimSeq, int]]) -> float:
        if self._single is not None:
            tokens = 0
            pairs = 0.0
            kv = 0
            max_q = max_kv = 0
            for seq, n in chunks:
                c = seq.num_computed
                tokens += n
                pairs += n * c + n * (n + 1) / 2
                kv += c + n
                if n > max_q:
                    max_q = n
                if c + n > max_kv:
                    max_kv = c + n
            return self._single.step_s(tokens, pairs, kv, len(chunks), max_q, max_kv)
        per_model: dict[str, list[float]] = {}
        for seq, n in chunks:
            c = seq.num_computed
            acc = per_model.get(seq.model)
            if acc is None:
                acc = per_model[seq.model] = [0, 0.0, 0.0, 0, 0, 0]
            acc[0] += n
            acc[1] += n * c + n * (n + 1) / 2
            acc[2] += c + n
            acc[3] += 1
            acc[4] = max(acc[4], n)
            acc[5] = max(acc[5], c + n)
        total = 0.0
        overhead = 0.0
        for model, (ntok, npairs, kv_read, seqs, max_q, max_kv) in per_model.items():
            cost = self.costs[model].step_cost(int(ntok), npairs, kv_read, int(seqs),
                                               int(max_q), int(max_kv))
            total += max(cost.compute_s, cost.memory_s)
            overhead = max(overhead, cost.overhead_s)
        return total + overhead

    def check(self) -> None:
        """Page accounting invariant (used by tests and at the end of a run)."""
        held = sum(s.num_pages for s in self.running)
        if self.free_pages < 0 or self.free_pages > self.total_pages:
            raise KvAccountingError(f"worker {self.worker_id}: free pages {self.free_pages}")
        if held + self.free_pages + self.reserved_pages != self.total_pages:
            raise KvAccountingError(
                f"worker {self.worker_id}: held {held} + free {self.free_pages} + reserved "
                f"{self.reserved_pages} != {self.total_pages}"
            )


class SharedCpu:
    """Workers that step on shared cores: each step's time is scaled by
    ``StackOverheads.cpu_factor`` of the workers busy when it starts, and a change in that
    number cuts the other workers' runs of decode steps at their next step."""

    def __init__(
        self,
        factor_of: Callable[[int, float], float],
        workers: list[SimWorker],
        reschedule: Callable[[SimWorker, float | None], None],
    ) -> None:
        self.factor_of = factor_of
        self.workers = workers
        self.reschedule = reschedule
        self.busy = 0

    def factor(self, now: float) -> float:
        return self.factor_of(self.busy, now)

    def change(self, delta: int, worker: SimWorker | None, now: float) -> None:
        """``delta`` more workers busy (0: the background changed)."""
        self.busy += delta
        for w in self.workers:
            if w is not worker and w.busy:
                self.reschedule(w, w.cut_run(now))


def _run_time(runs: list[DecodeRun], steps: int) -> float:
    if len(runs) == 1:
        return runs[0].time_of(steps)
    return sum(r.time_of(steps) for r in runs)


def _run_steps_by(runs: list[DecodeRun], elapsed_s: float, max_steps: int) -> int:
    if len(runs) == 1:
        return runs[0].steps_by(elapsed_s, max_steps)
    lo, hi = 1, max_steps
    while lo < hi:
        mid = (lo + hi) // 2
        if _run_time(runs, mid) >= elapsed_s:
            hi = mid
        else:
            lo = mid + 1
    return lo
