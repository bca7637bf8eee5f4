"""One short trace through the live stack (real worker processes, wall clock) and through the
simulator (virtual clock): the scheduler's dispatch core, driven by the workers' real
occupancy reports in one and by simulated pools in the other, makes the same decisions.

The trace exercises the unified KV pool: while a long smollm2 request holds pages on w0 (the
only worker with smollm2, and one of two with the tiny model), tiny-model requests go to w1,
whose pool is all free; once it has finished they go back to w0 (ties break by worker id)."""

import asyncio

import pytest

from kvfleet.common.client import GatewayClient, sampling
from kvfleet.common.redis_store import RedisStore
from kvfleet.services.scheduler.core.types import WorkerView
from kvfleet.sim import replay_dispatch
from kvfleet.sim.workload import SimRequest
from tests.e2e.conftest import API_KEY, SMOL, TINY, until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LONG = ("dual-long", SMOL, 24, 400)  # request id, model, prompt tokens, output tokens
DURING = [("dual-a", TINY, 40, 6), ("dual-b", TINY, 90, 6), ("dual-c", TINY, 20, 6)]
AFTER = [("dual-d", TINY, 64, 6), ("dual-e", TINY, 30, 6)]


async def _occupancy(store: RedisStore, idle: set[str], after_s: float = 0.0):
    """Occupancy once every planned model is loaded, the workers in ``idle`` run nothing, and
    every heartbeat was written after ``after_s`` (so it shows every request assigned and
    finished before then: heartbeats are rate-limited, and an older one can look idle while
    the scheduler rightly still counts a request it assigned since)."""

    async def ready():
        plan = await store.get_plan()
        workers = await store.workers()
        occs = {wid: occ for wid, (_, occ) in workers.items() if occ is not None}
        if plan is None or len(occs) != len(workers):
            return None
        for o in occs.values():
            if o.loading or set(o.models) != set(plan.models_of(o.worker_id)) or o.ts <= after_s:
                return None
            busy = o.num_free_pages != o.num_total_pages or o.num_running or o.num_waiting
            if o.worker_id in idle and busy:
                return None
        return occs

    return await until(ready, timeout_s=120)


async def _finished_at(store: RedisStore, live: list[tuple[str, str]]) -> float:
    """When the last of the requests run so far finished (the worker's clock)."""
    return max([(await store.all_tokens(rid))[-1].ts for rid, _ in live], default=0.0)


async def _run(client: GatewayClient, store: RedisStore, req) -> tuple[str, str]:
    rid, model, n_prompt, n_out = req
    out = await client.generate(
        model, request_id=rid, prompt_token_ids=list(range(100, 100 + n_prompt)),
        params=sampling(max_tokens=n_out, ignore_eos=True),
    )
    assert len(out.token_ids) == n_out
    rec = await store.get_request(rid)
    assert rec is not None and rec.worker_id
    return rid, rec.worker_id


async def test_live_stack_and_simulator_make_the_same_dispatch_decisions(stack):
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        occs = await _occupancy(store, idle={"w0", "w1"})
        views = [WorkerView(o.worker_id, tuple(o.models), o.num_total_pages, o.num_free_pages,
                            dict(o.tokens_per_page)) for o in sorted(occs.values(),
                                                                     key=lambda o: o.worker_id)]
        live: list[tuple[str, str]] = []
        async with GatewayClient(stack.grpc_address, API_KEY) as client:
            long_task = asyncio.create_task(_run(client, store, LONG))

            async def long_running():
                o = (await store.workers())["w0"][1]
                return o is not None and o.num_running >= 1 and o.num_free_pages < o.num_total_pages

            await until(long_running, timeout_s=60)
            for req in DURING:
                await _occupancy(store, idle={"w1"}, after_s=await _finished_at(store, live))
                live.append(await _run(client, store, req))
            assert not long_task.done(), "the long request ended too soon for this trace"
            live.insert(0, await long_task)
            for req in AFTER:
                await _occupancy(store, idle={"w0", "w1"},
                                 after_s=await _finished_at(store, live))
                live.append(await _run(client, store, req))

        # Virtual arrivals: the tiny requests come while the long one runs, one at a time,
        # and the last ones long after it has finished.
        arrivals = [0.0, 1.0, 2.0, 3.0, 1000.0, 2000.0]
        sim_requests = [SimRequest(rid, t, model, n_prompt, n_out)
                        for (rid, model, n_prompt, n_out), t in zip([LONG, *DURING, *AFTER],
                                                                    arrivals, strict=True)]
        sim = replay_dispatch(sim_requests, views, "most-free-kv")
        assert live == sim
        assert [w for _, w in live] == ["w0", "w1", "w1", "w1", "w0", "w0"]
    finally:
        await store.close()
