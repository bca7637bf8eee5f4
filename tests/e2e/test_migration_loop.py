"""The planner runs the policy set's migration policy live: under KV imbalance `llumnix`
moves a running request to the idle worker (KV over torch.distributed) on its own, and every
output stays the plain engine's greedy output."""

import asyncio

import pytest

from kvfleet.common.client import GatewayClient, sampling
from kvfleet.common.config import EngineSettings, FleetConfig, ModelConfig, WorkerConfig
from kvfleet.common.launcher import launch
from kvfleet.common.redis_store import RedisStore
from kvfleet.services.worker.engine import Engine, EngineConfig
from tests.e2e.conftest import TINY, until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PAGE = 16384  # 16 tokens of tiny-llama KV a page
PAGES = 100
A = ("mig-a", 900, 400)  # request id, prompt tokens, output tokens
B = ("mig-b", 350, 250)


def _prompt(n: int, salt: int) -> list[int]:
    return [(salt * 7 + 13 * k) % 3000 + 100 for k in range(n)]


def _memory_for(pages: int) -> int:
    eng = Engine(EngineConfig(memory_bytes=300_000_000, page_size_bytes=PAGE, num_threads=1,
                              max_num_seqs=8))
    eng.load_model(TINY)
    acc = eng.accounting()
    return acc.weights_bytes + acc.workspace_bytes + pages * PAGE


async def test_llumnix_moves_a_request_off_an_overloaded_worker(reference, tmp_path):
    memory = _memory_for(PAGES)
    fleet = FleetConfig(
        policy="llumnix",
        models=[ModelConfig(name=TINY)],
        workers=[WorkerConfig(id="w0", memory_bytes=memory),
                 WorkerConfig(id="w1", memory_bytes=memory)],
        http_port=0, grpc_port=0,
        engine=EngineSettings(num_threads=1, max_num_seqs=8, page_size_bytes=PAGE),
        planner={"migration_interval_s": 0.05},
    )
    refs = {rid: reference.run(_prompt(n, i), max_tokens=m, ignore_eos=True).token_ids
            for i, (rid, n, m) in enumerate((A, B))}
    stack = await asyncio.to_thread(launch, fleet, tmp_path / "stack", 300)
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        await store.set_draining("w1", True)  # both requests land on w0
        async with GatewayClient(stack.grpc_address, stack.secrets.api_key) as client:
            tasks = [asyncio.create_task(client.generate(
                TINY, request_id=rid, prompt_token_ids=_prompt(n, i),
                params=sampling(max_tokens=m, ignore_eos=True)))
                for i, (rid, n, m) in enumerate((A, B))]

            async def both_on_w0():
                recs = [await store.get_request(rid) for rid, _, _ in (A, B)]
                return all(r is not None and r.worker_id == "w0" for r in recs)

            await until(both_on_w0, timeout_s=60)
            await store.set_draining("w1", False)  # now the policy may use w1
            outs = await asyncio.gather(*tasks)
        assert {o.request_id: o.token_ids for o in outs} == refs
        moves = [e.data for e in await store.events(1000) if e.kind == "migrate"]
        # the policy offers the newest decoding requests: B as a rule, A if B was not
        # decoding at that tick
        assert moves and moves[0]["request_id"] in (A[0], B[0])
        assert (moves[0]["src"], moves[0]["dst"], moves[0]["by"]) == ("w0", "w1", "kv-balance")
    finally:
        await store.close()
        await asyncio.to_thread(stack.stop)
