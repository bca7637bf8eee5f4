"""The gateway's doors under bad input and overload: 4xx (never 5xx) for what a client got
wrong, 429 with Retry-After when full, bodies refused before they are buffered, and keys
that are stored hashed and own their requests."""

import json
import time

import grpc
import httpx
import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import GatewaySettings
from kvfleet.common.proto.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.services.gateway.api_keys import hash_key
from kvfleet.services.gateway.frontend import Prepared
from kvfleet.services.gateway.server import start
from tests.integration.gateway.test_front_doors import live_fleet

pytestmark = pytest.mark.integration
KEY_A, KEY_B = "sk-alice", "sk-bob"


@pytest.fixture
async def gateway(redis_url):
    store = RedisStore.from_url(redis_url)
    await live_fleet(store)
    await store.close()
    gw = await start(GatewaySettings(
        redis_url=redis_url, port=0, http_port=0, max_body_bytes=64 << 10, max_in_flight=4,
        api_key_hashes=[hash_key(KEY_A), hash_key(KEY_B)], max_tokens_limit=100,
        default_max_tokens=16,
    ))
    yield gw
    await gw.stop()


def _auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


DEEP = b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
LONG_INT = b'{"model": "m", "prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize(
    "body,status,param",
    [
        (DEEP, 400, None),
        (LONG_INT, 400, None),
        (b'{"model": "m", "prompt": "\\ud800"}', 400, None),
        (b'{"model": "m", "prompt": "hi", "stop": ["\\udfff"]}', 400, None),
        (b'{"model": "m", "prompt": "hi", "max_tokens": 1099511627776}', 400, "max_tokens"),
        (b'{"model": "m", "prompt": "hi", "top_k": 1099511627776}', 400, "top_k"),
        (b'{"model": "m", "prompt": "hi", "stop_token_ids": [8589934592]}', 400, "stop_token_ids"),
        (b'{"model": "m", "prompt": "hi", "seed": 18446744073709551616}', 400, "seed"),
        (b'{"model": "m", "prompt": "hi", "stop": ["' + b"x" * 300 + b'"]}', 400, "stop"),
        (b'{"model": "m", "prompt": "hi", "stop": ' + json.dumps(["s"] * 17).encode() + b"}",
         400, "stop"),
        (b'{"model": "m", "prompt": "hi", "logprobs": 1}', 400, "logprobs"),
        (b'{"model": "m", "prompt": "hi", "echo": true}', 400, "echo"),
        (b'{"model": "m", "prompt": "hi", "tools": [{"type": "function"}]}', 400, "tools"),
        (b'{"model": "m", "prompt": "hi", "response_format": {"type": "json_object"}}', 400,
         "response_format"),
        (b'{"model": "m", "prompt": "hi", "logit_bias": {"1": 5}}', 400, "logit_bias"),
        (b'{"model": "m", "prompt": "hi", "frequency_penalty": 0.5}', 400, "frequency_penalty"),
    ],
)
async def test_bad_input_is_4xx(gateway, body, status, param):
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=30) as c:
        for path in ("/v1/completions", "/v1/chat/completions"):
            r = await c.post(path, content=body, headers=_auth())
            assert r.status_code in (status, 413 if len(body) > 64 << 10 else status), r.text
            if path == "/v1/completions" and r.status_code == status:
                assert r.json()["error"]["param"] == param, r.text
        assert (await c.get("/livez")).status_code == 200


async def test_media_type_and_body_size_are_checked_before_reading(gateway):
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=30) as c:
        r = await c.post("/v1/completions", content=b'{"model": "m", "prompt": "hi"}',
                         headers={**_auth(), "Content-Type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        async def big():  # 300 MB, no Content-Length: refused while streaming, not after
            for _ in range(4800):
                yield b"x" * 65536

        rss0 = _rss_bytes()
        r = await c.post("/v1/completions", content=big(), headers=_auth())
        assert r.status_code == 413
        assert _rss_bytes() - rss0 < 64 << 20  # the body was never buffered whole
    # a declared 1 TiB body is refused from the header alone, before a byte of it is sent
    import asyncio

    host, port = gateway.http_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}"
                 f"\r\nContent-Type: application/json\r\nContent-Length: {1 << 40}\r\n\r\n"
                 .encode())
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert b" 413 " in status


def _rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_full_gateway_answers_429_with_retry_after_at_both_doors(gateway):
    slots = [gateway.frontend.admit() for _ in range(4)]
    try:
        async with httpx.AsyncClient(base_url=gateway.http_url) as c:
            r = await c.post("/v1/completions", json={"model": "m", "prompt": "hi"},
                             headers=_auth())
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
        async with grpc.aio.insecure_channel(gateway.address) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            call = stub.Generate(gateway_pb2.GenerateRequest(model="m", prompt="hi"),
                                 metadata=(("authorization", f"Bearer {KEY_A}"),))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in call:
                    pass
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ("retry-after", "1") in tuple(e.value.trailing_metadata())
    finally:
        for s in slots:
            s.release()
    assert gateway.frontend.num_in_flight == 0


async def test_keys_are_hashed_and_own_their_requests(gateway, redis_url):
    assert KEY_A not in json.dumps(gateway.frontend.settings.model_dump())
    from kvfleet.services.gateway.api_keys import ApiKeys

    keys = ApiKeys(digests=[hash_key(KEY_A), hash_key(KEY_B)])
    assert keys.check("sk-mallory") is None and keys.check("") is None
    p = Prepared("owned-1", "m", (1, 2, 3), SamplingParams(max_tokens=4), owner=keys.check(KEY_A))
    await gateway.frontend.submit(p)
    async with grpc.aio.insecure_channel(gateway.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        req = gateway_pb2.CancelRequest(request_id="owned-1")
        bob = (("authorization", f"Bearer {KEY_B}"),)
        alice = (("authorization", f"Bearer {KEY_A}"),)
        assert not (await stub.Cancel(req, metadata=bob)).found
        store = RedisStore.from_url(redis_url)
        try:
            assert not (await store.get_request("owned-1")).cancelled
            assert (await stub.Cancel(req, metadata=alice)).found
            assert (await store.get_request("owned-1")).cancelled
        finally:
            await store.close()


async def test_health_is_readiness_and_livez_is_liveness(redis_url):
    store = RedisStore.from_url(redis_url)
    await store.set_plan(rs.PlanRecord(1, (("w0", "m"),), time.time()))
    gw = await start(GatewaySettings(redis_url=redis_url, port=0, http_port=0))
    try:
        async with httpx.AsyncClient(base_url=gw.http_url) as c:
            assert (await c.get("/livez")).status_code == 200
            r = await c.get("/health")
            assert r.status_code == 503
            assert r.json() == {"status": "not ready", "plan_version": 1, "schedulers": 0,
                                "models": {"m": 0}}
            await live_fleet(store)
            gw.frontend._readiness = None
            r = await c.get("/health")
            assert r.status_code == 200 and r.json()["models"] == {"m": 1}
    finally:
        await gw.stop()
        await store.close()


async def test_openapi_schema_describes_the_bodies(gateway):
    async with httpx.AsyncClient(base_url=gateway.http_url) as c:
        doc = (await c.get("/openapi.json")).json()
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/ChatBody")
    chat = doc["components"]["schemas"]["ChatBody"]
    assert {"model", "messages"} <= set(chat["required"])
    assert "ChatMessage" in doc["components"]["schemas"]
    # the limits the gateway enforces are stated, so a client (or a fuzzer) knows them
    props = doc["components"]["schemas"]["CompletionBody"]["properties"]
    assert props["max_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 100}
    assert props["stop"]["anyOf"][1]["maxItems"] == 16
    assert props["priority"]["anyOf"][0]["enum"] == ["high", "normal", "low"]
    slo = doc["components"]["schemas"]["SloBody"]["properties"]
    assert slo["ttft_s"]["anyOf"][0]["exclusiveMinimum"] == 0
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_redis_pool_waits_for_a_free_connection(redis_url):
    import asyncio

    store = RedisStore.from_url(redis_url, max_connections=2, pool_timeout_s=30)
    try:
        replies = await asyncio.gather(*(store.r.blpop(f"kvfleet:v1:none:{i}", 0.05)
                                         for i in range(20)))
        assert replies == [None] * 20  # 20 blocking calls through 2 connections: all served
    finally:
        await store.close()
