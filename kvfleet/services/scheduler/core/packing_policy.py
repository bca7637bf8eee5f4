"""MELL's dispatch: new requests go where the packing's Allocate rule puts them. Pure.

Each decision rebuilds the fleet as bins (a worker's pages, with each of its requests as an
item of the pages it holds or was promised, from ``WorkerView.seq_pages``) and asks the
planner's packing rules (``kvfleet.services.planner.core.packing``) where each queued
request goes, moving nothing: an L request takes an idle worker; an M, S or T request joins
an L-worker with room, else the worker of its class being filled, else an idle worker; small
requests fill gaps first fit. A worker with no requests is idle: it gets a request only when
no busy worker of the model has room by those rules. The newest bin of a type is not known
here (the planner tracks it); bins that are short of complete stand in for it.

When no worker has room by the rules, a request goes to the worker the queue allowance lets
take it with the most free pages (``WorkerView.can_take``), or waits in the scheduler's
queue, holding its model's queue as every dispatch policy does.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvfleet.services.planner.core.packing import Bin, Item, MellRules, Packing
from kvfleet.services.scheduler.core.policy import request_pages
from kvfleet.services.scheduler.core.types import (
    Assignment,
    ClusterView,
    Decisions,
    RequestView,
    WorkerView,
)

_PAGES = "\x00pages"  # items known only by their pages


def fleet_packing(workers: Sequence[WorkerView]) -> Packing:
    """The workers serving requests now, as bins holding their requests' pages."""
    bins = []
    live = sorted((w for w in workers if w.alive), key=lambda w: w.worker_id)
    for i, w in enumerate(live):
        tpp = dict(w.tokens_per_page)
        tpp[_PAGES] = 1
        bins.append(Bin(w.worker_id, w.num_total_pages, rank=i, tokens_per_page=tpp,
                        models=(*w.models, _PAGES), draining=w.draining))
    p = Packing(bins)
    for w in live:
        for k, pages in enumerate(w.seq_pages):
            p.put(Item(f"{_PAGES}{w.worker_id}/{k}", _PAGES, max(pages, 1)), w.worker_id)
        held = w.num_total_pages - w.num_free_pages - sum(w.seq_pages)
        if held > 0:  # pages the requests listed do not account for (reservations)
            p.put(Item(f"{_PAGES}{w.worker_id}/held", _PAGES, held), w.worker_id)
    # Bins short of complete stand in for the newest of their type.
    for b in p.bins.values():
        if b.kind is not None:
            b.stamp = (len(p.bins) if b.incomplete() else 0) + b.rank + 1
    p.set_clock(2 * len(p.bins) + 2)
    return p


class PackingDispatchPolicy:
    """MELL's Allocate rule as a dispatch policy."""

    name = "packing"

    def __init__(self) -> None:
        self.rules = MellRules()

    def decide(self, queue: Sequence[RequestView], view: ClusterView, now_s: float) -> Decisions:
        p = fleet_packing(view.workers)
        by_id = {w.worker_id: w for w in view.workers}
        free = {w.worker_id: w.num_free_pages for w in view.workers}
        served = {m for w in view.workers if w.alive and not w.draining for m in w.models}
        assignments: list[Assignment] = []
        unassigned: list[str] = []
        held: set[str] = set()
        for i, request in enumerate(queue):
            if held >= served:
                unassigned.extend(r.request_id for r in queue[i:])
                break
            wid = None if request.model in held else self._pick(p, request, view, free)
            if wid is None:
                held.add(request.model)
                unassigned.append(request.request_id)
                continue
            worker = by_id[wid]
            pages = request_pages(request, worker)
            free[wid] -= pages
            p.put(Item(request.request_id, _PAGES, max(pages, 1)), wid)
            assignments.append(Assignment(request.request_id, wid))
        return Decisions(tuple(assignments), tuple(unassigned))

    def _pick(
        self, p: Packing, request: RequestView, view: ClusterView, free: dict[str, int]
    ) -> str | None:
        candidates = [w for w in view.workers if w.can_serve(request.model)]
        if not candidates:
            return None
        item = Item(request.request_id, request.model, max(request.num_tokens, 1))
        wid = self.rules.choose(p, item)
        if wid is not None:
            w = next((c for c in candidates if c.worker_id == wid), None)
            if w is not None and free[wid] >= request_pages(request, w):
                return wid
        # No room by the rules: the queue allowance, most free pages first.
        room = [w for w in candidates if w.can_take(request_pages(request, w), free[w.worker_id])]
        if not room:
            return None
        busy = [w for w in room if w.seq_pages]
        pool = busy or room
        return min(pool, key=lambda w: (-free[w.worker_id], w.worker_id)).worker_id
