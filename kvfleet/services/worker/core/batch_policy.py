"""Which sequences enter the next engine step: a pure policy core.

The engine describes its queues as an ``EngineView`` and asks a ``BatchPolicy`` for a
``StepPlan``. The policy sees counts (tokens, pages), never tensors, and reads no clock: the
caller passes ``now_s``. The simulator calls the same policies with a virtual clock.

Conventions: a sequence has ``num_tokens`` known tokens (prompt plus generated, or prompt plus
generated after a recompute preemption) of which the first ``num_computed_tokens`` have their
KV written. A step feeds ``n`` uncomputed tokens of a sequence; afterwards it holds KV for
``num_computed_tokens + n`` tokens, so it needs ``pages_needed(seq, n)`` more pages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from kvfleet.services.worker.core.step_cost import ModelStepCost


@dataclass(frozen=True, slots=True)
class SeqView:
    """What a batch policy knows of one sequence."""

    seq_id: str
    model: str
    arrival_s: float
    num_prompt_tokens: int
    num_tokens: int
    num_computed_tokens: int
    num_pages: int
    tokens_per_page: int
    max_tokens: int
    num_output_tokens: int = 0
    predicted_output_tokens: int | None = None
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    priority: int = 1  # rank of its priority class: 0 high, 1 normal, 2 low
    first_token_s: float | None = None  # when its first output token came (None: not yet/unknown)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens


@dataclass(frozen=True, slots=True)
class EngineView:
    """The engine's queues at the start of a step.

    ``running`` holds sequences that own pages, oldest first; ``waiting`` holds sequences
    with no pages (new or preempted), in queue order. A running sequence a plan leaves out
    keeps its pages and its KV: it is paused, not preempted. ``step_costs`` gives each model's
    step time as coefficients (measured live, the cost model's in the simulator), for
    policies that weigh one model's steps against another's.
    """

    running: tuple[SeqView, ...]
    waiting: tuple[SeqView, ...]
    num_free_pages: int
    token_budget: int
    max_num_seqs: int
    step_costs: Mapping[str, ModelStepCost] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Feed ``num_tokens`` uncomputed tokens of ``seq_id`` in this step."""

    seq_id: str
    num_tokens: int


@dataclass(frozen=True, slots=True)
class StepPlan:
    """The policy's answer: chunks to run and running sequences to preempt (by recompute:
    their pages are freed). Running sequences in neither list are paused with their KV.

    The plan is feasible: the pages the chunks need fit in the free pages plus the pages of
    the preempted sequences, and the chunk tokens fit the token budget.

    Three optional hints tell the caller what the plan does not show:

    - ``num_reserved_pages``: free pages (after this step's allocations) the policy holds in
      reserve for sequences it admitted; the worker reports them in its occupancy so the
      scheduler does not count them as room.
    - ``repeat_steps``: when the plan only continues every running sequence by one decode
      token, how many such steps in a row (this one included) the policy would plan the same
      while nothing else happens (no arrival, finish or preemption); ``None``: no bound.
    - ``replan_at_s``: the plan may change at this time even if nothing happens (a rule
      that depends on the clock); ``None``: only an event changes it.

    The simulator runs unchanged decode steps as one event and stops such a run at either
    bound, so a policy with time- or count-based rules is simulated step-exactly.
    """

    chunks: tuple[Chunk, ...]
    preempt: tuple[str, ...] = ()
    num_reserved_pages: int = 0
    repeat_steps: int | None = None
    replan_at_s: float | None = None

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


def pages_needed(seq: SeqView, num_new_tokens: int) -> int:
    """Pages ``seq`` must gain to hold KV for ``num_new_tokens`` more tokens."""
    total = seq.num_computed_tokens + num_new_tokens
    return max(0, -(-total // seq.tokens_per_page) - seq.num_pages)


class BatchPolicy(Protocol):
    name: str

    def plan(self, view: EngineView, now_s: float) -> StepPlan: ...


class FcfsBatchPolicy:
    """The vLLM baseline: running sequences first, then waiting ones in arrival order.

    Running sequences continue (a decode token, or the next prefill chunk). When pages run
    out, the most recently arrived running sequence is preempted by recompute, repeatedly,
    until the older ones fit. Waiting sequences are admitted in order while the token budget,
    the sequence cap and the free pages allow; a long prompt is split into chunks (chunked
    prefill). Admission stops at the first waiting sequence that does not fit, so a large
    request is never starved by smaller ones behind it.
    """

    name = "fcfs"

    def __init__(self, chunked_prefill: bool = True) -> None:
        self.chunked_prefill = chunked_prefill

    def plan(self, view: EngineView, now_s: float) -> StepPlan:
        budget = view.token_budget
        free = view.num_free_pages
        chunks: list[Chunk] = []
        preempted: list[str] = []
        running = list(view.running)
        i = 0
        while i < len(running):
            seq = running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            if n <= 0:
                i += 1
                continue
            need = pages_needed(seq, n)
            while need > free and len(running) - 1 > i:
                victim = running.pop()
                preempted.append(victim.seq_id)
                free += victim.num_pages
            if need > free:
                # Even alone it does not fit: preempt it too and stop.
                running.pop(i)
                preempted.append(seq.seq_id)
                free += seq.num_pages
                break
            chunks.append(Chunk(seq.seq_id, n))
            budget -= n
            free -= need
            i += 1
        if preempted:
            # Admission resumes next step, with the pages the preemption freed.
            return StepPlan(tuple(chunks), tuple(preempted), repeat_steps=1)
        num_seqs = len(chunks)
        for seq in view.waiting:
            if budget <= 0 or num_seqs >= view.max_num_seqs:
                break
            n = seq.num_uncomputed_tokens
            if n > budget:
                if not self.chunked_prefill:
                    break
                n = budget
            need = pages_needed(seq, n)
            if need > free:
                break
            chunks.append(Chunk(seq.seq_id, n))
            budget -= n
            free -= need
            num_seqs += 1
        return StepPlan(tuple(chunks), ())
