"""The doubling-budget policy in the real engine, two models of different shapes sharing one
KV pool: under a seeded random mix of arrivals, lengths and page pressure (so requests are
paused with their KV, evicted and recomputed), every output equals the plain FCFS engine's,
and the pool's accounting returns to empty."""

from __future__ import annotations

import random

import pytest
from engine_testkit import TEST_THREADS, greedy, request, run_all, tokens
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from kvfleet.services.worker.core.doubling_budget import DoublingBudgetPolicy
from kvfleet.services.worker.core.step_cost import ModelStepCost
from kvfleet.services.worker.engine import Engine, EngineConfig

pytestmark = pytest.mark.unit

MODELS = ("tiny-llama", "tiny-qwen2")
# Fixed step costs, so the policy's cross-model choices do not depend on the machine: the
# qwen2-shaped model's steps cost eight times the llama-shaped one's.
COSTS = {
    "tiny-llama": ModelStepCost(s_per_token=1e-5, s_weights=0.005, overhead_s=1e-3),
    "tiny-qwen2": ModelStepCost(s_per_token=1e-4, s_weights=0.040, overhead_s=1e-3),
}


def engine(policy=None, budget: int = 64, max_seqs: int = 6) -> Engine:
    eng = Engine(
        EngineConfig(memory_bytes=160 << 20, page_size_bytes=4096,
                     max_num_batched_tokens=budget, max_num_seqs=max_seqs,
                     num_threads=TEST_THREADS),
        policy=policy, step_costs=COSTS,
    )
    for m in MODELS:
        eng.load_model(m)
    return eng


_reference: dict[tuple[str, tuple[int, ...], int], list[int]] = {}
_fcfs: list[Engine] = []


def fcfs_tokens(model: str, prompt: tuple[int, ...], n: int) -> list[int]:
    key = (model, prompt, n)
    if key not in _reference:
        if not _fcfs:
            _fcfs.append(engine(budget=4096))
        eng = _fcfs[0]
        eng.add_request(request("solo", list(prompt), greedy(n), model=model))
        _reference[key] = tokens(run_all(eng)["solo"])
    return _reference[key]


workloads = st.lists(
    st.tuples(
        st.sampled_from(MODELS),
        st.integers(1, 30),  # prompt length
        st.integers(1, 12),  # max tokens
        st.integers(0, 8),  # arrival step
        st.one_of(st.none(), st.integers(1, 12)),  # predicted output length
    ),
    min_size=1,
    max_size=8,
)


@seed(20261123)
@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads, num_pages=st.integers(12, 30), data_seed=st.integers(0, 1000))
def test_outputs_equal_fcfs_and_the_pool_empties(workload, num_pages, data_seed):
    rng = random.Random(data_seed)
    eng = engine(DoublingBudgetPolicy(min_budget=2))
    eng.pool.resize(num_pages)  # a request needs at most 42 tokens: 14 pages of tiny-qwen2
    reqs = [
        (f"r{i}", model, tuple(rng.randrange(49152) for _ in range(n)), m, at, pred)
        for i, (model, n, m, at, pred) in enumerate(workload)
    ]
    out: dict[str, list] = {}
    last = max(r[4] for r in reqs)
    for step in range(5000):
        for rid, model, prompt, m, at, pred in reqs:
            if at == step:
                eng.add_request(request(rid, list(prompt), greedy(m), model=model,
                                        predicted_output_tokens=pred))
        if step > last and not eng.has_unfinished():
            break
        for ev in eng.step():
            out.setdefault(ev.request_id, []).append(ev)
        assert eng.pool.num_used_pages <= eng.pool.num_pages
    for rid, model, prompt, m, _, _ in reqs:
        evs = out[rid]
        assert [e.index for e in evs] == list(range(m))
        assert tokens(evs) == fcfs_tokens(model, prompt, m), rid
    assert eng.pool.num_used_pages == 0
    assert eng.occupancy().num_running == eng.occupancy().num_waiting == 0


def test_a_paused_request_keeps_its_kv_and_resumes_exactly():
    eng = engine(DoublingBudgetPolicy(min_budget=2), budget=256)
    slow = [random.Random(i).sample(range(100, 40000), 20) for i in range(3)]
    for i, p in enumerate(slow):
        eng.add_request(request(f"slow{i}", p, greedy(12), model="tiny-qwen2",
                                predicted_output_tokens=200))
    out: dict[str, list] = {}
    for _ in range(3):
        for ev in eng.step():
            out.setdefault(ev.request_id, []).append(ev)
    held = {s.seq_id: len(s.pages) for s in eng.sequences("tiny-qwen2")}
    eng.add_request(request("short", [5, 6, 7], greedy(3), model="tiny-llama",
                            predicted_output_tokens=3))
    paused_steps = 0
    while eng.has_unfinished():
        for ev in eng.step():
            out.setdefault(ev.request_id, []).append(ev)
        if "short" in out and len(out["short"]) < 3:
            paused_steps += 1
            assert {s.seq_id: len(s.pages) for s in eng.sequences("tiny-qwen2")} == held
    assert paused_steps > 0  # the short request ran alone while the others kept their pages
    assert eng.num_preemptions == 0
    for i, p in enumerate(slow):
        assert tokens(out[f"slow{i}"]) == fcfs_tokens("tiny-qwen2", tuple(p), 12)
    assert tokens(out["short"]) == fcfs_tokens("tiny-llama", (5, 6, 7), 3)
    assert eng.pool.num_used_pages == 0
