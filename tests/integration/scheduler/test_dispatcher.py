"""The scheduler against real Redis and real gRPC servers that stand in for workers (they
record Assign calls; the real worker is exercised by the e2e tests)."""

import asyncio
import time

import grpc
import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import SchedulerSettings
from kvfleet.common.grpc_util import start_server
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.services.scheduler.server import start

pytestmark = pytest.mark.integration


class RecordingWorker(worker_pb2_grpc.WorkerServicer):
    def __init__(self) -> None:
        self.assigned: list[worker_pb2.AssignRequest] = []

    async def Assign(self, request, context):  # noqa: N802
        self.assigned.append(request)
        return worker_pb2.AssignResponse()


async def _worker(store: RedisStore, wid: str, free: int, ttl_ms: int = 60_000):
    servicer = RecordingWorker()
    running = await start_server(
        "127.0.0.1",
        0,
        lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(servicer, s),
        ["kvfleet.worker.v1.Worker"],
    )
    await store.register_worker(rs.WorkerInfo(wid, running.address, "boot", time.time()))
    await store.heartbeat(rs.Occupancy(wid, ("m",), 100, free, tokens_per_page={"m": 16}), ttl_ms)
    return servicer, running


def _rec(rid: str, arrival_s: float) -> rs.RequestRecord:
    return rs.RequestRecord(
        rid, "m", tuple(range(1, 33)), SamplingParams(max_tokens=8), arrival_s
    )


async def _until(pred, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _settings(redis_url: str, **kw) -> SchedulerSettings:
    return SchedulerSettings(**{"redis_url": redis_url, "tick_s": 0.01, "reclaim_idle_s": 0.2,
                                **kw})


async def test_dispatches_to_most_free_and_acks(redis_url):
    store = RedisStore.from_url(redis_url)
    w0, r0 = await _worker(store, "w0", free=10)
    w1, r1 = await _worker(store, "w1", free=90)
    sched = await start(_settings(redis_url))
    try:
        await store.enqueue(_rec("a", 1.0))
        await _until(lambda: len(w0.assigned) + len(w1.assigned) == 1)
        assert [a.request_id for a in w1.assigned] == ["a"]
        rec = await store.get_request("a")
        assert (rec.state, rec.worker_id) == (rs.ASSIGNED, "w1")
        # The scheduler acks the queue entry once the worker's reply is back, a moment after
        # the worker has taken the request.
        deadline = time.monotonic() + 10.0
        while (await store.r.xpending(rs.queue_key("m"), rs.QUEUE_GROUP))["pending"]:
            assert time.monotonic() < deadline, "queue entry never acked"
            await asyncio.sleep(0.01)
    finally:
        await sched.stop()
        await r0.stop(0)
        await r1.stop(0)
        await store.close()


async def test_an_idle_scheduler_paces_its_loop_before_any_model_has_a_queue(redis_url):
    """With no queue stream yet (no request ever sent) there is nothing to block on; the loop
    must still wait a tick between reads, not spin (it used most of a core)."""
    sched = await start(_settings(redis_url, tick_s=0.05))
    try:
        await asyncio.sleep(0.3)  # past recovery
        before = sched.dispatcher.num_ticks
        await asyncio.sleep(1.0)
        assert sched.dispatcher.num_ticks - before <= 1.0 / 0.05 + 2
    finally:
        await sched.stop()


async def test_requests_queued_during_a_restart_all_get_assigned(redis_url):
    store = RedisStore.from_url(redis_url)
    sched = await start(_settings(redis_url))
    for i in range(5):  # no worker yet: the scheduler reads them and keeps them pending
        await store.enqueue(_rec(f"r{i}", float(i)))
    await _until(lambda: len(sched.dispatcher.queue) == 5)
    await sched.stop()
    w0, r0 = await _worker(store, "w0", free=50)
    sched = await start(_settings(redis_url))
    try:
        await _until(lambda: len(w0.assigned) == 5)
        assert sorted(a.request_id for a in w0.assigned) == [f"r{i}" for i in range(5)]
    finally:
        await sched.stop()
        await r0.stop(0)
        await store.close()


async def test_a_new_consumer_claims_a_dead_schedulers_pending_entries(redis_url):
    store = RedisStore.from_url(redis_url)
    old = await start(_settings(redis_url, consumer="old"))
    await store.enqueue(_rec("x", 1.0))
    await _until(lambda: "x" in old.dispatcher.queue)
    await old.stop()
    w0, r0 = await _worker(store, "w0", free=50)
    new = await start(_settings(redis_url, consumer="new"))
    try:
        await _until(lambda: [a.request_id for a in w0.assigned] == ["x"])
    finally:
        await new.stop()
        await r0.stop(0)
        await store.close()


async def test_dead_worker_requests_resume_elsewhere_with_their_tokens(redis_url):
    store = RedisStore.from_url(redis_url)
    w0, r0 = await _worker(store, "w0", free=99, ttl_ms=300)
    sched = await start(_settings(redis_url))
    try:
        await store.enqueue(_rec("d", 1.0))
        await _until(lambda: len(w0.assigned) == 1)
        await store.append_tokens("d", [rs.TokenEntry(0, 7, "x"), rs.TokenEntry(1, 8, "y")])
        w1, r1 = await _worker(store, "w1", free=10)
        # w0 stops heartbeating (its key expires); its request goes to w1 with the tokens so far
        await _until(lambda: len(w1.assigned) == 1)
        assert list(w1.assigned[0].output_token_ids) == [7, 8]
        assert list(w1.assigned[0].prompt_token_ids) == list(range(1, 33))
        assert (await store.get_request("d")).num_resumes == 1
        assert "w0" not in await store.workers()
        kinds = [e.kind for e in await store.events()]
        assert "worker_dead" in kinds and "requeue" in kinds
        await r1.stop(0)
    finally:
        await sched.stop()
        await r0.stop(0)
        await store.close()


async def test_cancelled_before_dispatch_is_dropped_with_an_abort(redis_url):
    store = RedisStore.from_url(redis_url)
    await store.enqueue(_rec("c", 1.0))
    await store.mark_cancelled("c")
    w0, r0 = await _worker(store, "w0", free=50)
    sched = await start(_settings(redis_url))
    try:
        deadline = time.monotonic() + 5
        while (await store.get_request("c")).state != rs.FINISHED:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert w0.assigned == []
        entries = await store.all_tokens("c")
        assert entries[-1].finish_reason == "abort"
    finally:
        await sched.stop()
        await r0.stop(0)
        await store.close()


async def test_drain_and_migrate_errors_over_grpc(redis_url):
    from kvfleet.common.proto.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

    store = RedisStore.from_url(redis_url)
    w0, r0 = await _worker(store, "w0", free=50)
    sched = await start(_settings(redis_url))
    try:
        async with grpc.aio.insecure_channel(sched.address) as ch:
            stub = scheduler_pb2_grpc.SchedulerStub(ch)
            await stub.Drain(scheduler_pb2.DrainRequest(worker_id="w0"))
            assert await store.draining() == {"w0"}
            await store.enqueue(_rec("q", 1.0))
            await _until(lambda: "q" in sched.dispatcher.queue)
            ticks = sched.dispatcher.num_ticks  # several ticks: nothing goes to a drained worker
            await _until(lambda: sched.dispatcher.num_ticks > ticks + 5)
            assert w0.assigned == []
            await stub.Drain(scheduler_pb2.DrainRequest(worker_id="w0", undrain=True))
            await _until(lambda: len(w0.assigned) == 1)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Migrate(
                    scheduler_pb2.MigrateRequest(request_id="none", target_worker_id="w0")
                )
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Drain(scheduler_pb2.DrainRequest(worker_id="ghost"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await sched.stop()
        await r0.stop(0)
        await store.close()
