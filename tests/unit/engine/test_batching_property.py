"""Batched paged execution equals one-request-at-a-time execution, under a seeded random mix
of arrivals, lengths, chunked prefill and preemptions; the pool always ends empty."""

from __future__ import annotations

import random

import pytest
from engine_testkit import greedy, request, run_all, tiny_engine, tokens
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from kvfleet.services.worker.engine import Engine

pytestmark = pytest.mark.unit

_reference: dict[tuple[tuple[int, ...], int], list[int]] = {}
_solo: list[Engine] = []


def solo_tokens(prompt: tuple[int, ...], n: int) -> list[int]:
    key = (prompt, n)
    if key not in _reference:
        if not _solo:
            _solo.append(tiny_engine(page_size_bytes=64 << 10, budget=4096))
        eng = _solo[0]
        eng.add_request(request("solo", list(prompt), greedy(n)))
        _reference[key] = tokens(run_all(eng)["solo"])
    return _reference[key]


workloads = st.lists(
    st.tuples(
        st.integers(1, 40),  # prompt length
        st.integers(1, 10),  # max tokens
        st.integers(0, 6),  # arrival step
    ),
    min_size=1,
    max_size=8,
)


@seed(20261122)
@settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    workload=workloads,
    budget=st.sampled_from([8, 24, 64]),
    num_pages=st.integers(13, 30),
    data_seed=st.integers(0, 1000),
)
def test_batched_equals_sequential(workload, budget, num_pages, data_seed):
    rng = random.Random(data_seed)
    # tiny-llama: 1 KiB of KV per token; 4 KiB pages hold 4 tokens. A request needs at most
    # 50 tokens = 13 pages, so every request fits alone but the mix forces preemptions.
    eng = tiny_engine(budget=budget, max_seqs=6)
    eng.pool.resize(num_pages)
    reqs = [
        (f"r{i}", tuple(rng.randrange(49152) for _ in range(n)), m, at)
        for i, (n, m, at) in enumerate(workload)
    ]
    out: dict[str, list] = {}
    step = 0
    while step < 5000:
        for rid, prompt, m, at in reqs:
            if at == step:
                eng.add_request(request(rid, list(prompt), greedy(m)))
        if step > max(at for *_, at in reqs) and not eng.has_unfinished():
            break
        for ev in eng.step():
            out.setdefault(ev.request_id, []).append(ev)
        acc = eng.accounting()
        assert acc.num_used_pages <= acc.num_total_pages
        step += 1
    for rid, prompt, m, _ in reqs:
        evs = out[rid]
        assert [e.index for e in evs] == list(range(m))
        assert evs[-1].finish_reason == "length"
        assert tokens(evs) == solo_tokens(prompt, m), rid
    acc = eng.accounting()
    assert acc.num_used_pages == 0
    assert eng.occupancy().num_running == eng.occupancy().num_waiting == 0


def test_preemption_happens_under_page_pressure():
    eng = tiny_engine(budget=64, max_seqs=8)
    eng.pool.resize(14)
    rng = random.Random(7)
    prompts = [[rng.randrange(49152) for _ in range(18)] for _ in range(4)]
    for i, p in enumerate(prompts):
        eng.add_request(request(f"p{i}", p, greedy(26)))
    out = run_all(eng)
    assert eng.num_preemptions > 0
    for i, p in enumerate(prompts):
        assert tokens(out[f"p{i}"]) == solo_tokens(tuple(p), 26)
    assert eng.pool.num_used_pages == 0
