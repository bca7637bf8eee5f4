"""What the engine tells its batch policy: each sequence's service level and predicted length,
and a ``now_s`` on the same (wall) clock as the gateway's arrival times."""

from __future__ import annotations

import time

import pytest

from kvfleet.common.clock import ManualClock
from kvfleet.common.slo import ServiceLevel
from kvfleet.services.worker.core.batch_policy import EngineView, FcfsBatchPolicy, StepPlan
from kvfleet.services.worker.engine import Engine, EngineConfig, EngineRequest
from tests.unit.engine.engine_testkit import TEST_THREADS, greedy

pytestmark = pytest.mark.unit


class Recording(FcfsBatchPolicy):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[EngineView, float]] = []

    def plan(self, view: EngineView, now_s: float) -> StepPlan:
        self.calls.append((view, now_s))
        return super().plan(view, now_s)


def _engine(policy: Recording, clock=None) -> Engine:
    eng = Engine(EngineConfig(memory_bytes=64 << 20, page_size_bytes=4096,
                              num_threads=TEST_THREADS), policy, clock)
    eng.load_model("tiny-llama")
    return eng


def test_policy_sees_service_level_prediction_and_wall_clock_now():
    policy = Recording()
    eng = _engine(policy)
    arrival = time.time()
    eng.add_request(EngineRequest("a", "tiny-llama", (1, 2, 3), greedy(3), arrival_s=arrival,
                                  slo=ServiceLevel(0.5, 0.05, 0), predicted_output_tokens=7))
    eng.add_request(EngineRequest("b", "tiny-llama", (4, 5), greedy(2), arrival_s=arrival))
    events = []
    while eng.has_unfinished():
        events += eng.step()
    view, now_s = policy.calls[0]
    a, b = sorted(view.waiting, key=lambda s: s.seq_id)
    assert (a.ttft_slo_s, a.tpot_slo_s, a.priority, a.predicted_output_tokens) == (0.5, 0.05, 0, 7)
    assert (b.ttft_slo_s, b.tpot_slo_s, b.priority, b.predicted_output_tokens) == (None, None, 1, None)
    # the same clock as the arrival stamps: now is after arrival, and not by much
    assert 0.0 <= now_s - arrival < 60.0
    assert all(0.0 <= ev.ts - arrival < 60.0 for ev in events)


def test_an_injected_clock_drives_every_now():
    policy = Recording()
    clock = ManualClock(1000.0)
    eng = _engine(policy, clock)
    eng.add_request(EngineRequest("a", "tiny-llama", (1, 2, 3), greedy(2), arrival_s=999.0))
    events = eng.step()
    clock.advance(5.0)
    events += eng.step()
    assert [now for _, now in policy.calls] == [1000.0, 1005.0]
    assert [ev.ts for ev in events] == [1000.0, 1005.0]
