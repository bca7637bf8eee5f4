"""Every registered policy set serves live (`kvfleet up --policy NAME`: real processes, real
Redis, a real model) with outputs equal to the plain engine's greedy output, and runs in the
simulator under the same name."""

import asyncio

import pytest

from kvfleet.common.client import GatewayClient, sampling
from kvfleet.common.config import EngineSettings, FleetConfig, ModelConfig, WorkerConfig
from kvfleet.common.launcher import launch
from kvfleet.policies import policy_names
from kvfleet.sim import SimConfig, simulate
from kvfleet.sim.workload import SimRequest
from tests.e2e.conftest import TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# (prompt length, output length): a mix of lengths, sent at once so requests share workers
REQUESTS = [(12, 9), (40, 4), (7, 14), (25, 6), (60, 3), (9, 11)]


def _prompt(i: int, n: int) -> list[int]:
    return [(37 * i + 11 * k) % 3000 + 100 for k in range(n)]


@pytest.fixture(scope="module")
def references(reference):
    return [reference.run(_prompt(i, n), max_tokens=m, ignore_eos=True).token_ids
            for i, (n, m) in enumerate(REQUESTS)]


@pytest.mark.parametrize("policy", policy_names())
def test_policy_set_serves_live_and_simulated(policy, references, tmp_path):
    fleet = FleetConfig(
        policy=policy,
        models=[ModelConfig(name=TINY)],
        workers=[WorkerConfig(id="w0", memory_bytes=300_000_000),
                 WorkerConfig(id="w1", memory_bytes=300_000_000)],
        http_port=0, grpc_port=0,
        engine=EngineSettings(num_threads=1, max_num_seqs=8),
    )
    stack = launch(fleet, tmp_path / "stack", timeout_s=300)
    try:
        async def run():
            async with GatewayClient(stack.grpc_address, stack.secrets.api_key) as client:
                return await asyncio.gather(*(
                    client.generate(TINY, prompt_token_ids=_prompt(i, n),
                                    params=sampling(max_tokens=m, ignore_eos=True))
                    for i, (n, m) in enumerate(REQUESTS)))

        outs = asyncio.run(run())
        assert [o.token_ids for o in outs] == references  # a policy changes timing, not text
    finally:
        stack.stop()
    sim = simulate(SimConfig(policy=policy, gpu="CPU", models=["SmolLM2-135M"], num_gpus=2, tp=1),
                   [SimRequest(f"r{i}", 0.01 * i, TINY, n, m)
                    for i, (n, m) in enumerate(REQUESTS)])
    assert all(s.finish_s > 0 and not s.drop_reason for s in sim.seqs)
