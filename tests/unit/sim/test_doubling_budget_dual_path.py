"""Dual path: the doubling-budget policy makes the same decisions in the real engine and in the
simulated worker. Both serve the same requests of two models (different shapes, one KV pool)
with the same step costs; the engine's clock follows the simulator's step times, so at every
step both policies see the same requests at the same time and must pick the same chunks and
evictions."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from kvfleet.common.models import read_spec, resolve_model
from kvfleet.common.slo import ServiceLevel
from kvfleet.services.planner.model_profiles import shape_of
from kvfleet.services.worker.core.doubling_budget import DoublingBudgetPolicy
from kvfleet.services.worker.engine import Engine, EngineConfig, EngineRequest, SamplingParams
from kvfleet.sim.cost_model import CostModel
from kvfleet.sim.presets import gpu_preset
from kvfleet.sim.seq import SimSeq
from kvfleet.sim.worker import SimWorker, WorkerConfig

pytestmark = pytest.mark.unit

MODELS = ("tiny-llama", "tiny-qwen2")


class Recording(DoublingBudgetPolicy):
    """Logs every plan; never lets the simulator repeat a plan unasked (one plan a step)."""

    def __init__(self) -> None:
        super().__init__(min_budget=2)
        self.log: list[tuple[tuple[tuple[str, int], ...], tuple[str, ...]]] = []

    def plan(self, view, now_s):
        plan = replace(super().plan(view, now_s), repeat_steps=1)
        self.log.append((tuple(sorted((c.seq_id, c.num_tokens) for c in plan.chunks)),
                         tuple(sorted(plan.preempt))))
        return plan


class StepClock:
    """The policy reads the step's start; the tokens the step makes carry its end (the start
    plus the simulator's time for the chunks the policy chose)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.duration = None
        self.calls = 0

    def begin(self, start: float, duration) -> None:  # type: ignore[no-untyped-def]
        self.start, self.duration, self.calls = start, duration, 0

    def now_s(self) -> float:
        self.calls += 1
        return self.start if self.calls == 1 else self.start + self.duration()


def costs() -> dict[str, CostModel]:
    cpu = gpu_preset("CPU")
    return {m: CostModel(cpu, shape_of(m, read_spec(resolve_model(m)), 4), 1) for m in MODELS}


def workload(seed: int):
    rng = random.Random(seed)
    out = []
    t = 0.0
    for i in range(10):
        t += rng.expovariate(40.0)
        model = MODELS[rng.random() < 0.4]
        prompt = [rng.randrange(100, 40000) for _ in range(rng.randint(4, 40))]
        out.append((f"r{i}", t, model, prompt, rng.randint(2, 14), rng.choice([None, 3, 10])))
    return out


def step_time(cost: dict[str, CostModel], items: list[tuple[str, int, int]]) -> float:
    """The simulator's step time of (model, computed tokens, new tokens) chunks."""
    per: dict[str, list[float]] = {}
    for model, c, n in items:
        acc = per.setdefault(model, [0, 0.0, 0.0, 0])
        acc[0] += n
        acc[1] += n * c + n * (n + 1) / 2
        acc[2] += c + n
        acc[3] += 1
    if len(per) == 1:
        (m, a), = per.items()
        return cost[m].step_s(int(a[0]), a[1], a[2], int(a[3]))
    total = overhead = 0.0
    for m, a in per.items():
        sc = cost[m].step_cost(int(a[0]), a[1], a[2], int(a[3]))
        total += max(sc.compute_s, sc.memory_s)
        overhead = max(overhead, sc.overhead_s)
    return total + overhead


SLO = ServiceLevel(ttft_s=0.05, tpot_s=0.02)


def run_engine(reqs, cost, pages):
    policy = Recording()
    clock = StepClock()
    eng = Engine(EngineConfig(memory_bytes=160 << 20, page_size_bytes=4096,
                              max_num_batched_tokens=48, max_num_seqs=6, num_threads=1),
                 policy=policy, clock=clock,
                 step_costs={m: c.coefficients() for m, c in cost.items()})
    for m in MODELS:
        eng.load_model(m)
    eng.pool.resize(pages)
    now, pending = 0.0, list(reqs)
    by_id = {rid: model for rid, _, model, *_ in reqs}
    while pending or eng.has_unfinished():
        if not eng.has_unfinished():
            now = max(now, pending[0][1])
        while pending and pending[0][1] <= now:
            rid, t, model, prompt, n, pred = pending.pop(0)
            eng.add_request(EngineRequest(rid, model, tuple(prompt),
                                          SamplingParams(max_tokens=n, ignore_eos=True),
                                          arrival_s=t, slo=SLO, predicted_output_tokens=pred))
        before = {s.seq_id: s.num_computed for s in eng.sequences()}
        plan_count = len(policy.log)

        def duration(before=before):  # type: ignore[no-untyped-def]
            chunks, _ = policy.log[-1]
            return step_time(cost, [(by_id[r], before.get(r, 0), k) for r, k in chunks])

        clock.begin(now, duration)
        eng.step()
        if len(policy.log) > plan_count:
            now += duration()
    return policy.log, eng


def run_sim(reqs, cost, pages, tpp):
    policy = Recording()
    cfg = WorkerConfig("w", MODELS, pages, tpp, token_budget=48, max_num_seqs=6)
    worker = SimWorker(0, cfg, cost, policy)
    seqs = []
    for idx, (rid, t, model, prompt, n, pred) in enumerate(reqs):
        s = SimSeq(idx, rid, model, t, len(prompt), n)
        s.predicted_output_tokens = pred
        s.ttft_slo_s, s.tpot_slo_s = SLO.ttft_s, SLO.tpot_s
        seqs.append(s)
    wake = None
    i = 0
    done: list[SimSeq] = []
    while i < len(seqs) or wake is not None:
        if wake is None or (i < len(seqs) and seqs[i].arrival_s < wake):
            t = worker.enqueue(seqs[i], seqs[i].arrival_s)
            i += 1
            wake = t if t is not None else wake
            continue
        now, wake = wake, None
        wake = worker.on_boundary(now, done, [], None)
        worker.check()
    return policy.log, worker


@pytest.mark.parametrize("seed", [1, 2])
def test_engine_and_simulator_decide_alike(seed):
    reqs = workload(seed)
    cost = costs()
    probe = Engine(EngineConfig(memory_bytes=160 << 20, page_size_bytes=4096, num_threads=1))
    for m in MODELS:
        probe.load_model(m)
    tpp = {m: probe.model(m).layout.tokens_per_page for m in MODELS}
    pages = 30
    live, eng = run_engine(reqs, cost, pages)
    simulated, worker = run_sim(reqs, cost, pages, tpp)
    assert live == simulated
    assert any(len({r for r, _ in chunks}) < 2 for chunks, _ in live)  # not trivially all-in
    assert eng.pool.num_used_pages == 0 and worker.free_pages == worker.total_pages
