"""The simulator's fast-forward (a run of unchanged decode steps as one event) is exact:
every request's first token, finish and preemptions are the same as when every step is its
own event, for policies whose plans change with the clock (SLO slack classes) or with token
counts (reservations running out), and for the FCFS baselines (re-planning after a
preemption)."""

import pytest

from kvfleet.load.slo import Slo, SloSet
from kvfleet.sim import SimConfig, Simulator
from kvfleet.sim.workload import poisson_requests

pytestmark = pytest.mark.unit


def outcome(fast_forward: bool, policy: str):  # type: ignore[no-untyped-def]
    # One worker with an unbounded queue allowance: dispatch does not depend on how often
    # the worker publishes its occupancy, only the worker's own stepping is compared.
    cfg = SimConfig(num_gpus=1, tp=1, policy=policy, gpu="RTX4090", models=["Llama-2-7B"],
                    predictor="noisy-oracle", predictor_spread=0.3, worker_queue_fraction=100.0,
                    max_tokens=1000, fast_forward=fast_forward)
    reqs = poisson_requests(90, 3.0, input_mean=600, output_mean=300, max_input=3000,
                            max_output=1000, seed=5)
    result = Simulator(cfg, reqs, check_invariants=True,
                       slos=SloSet(Slo(ttft_s=2.0, tpot_s=0.1))).run()
    return result, [(s.request_id, s.first_token_s, s.finish_s, s.num_preemptions)
                    for s in result.seqs]


@pytest.mark.parametrize("policy", ["ecoserve", "vllm", "vllm-v0", "orca"])
def test_fast_forward_equals_step_by_step(policy):
    fast, a = outcome(True, policy)
    slow, b = outcome(False, policy)
    assert fast.num_events < slow.num_events / 2  # it did fast-forward
    assert [(r, p) for r, _, _, p in a] == [(r, p) for r, _, _, p in b]
    for (_, ft_a, fin_a, _), (_, ft_b, fin_b, _) in zip(a, b, strict=True):
        assert ft_a == pytest.approx(ft_b, rel=1e-9, abs=1e-9)
        assert fin_a == pytest.approx(fin_b, rel=1e-9, abs=1e-9)
    if policy in ("ecoserve", "vllm"):
        assert sum(p for *_, p in a) > 0  # memory pressure: growth / recompute preemptions
