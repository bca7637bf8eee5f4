"""SeaLLM's doubling-budget batch policy: a preemptive multi-level queue across every model a
worker holds. Pure.

Levels. A request starts at level 0 with a budget of ``B0`` iterations (decode steps), ``B0``
being its predicted output length (at least ``min_budget``; ``default_budget`` without a
prediction). Past its budget it drops to level 1 with twice the budget, and so on: level ``k``
holds a request that has used between ``B0 (2^k - 1)`` and ``B0 (2^(k+1) - 1)`` iterations,
so a request that runs far beyond what was expected of it yields to fresh ones, and a wrong
prediction costs at most a doubling.

Priority. A request's expected total length is the end of its current budget; from it and its
model's step costs (``EngineView.step_costs``) follow its time alone on an idle worker
(``isolated_s``) and its remaining time. Within a level the policy serves the request whose
*response ratio* ``(time in the system + remaining time) / isolated time`` is highest: the
normalised latency it is heading for. A short request of a fast model that waits one step of a
slow model is far behind its isolated time; a long request of the slow model is not. The ratio
grows while a request waits, so nothing is passed over for ever. A request whose SLO deadline
(its TTFT target, then one TPOT per token from its first token) is closer than
``urgent_steps`` steps, or whose ratio exceeds ``starvation_ratio``, is urgent: urgent requests
come first, earliest deadline first, whatever their level (this bounds every request's wait).

Steps. The policy walks the requests in priority order. A request of a model already in the
step joins it (a decode token, or a chunk of prompt) while the token budget, the sequence cap
and the pages allow. A request of another model brings that model's whole step time with it,
which delays everything already in the step; the model joins only if the normalised delay it
saves its own requests (their ratio-weighted wait of one step, over their isolated times) is at
least the normalised delay it adds to the requests already in (the same weights), or if the
request is urgent. Running requests left out keep their pages (paused, KV kept).

Memory. When a request needs pages that are not free, the lowest-priority requests holding
pages are evicted (recompute preemption), lowest first, until it fits; if even that is not
enough, it waits. So KV is kept where memory allows and recomputed otherwise, and eviction
under pressure follows the same priorities. Eviction is thrifty: it never throws away a request
that has computed more tokens than the one that needs its pages will have, and a running
request that cannot grow waits with its KV. Without that, a deep backlog of long requests
thrashes: fresh requests evict long ones at deep levels, which are recomputed later and evict
others in turn, and the worker computes the same prompts over and over. Only when no request
at all can move that way does the step evict regardless (a running request that still cannot
grow then gives up its own pages), so the worker never stalls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from kvfleet.services.worker.core.batch_policy import (
    Chunk,
    EngineView,
    SeqView,
    StepPlan,
    pages_needed,
)
from kvfleet.services.worker.core.step_cost import UNIT_STEP_COST, ModelStepCost

CLASS_WEIGHTS = (4.0, 1.0, 0.25)
"""Ratio multipliers of the priority classes (high, normal, low)."""


def budget_level(used: int, base: int) -> int:
    """The level of a request that has used ``used`` iterations with first budget ``base``."""
    level = 0
    end = base
    while used >= end:
        level += 1
        end += base << level
    return level


def budget_end(level: int, base: int) -> int:
    """Iterations used by the end of level ``level``'s budget: ``base (2^(level+1) - 1)``."""
    return base * ((2 << level) - 1)


@dataclass(frozen=True, slots=True)
class Ranked:
    """One request with everything its priority is made of."""

    seq: SeqView
    level: int
    isolated_s: float
    remaining_s: float
    ratio: float
    urgent: bool
    deadline_s: float

    @property
    def key(self) -> tuple[float, ...]:
        if self.urgent:
            return (0.0, self.deadline_s, self.seq.arrival_s)
        return (1.0, float(self.level), -self.ratio, self.seq.arrival_s)

    @property
    def weight(self) -> float:
        """How much one second of delay to this request counts (normalised, by urgency)."""
        return max(self.ratio, 1.0) / self.isolated_s


class DoublingBudgetPolicy:
    """See the module docstring. ``recheck_steps`` tells the simulator how many decode steps
    a plan may be repeated while requests wait or are paused (the plan's ``repeat_steps``)."""

    name = "doubling-budget"

    def __init__(
        self,
        min_budget: int = 16,
        default_budget: int = 128,
        starvation_ratio: float = 8.0,
        urgent_steps: float = 2.0,
        chunked_prefill: bool = True,
        recheck_steps: int = 4,
    ) -> None:
        if min_budget < 1 or default_budget < 1:
            raise ValueError("budgets must be >= 1 iteration")
        if starvation_ratio <= 1.0:
            raise ValueError("starvation_ratio must be > 1")
        self.min_budget = min_budget
        self.default_budget = default_budget
        self.starvation_ratio = starvation_ratio
        self.urgent_steps = urgent_steps
        self.chunked_prefill = chunked_prefill
        self.recheck_steps = max(1, recheck_steps)

    # ----- priorities -----
    def base_budget(self, seq: SeqView) -> int:
        pred = seq.predicted_output_tokens
        return max(self.min_budget, pred if pred is not None and pred > 0 else self.default_budget)

    def rank(self, seq: SeqView, cost: ModelStepCost, now_s: float, step_s: float) -> Ranked:
        base = self.base_budget(seq)
        used = seq.num_output_tokens
        level = budget_level(used, base)
        total = min(budget_end(level, base), max(seq.max_tokens, used + 1))
        isolated = max(cost.isolated_s(seq.num_prompt_tokens, total), 1e-9)
        if used == 0:
            left = seq.num_tokens - seq.num_computed_tokens
            remaining = cost.prefill_s(left, seq.num_computed_tokens) + cost.decode_run_s(
                seq.num_tokens + 1, total - 1)
        else:
            remaining = cost.decode_run_s(seq.num_tokens, total - used)
            left = seq.num_tokens - 1 - seq.num_computed_tokens  # to recompute after eviction
            if left > 0:
                remaining += cost.prefill_s(left, seq.num_computed_tokens)
        age = max(now_s - seq.arrival_s, 0.0)
        weight = CLASS_WEIGHTS[min(max(seq.priority, 0), len(CLASS_WEIGHTS) - 1)]
        ratio = (age + remaining) / isolated * weight
        deadline = _deadline(seq)
        overdue = ratio >= self.starvation_ratio
        overdue_at = seq.arrival_s + self.starvation_ratio * isolated
        urgent = overdue or (deadline is not None and deadline - now_s <= self.urgent_steps * step_s)
        if deadline is None:
            due = overdue_at
        else:
            due = min(deadline, overdue_at) if overdue else deadline
        return Ranked(seq, level, isolated, remaining, ratio, urgent, due)

    def ranked(self, view: EngineView, now_s: float) -> list[Ranked]:
        costs = view.step_costs
        step_s = _merged_step_s(view.running, costs)
        out = [
            self.rank(s, costs.get(s.model, UNIT_STEP_COST), now_s, step_s)
            for s in (*view.running, *view.waiting)
        ]
        out.sort(key=lambda r: r.key)
        return out

    # ----- the plan -----
    def plan(self, view: EngineView, now_s: float) -> StepPlan:
        order = self.ranked(view, now_s)
        if not order:
            return StepPlan(())
        models = self.step_models(order, view)
        plan = self._walk(order, view, models)
        if not plan.chunks and not plan.preempt:  # the chosen models could not move: any may
            plan = self._walk(order, view, None)
        if not plan.chunks and not plan.preempt:  # nothing fits without losing more work
            plan = self._walk(order, view, None, thrifty=False)
        if plan.chunks and (view.waiting or plan.preempt or len(plan.chunks) != len(view.running)):
            # Priorities move with time while requests wait or are paused: re-plan soon.
            plan = replace(plan, repeat_steps=self.recheck_steps)
        return plan

    def step_models(self, order: list[Ranked], view: EngineView) -> set[str]:
        """The models this step runs: every model with an urgent request; otherwise the one
        whose step buys the most normalised progress per second (least ``C / W``, ``C`` its
        step time, ``W`` its requests' weights). Another model shares the step only when the
        step overhead it saves its own requests outweighs the delay it adds to the others."""
        stats = _model_stats(order, view)
        chosen = {m for m, st in stats.items() if st.urgent}
        if not chosen:
            chosen = {min(stats, key=lambda m: (stats[m].cost_per_weight, m))}
        weight = sum(stats[m].weight for m in chosen)
        for m in sorted(stats, key=lambda m: (stats[m].cost_per_weight, m)):
            if m in chosen:
                continue
            st = stats[m]
            saved = st.weight * st.overhead_s
            if weight * (st.step_s - st.overhead_s) < saved:
                chosen.add(m)
                weight += st.weight
        return chosen

    def _walk(self, order: list[Ranked], view: EngineView, models: set[str] | None,
              thrifty: bool = True) -> StepPlan:
        """Admit requests of ``models`` (None: any) in priority order while the token budget,
        the sequence cap and the pages allow, evicting lower-priority holders for pages.
        ``thrifty``: evict only requests with no more computed tokens than the one that needs
        the pages will have, and let a running request that cannot grow wait with its KV."""
        budget = view.token_budget
        free = view.num_free_pages
        chunks: list[Chunk] = []
        evicted: list[str] = []
        gone: set[str] = set()
        for i, r in enumerate(order):
            s = r.seq
            if s.seq_id in gone or (models is not None and s.model not in models):
                continue
            if budget <= 0 or len(chunks) >= view.max_num_seqs:
                break
            n = s.num_uncomputed_tokens
            if n <= 0:
                continue
            if n > budget:
                if not self.chunked_prefill and s.num_pages == 0:
                    continue
                n = budget
            need = pages_needed(s, n)
            if need > free:
                cap = s.num_computed_tokens + n if thrifty else None
                free += self._evict(order, i, need - free, gone, evicted, cap)
            if need > free:
                if s.num_pages > 0 and not thrifty:
                    # It cannot grow: give its pages to the requests ahead of it.
                    gone.add(s.seq_id)
                    evicted.append(s.seq_id)
                    free += s.num_pages
                continue
            chunks.append(Chunk(s.seq_id, n))
            budget -= n
            free -= need
        return StepPlan(tuple(chunks), tuple(evicted))

    @staticmethod
    def _evict(
        order: list[Ranked], pos: int, want: int, gone: set[str], evicted: list[str],
        max_computed: int | None = None,
    ) -> int:
        """Free at least ``want`` pages from requests ranked after ``pos`` (lowest first), or
        evict nothing when even all of them would not be enough. With ``max_computed``, only
        requests with at most that many computed tokens are evicted."""
        victims: list[SeqView] = []
        got = 0
        for r in reversed(order[pos + 1:]):
            if got >= want:
                break
            s = r.seq
            if max_computed is not None and s.num_computed_tokens > max_computed:
                continue
            if s.num_pages > 0 and s.seq_id not in gone:
                victims.append(s)
                got += s.num_pages
        if got < want:
            return 0
        for s in victims:
            gone.add(s.seq_id)
            evicted.append(s.seq_id)
        return got



def _deadline(seq: SeqView) -> float | None:
    """When the request's next token is due by its SLO (None without one)."""
    if seq.num_output_tokens == 0:
        return seq.arrival_s + seq.ttft_slo_s if seq.ttft_slo_s is not None else None
    if seq.tpot_slo_s is None:
        return None
    origin = seq.first_token_s
    if origin is None:
        origin = seq.arrival_s + (seq.ttft_slo_s or 0.0)
    return origin + seq.num_output_tokens * seq.tpot_slo_s


def _merged_step_s(running: tuple[SeqView, ...], costs: Mapping[str, ModelStepCost]) -> float:
    """One decode step of every running request (each model's step, one after another)."""
    per_model: dict[str, list[int]] = {}
    for s in running:
        acc = per_model.setdefault(s.model, [0, 0])
        acc[0] += 1
        acc[1] += s.num_tokens
    return sum(costs.get(m, UNIT_STEP_COST).decode_s(b, ctx) for m, (b, ctx) in per_model.items())


@dataclass(slots=True)
class _ModelStats:
    """One model's candidates for the next step: their step time and weight."""

    cost: ModelStepCost
    budget: int
    max_seqs: int
    tokens: float = 0.0
    pairs: float = 0.0
    kv: float = 0.0
    seqs: int = 0
    weight: float = 0.0
    urgent: bool = False

    def add(self, r: Ranked) -> None:
        s = r.seq
        n = min(s.num_uncomputed_tokens, self.budget)
        if n <= 0 or self.seqs >= self.max_seqs:
            return
        self.budget -= n
        c = s.num_computed_tokens
        self.tokens += n
        self.pairs += n * c + n * (n + 1) / 2
        self.kv += c + n
        self.seqs += 1
        self.weight += r.weight
        self.urgent = self.urgent or r.urgent

    @property
    def step_s(self) -> float:
        return self.cost.step_s(self.tokens, self.pairs, self.kv, self.seqs)

    @property
    def overhead_s(self) -> float:
        return self.cost.overhead_s

    @property
    def cost_per_weight(self) -> float:
        return self.step_s / self.weight if self.weight > 0 else float("inf")


def _model_stats(order: list[Ranked], view: EngineView) -> dict[str, _ModelStats]:
    out: dict[str, _ModelStats] = {}
    for r in order:
        st = out.get(r.seq.model)
        if st is None:
            cost = view.step_costs.get(r.seq.model, UNIT_STEP_COST)
            st = out[r.seq.model] = _ModelStats(cost, view.token_budget, view.max_num_seqs)
        st.add(r)
    return out
