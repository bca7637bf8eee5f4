"""Under load, with requests queued at the scheduler and workers busy, the live scheduler and
the simulator make identical dispatch decisions: every decision the live scheduler takes
(real workers running tiny-llama, real Redis, their heartbeats as they come) is replayed
through the simulator's own dispatch step with the same inputs."""

import asyncio
import random
import time

import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import EngineSettings, SchedulerSettings, WorkerSettings
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.services.scheduler.server import start as start_scheduler
from kvfleet.services.worker.engine import Engine, EngineConfig
from kvfleet.services.worker.server import start as start_worker
from kvfleet.sim.replay import replay_decisions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-llama"
PAGE = 16384  # 16 tokens a page
PAGES = 48
FRACTION = 0.25


def _memory() -> int:
    eng = Engine(EngineConfig(memory_bytes=300_000_000, page_size_bytes=PAGE, num_threads=1,
                              max_num_seqs=4))
    eng.load_model(MODEL)
    acc = eng.accounting()
    return acc.weights_bytes + acc.workspace_bytes + PAGES * PAGE


@pytest.mark.parametrize("policy", ["vllm", "best-fit", "round-robin"])
async def test_decisions_under_load_match_the_simulators(redis_url, policy):
    memory = _memory()
    workers = [await start_worker(WorkerSettings(
        redis_url=redis_url, worker_id=f"w{i}", memory_bytes=memory, preload=[MODEL],
        heartbeat_s=0.05, occupancy_min_s=0.02,
        engine=EngineSettings(num_threads=1, max_num_seqs=4, page_size_bytes=PAGE),
    )) for i in range(2)]
    sched = await start_scheduler(SchedulerSettings(
        redis_url=redis_url, tick_s=0.01, policy=policy, worker_queue_fraction=FRACTION))
    sched.dispatcher.decision_log = []
    store = RedisStore.from_url(redis_url)
    rng = random.Random(5)
    rids = [f"r{i:02d}" for i in range(24)]
    try:
        for rid in rids:
            await store.enqueue(rs.RequestRecord(
                rid, MODEL, tuple(rng.randrange(100, 3000) for _ in range(rng.randint(40, 200))),
                SamplingParams(max_tokens=rng.randint(10, 40), ignore_eos=True), time.time()))
            await asyncio.sleep(rng.uniform(0.0, 0.02))

        async def all_done() -> bool:
            recs = [await store.get_request(r) for r in rids]
            return all(r is not None and r.state == rs.FINISHED for r in recs)

        deadline = time.monotonic() + 120
        while not await all_done():
            assert time.monotonic() < deadline, "the burst did not finish in time"
            await asyncio.sleep(0.05)
    finally:
        await sched.stop()
        for w in workers:
            await w.stop()
        await store.close()
    log = sched.dispatcher.decision_log
    assert sum(len(out) for _, out in log) == len(rids)
    # the load this test is about: decisions with requests left waiting while workers ran
    busy = [inp for inp, out in log
            if len(out) < len(inp.queue) and any(r.num_running for r in inp.reports)]
    assert busy, "no decision was taken under load"
    assert any(inp.pending for inp, _ in log), "no decision saw an unreflected assignment"
    assert replay_decisions(log, policy, FRACTION) == [out for _, out in log]
