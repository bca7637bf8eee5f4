"""One dispatch decision, from the scheduler's inputs to its assignments. Pure.

The live scheduler and the simulator both call :func:`dispatch` with the same kind of input:
the queued requests in order, the workers' latest reports, the assignments those reports may
not show yet, and the draining workers. What a worker is charged for an assignment (until
its reports show it) is returned beside the decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvfleet.services.scheduler.core.occupancy import (
    OccupancyReport,
    PendingAssignment,
    worker_view,
)
from kvfleet.services.scheduler.core.policy import DispatchPolicy, request_pages
from kvfleet.services.scheduler.core.types import ClusterView, Decisions, RequestView

MAX_REQUESTS_PER_DECISION = 4096
"""Requests considered in one decision: the head of the queue (the rest wait their turn)."""


@dataclass(frozen=True, slots=True)
class DispatchInput:
    now_s: float
    queue: tuple[RequestView, ...]  # in dispatch order (arrival, then request id)
    reports: tuple[OccupancyReport, ...]  # live workers, by worker id
    pending: tuple[PendingAssignment, ...] = ()
    draining: frozenset[str] = frozenset()
    queue_fraction: float = 1.0


@dataclass(frozen=True, slots=True)
class DispatchOutput:
    decisions: Decisions
    pages: dict[str, int]  # request id -> pages charged to its worker


def cluster_view(inp: DispatchInput) -> ClusterView:
    by_worker: dict[str, list[PendingAssignment]] = {}
    for p in inp.pending:
        by_worker.setdefault(p.worker_id, []).append(p)
    return ClusterView(tuple(
        worker_view(r, by_worker.get(r.worker_id, ()), draining=r.worker_id in inp.draining,
                    queue_fraction=inp.queue_fraction)
        for r in inp.reports
    ))


def dispatch(policy: DispatchPolicy, inp: DispatchInput) -> DispatchOutput:
    return decide(policy, inp.queue, cluster_view(inp), inp.now_s)


def decide(
    policy: DispatchPolicy, all_queued: Sequence[RequestView], view: ClusterView, now_s: float
) -> DispatchOutput:
    """The policy's decisions over the head of the queue, with the pages each assignment
    charges (the simulator calls this with views it keeps up to date itself)."""
    queue: Sequence[RequestView] = all_queued[:MAX_REQUESTS_PER_DECISION]
    decisions = policy.decide(queue, view, now_s)
    by_id = {w.worker_id: w for w in view.workers}
    requests = {r.request_id: r for r in queue}
    pages = {
        a.request_id: request_pages(requests[a.request_id], by_id[a.worker_id])
        for a in decisions.assignments
    }
    if len(all_queued) > len(queue):
        decisions = Decisions(
            decisions.assignments,
            decisions.unassigned + tuple(r.request_id for r in all_queued[len(queue):]),
        )
    return DispatchOutput(decisions, pages)
