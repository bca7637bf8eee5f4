"""The dispatch policies' indexed ``decide`` must make the generic walk's decisions."""

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
    workers = []
    for i in range(n_workers):
        models = tuple(m for m in MODELS if draw(st.booleans())) or ("a",)
        total = draw(st.integers(0, 200))
        workers.append(WorkerView(
            worker_id=f"w{draw(st.integers(0, 99)):02d}-{i}", models=models,
            num_total_pages=total, num_free_pages=draw(st.integers(0, total)),
            tokens_per_page={m: 16 for m in models},
            alive=draw(st.booleans()) or i == 0, draining=draw(st.integers(0, 5)) == 0,
        ))
    queue = [
        RequestView(f"r{j}", draw(st.sampled_from(MODELS + ("c",))), float(j),
                    draw(st.integers(1, 900)), 16)
        for j in range(draw(st.integers(0, 25)))
    ]
    return ClusterView(tuple(workers)), queue


@pytest.mark.parametrize("name", sorted(DISPATCH_POLICIES))
@settings(max_examples=150, deadline=None)
@given(data=scenario())
def test_indexed_decide_matches_generic_walk(name, data):
    view, queue = data
    fast, slow = make_dispatch_policy(name), make_dispatch_policy(name)
    for _ in range(2):  # twice: round-robin state and cached keys carry over
        got = fast.decide(queue, view, 0.0)
        want = _ChargingPolicy.decide(slow, queue, view, 0.0)
        assert got == want
