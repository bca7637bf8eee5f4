"""The live engine and the simulator's worker make the same plans from the same inputs: one
workload (arrival steps, lengths, predictions, SLOs) through the real engine (tiny-llama, a
manual clock ticking one step time per step) and through a ``SimWorker`` with the same pool
and a constant step time, each with a fresh policy of the same set; every plan call sees
the same view at the same time and returns the same plan."""

from __future__ import annotations

import random

import pytest
from engine_testkit import TEST_THREADS, greedy, request

from kvfleet.common.clock import ManualClock
from kvfleet.common.slo import ServiceLevel
from kvfleet.policies import policy_set
from kvfleet.services.worker.core.batch_policy import BatchPolicy, EngineView, StepPlan
from kvfleet.services.worker.core.step_cost import ModelStepCost
from kvfleet.services.worker.engine import Engine, EngineConfig
from kvfleet.sim.seq import SimSeq
from kvfleet.sim.worker import SimWorker, WorkerConfig

pytestmark = pytest.mark.unit

DT = 0.5  # seconds a step takes, in both (exact in binary)
TPP = 4  # tiny-llama: 1 KiB of KV per token, 4 KiB pages
PAGES = 22
# (arrival step, prompt length, output length, predicted output, TTFT SLO s)
WORKLOAD = [(0, 5, 30, 60, 20.0), (0, 9, 6, 6, 3.0), (1, 8, 5, 5, 20.0), (2, 6, 4, 4, 2.0),
            (2, 20, 12, 10, 20.0), (4, 12, 18, 9, 20.0), (5, 7, 5, 20, 1.0), (9, 18, 14, 4, 20.0),
            (15, 30, 8, 8, 20.0), (16, 3, 22, 10, 4.0)]


class Recording:
    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self.name = policy.name
        self.calls: list[tuple[float, EngineView, StepPlan]] = []

    def plan(self, view: EngineView, now_s: float) -> StepPlan:
        plan = self.policy.plan(view, now_s)
        self.calls.append((now_s, view, plan))
        return plan


class FixedStep:
    """A cost model whose every step takes DT."""

    kv_bytes_per_token = 1024

    def step_s(self, *args: object) -> float:
        return DT

    def coefficients(self) -> ModelStepCost:
        return ModelStepCost(overhead_s=DT)


class StepClock(ManualClock):
    """The policy reads the step's start; the tokens the step makes carry its end (start +
    DT), as in the simulator."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.calls = 0

    def now_s(self) -> float:
        self.calls += 1
        return super().now_s() + (DT if self.calls > 1 else 0.0)

    def advance(self, dt_s: float) -> None:
        super().advance(dt_s)
        self.calls = 0


def live_plans(name: str) -> list[tuple[float, EngineView, StepPlan]]:
    rec = Recording(policy_set(name).batch())
    clock = StepClock()
    eng = Engine(EngineConfig(memory_bytes=64 << 20, page_size_bytes=4096,
                              max_num_batched_tokens=32, max_num_seqs=6,
                              num_threads=TEST_THREADS), rec, clock)
    eng.load_model("tiny-llama")
    eng.pool.resize(PAGES)
    rng = random.Random(9)
    for step in range(2000):
        for i, (at, n, m, pred, ttft) in enumerate(WORKLOAD):
            if at == step:
                eng.add_request(request(
                    f"r{i}", [rng.randrange(49152) for _ in range(n)], greedy(m),
                    arrival_s=step * DT, predicted_output_tokens=pred,
                    slo=ServiceLevel(ttft_s=ttft, tpot_s=0.5)))
        if step > WORKLOAD[-1][0] and not eng.has_unfinished():
            break
        eng.step()
        clock.advance(DT)
    return rec.calls


def simulated_plans(name: str) -> list[tuple[float, EngineView, StepPlan]]:
    rec = Recording(policy_set(name).batch())
    cfg = WorkerConfig("w0", ("tiny-llama",), PAGES, {"tiny-llama": TPP}, token_budget=32,
                       max_num_seqs=6, fast_forward=False)
    worker = SimWorker(0, cfg, {"tiny-llama": FixedStep()}, rec)  # type: ignore[dict-item]
    wake: float | None = None
    step = 0
    while step < 2000:
        now = step * DT
        for i, (at, n, m, pred, ttft) in enumerate(WORKLOAD):
            if at == step:
                seq = SimSeq(i, f"r{i}", "tiny-llama", now, n, m)
                seq.predicted_output_tokens = pred
                seq.ttft_slo_s, seq.tpot_slo_s = ttft, 0.5
                t = worker.enqueue(seq, now)
                wake = t if t is not None else wake
        if wake is not None and wake <= now:
            wake = worker.on_boundary(now, [], [])
        if step > WORKLOAD[-1][0] and wake is None:
            break
        step += 1
    return rec.calls


def canonical(calls):  # type: ignore[no-untyped-def]
    """Waiting queues compared as sets (the engine keeps arrival order, the simulator puts
    a preempted sequence first; these policies order the queue themselves)."""
    return [(now, v.running, tuple(sorted(v.waiting, key=lambda s: s.seq_id)),
             v.num_free_pages, v.token_budget, v.max_num_seqs, plan)
            for now, v, plan in calls]


@pytest.mark.parametrize("name", ["ecoserve", "orca"])
def test_live_engine_and_simulated_worker_plan_alike(name):
    live = live_plans(name)
    sim = simulated_plans(name)
    assert len(live) > 40
    assert canonical(live) == canonical(sim)
    if name == "ecoserve":  # the workload exercises reservations, growth and lending
        plans = [p for _, _, p in live]
        assert any(p.num_reserved_pages for p in plans)
        assert any(p.preempt for p in plans)
