"""How long one engine step of a model takes, as plain coefficients. Pure.

A step feeds ``num_tokens`` tokens of a model; its time is the larger of a compute term
(linear layers per token, attention per (query, context) pair) and a memory term (the weights
once, plus every KV token attention reads), plus a fixed and a per-sequence overhead. This is
the simulator's roofline (``kvfleet.sim.cost_model.CostModel.coefficients()`` gives these
numbers for a GPU and model preset); a live engine fills the same fields from the step times
it measures. Policies that need to know what a step costs (the doubling-budget batch policy,
the latency-aware placement) take them as ``ModelStepCost`` values, so they stay pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelStepCost:
    """Step time of one model on one worker:
    ``max(s_per_token * tokens + s_per_attn_pair * pairs, s_weights + s_per_kv_token * kv)
    + overhead_s + overhead_s_per_seq * seqs``."""

    s_per_token: float = 0.0
    s_per_attn_pair: float = 0.0
    s_weights: float = 0.0
    s_per_kv_token: float = 0.0
    overhead_s: float = 0.0
    overhead_s_per_seq: float = 0.0

    def step_s(
        self, num_tokens: float, attn_pairs: float, kv_tokens: float, num_seqs: float
    ) -> float:
        compute = self.s_per_token * num_tokens + self.s_per_attn_pair * attn_pairs
        memory = self.s_weights + self.s_per_kv_token * kv_tokens
        top = compute if compute > memory else memory
        return top + self.overhead_s + self.overhead_s_per_seq * num_seqs

    def prefill_s(self, num_tokens: int, context_tokens: int = 0) -> float:
        """One step feeding ``num_tokens`` prompt tokens after ``context_tokens`` cached ones."""
        if num_tokens <= 0:
            return 0.0
        pairs = num_tokens * context_tokens + num_tokens * (num_tokens + 1) / 2
        return self.step_s(num_tokens, pairs, context_tokens + num_tokens, 1)

    def decode_s(self, batch: float, context_tokens: float) -> float:
        """One decode step of ``batch`` sequences holding ``context_tokens`` tokens in all."""
        return self.step_s(batch, context_tokens, context_tokens, batch)

    def decode_run_s(self, context_tokens: int, steps: int) -> float:
        """``steps`` decode steps of one sequence starting at ``context_tokens`` (closed form:
        both roofline terms grow linearly with the step index)."""
        if steps <= 0:
            return 0.0
        c0 = self.s_per_token + self.s_per_attn_pair * context_tokens
        c1 = self.s_per_attn_pair
        m0 = self.s_weights + self.s_per_kv_token * context_tokens
        m1 = self.s_per_kv_token
        return _sum_max_lines(c0, c1, m0, m1, steps) + steps * (
            self.overhead_s + self.overhead_s_per_seq
        )

    def isolated_s(self, prompt_tokens: int, output_tokens: int) -> float:
        """Latency of a request alone on an idle worker: its prompt in one step (which gives
        the first token), then one decode step per further output token."""
        first = self.prefill_s(max(prompt_tokens, 1))
        return first + self.decode_run_s(max(prompt_tokens, 1) + 1, max(output_tokens - 1, 0))

    def per_token_s(self, context_tokens: int = 0) -> float:
        """One decode step of a lone sequence (its time per output token in isolation)."""
        return self.decode_s(1, context_tokens)


UNIT_STEP_COST = ModelStepCost(s_weights=1.0)
"""Every step costs one unit: what a policy assumes for a model it has no figures for."""


def _lin_sum(a: float, b: float, n: int) -> float:
    """sum_{i<n} (a + b i)."""
    return n * a + b * n * (n - 1) / 2.0


def _sum_max_lines(c0: float, c1: float, m0: float, m1: float, n: int) -> float:
    """sum_{i<n} max(c0 + c1 i, m0 + m1 i)."""
    if c0 > m0 or (c0 == m0 and c1 >= m1):
        a0, a1, b0, b1 = c0, c1, m0, m1
    else:
        a0, a1, b0, b1 = m0, m1, c0, c1
    split = n if a1 >= b1 else min(n, math.ceil((a0 - b0) / (b1 - a1)))
    return _lin_sum(a0, a1, split) + _lin_sum(b0 + b1 * split, b1, n - split)
