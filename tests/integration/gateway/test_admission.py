"""A model's scheduler queue is bounded: past the bound both doors answer 429 /
RESOURCE_EXHAUSTED with a retry-after, concurrent gateways never overshoot it, and a request
the scheduler takes frees its place."""

import asyncio
import time

import grpc
import httpx
import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import GatewaySettings
from kvfleet.common.proto.common.v1 import common_pb2
from kvfleet.common.proto.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.services.gateway.frontend import Prepared
from kvfleet.services.gateway.server import start
from kvfleet.services.scheduler.core.admission import QueueBound

pytestmark = pytest.mark.integration
M = "tiny-llama"  # a real tokenizer: the HTTP door tokenizes before it enqueues


async def _fleet(redis_url, max_requests=2, max_tokens=1000):
    store = RedisStore.from_url(redis_url)
    await store.set_plan(rs.PlanRecord(1, (("w0", M),), time.time()))
    await store.set_models([rs.ModelInfo(M, max_queued_requests=max_requests,
                                         max_queued_tokens=max_tokens)])
    return store


def _p(rid: str, n: int = 3) -> Prepared:
    return Prepared(rid, M, tuple(range(1, n + 1)), SamplingParams(max_tokens=4))


async def test_full_queue_is_429_with_retry_after_at_both_doors(redis_url):
    store = await _fleet(redis_url)
    gw = await start(GatewaySettings(redis_url=redis_url, port=0, http_port=0, retry_after_s=3))
    try:
        await gw.frontend.tokenizers.get(M)  # loaded once, before any request waits on it
        await gw.frontend.submit(_p("a"))
        await gw.frontend.submit(_p("b"))
        assert await store.queue_depth(M) == (2, 6)
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=60) as c:
            r = await c.post("/v1/completions",
                             json={"model": M, "prompt": [5, 6, 7], "max_tokens": 2})
            assert r.status_code == 429 and r.headers["Retry-After"] == "3"
            assert r.json()["error"]["code"] == "queue_full"
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            call = stub.Generate(gateway_pb2.GenerateRequest(
                model=M, prompt_token_ids=gateway_pb2.TokenIds(ids=[5, 6]),
                sampling=common_pb2.SamplingParams(max_tokens=2)))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in call:
                    pass
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert dict(e.value.trailing_metadata())["retry-after"] == "3"
        # the scheduler takes one: its place is free again (releasing twice changes nothing)
        rec = await store.get_request("a")
        await store.release_queued(rec)
        await store.release_queued(rec)
        assert await store.queue_depth(M) == (1, 3)
        await gw.frontend.submit(_p("c"))
        # a requeue after a worker died counts again, past the bound if need be
        await store.requeue(rec, time.time(), reason="test")
        assert await store.queue_depth(M) == (3, 9)
    finally:
        await gw.stop()
        await store.close()


async def test_concurrent_gateways_never_overshoot_the_bound(redis_url):
    store = await _fleet(redis_url, max_requests=7, max_tokens=10**6)
    a = await start(GatewaySettings(redis_url=redis_url, port=0, http_port=0))
    b = await start(GatewaySettings(redis_url=redis_url, port=0, http_port=0))
    try:
        async def one(gw, rid):
            try:
                await gw.frontend.submit(_p(rid))
                return True
            except Exception as e:  # the 429
                assert getattr(e, "status", None) == 429
                return False

        results = await asyncio.gather(*(one(a if i % 2 else b, f"r{i}") for i in range(40)))
        assert sum(results) == 7 and await store.queue_depth(M) == (7, 21)
        assert await store.r.xlen(rs.queue_key(M)) == 7  # refused requests left nothing
    finally:
        await a.stop()
        await b.stop()
        await store.close()


def test_the_bound_admits_one_request_into_an_empty_queue():
    bound = QueueBound(max_requests=2, max_tokens=10)
    from kvfleet.services.scheduler.core.admission import QueueDepth

    assert bound.admits(QueueDepth(), 500)  # however long: the worker judges it
    assert not bound.admits(QueueDepth(1, 5), 6) and bound.admits(QueueDepth(1, 5), 5)
    assert not bound.admits(QueueDepth(2, 0), 1)
