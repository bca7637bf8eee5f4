"""The gateway's front doors against real Redis: auth, bad input, listing, health, metrics.
Requests that need a model's tokenizer are covered by the e2e tests."""

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
from kvfleet.services.gateway.server import start

pytestmark = pytest.mark.integration
KEY = "sk-test"


async def live_fleet(store: RedisStore) -> None:
    """What /health needs to say ready: a plan, a scheduler, and a worker holding the model."""
    await store.set_plan(rs.PlanRecord(1, (("w0", "m"),), time.time()))
    await store.register_worker(rs.WorkerInfo("w0", "127.0.0.1:1", "boot", time.time()))
    await store.heartbeat(rs.Occupancy("w0", ("m",), 10, 10), 60_000)
    await store.scheduler_alive("s0", time.time() + 60)


@pytest.fixture
async def gateway(redis_url):
    store = RedisStore.from_url(redis_url)
    await live_fleet(store)
    await store.close()
    gw = await start(
        GatewaySettings(
            redis_url=redis_url,
            port=0,
            http_port=0,
            api_keys=[KEY],
            default_max_tokens=16,
            max_tokens_limit=100,
        )
    )
    yield gw
    await gw.stop()


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_http_auth_and_listing(gateway):
    async with httpx.AsyncClient(base_url=gateway.http_url) as c:
        assert (await c.get("/health")).status_code == 200
        r = await c.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await c.get("/v1/models", headers=_auth("wrong"))
        assert r.status_code == 401
        r = await c.get("/v1/models", headers=_auth())
        assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["m"]
        r = await c.post("/v1/completions", json={"model": "m", "prompt": "hi"})
        assert r.status_code == 401


@pytest.mark.parametrize(
    "body,status,param",
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"prompt": "hi"}', 400, "model"),
        (b'{"model": "nope", "prompt": "hi"}', 404, "model"),
        (b'{"model": "m", "prompt": "hi", "max_tokens": 0}', 400, "max_tokens"),
        (b'{"model": "m", "prompt": "hi", "max_tokens": 101}', 400, "max_tokens"),
        (b'{"model": "m", "prompt": "hi", "temperature": 5}', 400, "temperature"),
        (b'{"model": "m", "prompt": "hi", "top_p": 0}', 400, "top_p"),
        (b'{"model": "m", "prompt": "hi", "n": 2}', 400, "n"),
        (b'{"model": "m", "prompt": "hi", "max_tokens": "many"}', 400, "max_tokens"),
        (b'{"model": "m", "prompt": "hi", "slo": {"ttft_s": 0}}', 400, "slo"),
        (b'{"model": "m", "prompt": "hi", "slo": {"tpot_s": -0.1}}', 400, "slo"),
        (b'{"model": "m", "prompt": "hi", "slo": {"ttft_s": 1e9}}', 400, "slo"),
        (b'{"model": "m", "prompt": "hi", "slo": {"ttft_s": NaN}}', 400, "slo"),
        (b'{"model": "m", "prompt": "hi", "slo": {"ttft": 1}}', 400, "slo.ttft"),
        (b'{"model": "m", "prompt": "hi", "slo": {"ttft_s": "soon"}}', 400, "slo.ttft_s"),
        (b'{"model": "m", "prompt": "hi", "priority": "urgent"}', 400, "priority"),
    ],
)
async def test_http_bad_input_is_4xx_openai_style(gateway, body, status, param):
    async with httpx.AsyncClient(base_url=gateway.http_url) as c:
        r = await c.post(
            "/v1/completions", content=body, headers={**_auth(), "Content-Type": "application/json"}
        )
        assert r.status_code == status
        err = r.json()["error"]
        assert err["message"] and err["type"]
        assert err["param"] == param
        r = await c.post(
            "/v1/chat/completions", content=b'{"model": "m", "messages": "x"}', headers=_auth()
        )
        assert r.status_code == 400
        assert (await c.get("/health")).status_code == 200


async def test_http_oversize_body_is_413(redis_url):
    gw = await start(GatewaySettings(redis_url=redis_url, port=0, http_port=0, max_body_bytes=1024))
    try:
        async with httpx.AsyncClient(base_url=gw.http_url) as c:
            r = await c.post("/v1/completions", json={"model": "m", "prompt": "x" * 5000})
            assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    finally:
        await gw.stop()


async def test_grpc_auth_and_bad_input(gateway):
    async with grpc.aio.insecure_channel(gateway.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        md = (("authorization", f"Bearer {KEY}"),)
        req = gateway_pb2.GenerateRequest(model="m", prompt="hi")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in stub.Generate(req):
                pass
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        cases = [
            (gateway_pb2.GenerateRequest(model="nope", prompt="hi"), grpc.StatusCode.NOT_FOUND),
            (gateway_pb2.GenerateRequest(model="m"), grpc.StatusCode.INVALID_ARGUMENT),
            (
                gateway_pb2.GenerateRequest(
                    model="m", prompt="hi", sampling=common_pb2.SamplingParams(max_tokens=1000)
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                gateway_pb2.GenerateRequest(
                    model="m", prompt="hi", sampling=common_pb2.SamplingParams(temperature=-1)
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                gateway_pb2.GenerateRequest(model="m", prompt="hi", request_id="bad id!"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                gateway_pb2.GenerateRequest(
                    model="m", prompt="hi", service_level=common_pb2.ServiceLevel(ttft_s=-1)
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                gateway_pb2.GenerateRequest(
                    model="m", prompt="hi", service_level=common_pb2.ServiceLevel(tpot_s=1e6)
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                gateway_pb2.GenerateRequest(
                    model="m", prompt="hi", service_level=common_pb2.ServiceLevel(priority="vip")
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]
        for req, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in stub.Generate(req, metadata=md):
                    pass
            assert e.value.code() == code, req
        reply = await stub.Cancel(gateway_pb2.CancelRequest(request_id="none"), metadata=md)
        assert not reply.found


async def test_metrics_count_refusals(gateway):
    async with httpx.AsyncClient(base_url=gateway.http_url) as c:
        await c.post("/v1/completions", content=b"{", headers=_auth())
        text = (await c.get("/metrics")).text
        assert 'kvfleet_gateway_requests_total{api="http",model="",status="400"} 1.0' in text


async def test_replicas_share_requests_through_redis(redis_url):
    """Stateless gateways: a request entered at one replica is cancelled at another, and
    its stream at the first ends with the abort."""
    from kvfleet.services.gateway.frontend import Prepared

    store = RedisStore.from_url(redis_url)
    await store.set_plan(rs.PlanRecord(1, (("w0", "m"),), time.time()))
    a = await start(GatewaySettings(redis_url=redis_url, port=0, http_port=0))
    b = await start(GatewaySettings(redis_url=redis_url, port=0, http_port=0))
    try:
        p = Prepared("shared-1", "m", (1, 2, 3), SamplingParams(max_tokens=4))
        await a.frontend.submit(p)
        assert await store.r.xlen(rs.queue_key("m")) == 1
        async with grpc.aio.insecure_channel(b.address) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            assert (await stub.Cancel(gateway_pb2.CancelRequest(request_id="shared-1"))).found
        chunks = [c async for c in a.frontend.stream("shared-1")]
        assert [c.finish_reason for c in chunks] == ["abort"]
        rec = await store.get_request("shared-1")
        assert rec.cancelled and rec.state == rs.FINISHED
    finally:
        await a.stop()
        await b.stop()
        await store.close()
