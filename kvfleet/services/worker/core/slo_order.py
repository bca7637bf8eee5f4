"""SLO-aware ordering of sequences: who is admitted first, and who is preempted first. Pure.

Queued prompts (the PT queue) are ordered by:

1. whether they held KV before (a request preempted mid-output comes back first: its first
   token is out and the rest of its output waits on it);
2. priority class;
3. TTFT slack class: *urgent* (slack below ``urgent_fraction`` of its TTFT target, earliest
   deadline first), *relaxed* (shortest predicted job first), *late* (missed its TTFT
   target; demoted behind the rest, oldest first, so it does not make others late too);
   a request late by more than ``starvation_factor`` times its TTFT target comes first of all,
   so a demoted request is never starved;
4. arrival.

Running sequences are ranked by the KV they hold (more first: they release more memory when
done), then by TPOT slack (least first); the lowest ranked is preempted first.

The classes depend on the clock, so ``next_change_s`` says when the order of a queue can
next change with nothing else happening (the simulator re-plans then).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from kvfleet.services.worker.core.batch_policy import SeqView

INF = math.inf

STARVING, URGENT, RELAXED, LATE = range(4)


@dataclass(frozen=True, slots=True)
class OrderSettings:
    urgent_fraction: float = 0.5
    demote_late: bool = True
    starvation_factor: float = 4.0


def predicted_remaining(seq: SeqView, fallback_tokens: int) -> int:
    """Output tokens the sequence is predicted still to generate (at least 1)."""
    predicted = seq.predicted_output_tokens
    if predicted is None:
        predicted = min(seq.max_tokens, fallback_tokens)
    return max(1, min(predicted, seq.max_tokens) - seq.num_output_tokens)


def ttft_deadline(seq: SeqView) -> float:
    return seq.arrival_s + seq.ttft_slo_s if seq.ttft_slo_s is not None else INF


def token_deadline(seq: SeqView) -> float:
    """When its next token is due for the request to meet both its TTFT and TPOT targets."""
    if seq.ttft_slo_s is None:
        return INF
    return seq.arrival_s + seq.ttft_slo_s + (seq.tpot_slo_s or 0.0) * seq.num_output_tokens


def slack_class(seq: SeqView, now_s: float, s: OrderSettings) -> int:
    if seq.ttft_slo_s is None:
        return RELAXED
    slack = ttft_deadline(seq) - now_s
    if slack >= s.urgent_fraction * seq.ttft_slo_s:
        return RELAXED
    if slack >= 0.0 or not s.demote_late:
        return URGENT
    if -slack >= s.starvation_factor * seq.ttft_slo_s:
        return STARVING
    return LATE


def queue_key(seq: SeqView, now_s: float, s: OrderSettings, fallback_tokens: int) -> tuple:
    """Sort key of a queued prompt (ascending: first admitted first)."""
    cls = slack_class(seq, now_s, s)
    if cls == URGENT:
        within: float = ttft_deadline(seq)
    elif cls == RELAXED:
        within = seq.num_uncomputed_tokens + predicted_remaining(seq, fallback_tokens)
    else:
        within = seq.arrival_s
    held_before = 0 if seq.num_output_tokens > 0 else 1
    return (held_before, seq.priority, cls, within, seq.arrival_s, seq.seq_id)


def running_key(seq: SeqView, num_pages: int, now_s: float) -> tuple:
    """Rank of a running sequence (ascending: kept first, preempted last)."""
    return (seq.priority, -num_pages, token_deadline(seq) - now_s, seq.arrival_s, seq.seq_id)


def next_change_s(queue: Iterable[SeqView], now_s: float, s: OrderSettings) -> float | None:
    """The earliest time, from ``now_s`` on, at which a queued prompt may change slack
    class (a bound equal to ``now_s`` is returned: the class flips just after it)."""
    best = INF
    for seq in queue:
        if seq.ttft_slo_s is None:
            continue
        deadline = ttft_deadline(seq)
        bounds = [deadline - s.urgent_fraction * seq.ttft_slo_s]
        if s.demote_late:
            bounds += [deadline, deadline + s.starvation_factor * seq.ttft_slo_s]
        for t in bounds:
            if now_s <= t < best:
                best = t
    return None if best == INF else best
