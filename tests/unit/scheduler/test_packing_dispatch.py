"""MELL's dispatch: the packing's Allocate rule decides where new requests go; idle workers
get none while a busy worker has room by those rules."""

import pytest

from kvfleet.services.scheduler.core.packing_policy import PackingDispatchPolicy
from kvfleet.services.scheduler.core.types import ClusterView, RequestView, WorkerView

pytestmark = pytest.mark.unit


def worker(wid, *pages, total=120, models=("m",)):
    return WorkerView(wid, models, total, total - sum(pages), {"m": 1}, len(pages), 0,
                      seq_pages=tuple(pages))


def req(rid, tokens, model="m"):
    return RequestView(rid, model, 0.0, tokens, 16)


def decide(queue, *workers):
    d = PackingDispatchPolicy().decide(queue, ClusterView(workers), 0.0)
    return dict((a.request_id, a.worker_id) for a in d.assignments), d.unassigned


def test_idle_workers_get_nothing_while_a_busy_one_has_room():
    got, _ = decide([req("a", 10), req("b", 10)], worker("w0"), worker("w1", 30), worker("w2"))
    assert got == {"a": "w1", "b": "w1"}


def test_an_l_request_takes_an_idle_worker_and_small_ones_fill_its_gap():
    got, _ = decide([req("big", 80), req("t", 20)], worker("w0", 30, 30, 30), worker("w1"))
    assert got == {"big": "w1", "t": "w1"}


def test_an_m_request_joins_the_m_worker_being_filled():
    got, _ = decide([req("m2", 45)], worker("w0", 25, 25, 25, 25), worker("w1", 50),
                    worker("w2"))
    assert got == {"m2": "w1"}


def test_with_no_room_anywhere_the_queue_allowance_decides_and_the_model_holds():
    full = WorkerView("w0", ("m",), 120, 0, {"m": 1}, 1, 0, queue_allowance_pages=50,
                      seq_pages=(120,))
    got, unassigned = decide([req("a", 40), req("b", 40)], full)
    assert got == {"a": "w0"} and unassigned == ("b",)
    got, unassigned = decide([req("c", 10)], worker("w0", 120, models=("other",)))
    assert got == {} and unassigned == ("c",)
