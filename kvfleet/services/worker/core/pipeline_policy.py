"""Decisions of a pipeline group's workers: micro-batches, KV exchange and request homes.
Pure: the engine and the simulator call the same functions.

- ``split_micro_batches``: a step's chunks split into micro-batches balanced by tokens, so
  that every stage has work while the next one runs the previous micro-batch. Only steps with
  enough tokens are split: a micro-batch re-reads the stage's weights, which a small decode
  batch cannot pay for.
- ``kv_move``: when a group forms or dissolves, each request's KV for layers that change
  hands is either sent to the stage that keeps them or recomputed, whichever is cheaper.
- ``assign_homes``: when a group dissolves, which member each request continues on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SEND = "send"
RECOMPUTE = "recompute"


def split_micro_batches(
    chunk_tokens: Sequence[int], num_stages: int, min_tokens: int
) -> tuple[tuple[int, ...], ...]:
    """Indices of ``chunk_tokens`` per micro-batch, each index once, in index order within a
    micro-batch. At most ``num_stages`` micro-batches of at least ``min_tokens`` tokens each
    (as near as whole chunks allow), balanced by tokens (largest chunk to the lightest
    micro-batch)."""
    n = len(chunk_tokens)
    if n == 0:
        return ()
    total = sum(chunk_tokens)
    count = max(1, min(num_stages, n, total // max(1, min_tokens)))
    if count == 1:
        return (tuple(range(n)),)
    loads = [0] * count
    parts: list[list[int]] = [[] for _ in range(count)]
    for i in sorted(range(n), key=lambda i: (-chunk_tokens[i], i)):
        j = min(range(count), key=lambda j: (loads[j], j))
        loads[j] += chunk_tokens[i]
        parts[j].append(i)
    return tuple(tuple(sorted(p)) for p in parts if p)


@dataclass(frozen=True, slots=True)
class ExchangeCosts:
    """What moving KV and recomputing it cost on this fleet."""

    link_bytes_per_s: float  # between the workers of a group
    link_latency_s: float = 0.0
    prefill_tokens_per_s: float = 1.0  # of the pipeline that would recompute


def kv_move(num_tokens: int, kv_bytes: int, costs: ExchangeCosts) -> str:
    """``SEND`` the KV (``kv_bytes`` over the link) or ``RECOMPUTE`` the ``num_tokens``
    tokens, whichever takes less time. Nothing to move is a send (of nothing)."""
    if num_tokens <= 0 or kv_bytes <= 0:
        return SEND
    send_s = costs.link_latency_s + kv_bytes / max(costs.link_bytes_per_s, 1e-9)
    recompute_s = num_tokens / max(costs.prefill_tokens_per_s, 1e-9)
    return SEND if send_s <= recompute_s else RECOMPUTE


def assign_homes(
    pages: Mapping[str, int], room: Mapping[str, int]
) -> tuple[dict[str, str], set[str]]:
    """Each request's home when a group dissolves: ``pages`` is what each request needs with
    the whole model held, ``room`` the pages each member will have. Largest requests first,
    each to the member with the most room left. Returns (request -> member, the requests no
    member had room for: they go, without KV, to the member with the most room and wait to
    be recomputed there)."""
    left = dict(room)
    homes: dict[str, str] = {}
    overflow: set[str] = set()
    members = sorted(left)
    if not members:
        return homes, set(pages)
    for rid in sorted(pages, key=lambda r: (-pages[r], r)):
        best = max(members, key=lambda m: (left[m], -members.index(m)))
        if pages[rid] > left[best]:
            overflow.add(rid)
        else:
            left[best] -= pages[rid]
        homes[rid] = best
    return homes, overflow
