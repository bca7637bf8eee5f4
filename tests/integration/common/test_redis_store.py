import asyncio
import time

import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams

pytestmark = pytest.mark.integration


def _rec(rid: str, model: str = "m") -> rs.RequestRecord:
    return rs.RequestRecord(rid, model, (1, 2, 3), SamplingParams(max_tokens=4), time.time())


async def test_enqueue_assign_finish_lifecycle(redis_url):
    store = RedisStore.from_url(redis_url)
    try:
        await store.enqueue(_rec("r1"))
        assert await store.r.xlen(rs.queue_key("m")) == 1
        assert await store.active_requests() == ["r1"]
        assert await store.set_assigned("r1", "w0")
        assert await store.worker_requests("w0") == {"r1"}
        await store.append_tokens(
            "r1", [rs.TokenEntry(0, 5, "a"), rs.TokenEntry(1, 6, "b", "stop")]
        )
        await store.finish("r1", "stop", "w0")
        rec = await store.get_request("r1")
        assert (rec.state, rec.finish_reason) == (rs.FINISHED, "stop")
        assert await store.worker_requests("w0") == set()
        assert await store.active_requests() == []
        assert 0 < await store.r.ttl(rs.tokens_key("r1")) <= rs.FINISHED_TTL_S
        entries, last = await store.read_tokens("r1", "0", None)
        assert [e.token_id for e in entries] == [5, 6] and last != "0"
    finally:
        await store.close()


async def test_cancel_before_assign_is_seen_by_the_assigner(redis_url):
    store = RedisStore.from_url(redis_url)
    try:
        await store.enqueue(_rec("r2"))
        assert await store.mark_cancelled("r2") == ""  # no worker yet
        assert not await store.set_assigned("r2", "w0")
        assert await store.mark_cancelled("nope") is None
        assert await store.get_request("nope") is None
    finally:
        await store.close()


async def test_heartbeat_expiry_marks_the_worker_dead(redis_url):
    store = RedisStore.from_url(redis_url)
    try:
        await store.register_worker(rs.WorkerInfo("w0", "127.0.0.1:1", "b", 0.0))
        await store.heartbeat(rs.Occupancy("w0", ("m",), 8, 8), ttl_ms=100)
        assert (await store.workers())["w0"][1] is not None
        deadline = time.monotonic() + 5
        while (await store.workers())["w0"][1] is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await store.close()


async def test_a_queue_stream_holds_only_requests_waiting_for_a_worker(redis_url):
    """Entries leave the stream once handled, so its length is the number of waiting
    requests (admission-bounded), never the number ever accepted: trimming at
    QUEUE_MAXLEN cannot reach an accepted request."""
    from kvfleet.services.scheduler.adapters.queue import RequestQueues

    store = RedisStore.from_url(redis_url)
    try:
        for i in range(8):
            assert await store.enqueue(_rec(f"q{i}"))
        queues = RequestQueues(store.r, "s0")
        entries = await queues.read_new(None)
        assert [rid for _, _, rid in entries] == [f"q{i}" for i in range(8)]
        for model, entry_id, rid in entries[:5]:  # assigned, as the dispatcher does it
            await store.release_queued(await store.get_request(rid))
            await queues.ack(model, entry_id)
        assert await store.r.xlen(rs.queue_key("m")) == 3
        assert await store.r.zcard(rs.queued_key("m")) == 3
        await store.requeue(await store.get_request("q0"), time.time(), "test")  # worker died
        assert await store.r.xlen(rs.queue_key("m")) == 4  # back among the waiting
        assert await store.r.zcard(rs.queued_key("m")) == 4
    finally:
        await store.close()


async def test_a_load_hash_stays_bounded_with_no_reader(redis_url):
    """The gateway counts every accepted request; with a static placement nothing reads the
    counts, so the writer itself must drop buckets past the longest window it can answer."""
    store = RedisStore.from_url(redis_url)
    key = rs.load_key("bounded")
    try:
        t0 = 1_000_000.0
        span = 2 * rs.LOAD_MAX_BUCKETS + 7
        for b in range(span):
            await store.record_load("bounded", t0 + b * rs.LOAD_BUCKET_S, 10, 4)
        size = await store.r.hlen(key)
        assert size <= rs.LOAD_MAX_FIELDS == (rs.LOAD_MAX_BUCKETS + 1) * 3
        now = t0 + (span - 1) * rs.LOAD_BUCKET_S
        # the whole retained hour still answers (a reader deletes what is older than its
        # window, so the longest window is read first), and the recent buckets are intact
        n, _, _ = await store.model_load("bounded", now, rs.LOAD_TTL_S)
        assert rs.LOAD_MAX_BUCKETS - 1 <= n <= rs.LOAD_MAX_BUCKETS + 1
        assert await store.model_load("bounded", now, 10 * rs.LOAD_BUCKET_S) == (10, 100, 40)
    finally:
        await store.r.delete(key)
        await store.close()
