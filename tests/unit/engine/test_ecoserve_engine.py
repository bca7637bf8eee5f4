"""EcoServe and its baselines in the real engine: greedy outputs equal the FCFS policy's for
every request (a policy changes timing, never text), under reservation growth, lending and
preemption; the reserved pages show in the engine's occupancy and return to zero."""

from __future__ import annotations

import random

import pytest
from engine_testkit import TEST_THREADS, greedy, request, tokens

from kvfleet.common.slo import ServiceLevel
from kvfleet.services.worker.core.batch_policy import BatchPolicy, FcfsBatchPolicy
from kvfleet.services.worker.core.ecoserve_policy import EcoServeBatchPolicy, OrcaBatchPolicy
from kvfleet.services.worker.core.vllm_v0_policy import VllmV0BatchPolicy
from kvfleet.services.worker.engine import Engine, EngineConfig

pytestmark = pytest.mark.unit

# (prompt length, output length, predicted output): under- and over-predictions
MIX = [(5, 30, 60), (9, 6, 6), (8, 5, 5), (6, 4, 4), (20, 12, 10), (12, 18, 9),
       (7, 5, 20), (18, 14, 4)]


def run(policy: BatchPolicy, num_pages: int) -> tuple[dict[str, list[int]], Engine, int]:
    eng = Engine(EngineConfig(memory_bytes=64 << 20, page_size_bytes=4096,
                              max_num_batched_tokens=32, max_num_seqs=6,
                              num_threads=TEST_THREADS), policy)
    eng.load_model("tiny-llama")
    eng.pool.resize(num_pages)  # 4 tokens a page: tight, so requests wait, grow and borrow
    rng = random.Random(4)
    out: dict[str, list] = {}
    most_reserved = 0
    for step in range(5000):
        if step < len(MIX):  # one arrival a step
            n, m, pred = MIX[step]
            eng.add_request(request(f"r{step}", [rng.randrange(49152) for _ in range(n)],
                                    greedy(m), predicted_output_tokens=pred,
                                    slo=ServiceLevel(ttft_s=5.0, tpot_s=1.0)))
        elif not eng.has_unfinished():
            break
        for ev in eng.step():
            out.setdefault(ev.request_id, []).append(ev)
        occ = eng.occupancy()
        assert 0 <= occ.num_reserved_pages <= occ.num_free_pages
        most_reserved = max(most_reserved, occ.num_reserved_pages)
    assert eng.pool.num_used_pages == 0 and eng.occupancy().num_reserved_pages == 0
    return {rid: tokens(evs) for rid, evs in out.items()}, eng, most_reserved


@pytest.fixture(scope="module")
def fcfs_outputs():
    outputs, _, reserved = run(FcfsBatchPolicy(), 20)
    assert reserved == 0
    return outputs


def test_ecoserve_outputs_equal_fcfs_under_growth_lending_and_preemption(fcfs_outputs):
    policy = EcoServeBatchPolicy()
    outputs, eng, reserved = run(policy, 20)
    assert outputs == fcfs_outputs
    assert reserved > 0  # reservations were reported
    assert policy.num_growths > 0 and policy.num_loans > 0 and eng.num_preemptions > 0
    assert len(policy.ledger) <= len(MIX)


@pytest.mark.parametrize("policy", [OrcaBatchPolicy, VllmV0BatchPolicy])
def test_baseline_outputs_equal_fcfs(policy, fcfs_outputs):
    outputs, _, _ = run(policy(), 20)
    assert outputs == fcfs_outputs
