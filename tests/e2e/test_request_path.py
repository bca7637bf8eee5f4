"""A request's service level and predicted length travel gateway -> Redis -> worker at both
front doors, with the model's defaults filling what a request leaves out; every service
stamps times on one clock; bad values are refused and the fleet keeps serving."""

import time

import grpc
import httpx
import pytest

from kvfleet.common.client import GatewayClient, sampling
from kvfleet.common.http_api import PREDICTED_OUTPUT_TOKENS_HEADER
from kvfleet.common.proto.common.v1 import common_pb2
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.slo import ServiceLevel, priority_rank
from tests.e2e.conftest import API_KEY, TINY, TINY_SLO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_http_slo_and_priority_reach_the_request_record(stack):
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        async with httpx.AsyncClient(base_url=stack.http_url, headers=AUTH, timeout=60) as c:
            r = await c.post("/v1/completions", json={
                "model": TINY, "prompt": "hello there", "max_tokens": 5, "ignore_eos": True,
                "slo": {"ttft_s": 0.75}, "priority": "high"})
            assert r.status_code == 200, r.text
            predicted = int(r.headers[PREDICTED_OUTPUT_TOKENS_HEADER])
            assert 1 <= predicted <= 5
            rid = r.headers["X-Request-Id"]
        rec = await store.get_request(rid)
        # tpot_s was left out: the model's default fills it
        assert rec.slo == ServiceLevel(0.75, TINY_SLO.tpot_s, priority_rank("high"))
        assert rec.predicted_output_tokens == predicted
    finally:
        await store.close()


async def test_grpc_service_level_defaults_and_prediction(stack):
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        async with GatewayClient(stack.grpc_address, API_KEY) as client:
            out = await client.generate(TINY, prompt_token_ids=[5, 6, 7, 8],
                                        params=sampling(max_tokens=4, ignore_eos=True),
                                        service_level=common_pb2.ServiceLevel(tpot_s=0.25))
            assert len(out.token_ids) == 4 and 1 <= out.predicted_output_tokens <= 4
            rec = await store.get_request(out.request_id)
            assert rec.slo == ServiceLevel(TINY_SLO.ttft_s, 0.25, priority_rank(TINY_SLO.priority))
            plain = await client.generate(TINY, prompt_token_ids=[5, 6, 7],
                                          params=sampling(max_tokens=2, ignore_eos=True))
            rec = await store.get_request(plain.request_id)
            assert rec.slo == TINY_SLO.service_level()
    finally:
        await store.close()


async def test_one_clock_from_gateway_to_worker(stack):
    """Arrival (gateway), assignment (scheduler) and token times (worker) are on one clock:
    each falls between the one before it and the client's own reading afterwards."""
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        before = time.time()
        async with GatewayClient(stack.grpc_address, API_KEY) as client:
            out = await client.generate(TINY, prompt_token_ids=list(range(10, 40)),
                                        params=sampling(max_tokens=6, ignore_eos=True))
        after = time.time()
        rec = await store.get_request(out.request_id)
        assigned = [e.ts for e in await store.events(500)
                    if e.kind == "assign" and e.data.get("request_id") == out.request_id]
        tokens = [e.ts for e in await store.all_tokens(out.request_id) if e.token_id is not None]
        assert len(assigned) == 1 and len(tokens) == 6
        assert before <= rec.arrival_s <= assigned[0] <= tokens[0] <= after
        assert tokens == sorted(tokens) and tokens[-1] <= after
    finally:
        await store.close()


async def test_bad_service_levels_are_refused_and_the_fleet_keeps_serving(stack):
    async with httpx.AsyncClient(base_url=stack.http_url, headers=AUTH, timeout=60) as c:
        for extra in ({"slo": {"ttft_s": -1}}, {"slo": {"tpot_s": 1e9}}, {"priority": "vip"}):
            r = await c.post("/v1/completions",
                             json={"model": TINY, "prompt": "x", "max_tokens": 2, **extra})
            assert r.status_code == 400, (extra, r.text)
    async with GatewayClient(stack.grpc_address, API_KEY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.generate(TINY, prompt="x",
                                  service_level=common_pb2.ServiceLevel(ttft_s=0))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        out = await client.generate(TINY, prompt_token_ids=[1, 2, 3],
                                    params=sampling(max_tokens=3, ignore_eos=True))
        assert len(out.token_ids) == 3 and out.finish_reason == "length"
