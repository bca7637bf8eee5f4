"""Dispatch policies: which worker runs each queued request. Pure and deterministic.

``decide`` walks the queue in order and charges each assignment's KV pages against a local
copy of the workers' free pages, so a burst of requests spreads as it would if the workers
had reported after every one. A worker takes a request only while it has room for it
(``WorkerView.can_take``: free pages, plus the queue allowance the scheduler grants). The
first request of a model that no worker has room for holds the rest of that model's queue
until the next decision, so a large request is never starved by smaller ones behind it.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator, Sequence
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

    def pick(
        self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]
    ) -> str | None:
        """A worker among ``candidates`` (every live worker serving the model) that has room
        for ``request`` given ``free``, or None when none has."""
        raise NotImplementedError

    def decide(self, queue: Sequence[RequestView], view: ClusterView, now_s: float) -> Decisions:
        free = {w.worker_id: w.num_free_pages for w in view.workers}
        assignments: list[Assignment] = []
        walk = _Walk(queue, view)
        for request in walk:
            candidates = [w for w in view.workers if w.can_serve(request.model)]
            worker_id = self.pick(request, candidates, free) if candidates else None
            if worker_id is None:
                walk.hold(request)
                continue
            worker = next(w for w in candidates if w.worker_id == worker_id)
            free[worker_id] -= request_pages(request, worker)
            assignments.append(Assignment(request.request_id, worker_id))
        return Decisions(tuple(assignments), tuple(walk.unassigned))


class _Walk:
    """The queue walk every ``decide`` shares: requests in order, each model's queue held
    behind its first request that finds no room, and an early end once every model some
    worker serves is held (the rest of the queue then waits as it is)."""

    def __init__(self, queue: Sequence[RequestView], view: ClusterView) -> None:
        self.queue = queue
        self.served = {m for w in view.workers if w.alive and not w.draining for m in w.models}
        self.held: set[str] = set()
        self.unassigned: list[str] = []

    def __iter__(self) -> Iterator[RequestView]:
        for i, request in enumerate(self.queue):
            if self.held >= self.served:
                self.unassigned.extend(r.request_id for r in self.queue[i:])
                return
            if request.model in self.held:
                self.unassigned.append(request.request_id)
                continue
            yield request

    def hold(self, request: RequestView) -> None:
        self.held.add(request.model)
        self.unassigned.append(request.request_id)


def _with_room(
    request: RequestView, candidates: list[WorkerView], free: dict[str, int]
) -> list[WorkerView]:
    return [w for w in candidates if w.can_take(request_pages(request, w), free[w.worker_id])]


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
    walk = _Walk(queue, view)
    for request in walk:
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
        worker = _first_with_room(heap, request, free, stamp)
        if worker is None:
            walk.hold(request)
            continue
        wid = worker.worker_id
        left = free[wid] = free.get(wid, worker.num_free_pages) - request_pages(request, worker)
        version = stamp[wid] = stamp.get(wid, 0) + 1
        for model in worker.models:
            other = heaps.get(model)
            if other is not None and worker.can_serve(model):
                heapq.heappush(other, (key(worker, left), wid, version, worker))
        assignments.append(Assignment(request.request_id, wid))
    return Decisions(tuple(assignments), tuple(walk.unassigned))


def _first_with_room(
    heap: list[_Entry], request: RequestView, free: dict[str, int], stamp: dict[str, int]
) -> WorkerView | None:
    """The heap's least-key worker that has room for ``request`` (the top, almost always;
    otherwise a scan of the entries still current)."""
    if not heap:
        return None
    top = heap[0][3]
    if top.can_take(request_pages(request, top), free.get(top.worker_id, top.num_free_pages)):
        return top
    best: _Entry | None = None
    for e in heap:
        w = e[3]
        if e[2] != stamp.get(e[1], 0):
            continue
        if w.can_take(request_pages(request, w), free.get(w.worker_id, w.num_free_pages)) and (
            best is None or e[:2] < best[:2]
        ):
            best = e
    return None if best is None else best[3]


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

    def pick(
        self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]
    ) -> str | None:
        def key(w: WorkerView) -> tuple[float, str]:
            frac = free[w.worker_id] / w.num_total_pages if w.num_total_pages else 0.0
            return (-frac, w.worker_id)

        room = _with_room(request, candidates, free)
        return min(room, key=key).worker_id if room else None

    def __init__(self) -> None:
        self._keys = _KeyCache(_free_fraction_key)

    def decide(self, queue: Sequence[RequestView], view: ClusterView, now_s: float) -> Decisions:
        return _heap_decide(queue, view, self._keys)


class RoundRobinPolicy(_ChargingPolicy):
    """Each model's requests go to its workers in turn, ignoring load (a worker without room
    is skipped, and the turn moves past the worker chosen)."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def pick(
        self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]
    ) -> str | None:
        by_id = {w.worker_id: w for w in candidates}
        return self._next_with_room(request, sorted(by_id), by_id, free)

    def _next_with_room(
        self, request: RequestView, ordered: list[str], by_id: dict[str, WorkerView],
        free: dict[str, int],
    ) -> str | None:
        i = self._next.get(request.model, 0)
        for k in range(len(ordered)):
            wid = ordered[(i + k) % len(ordered)]
            w = by_id[wid]
            if w.can_take(request_pages(request, w), free[wid]):
                self._next[request.model] = i + k + 1
                return wid
        return None

    def decide(self, queue: Sequence[RequestView], view: ClusterView, now_s: float) -> Decisions:
        """Same decisions as the generic walk, with each model's order computed once."""
        orders: dict[str, list[str]] = {}
        by_id = {w.worker_id: w for w in view.workers}
        free = {w.worker_id: w.num_free_pages for w in view.workers}
        assignments: list[Assignment] = []
        walk = _Walk(queue, view)
        for request in walk:
            ordered = orders.get(request.model)
            if ordered is None:
                ordered = orders[request.model] = sorted(
                    w.worker_id for w in view.workers if w.can_serve(request.model)
                )
            pick = self._next_with_room(request, ordered, by_id, free) if ordered else None
            if pick is None:
                walk.hold(request)
                continue
            free[pick] -= request_pages(request, by_id[pick])
            assignments.append(Assignment(request.request_id, pick))
        return Decisions(tuple(assignments), tuple(walk.unassigned))


class BestFitPolicy(_ChargingPolicy):
    """Bin packing: the worker with the least free KV that still holds the request; when
    none holds it outright, the one with the most free KV among those with room."""

    name = "best-fit"

    def pick(
        self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]
    ) -> str | None:
        fitting = [w for w in candidates if free[w.worker_id] >= request_pages(request, w)]
        if fitting:
            return min(fitting, key=lambda w: (free[w.worker_id], w.worker_id)).worker_id
        room = _with_room(request, candidates, free)
        return min(room, key=lambda w: (-free[w.worker_id], w.worker_id)).worker_id if room else None

    def decide(self, queue: Sequence[RequestView], view: ClusterView, now_s: float) -> Decisions:
        """Same decisions as the generic walk, over a sorted ``(free, worker_id)`` list per
        model; falls back to the walk when a model's workers differ in tokens per page, pool
        size or queue allowance."""
        free = {w.worker_id: w.num_free_pages for w in view.workers}
        by_id = {w.worker_id: w for w in view.workers}
        lists: dict[str, list[tuple[int, str]]] = {}
        for request in queue:
            if request.model not in lists:
                cands = [w for w in view.workers if w.can_serve(request.model)]
                shapes = {(w.tokens_per_page.get(request.model, 0), w.num_total_pages,
                           w.queue_allowance_pages) for w in cands}
                if len(shapes) > 1:
                    return _ChargingPolicy.decide(self, queue, view, now_s)
                lists[request.model] = sorted((free[w.worker_id], w.worker_id) for w in cands)
        assignments: list[Assignment] = []
        walk = _Walk(queue, view)
        for request in walk:
            ordered = lists[request.model]
            wid = None
            if ordered:
                w0 = by_id[ordered[0][1]]
                need = request_pages(request, w0)
                i = bisect_left(ordered, (need, ""))
                if i < len(ordered):
                    wid = ordered[i][1]
                else:  # nothing holds it outright: the most free, if it has room
                    top = ordered[-1][0]
                    cand = ordered[bisect_left(ordered, (top, ""))][1]
                    if w0.can_take(need, top):
                        wid = cand
            if wid is None:
                walk.hold(request)
                continue
            worker = by_id[wid]
            old = (free[wid], wid)
            free[wid] -= request_pages(request, worker)
            for model in worker.models:
                other = lists.get(model)
                if other is not None and worker.can_serve(model):
                    del other[bisect_left(other, old)]
                    insort(other, (free[wid], wid))
            assignments.append(Assignment(request.request_id, wid))
        return Decisions(tuple(assignments), tuple(walk.unassigned))


class WorstFitPolicy(_ChargingPolicy):
    """Bin packing's opposite: the worker with the most free KV pages (absolute)."""

    name = "worst-fit"

    def pick(
        self, request: RequestView, candidates: list[WorkerView], free: dict[str, int]
    ) -> str | None:
        room = _with_room(request, candidates, free)
        return min(room, key=lambda w: (-free[w.worker_id], w.worker_id)).worker_id if room else None

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
