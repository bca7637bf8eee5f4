"""Dispatch policies: which worker runs each queued request. Pure and deterministic.

``decide`` walks the queue in order and charges each assignment's KV pages against a local
copy of the workers' free pages, so a burst of requests spreads as it would if the workers
had reported after every one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kvfleet.services.scheduler.core.types import (
    Assignment,
    ClusterView,
    Decisions,
    RequestView,
    WorkerView,
)


def request_pages(request: RequestView, worker: WorkerView) -> int:
    """Pages a request's prompt (and tokens so far) takes on ``worker``."""
    tpp = worker.tokens_per_page.get(request.model, 0)
    if tpp <= 0:
        return 0
    return -(-request.num_tokens // tpp)


class DispatchPolicy(Protocol):
    name: str

    def decide(
        self, queue: Sequence[RequestView], view: ClusterView, now_s: float
    ) -> Decisions: ...


class _ChargingPolicy:
    """Shared walk: pick a worker per request and charge its pages locally."""

    name = "base"

    def pick(self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]) -> str:
        raise NotImplementedError

    def decide(self, queue: Sequence[RequestView], view: ClusterView, now_s: float) -> Decisions:
        free = {w.worker_id: w.num_free_pages for w in view.workers}
        assignments: list[Assignment] = []
        unassigned: list[str] = []
        for request in queue:
            candidates = [w for w in view.workers if w.can_serve(request.model)]
            if not candidates:
                unassigned.append(request.request_id)
                continue
            worker_id = self.pick(request, candidates, free)
            worker = next(w for w in candidates if w.worker_id == worker_id)
            free[worker_id] -= request_pages(request, worker)
            assignments.append(Assignment(request.request_id, worker_id))
        return Decisions(tuple(assignments), tuple(unassigned))


class MostFreeKvPolicy(_ChargingPolicy):
    """Baseline (vLLM/Llumnix-style least loaded): the live worker with the most free KV.

    Free KV is compared as a fraction of the worker's pages, then by worker id, so the
    choice is deterministic.
    """

    name = "most-free-kv"

    def pick(self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]) -> str:
        def key(w: WorkerView) -> tuple[float, str]:
            frac = free[w.worker_id] / w.num_total_pages if w.num_total_pages else 0.0
            return (-frac, w.worker_id)

        return min(candidates, key=key).worker_id


class RoundRobinPolicy(_ChargingPolicy):
    """Each model's requests go to its workers in turn, ignoring load."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def pick(self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]) -> str:
        ordered = sorted(w.worker_id for w in candidates)
        i = self._next.get(request.model, 0)
        self._next[request.model] = i + 1
        return ordered[i % len(ordered)]


class BestFitPolicy(_ChargingPolicy):
    """Bin packing: the worker with the least free KV that still fits the request."""

    name = "best-fit"

    def pick(self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]) -> str:
        fitting = [w for w in candidates if free[w.worker_id] >= request_pages(request, w)]
        pool = fitting or candidates
        return min(pool, key=lambda w: (free[w.worker_id], w.worker_id)).worker_id


class WorstFitPolicy(_ChargingPolicy):
    """Bin packing's opposite: the worker with the most free KV pages (absolute)."""

    name = "worst-fit"

    def pick(self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]) -> str:
        return min(candidates, key=lambda w: (-free[w.worker_id], w.worker_id)).worker_id


DISPATCH_POLICIES: dict[str, type[_ChargingPolicy]] = {
    p.name: p for p in (MostFreeKvPolicy, RoundRobinPolicy, BestFitPolicy, WorstFitPolicy)
}


def make_dispatch_policy(name: str) -> DispatchPolicy:
    try:
        return DISPATCH_POLICIES[name]()
    except KeyError:
        known = ", ".join(sorted(DISPATCH_POLICIES))
        raise ValueError(f"unknown dispatch policy {name!r}; known: {known}") from None
