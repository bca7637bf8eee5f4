"""Decisions of a pipeline group's workers: micro-batches, KV exchange and request homes.
Pure: the engine and the simulator call the same functions.

- ``lane_limits``: a group keeps one micro-batch in flight per stage (a *lane*): while stage
  k runs one lane's micro-batch, stage k-1 runs the next lane's, so no stage waits for a step
  to come back round (KunServe's look-ahead batches). Each lane is planned over the requests
  not in flight with a replica's token budget (each stage runs a share of the layers for
  every lane, so a round costs a stage about one replica's step) and an equal share of the
  requests (prefill and decode spread over the lanes).
- ``kv_move``: when a group forms or dissolves, each request's KV for layers that change
  hands is either sent to the stage that keeps them or recomputed, whichever is cheaper.
- ``assign_homes``: when a group dissolves, which member each request continues on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SEND = "send"
RECOMPUTE = "recompute"


def lane_limits(
    num_lanes: int, token_budget: int, max_num_seqs: int, num_active: int
) -> tuple[int, int]:
    """(token budget, most sequences) of one lane's micro-batch when ``num_active`` requests
    (running or waiting, in flight or not) share ``num_lanes`` lanes."""
    lanes = max(1, num_lanes)
    seqs = max(1, min(max_num_seqs, -(-max(num_active, 1) // lanes)))
    return max(1, token_budget), seqs


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
