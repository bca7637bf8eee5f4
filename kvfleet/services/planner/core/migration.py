"""Migration policies: which running requests move between workers, and where. Pure.

A policy sees each worker's KV occupancy (pages held, pages its queue will need) and a few
running requests it could move, and returns migration orders. The mechanism (shipping KV
blocks, or tokens to re-prefill) is the caller's.

``KvBalancePolicy`` is the Llumnix-style baseline: it pairs the most loaded workers with the
least loaded ones of the same model and moves the newest running request (the cheapest to
ship) from each overloaded worker to its partner, so that KV load evens out and queued
requests on the hot worker can start.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvfleet.services.scheduler.core.occupancy import OccupancyReport, SeqReport


@dataclass(frozen=True, slots=True)
class MigrationCandidate:
    """A running request that could move: its KV pages and arrival time (and, for policies
    that size requests or pick a migration mode, its tokens and the bytes of its KV)."""

    request_id: str
    model: str
    num_pages: int
    arrival_s: float
    num_tokens: int = 0  # prompt + generated tokens known
    num_computed_tokens: int = 0  # tokens whose KV is written (what a KV copy ships)
    num_output_tokens: int = 0
    predicted_output_tokens: int | None = None
    decoding: bool = True
    kv_bytes: int = 0  # bytes of its KV pages (0: unknown)


@dataclass(frozen=True, slots=True)
class MigrationWorkerView:
    """One worker as a migration policy sees it."""

    worker_id: str
    models: tuple[str, ...]
    num_total_pages: int
    num_free_pages: int
    num_queued_pages: int = 0
    candidates: tuple[MigrationCandidate, ...] = ()
    draining: bool = False
    #: every request on the worker, running and waiting, not moving (packing policies)
    items: tuple[MigrationCandidate, ...] = ()
    tokens_per_page: dict[str, int] = field(default_factory=dict)
    #: its link for KV transfers (0: unknown), and the re-prefill tokens per second it can
    #: take on without slowing its running batch (0: none)
    link_bytes_per_s: float = 0.0
    reprefill_tokens_per_s: float = 0.0

    @property
    def load(self) -> float:
        """Pages held plus pages the queue needs, as a fraction of the pool (can exceed 1)."""
        if self.num_total_pages <= 0:
            return 0.0
        used = self.num_total_pages - self.num_free_pages + self.num_queued_pages
        return used / self.num_total_pages


MIGRATION_MODES = ("live", "stop", "reprefill")
"""How a request moves: ``live`` copies its KV in rounds while it keeps decoding and stops
only for the last pages; ``stop`` stops it and copies all of its KV; ``reprefill`` ships its
tokens (and sampler state) and the destination computes the KV again."""


@dataclass(frozen=True, slots=True)
class MigrationOrder:
    request_id: str
    src_worker_id: str
    dst_worker_id: str
    mode: str = "live"


MAX_CANDIDATES = 4
"""Running requests per worker offered to a migration policy: the newest decoding ones."""


def _candidate(s: SeqReport, page_bytes: int) -> MigrationCandidate:
    return MigrationCandidate(
        s.request_id, s.model, s.num_pages, s.arrival_s, s.num_tokens, s.num_computed_tokens,
        s.num_output_tokens, s.predicted_output_tokens, s.decoding, s.num_pages * page_bytes,
    )


def migration_views(
    reports: Sequence[OccupancyReport],
    inflight: Collection[str] = (),
    draining: Collection[str] = (),
    max_candidates: int = MAX_CANDIDATES,
    *,
    link_bytes_per_s: float = 0.0,
    reprefill_tokens_per_s: Mapping[str, float] | float = 0.0,
) -> list[MigrationWorkerView]:
    """The migration policy's view of each worker, from its report (live: its heartbeat;
    simulated: its state): free pages net of reservations, queued demand, the newest
    decoding requests not already moving, and every request not moving (``items``).
    ``link_bytes_per_s`` and ``reprefill_tokens_per_s`` (per worker id, or one figure for
    all) are the budgets a policy that picks migration modes works with."""
    views = []
    for r in reports:
        # A pipeline group's requests hold KV on every stage: they do not move one by one,
        # and a worker holding a stage of a model takes no request of it.
        piped = r.pipelined_models
        models = tuple(m for m in r.serving_models if m not in piped)
        movable = sorted(
            (s for s in r.seqs
             if s.decoding and s.request_id not in inflight and s.model in models),
            key=lambda s: (-s.arrival_s, s.request_id),
        )[:max_candidates]
        rate = (reprefill_tokens_per_s.get(r.worker_id, 0.0)
                if isinstance(reprefill_tokens_per_s, Mapping) else reprefill_tokens_per_s)
        views.append(MigrationWorkerView(
            r.worker_id, models, r.num_total_pages, r.num_free_pages - r.num_reserved_pages,
            r.num_queued_pages,
            tuple(MigrationCandidate(s.request_id, s.model, s.num_pages, s.arrival_s)
                  for s in movable),
            r.worker_id in draining,
            tuple(_candidate(s, r.page_size_bytes) for s in r.seqs
                  if s.request_id not in inflight),
            dict(r.tokens_per_page),
            link_bytes_per_s,
            float(rate),
        ))
    return views


class MigrationPolicy(Protocol):
    name: str

    def decide(
        self, workers: Sequence[MigrationWorkerView], now_s: float
    ) -> tuple[MigrationOrder, ...]: ...


class NoMigrationPolicy:
    """Never migrates (vLLM-like, round-robin, best-fit and worst-fit baselines)."""

    name = "none"

    def decide(
        self, workers: Sequence[MigrationWorkerView], now_s: float
    ) -> tuple[MigrationOrder, ...]:
        return ()


class KvBalancePolicy:
    """Llumnix-like load balancing by migration.

    A worker is a source when its load is at least ``high_load``; a destination when its
    load is at most ``high_load - min_gap``. Sources (most loaded first) are paired with
    destinations (least loaded first) serving the request's model; each worker takes part
    in at most one migration per decision, and the moved request must fit the
    destination's free pages while leaving it below the source's load.
    """

    name = "kv-balance"

    def __init__(self, high_load: float = 0.85, min_gap: float = 0.25, max_orders: int = 64) -> None:
        if not 0.0 < min_gap <= high_load:
            raise ValueError("need 0 < min_gap <= high_load")
        self.high_load = high_load
        self.min_gap = min_gap
        self.max_orders = max_orders

    def decide(
        self, workers: Sequence[MigrationWorkerView], now_s: float
    ) -> tuple[MigrationOrder, ...]:
        loads = {w.worker_id: w.load for w in workers}
        sources = sorted(
            (w for w in workers if loads[w.worker_id] >= self.high_load and w.candidates),
            key=lambda w: (-loads[w.worker_id], w.worker_id),
        )
        if not sources:
            return ()
        low = self.high_load - self.min_gap
        dests = sorted(
            (w for w in workers if not w.draining and loads[w.worker_id] <= low),
            key=lambda w: (loads[w.worker_id], w.worker_id),
        )
        used: set[str] = set()
        orders: list[MigrationOrder] = []
        for src in sources:
            if len(orders) >= self.max_orders:
                break
            # Newest request first: least KV to ship, and FCFS would preempt it first.
            for cand in sorted(src.candidates, key=lambda c: (-c.arrival_s, c.request_id)):
                dst = self._partner(src, cand, dests, used, loads)
                if dst is not None:
                    used.add(dst.worker_id)
                    used.add(src.worker_id)
                    orders.append(MigrationOrder(cand.request_id, src.worker_id, dst.worker_id))
                    break
        return tuple(orders)

    def _partner(
        self,
        src: MigrationWorkerView,
        cand: MigrationCandidate,
        dests: list[MigrationWorkerView],
        used: set[str],
        loads: dict[str, float],
    ) -> MigrationWorkerView | None:
        for dst in dests:
            if dst.worker_id in used or dst.worker_id == src.worker_id:
                continue
            if cand.model not in dst.models or cand.num_pages > dst.num_free_pages:
                continue
            after = loads[dst.worker_id] + cand.num_pages / max(dst.num_total_pages, 1)
            if after < loads[src.worker_id]:
                return dst
        return None

