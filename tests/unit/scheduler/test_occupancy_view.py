"""The scheduler's view of a worker counts what it holds, reserves, queues and was promised;
dispatch assigns only where there is room and holds the rest, in order."""

import pytest

from kvfleet.services.scheduler.core.occupancy import (
    OccupancyReport,
    PendingAssignment,
    unreflected,
    worker_view,
)
from kvfleet.services.scheduler.core.policy import DISPATCH_POLICIES, make_dispatch_policy
from kvfleet.services.scheduler.core.types import ClusterView, RequestView

pytestmark = pytest.mark.unit


def report(wid="w0", free=100, reserved=0, queued=0, seq=0, boot="b1", total=100):
    return OccupancyReport(wid, ("m",), total, free, reserved, queued, {"m": 16},
                           boot_id=boot, intake_seq=seq)


def test_view_subtracts_reserved_queued_and_unreflected_assignments():
    pending = [PendingAssignment("a", "w0", "b1", 5, 10), PendingAssignment("b", "w0", "b1", 6, 7),
               PendingAssignment("old", "w0", "b0", 9, 50)]
    r = report(free=100, reserved=20, queued=15, seq=5)
    assert [p.request_id for p in unreflected(pending, r)] == ["b"]  # a shown; old: rebooted
    v = worker_view(r, pending, queue_fraction=0.5)
    assert v.num_free_pages == 100 - 20 - 15 - 7
    assert v.num_waiting == 1 and v.queue_allowance_pages == 50
    assert worker_view(report(seq=6), pending).num_free_pages == 100
    assert worker_view(r, pending, draining=True).draining


def rv(rid, prompt, model="m"):
    return RequestView(rid, model, 0.0, prompt, 16)


@pytest.mark.parametrize("name", sorted(DISPATCH_POLICIES))
def test_a_burst_splits_by_capacity_and_the_rest_waits_in_order(name):
    # two workers, 10 and 4 pages free (16 tokens a page), no queue allowance
    view = ClusterView((worker_view(report("w0", free=10), queue_fraction=0.0),
                        worker_view(report("w1", free=4), queue_fraction=0.0)))
    queue = [rv(f"r{i}", 64) for i in range(5)] + [rv("x", 16, model="other")]  # 4 pages each
    d = make_dispatch_policy(name).decide(queue, view, 0.0)
    got = [a.worker_id for a in d.assignments]
    assert sorted(got) == ["w0", "w0", "w1"]  # 14 pages hold three requests of four pages
    assert list(d.unassigned) == ["r3", "r4", "x"]  # FCFS: the rest wait; no worker has "other"


@pytest.mark.parametrize("name", sorted(DISPATCH_POLICIES))
def test_the_queue_allowance_admits_requests_beyond_free_pages(name):
    view = ClusterView((worker_view(report("w0", free=0, total=100), queue_fraction=0.1),))
    d = make_dispatch_policy(name).decide([rv(f"r{i}", 64) for i in range(4)], view, 0.0)
    assert len(d.assignments) == 2 and list(d.unassigned) == ["r2", "r3"]  # 10 pages of queue


@pytest.mark.parametrize("name", sorted(DISPATCH_POLICIES))
def test_a_request_larger_than_any_pool_is_let_through_to_be_refused(name):
    view = ClusterView((worker_view(report("w0", free=3, total=10), queue_fraction=0.0),))
    d = make_dispatch_policy(name).decide([rv("huge", 16 * 50)], view, 0.0)
    assert [a.request_id for a in d.assignments] == ["huge"]


@pytest.mark.parametrize("name", sorted(DISPATCH_POLICIES))
def test_a_held_request_keeps_smaller_ones_of_its_model_behind_it(name):
    view = ClusterView((worker_view(report("w0", free=5), queue_fraction=0.0),))
    d = make_dispatch_policy(name).decide([rv("big", 16 * 8), rv("small", 16)], view, 0.0)
    assert d.assignments == () and list(d.unassigned) == ["big", "small"]
