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
    """Accepts every assignment and counts it, as a worker does (its heartbeat, written by
    the test, never shows them)."""

    def __init__(self, wid: str, log: list[tuple[str, str]]) -> None:
        self.wid = wid
        self.log = log
        self.intake_seq = 0

    async def Assign(self, request, context):  # noqa: N802
        self.log.append((request.request_id, self.wid))
        self.intake_seq += 1
        return worker_pb2.AssignResponse(boot_id="boot", intake_seq=self.intake_seq)


async def _live(redis_url: str, policy: str, gaps_s: list[float], n_workers: int):
    store = RedisStore.from_url(redis_url)
    log: list[tuple[str, str]] = []
    servers = []
    stand_ins: dict[str, RecordingWorker] = {}

    async def beat(wid: str) -> None:  # idle, having run everything it was given
        await store.heartbeat(rs.Occupancy(wid, ("m",), PAGES, PAGES, tokens_per_page={"m": 16},
                                           boot_id="boot", intake_seq=stand_ins[wid].intake_seq),
                              60_000)

    for i in range(n_workers):
        wid = f"w{i}"
        stand_ins[wid] = RecordingWorker(wid, log)
        running = await start_server(
            "127.0.0.1", 0,
            lambda s, wid=wid: worker_pb2_grpc.add_WorkerServicer_to_server(stand_ins[wid], s),
            ["kvfleet.worker.v1.Worker"],
        )
        servers.append(running)
        await store.register_worker(rs.WorkerInfo(wid, running.address, "boot", time.time()))
        await beat(wid)
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
            await beat(log[-1][1])  # it ran the request before the next arrives
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


async def test_a_burst_in_one_tick_splits_by_capacity_live_and_simulated(redis_url):
    """Twenty requests reach the scheduler in one tick; two idle workers of 40 and 120
    pages take them by capacity (no queue allowance), the rest wait. The live scheduler and
    the simulator decide alike."""
    store = RedisStore.from_url(redis_url)
    log: list[tuple[str, str]] = []
    servers = []
    sizes = {"w0": 40, "w1": 120}
    try:
        for wid, pages in sizes.items():
            running = await start_server(
                "127.0.0.1", 0,
                lambda s, wid=wid: worker_pb2_grpc.add_WorkerServicer_to_server(
                    RecordingWorker(wid, log), s),
                ["kvfleet.worker.v1.Worker"],
            )
            servers.append(running)
            await store.register_worker(rs.WorkerInfo(wid, running.address, "boot", time.time()))
            await store.heartbeat(rs.Occupancy(wid, ("m",), pages, pages,
                                               tokens_per_page={"m": 16}, boot_id="boot"),
                                  60_000)
        for i in range(20):  # 160 prompt tokens: 10 pages each
            await store.enqueue(rs.RequestRecord(f"b{i:02d}", "m", tuple(range(1, 161)),
                                                 SamplingParams(max_tokens=4), 100.0 + i * 1e-3))
        sched = await start(SchedulerSettings(redis_url=redis_url, tick_s=0.01,
                                              policy="vllm", worker_queue_fraction=0.0))
        try:
            deadline = time.monotonic() + 10
            while len(log) < 16:
                assert time.monotonic() < deadline, "the burst was not dispatched in time"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # a few more ticks: nobody has room for the rest
            assert len(log) == 16 and await store.queue_depth("m") == (4, 4 * 160)
        finally:
            await sched.stop()
    finally:
        for s in servers:
            await s.stop(0)
        await store.close()
    counts = {w: sum(1 for _, x in log if x == w) for w in sizes}
    assert counts == {"w0": 4, "w1": 12}  # by capacity, not all to the freest worker
    views = [WorkerView(w, ("m",), p, p, {"m": 16}) for w, p in sizes.items()]
    sim = replay_dispatch([SimRequest(f"b{i:02d}", 0.0, "m", 160, 4) for i in range(20)],
                          views, "vllm", worker_queue_fraction=0.0)
    assert sorted(log) == sorted(sim[:16]) and len(sim) == 20  # later, once room opens
