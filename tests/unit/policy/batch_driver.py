"""A minimal engine over ``SeqView``s for batch-policy tests: page accounting, recompute
preemption, chunked prefill and finishing at a request's true output length (its EOS), with
a check of every plan's feasibility."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvfleet.services.worker.core.batch_policy import (
    BatchPolicy,
    EngineView,
    SeqView,
    StepPlan,
    pages_needed,
)


@dataclass
class Req:
    rid: str
    prompt: int
    output: int  # where it ends (EOS)
    max_tokens: int
    predicted: int | None
    arrival_step: int
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    # state
    num_tokens: int = 0
    computed: int = 0
    pages: int = 0
    num_output: int = 0
    num_preemptions: int = 0
    finish_step: int = -1

    def view(self, tpp: int, dt: float) -> SeqView:
        return SeqView(self.rid, "m", self.arrival_step * dt, self.prompt, self.num_tokens,
                       self.computed, self.pages, tpp, self.max_tokens, self.num_output,
                       self.predicted, self.ttft_slo_s, self.tpot_slo_s)


@dataclass
class Driver:
    policy: BatchPolicy
    num_pages: int
    tpp: int = 4
    budget: int = 64
    max_seqs: int = 8
    dt: float = 0.01
    free: int = 0
    running: list[Req] = field(default_factory=list)
    waiting: list[Req] = field(default_factory=list)
    done: list[Req] = field(default_factory=list)
    plans: list[tuple[EngineView, float, StepPlan]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.free = self.num_pages

    def add(self, r: Req) -> None:
        r.num_tokens = r.prompt
        self.waiting.append(r)
        self.waiting.sort(key=lambda q: (q.arrival_step, q.rid))

    def view(self) -> EngineView:
        return EngineView(tuple(r.view(self.tpp, self.dt) for r in self.running),
                          tuple(r.view(self.tpp, self.dt) for r in self.waiting),
                          self.free, self.budget, self.max_seqs)

    def step(self, step: int) -> StepPlan | None:
        if not self.running and not self.waiting:
            return None
        view = self.view()
        now = step * self.dt
        plan = self.policy.plan(view, now)
        self.plans.append((view, now, plan))
        self.check_feasible(view, plan)
        by_id = {r.rid: r for r in (*self.running, *self.waiting)}
        for rid in plan.preempt:
            r = by_id[rid]
            self.running.remove(r)
            self.free += r.pages
            r.pages = r.computed = 0
            r.num_preemptions += 1
            self.waiting.append(r)
            self.waiting.sort(key=lambda q: (q.arrival_step, q.rid))
        for c in plan.chunks:
            r = by_id[c.seq_id]
            need = -(-(r.computed + c.num_tokens) // self.tpp) - r.pages
            if need > 0:
                self.free -= need
                r.pages += need
            assert self.free >= 0
            if r in self.waiting:
                self.waiting.remove(r)
                self.running.append(r)
        for c in plan.chunks:
            r = by_id[c.seq_id]
            r.computed += c.num_tokens
            if r.computed == r.num_tokens:
                r.num_tokens += 1
                r.num_output += 1
                if r.num_output >= r.output:
                    r.finish_step = step
                    self.running.remove(r)
                    self.free += r.pages
                    r.pages = 0
                    self.done.append(r)
        return plan

    def check_feasible(self, view: EngineView, plan: StepPlan) -> None:
        running = {s.seq_id: s for s in view.running}
        waiting = {s.seq_id: s for s in view.waiting}
        assert set(plan.preempt) <= set(running), "preempted a sequence that is not running"
        free = view.num_free_pages + sum(running[r].num_pages for r in plan.preempt)
        ids = [c.seq_id for c in plan.chunks]
        assert len(ids) == len(set(ids)), "a sequence planned twice"
        tokens = 0
        for c in plan.chunks:
            assert c.seq_id not in plan.preempt
            s = running.get(c.seq_id) or waiting[c.seq_id]
            assert 0 < c.num_tokens <= s.num_uncomputed_tokens
            free -= pages_needed(s, c.num_tokens)
            tokens += c.num_tokens
        assert free >= 0, "plan overdraws the pool"
        assert 0 <= plan.num_reserved_pages <= free, "reserves more than is free"
        num_seqs = len(running) - len(plan.preempt) + sum(1 for i in ids if i in waiting)
        assert num_seqs <= view.max_num_seqs

    def run(self, reqs: list[Req], max_steps: int = 20_000) -> None:
        pending = sorted(reqs, key=lambda r: (r.arrival_step, r.rid))
        step = 0
        while (pending or self.running or self.waiting) and step < max_steps:
            while pending and pending[0].arrival_step <= step:
                self.add(pending.pop(0))
            self.step(step)
            step += 1
        assert not pending and not self.running and not self.waiting, "did not finish"
