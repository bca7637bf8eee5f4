"""The dispatch policies' indexed ``decide`` must make the generic walk's decisions."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvfleet.services.scheduler.core.policy import (
    DISPATCH_POLICIES,
    _ChargingPolicy,
    make_dispatch_policy,
)
from kvfleet.services.scheduler.core.types import ClusterView, RequestView, WorkerView

pytestmark = pytest.mark.unit

MODELS = ("a", "b")


@st.composite
def scenario(draw):
    n_workers = draw(st.integers(1, 12))
    # a homogeneous fleet (the fast paths' own case) or one of mixed pool sizes
    same_total = st.just(draw(st.integers(0, 200))) if draw(st.booleans()) else None
    fraction = draw(st.sampled_from([0.0, 0.25, 1.0]))
    workers = []
    for i in range(n_workers):
        models = tuple(m for m in MODELS if draw(st.booleans())) or ("a",)
        total = draw(same_total) if same_total is not None else draw(st.integers(0, 200))
        workers.append(WorkerView(
            worker_id=f"w{draw(st.integers(0, 99)):02d}-{i}", models=models,
            num_total_pages=total, num_free_pages=draw(st.integers(-total, total)),
            tokens_per_page={m: 16 for m in models},
            alive=draw(st.booleans()) or i == 0, draining=draw(st.integers(0, 5)) == 0,
            queue_allowance_pages=int(total * fraction),
        ))
    queue = [
        RequestView(f"r{j}", draw(st.sampled_from(MODELS + ("c",))), float(j),
                    draw(st.integers(1, 900)), 16)
        for j in range(draw(st.integers(0, 25)))
    ]
    return ClusterView(tuple(workers)), queue


@pytest.mark.parametrize("name", sorted(DISPATCH_POLICIES))
@settings(max_examples=80, deadline=None)
@given(data=scenario())
def test_indexed_decide_matches_generic_walk(name, data):
    view, queue = data
    fast, slow = make_dispatch_policy(name), make_dispatch_policy(name)
    # Same view twice (cached keys reused), then one where some workers changed.
    changed = ClusterView(tuple(
        replace(w, num_free_pages=w.num_free_pages // 2) if i % 2 else w
        for i, w in enumerate(view.workers)
    ))
    for v in (view, view, changed):
        got = fast.decide(queue, v, 0.0)
        want = _ChargingPolicy.decide(slow, queue, v, 0.0)
        assert got == want
