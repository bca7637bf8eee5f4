"""Adaptive migration (MELL): each move either ships the request's KV over the links or ships
its tokens and re-prefills it at the destination, whichever the budgets allow. Pure.

Budgets are per epoch (the time between two planner decisions):

- **communication**, per link: the bytes a worker's link carries in an epoch (its bandwidth
  times the epoch). A KV move charges its bytes to the source's and the destination's links,
  so moves sharing a worker contend for it.
- **computation**, per worker: the re-prefill tokens it can take on in an epoch without
  slowing its running batch (what its steps leave idle). A re-prefill move charges the
  request's tokens to the destination.

Moves are packed first fit, in the order given (the packing's order of importance): each takes
the cheaper mode (estimated seconds) whose budget still has room, else the other, else waits
for a later epoch. A budget left untouched this epoch takes one move however large, so a
request bigger than one epoch's budget still moves. A request with no KV yet (waiting) moves
as tokens at no cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KV_MODE = "live"
REPREFILL_MODE = "reprefill"


@dataclass(frozen=True, slots=True)
class MoveCost:
    """A planned move with what each mode would cost."""

    request_id: str
    src: str
    dst: str
    kv_bytes: int  # bytes a KV copy ships
    num_tokens: int  # tokens a re-prefill computes
    has_kv: bool = True


@dataclass(frozen=True, slots=True)
class WorkerBudget:
    """A worker's rates: its link (bytes/s, 0 = unlimited) and the re-prefill tokens per
    second it can absorb (0 = none)."""

    link_bytes_per_s: float = 0.0
    reprefill_tokens_per_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ModeChoice:
    request_id: str
    src: str
    dst: str
    mode: str


def choose_modes(
    moves: Sequence[MoveCost],
    budgets: Mapping[str, WorkerBudget],
    epoch_s: float,
    kv_mode: str = KV_MODE,
) -> tuple[list[ModeChoice], list[MoveCost]]:
    """The moves that fit this epoch's budgets, each with its mode, and those deferred."""
    link_left: dict[str, float] = {}
    link_used: set[str] = set()
    comp_left: dict[str, float] = {}
    comp_used: set[str] = set()
    chosen: list[ModeChoice] = []
    deferred: list[MoveCost] = []

    def link(w: str) -> float:
        if w not in link_left:
            rate = budgets.get(w, WorkerBudget()).link_bytes_per_s
            link_left[w] = float("inf") if rate <= 0 else rate * epoch_s
        return link_left[w]

    def comp(w: str) -> float:
        if w not in comp_left:
            comp_left[w] = budgets.get(w, WorkerBudget()).reprefill_tokens_per_s * epoch_s
        return comp_left[w]

    def kv_fits(m: MoveCost) -> bool:
        return all(link(w) >= m.kv_bytes or (w not in link_used and link(w) > 0)
                   for w in (m.src, m.dst))

    def re_fits(m: MoveCost) -> bool:
        return comp(m.dst) >= m.num_tokens or (m.dst not in comp_used and comp(m.dst) > 0)

    for m in moves:
        if not m.has_kv or m.kv_bytes <= 0:
            chosen.append(ModeChoice(m.request_id, m.src, m.dst, REPREFILL_MODE))
            continue
        kv_s = _seconds(m.kv_bytes, min(_rate(budgets, m.src, "link"), _rate(budgets, m.dst, "link")))
        re_s = _seconds(m.num_tokens, _rate(budgets, m.dst, "comp"))
        options = [(kv_s, kv_mode), (re_s, REPREFILL_MODE)]
        options.sort(key=lambda o: o[0])
        for _, mode in options:
            if mode == REPREFILL_MODE and re_fits(m):
                comp_left[m.dst] = comp(m.dst) - m.num_tokens
                comp_used.add(m.dst)
                chosen.append(ModeChoice(m.request_id, m.src, m.dst, mode))
                break
            if mode != REPREFILL_MODE and kv_fits(m):
                for w in (m.src, m.dst):
                    link_left[w] = link(w) - m.kv_bytes
                    link_used.add(w)
                chosen.append(ModeChoice(m.request_id, m.src, m.dst, mode))
                break
        else:
            deferred.append(m)
    return chosen, deferred


def _rate(budgets: Mapping[str, WorkerBudget], worker_id: str, what: str) -> float:
    b = budgets.get(worker_id, WorkerBudget())
    if what == "link":
        return float("inf") if b.link_bytes_per_s <= 0 else b.link_bytes_per_s
    return b.reprefill_tokens_per_s


def _seconds(amount: float, rate: float) -> float:
    if rate == float("inf"):
        return 0.0
    return float("inf") if rate <= 0 else amount / rate
