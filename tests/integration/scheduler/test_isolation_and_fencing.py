"""One unreadable queue entry fails alone; cancelled and expired queued requests are dropped;
a worker whose request was assigned again can no longer write to its stream."""

import time

import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.services.scheduler.core.policy import make_dispatch_policy
from kvfleet.services.scheduler.dispatcher import Dispatcher

pytestmark = pytest.mark.integration


def _rec(rid: str, **kw) -> rs.RequestRecord:
    return rs.RequestRecord(rid, "m", (1, 2, 3), SamplingParams(max_tokens=4), time.time(), **kw)


async def test_bad_entries_fail_alone_and_queued_requests_expire(redis_url):
    store = RedisStore.from_url(redis_url)
    d = Dispatcher(store, make_dispatch_policy("most-free-kv"), "s0", 5.0, 5.0)
    try:
        await store.enqueue(_rec("good"))
        await store.enqueue(_rec("late", deadline_s=time.time() - 1))
        await store.enqueue(_rec("gone"))
        await store.r.hset(rs.request_key("broken"), mapping={"v": "1", "model": "m"})
        await store.r.xadd(rs.queue_key("m"), rs.queue_entry("broken"))
        await store.r.xadd(rs.queue_key("m"), {"garbage": "1"})
        await d.tick(None)  # no worker yet: everything readable waits
        assert set(d.queue) == {"good", "late", "gone"}
        tokens = await store.all_tokens("broken")
        assert [t.finish_reason for t in tokens] == ["error"]
        await store.mark_cancelled("gone")
        d._last_sweep = 0.0
        await d.tick(None)
        assert set(d.queue) == {"good"}
        assert (await store.get_request("late")).finish_reason == "timeout"
        assert (await store.get_request("gone")).finish_reason == "abort"
        pending = await store.r.xpending(rs.queue_key("m"), rs.QUEUE_GROUP)
        assert pending["pending"] == 1  # only "good" still waits in the stream
    finally:
        await d.close()
        await store.close()


async def test_writes_under_a_stale_lease_are_refused(redis_url):
    store = RedisStore.from_url(redis_url)
    try:
        await store.enqueue(_rec("r1"))
        ok, lease = await store.assign("r1", "wA")
        assert ok
        entry = rs.TokenEntry(0, 5, "a", None, "wA")
        assert await store.append_fenced("r1", "wA", lease, [entry])
        await store.requeue(await store.get_request("r1"), time.time(), "wA dead")
        ok, lease_b = await store.assign("r1", "wB")
        assert lease_b > lease
        stale = rs.TokenEntry(1, 6, "b", None, "wA")
        assert not await store.append_fenced("r1", "wA", lease, [stale])  # wA came back late
        assert not await store.append_fenced("r1", "wA", lease_b, [stale])  # not its request
        fresh = rs.TokenEntry(1, 7, "c", "length", "wB")
        assert await store.append_fenced("r1", "wB", lease_b, [fresh], "length")
        rec = await store.get_request("r1")
        assert rec.state == rs.FINISHED and rec.finish_reason == "length"
        assert [(t.index, t.token_id) for t in await store.all_tokens("r1")] == [(0, 5), (1, 7)]
        assert "r1" not in await store.active_requests()
        assert not await store.append_fenced("r1", "wB", lease_b, [fresh])  # finished: closed
    finally:
        await store.close()
