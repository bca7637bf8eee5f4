"""EcoServe: SLO-aware batching that fills each step's compute and KV memory together
(EconoServe, Shen and Sen, arXiv 2411.06364). Pure.

Each step is planned as:

1. **Two queues.** Sequences ready to decode form the generation queue (GT); prompts form
   the prompt queue (PT): prefills in progress (they hold KV) and waiting requests.
2. **Length-aware generation batches.** GTs are grouped by predicted remaining length
   (log-spaced buckets: the same bucket is "the same length"), so a group finishes together
   and frees its KV at once. Every GT decodes while the step's sequence cap and token budget
   allow; when they do not, whole groups run, highest ranked first.
3. **Exact KV reservation.** A request is admitted only with pages reserved for its prompt
   plus its predicted output (``kv_reservation``), so it never waits for memory mid-decode.
   A request that outruns its prediction grows its reservation by a chunk; when the
   unreserved pages cannot cover that, the ordering picks whom to preempt (by recompute)
   among the requests that outran their predictions, itself included, so a request within
   its prediction never loses its KV.
4. **Compute filling.** What the GT batch leaves of the token budget goes to the PT queue:
   prefills in progress first, then admissions, with chunked prefill.
5. **KV lending.** A prompt that cannot reserve pages of its own, and is prefilled whole in
   this step, may borrow promised but unwritten pages of decoding requests that will not
   reach them before the borrower is predicted to finish (with a margin). The borrower is
   preempted, never the lender, when the lender needs them or when the borrower outruns its
   loan without room of its own.
6. **Ordering** (``slo_order``): queued requests that held KV first, then SLO slack, then
   length.

The plan tells its caller the pages it holds in reserve, how many identical decode steps it
stays valid for (until a sequence reaches the end of its reservation), and when its order
can next change with time (``StepPlan``).

The ``orca`` baseline is this policy reserving ``max_tokens`` at admission, in arrival
order, without lending and without chunked prefill (``EcoServeSettings.orca()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from kvfleet.services.worker.core.batch_policy import (
    Chunk,
    EngineView,
    SeqView,
    StepPlan,
    pages_needed,
)
from kvfleet.services.worker.core.kv_reservation import ReservationLedger
from kvfleet.services.worker.core.slo_order import (
    OrderSettings,
    next_change_s,
    predicted_remaining,
    queue_key,
    running_key,
)
from kvfleet.services.worker.core.step_time import StepTimeModel


@dataclass(frozen=True, slots=True)
class EcoServeSettings:
    """How the policy reserves, lends and orders."""

    reserve: Literal["predicted", "max_tokens"] = "predicted"
    """What a reservation covers: the predicted output, or the whole ``max_tokens``."""
    lending: bool = True
    """Lend promised but unwritten pages to requests predicted to finish first."""
    order: Literal["slo", "fcfs"] = "slo"
    """Queue order: held-KV / SLO slack / length (``slo_order``), or arrival."""
    chunked_prefill: bool = True
    """Split prompts to fill the token budget; without it a prompt runs whole (one longer
    than the whole budget runs as the only prompt of its step)."""
    growth_fraction: float = 0.25
    """An outrun reservation grows by this share of the predicted output..."""
    min_growth_tokens: int = 16
    """...and by at least this many tokens."""
    lend_margin: float = 1.25
    """A borrower must be predicted to finish within 1/margin of the steps its lender needs
    before it reaches the lent pages."""
    fallback_output_tokens: int = 256
    """Predicted output of a request that carries no prediction (capped by max_tokens)."""
    length_bucket_ratio: float = 1.25
    """GTs whose predicted remaining lengths are within this ratio share a group."""
    slo_budget: bool = True
    """Feed only as many prompt tokens as keep the step within the generation batch's TPOT
    slack (the step time learned from this worker's own steps)."""
    min_budget_fraction: float = 0.125
    """...but always at least this share of the token budget (prompts keep moving)."""
    urgent_fraction: float = 0.5
    demote_late: bool = True
    starvation_factor: float = 4.0

    @classmethod
    def orca(cls) -> EcoServeSettings:
        return cls(reserve="max_tokens", lending=False, order="fcfs", chunked_prefill=False,
                   slo_budget=False)

    @property
    def order_settings(self) -> OrderSettings:
        return OrderSettings(self.urgent_fraction, self.demote_late, self.starvation_factor)


class EcoServeBatchPolicy:
    """See the module docstring. Keeps a reservation ledger across plans (one object per
    worker)."""

    name = "ecoserve"

    def __init__(self, settings: EcoServeSettings | None = None) -> None:
        self.settings = settings or EcoServeSettings()
        self.ledger = ReservationLedger()
        self._order = self.settings.order_settings
        self.step_time = StepTimeModel()
        self._first_token_s: dict[str, float] = {}  # when each sequence was first seen decoding
        # diagnostics
        self.num_growths = 0
        self.num_loans = 0
        self.num_loan_recalls = 0  # borrowers preempted for their lender or for overrunning

    # ------------------------------------------------------------------ sizes
    def reservation_pages(self, seq: SeqView) -> int:
        """Pages reserved at admission: the tokens known plus the predicted rest (or up to
        max_tokens), less the last token, whose KV is never written."""
        cap = seq.num_prompt_tokens + seq.max_tokens - 1
        if self.settings.reserve == "max_tokens":
            tokens = cap
        else:
            rest = predicted_remaining(seq, self.settings.fallback_output_tokens)
            tokens = min(cap, seq.num_tokens + rest - 1)
        return max(1, -(-max(tokens, seq.num_tokens) // seq.tokens_per_page))

    def _growth_pages(self, seq: SeqView, need_pages: int) -> int:
        """Pages a reservation grows to when ``seq`` needs ``need_pages`` in all."""
        predicted = seq.predicted_output_tokens or self.settings.fallback_output_tokens
        chunk = max(self.settings.min_growth_tokens,
                    math.ceil(self.settings.growth_fraction * predicted))
        cap_tokens = seq.num_prompt_tokens + seq.max_tokens - 1
        cap_pages = max(need_pages, -(-cap_tokens // seq.tokens_per_page))
        return min(cap_pages, need_pages + -(-chunk // seq.tokens_per_page))

    def _adopt(self, seq: SeqView, free: int, held: dict[str, int]) -> None:
        """A running sequence the ledger does not know (migrated in): reserve what the
        unreserved pages allow of its predicted need."""
        want = max(seq.num_pages, self.reservation_pages(seq))
        room = max(0, self.ledger.unreserved(free, held))
        self.ledger.reserve(seq.seq_id, max(seq.num_pages, min(want, seq.num_pages + room)))

    # ------------------------------------------------------------------ plan
    def plan(self, view: EngineView, now_s: float) -> StepPlan:
        st = self.settings
        ledger = self.ledger
        everyone = {s.seq_id: s for s in (*view.running, *view.waiting)}
        self.step_time.observe(now_s, {k: s.num_computed_tokens for k, s in everyone.items()})
        for k in [k for k in self._first_token_s if k not in everyone]:
            del self._first_token_s[k]  # gone for good (finished or moved away)
        held = {s.seq_id: s.num_pages for s in view.running}
        ledger.sync(held)
        free = view.num_free_pages
        for s in view.running:
            if s.seq_id not in ledger:
                self._adopt(s, free, held)
        rank = {s.seq_id: running_key(s, s.num_pages, now_s) for s in view.running}
        by_id = {s.seq_id: s for s in view.running}
        gone: list[str] = []
        chunks: list[Chunk] = []

        def preempt(seq_id: str) -> None:
            nonlocal free, chunks
            if ledger.is_borrower(seq_id):
                self.num_loan_recalls += 1
            ledger.release(seq_id)
            free += held.pop(seq_id)
            gone.append(seq_id)
            chunks = [c for c in chunks if c.seq_id != seq_id]

        # 1-2. The GT batch (whole length groups when the caps bind), then prefills in
        # progress with what is left of the budget.
        budget = view.token_budget
        gts = [s for s in view.running if s.num_uncomputed_tokens == 1]
        batch = self._gt_batch(gts, min(view.max_num_seqs, budget), rank)
        todo: list[tuple[SeqView, int]] = [(s, 1) for s in batch]
        prompt_budget = self._fill_budget(budget - len(batch), batch, view.token_budget, now_s)
        budget_cut = prompt_budget < budget - len(batch)
        budget = prompt_budget
        for s in sorted((s for s in view.running if s.num_uncomputed_tokens > 1),
                        key=lambda s: rank[s.seq_id]):
            if budget <= 0:
                break
            n = min(s.num_uncomputed_tokens, budget)
            todo.append((s, n))
            budget -= n
        todo.sort(key=lambda item: rank[item[0].seq_id])

        # 3. Reservations: grow those that outran their prediction, or preempt.
        for s, n in todo:
            if s.seq_id not in held:
                continue
            need = -(-(s.num_computed_tokens + n) // s.tokens_per_page)
            entry = ledger.get(s.seq_id)
            assert entry is not None
            if need <= entry.pages:
                continue
            target = self._growth_pages(s, need)
            while True:
                room = ledger.unreserved(free, held)
                if room >= need - entry.pages:
                    ledger.grow(s.seq_id, min(target, entry.pages + room))
                    self.num_growths += 1
                    break
                # No room: the ordering picks the victim among the sequences that outran
                # their predictions (this one included), so a request within its prediction
                # never loses its KV. A borrower gives its loans back (its lenders are never
                # preempted for it).
                victims = [s.seq_id] + ([] if entry.loans else [
                    v for v in held if v != s.seq_id and (e := ledger.get(v)) is not None
                    and e.num_growths > 0 and e.own > 0])
                victim = max(victims, key=lambda v: rank[v])
                preempt(victim)
                if victim == s.seq_id:
                    break

        # Physical pages: a lender (or anyone) short of free pages recalls loans.
        for s, n in todo:
            if s.seq_id not in held:
                continue
            need = pages_needed(s, n)  # nothing allocated to it yet in this plan
            while need > free:
                lent = [b for b in ledger.borrowers_of(s.seq_id) if b in held]
                if not lent:
                    lent = [b for b in held if ledger.is_borrower(b) and b != s.seq_id]
                if not lent:
                    break
                # those that outran their predictions first (the others finish in time)
                preempt(max(lent, key=lambda b: (self._outran(by_id[b]), rank[b])))
            if s.seq_id not in held:  # recalled while making room for itself
                continue
            if need > free:  # cannot happen while the ledger holds; stay feasible anyway
                preempt(s.seq_id)
                continue
            free -= need
            held[s.seq_id] += need
            chunks.append(Chunk(s.seq_id, n))
        budget = min(
            view.token_budget - sum(c.num_tokens for c in chunks),
            prompt_budget - sum(c.num_tokens for c in chunks
                                if by_id[c.seq_id].num_uncomputed_tokens > 1))

        # 4-5. Admissions from the PT queue: own reservation, else a loan.
        waiting = list(view.waiting)
        if st.order == "slo":
            waiting.sort(key=lambda s: queue_key(s, now_s, self._order,
                                                 st.fallback_output_tokens))
        num_seqs = len(held)
        blocked = False
        admitted_all = True
        prompt_in_step = any(by_id[c.seq_id].num_uncomputed_tokens > 1 for c in chunks)
        for s in waiting:
            if budget <= 0 or num_seqs >= view.max_num_seqs:
                admitted_all = False
                break
            n = s.num_uncomputed_tokens
            if n > budget:
                if st.chunked_prefill:
                    n = budget
                elif prompt_in_step or n <= view.token_budget:
                    admitted_all = False
                    break
            pages = self.reservation_pages(s)
            need = pages_needed(s, n)
            # Unreserved pages first (none once a request ahead is blocked: it waits for
            # them), then loans for the rest.
            own = 0 if blocked else min(pages, max(0, ledger.unreserved(free, held)))
            # Only a prompt prefilled whole in this step borrows: from then on it decodes a
            # token every step, as its lenders do, so the loan's timing is exact.
            lend = st.lending and own < pages and n == s.num_uncomputed_tokens
            loans = self._loans(s, pages - own, held, by_id) if lend else {}
            if own + sum(loans.values()) < pages or need > free:
                admitted_all = False
                if not st.lending:
                    break
                blocked = True  # it keeps its place: only requests living on loans pass it
                continue
            ledger.reserve(s.seq_id, pages, loans)
            self.num_loans += bool(loans)
            free -= need
            held[s.seq_id] = need
            chunks.append(Chunk(s.seq_id, n))
            budget -= n
            num_seqs += 1
            prompt_in_step = True

        promised = ledger.promised(held)
        self.step_time.planned(now_s, {
            c.seq_id: (everyone[c.seq_id].num_computed_tokens, c.num_tokens) for c in chunks})
        return StepPlan(
            tuple(chunks),
            tuple(gone),
            num_reserved_pages=max(0, min(free, promised)),
            # After a preemption the next plan may readmit with the pages it freed; while the
            # TPOT slack cuts the prompt budget and a prompt waits, the cut moves every step.
            repeat_steps=1 if gone or (budget_cut and not admitted_all)
            else self._repeat_steps(chunks, by_id),
            replan_at_s=None if admitted_all or st.order != "slo"
            else next_change_s(view.waiting, now_s, self._order),
        )

    # ------------------------------------------------------------------ parts
    def _fill_budget(
        self, budget: int, batch: list[SeqView], token_budget: int, now_s: float
    ) -> int:
        """Prompt tokens this step may take: what the budget leaves after the generation
        batch, cut (with the SLO budget on) to what keeps the step within the batch's TPOT
        slack: a request meets its TPOT target while its k-th token after the first comes
        within k targets of its first token."""
        first = self._first_token_s
        for s in batch:
            first.setdefault(s.seq_id, now_s)
        if not self.settings.slo_budget or not batch:
            return budget
        slacks = [first[s.seq_id] + s.tpot_slo_s * s.num_output_tokens - now_s
                  for s in batch if s.tpot_slo_s is not None]
        if not slacks:
            return budget
        tokens = self.step_time.tokens_within(max(0.0, min(slacks)))
        if tokens is None:
            return budget
        floor = max(1, int(self.settings.min_budget_fraction * token_budget))
        return min(budget, max(floor, tokens - len(batch)))

    def _gt_batch(
        self, gts: list[SeqView], cap: int, rank: dict[str, tuple]
    ) -> list[SeqView]:
        if len(gts) <= cap:
            return gts
        ratio = math.log(self.settings.length_bucket_ratio)
        groups: dict[int, list[SeqView]] = {}
        for s in gts:
            rest = predicted_remaining(s, self.settings.fallback_output_tokens)
            groups.setdefault(int(math.log(rest) / ratio), []).append(s)
        ordered = sorted(groups.values(), key=lambda g: min(rank[s.seq_id] for s in g))
        batch: list[SeqView] = []
        for group in ordered:
            room = cap - len(batch)
            if len(group) <= room:
                batch.extend(group)
            elif not batch:  # a group larger than the cap runs split, highest ranked first
                batch.extend(sorted(group, key=lambda s: rank[s.seq_id])[:room])
        return batch

    def _loans(
        self, seq: SeqView, pages: int, held: dict[str, int], running: dict[str, SeqView]
    ) -> dict[str, int]:
        """Loans covering ``pages`` from decoding owners that will not reach the lent pages
        before ``seq`` (prefilled whole in this step) is predicted to finish, with the margin;
        the largest offers first; empty when they cannot cover it all."""
        steps = 1 + predicted_remaining(seq, self.settings.fallback_output_tokens)
        lead_tokens = math.ceil(steps * self.settings.lend_margin)
        offers: list[tuple[int, str, int]] = []
        for owner, h in held.items():
            o = running.get(owner)
            entry = self.ledger.get(owner)
            if o is None or entry is None or o.num_uncomputed_tokens != 1:
                continue
            # A new loan sits just below the pages already lent: the owner reaches it once
            # it has written everything below; it must not get there within the lead.
            safe = (o.num_computed_tokens + 1 + lead_tokens) // o.tokens_per_page + 1
            can = min(self.ledger.lendable(owner, h), entry.pages - entry.lent - safe)
            if can > 0:
                offers.append((-can, owner, can))
        loans: dict[str, int] = {}
        left = pages
        for _, owner, can in sorted(offers):
            if left <= 0:
                break
            take = min(can, left)
            loans[owner] = take
            left -= take
        return loans if left <= 0 else {}

    def _outran(self, seq: SeqView) -> bool:
        predicted = seq.predicted_output_tokens or self.settings.fallback_output_tokens
        return seq.num_output_tokens >= predicted

    def _repeat_steps(self, chunks: list[Chunk], running: dict[str, SeqView]) -> int | None:
        """Identical decode steps until a sequence reaches the end of its reservation."""
        bound: int | None = None
        for c in chunks:
            s = running.get(c.seq_id)
            entry = self.ledger.get(c.seq_id)
            if s is None or entry is None or c.num_tokens != 1 or s.num_uncomputed_tokens != 1:
                continue
            room = entry.pages * s.tokens_per_page - s.num_computed_tokens
            bound = room if bound is None else min(bound, room)
        return None if bound is None else max(1, bound)


class OrcaBatchPolicy(EcoServeBatchPolicy):
    """The Orca baseline: a request is admitted only with KV reserved for its whole
    ``max_tokens`` (so it is never preempted), in arrival order, prompts fed whole."""

    name = "orca"

    def __init__(self) -> None:
        super().__init__(EcoServeSettings.orca())
