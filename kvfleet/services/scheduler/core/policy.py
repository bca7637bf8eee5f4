"""Dispatch policies: which worker runs each queued request. Pure and deterministic.

``decide`` walks the queue in order and charges each assignment's KV pages against a local
copy of the workers' free pages, so a burst of requests spreads as it would if the workers
had reported after every one.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
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


# Heap entry: (key, worker_id, stamp, view). Worker ids are unique and a worker's stamps
# differ, so comparisons never reach the view.
_Entry = tuple[object, str, int, WorkerView]


class _KeyCache:
    """Heap entries per model, patched only where the caller passed a different
    ``WorkerView`` object than last time (a simulator or scheduler that rebuilds only the
    views that changed pays for those alone)."""

    def __init__(self, key: Callable[[WorkerView, int], object]) -> None:
        self.key = key
        self._last: dict[str, tuple[tuple[WorkerView, ...], list[_Entry | None]]] = {}

    def _entry(self, w: WorkerView, model: str) -> _Entry | None:
        if w.alive and not w.draining and model in w.models:
            return (self.key(w, w.num_free_pages), w.worker_id, 0, w)
        return None

    def entries(self, view: ClusterView, model: str) -> list[_Entry]:
        workers = view.workers
        last = self._last.get(model)
        if last is not None and len(last[0]) == len(workers):
            old, ents = last
            changed = [i for i, (a, b) in enumerate(zip(old, workers, strict=True)) if a is not b]
            for i in changed:
                ents[i] = self._entry(workers[i], model)
        else:
            ents = [self._entry(w, model) for w in workers]
        self._last[model] = (workers, ents)
        return [e for e in ents if e is not None]


def _heap_decide(
    queue: Sequence[RequestView],
    view: ClusterView,
    keys: _KeyCache,
) -> Decisions:
    """The charging walk for a policy that picks the minimum of ``(key(w, free), worker_id)``,
    with one heap per model instead of a scan per request: the same decisions as
    ``_ChargingPolicy.decide`` in O(log workers) per request (large fleets, the simulator)."""
    key = keys.key
    free: dict[str, int] = {}
    stamp: dict[str, int] = {}
    heaps: dict[str, list[_Entry]] = {}
    assignments: list[Assignment] = []
    unassigned: list[str] = []
    for request in queue:
        heap = heaps.get(request.model)
        if heap is None:
            heap = keys.entries(view, request.model)
            if stamp:  # workers charged earlier in this call, for another model
                heap = [
                    (key(e[3], free[e[1]]), e[1], stamp[e[1]], e[3]) if e[1] in stamp else e
                    for e in heap
                ]
            heapq.heapify(heap)
            heaps[request.model] = heap
        while heap and heap[0][2] != stamp.get(heap[0][1], 0):
            heapq.heappop(heap)
        if not heap:
            unassigned.append(request.request_id)
            continue
        worker = heap[0][3]
        wid = worker.worker_id
        left = free[wid] = free.get(wid, worker.num_free_pages) - request_pages(request, worker)
        version = stamp[wid] = stamp.get(wid, 0) + 1
        for model in worker.models:
            other = heaps.get(model)
            if other is not None and worker.can_serve(model):
                heapq.heappush(other, (key(worker, left), wid, version, worker))
        assignments.append(Assignment(request.request_id, wid))
    return Decisions(tuple(assignments), tuple(unassigned))


def _free_fraction_key(w: WorkerView, free: int) -> float:
    return -(free / w.num_total_pages if w.num_total_pages else 0.0)


def _free_pages_key(w: WorkerView, free: int) -> int:
    return -free


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

    def __init__(self) -> None:
        self._keys = _KeyCache(_free_fraction_key)

    def decide(self, queue: Sequence[RequestView], view: ClusterView, now_s: float) -> Decisions:
        return _heap_decide(queue, view, self._keys)


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

    def decide(self, queue: Sequence[RequestView], view: ClusterView, now_s: float) -> Decisions:
        """Same decisions as the generic walk, with each model's order computed once."""
        orders: dict[str, list[str]] = {}
        assignments: list[Assignment] = []
        unassigned: list[str] = []
        for request in queue:
            ordered = orders.get(request.model)
            if ordered is None:
                ordered = orders[request.model] = sorted(
                    w.worker_id for w in view.workers if w.can_serve(request.model)
                )
            if not ordered:
                unassigned.append(request.request_id)
                continue
            i = self._next.get(request.model, 0)
            self._next[request.model] = i + 1
            assignments.append(Assignment(request.request_id, ordered[i % len(ordered)]))
        return Decisions(tuple(assignments), tuple(unassigned))


class BestFitPolicy(_ChargingPolicy):
    """Bin packing: the worker with the least free KV that still fits the request."""

    name = "best-fit"

    def pick(self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]) -> str:
        fitting = [w for w in candidates if free[w.worker_id] >= request_pages(request, w)]
        pool = fitting or candidates
        return min(pool, key=lambda w: (free[w.worker_id], w.worker_id)).worker_id

    def decide(self, queue: Sequence[RequestView], view: ClusterView, now_s: float) -> Decisions:
        """Same decisions as the generic walk, over a sorted ``(free, worker_id)`` list per
        model; falls back to the walk when a model's workers differ in tokens per page."""
        free = {w.worker_id: w.num_free_pages for w in view.workers}
        by_id = {w.worker_id: w for w in view.workers}
        lists: dict[str, list[tuple[int, str]]] = {}
        for request in queue:
            if request.model not in lists:
                cands = [w for w in view.workers if w.can_serve(request.model)]
                if len({w.tokens_per_page.get(request.model, 0) for w in cands}) > 1:
                    return _ChargingPolicy.decide(self, queue, view, now_s)
                lists[request.model] = sorted((free[w.worker_id], w.worker_id) for w in cands)
        assignments: list[Assignment] = []
        unassigned: list[str] = []
        for request in queue:
            ordered = lists[request.model]
            if not ordered:
                unassigned.append(request.request_id)
                continue
            need = request_pages(request, by_id[ordered[0][1]])
            i = bisect_left(ordered, (need, ""))
            wid = ordered[i][1] if i < len(ordered) else ordered[0][1]
            worker = by_id[wid]
            old = (free[wid], wid)
            free[wid] -= request_pages(request, worker)
            for model in worker.models:
                other = lists.get(model)
                if other is not None and worker.can_serve(model):
                    del other[bisect_left(other, old)]
                    insort(other, (free[wid], wid))
            assignments.append(Assignment(request.request_id, wid))
        return Decisions(tuple(assignments), tuple(unassigned))


class WorstFitPolicy(_ChargingPolicy):
    """Bin packing's opposite: the worker with the most free KV pages (absolute)."""

    name = "worst-fit"

    def pick(self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]) -> str:
        return min(candidates, key=lambda w: (-free[w.worker_id], w.worker_id)).worker_id

    def __init__(self) -> None:
        self._keys = _KeyCache(_free_pages_key)

    def decide(self, queue: Sequence[RequestView], view: ClusterView, now_s: float) -> Decisions:
        return _heap_decide(queue, view, self._keys)


DISPATCH_POLICIES: dict[str, type[_ChargingPolicy]] = {
    p.name: p for p in (MostFreeKvPolicy, RoundRobinPolicy, BestFitPolicy, WorstFitPolicy)
}


def make_dispatch_policy(name: str) -> DispatchPolicy:
    try:
        return DISPATCH_POLICIES[name]()
    except KeyError:
        known = ", ".join(sorted(DISPATCH_POLICIES))
        raise ValueError(f"unknown dispatch policy {name!r}; known: {known}") from None
