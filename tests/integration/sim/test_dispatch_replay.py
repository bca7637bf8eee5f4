"""One short trace through the live scheduler (real Redis, real gRPC servers standing in for
workers, wall clock) and through the simulator (virtual clock): the same dispatch policy
core must make the same decisions."""

import asyncio
import time

import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import SchedulerSettings
from kvfleet.common.grpc_util import start_server
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.services.scheduler.core.types import WorkerView
from kvfleet.services.scheduler.server import start
from kvfleet.sim import replay_dispatch
from kvfleet.sim.workload import SimRequest

pytestmark = pytest.mark.integration

PAGES = 100
PROMPT = 32
MAX_TOKENS = 8


class RecordingWorker(worker_pb2_grpc.WorkerServicer):
    def __init__(self, wid: str, log: list[tuple[str, str]]) -> None:
        self.wid = wid
        self.log = log

    async def Assign(self, request, context):  # noqa: N802
        self.log.append((request.request_id, self.wid))
        return worker_pb2.AssignResponse()


async def _live(redis_url: str, policy: str, gaps_s: list[float], n_workers: int):
    store = RedisStore.from_url(redis_url)
    log: list[tuple[str, str]] = []
    servers = []
    for i in range(n_workers):
        wid = f"w{i}"
        running = await start_server(
            "127.0.0.1", 0,
            lambda s, wid=wid: worker_pb2_grpc.add_WorkerServicer_to_server(
                RecordingWorker(wid, log), s),
            ["kvfleet.worker.v1.Worker"],
        )
        servers.append(running)
        await store.register_worker(rs.WorkerInfo(wid, running.address, "boot", time.time()))
        # Idle workers: every page free (the stand-ins run nothing, so this stays true).
        await store.heartbeat(rs.Occupancy(wid, ("m",), PAGES, PAGES, tokens_per_page={"m": 16}),
                              60_000)
    sched = await start(SchedulerSettings(redis_url=redis_url, tick_s=0.01,
                                          reclaim_idle_s=0.2, policy=policy))
    try:
        arrival = 0.0
        for i, gap in enumerate(gaps_s):
            arrival += gap
            await store.enqueue(rs.RequestRecord(
                f"r{i}", "m", tuple(range(1, PROMPT + 1)),
                SamplingParams(max_tokens=MAX_TOKENS), arrival))
            deadline = time.monotonic() + 10
            while len(log) < i + 1:  # wait for the decision before sending the next
                assert time.monotonic() < deadline, "no dispatch decision in time"
                await asyncio.sleep(0.005)
            await asyncio.sleep(gap)
    finally:
        await sched.stop()
        for s in servers:
            await s.stop(0)
        await store.close()
    return log


def _sim(policy: str, gaps_s: list[float], n_workers: int):
    arrival = 0.0
    requests = []
    for i, gap in enumerate(gaps_s):
        arrival += gap
        requests.append(SimRequest(f"r{i}", arrival, "m", PROMPT, MAX_TOKENS))
    workers = [WorkerView(f"w{i}", ("m",), PAGES, PAGES, {"m": 16}) for i in range(n_workers)]
    return replay_dispatch(requests, workers, policy, gpu="CPU", model="SmolLM2-135M")


@pytest.mark.parametrize("policy", ["round-robin", "vllm"])
async def test_live_scheduler_and_simulator_make_the_same_dispatch_decisions(redis_url, policy):
    # Requests far enough apart that each one finishes in the simulator before the next
    # arrives, so both paths see idle workers at every decision.
    gaps = [0.05, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    live = await _live(redis_url, policy, gaps, n_workers=3)
    sim = _sim(policy, gaps, n_workers=3)
    assert live == sim
    if policy == "round-robin":
        assert [w for _, w in sim] == ["w0", "w1", "w2", "w0", "w1", "w2", "w0"]
