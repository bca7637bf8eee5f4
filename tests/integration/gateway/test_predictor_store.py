"""Gateways share the online length predictor through real Redis: what one learns, another
predicts from; a trace warm-starts a model once per fleet."""

import pytest

from kvfleet.common.redis_store import RedisStore
from kvfleet.services.gateway.adapters.predictor_store import SharedLengthPredictor
from kvfleet.services.gateway.core.length_predictor import LengthQuery, OnlineLengthPredictor

pytestmark = pytest.mark.integration


def _shared(store: RedisStore) -> SharedLengthPredictor:
    return SharedLengthPredictor(store, OnlineLengthPredictor(min_samples=8, prior_tokens=7), 0.0)


async def test_what_one_gateway_learns_another_predicts(redis_url):
    store = RedisStore.from_url(redis_url)
    try:
        a, b = _shared(store), _shared(store)
        q = LengthQuery("r", "m", 100, 10_000)
        assert await b.predict(q) == 7
        for n in (190, 200, 210) * 4:
            await a.observe("m", 100, n)
        assert 185 <= await b.predict(q) <= 215
    finally:
        await store.close()


async def test_warm_start_happens_once_per_fleet(redis_url):
    store = RedisStore.from_url(redis_url)
    try:
        a, b = _shared(store), _shared(store)
        samples = [(100, 64)] * 20
        assert await a.warm_start("m", samples) == 20
        assert await b.warm_start("m", samples) == 0  # another replica: already done
        await b.sync("m")
        assert b.core.num_samples("m") == 20
        assert 58 <= await b.predict(LengthQuery("r", "m", 100, 10_000)) <= 70
    finally:
        await store.close()


async def test_a_gateway_warm_starts_from_a_trace_file(redis_url, tmp_path):
    from kvfleet.common.config import GatewaySettings
    from kvfleet.services.gateway.server import start

    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n"
                     + "".join(f"{i},{100 + i},{50 + i % 3}\n" for i in range(30)))
    gw = await start(GatewaySettings(redis_url=redis_url, port=0, http_port=0,
                                     predictor_warm_start={"m": str(trace)}))
    try:
        pred = gw.frontend.predictor
        assert pred.core.num_samples("m") == 30
        assert 45 <= await pred.predict(LengthQuery("r", "m", 110, 1000)) <= 56
    finally:
        await gw.stop()
    with pytest.raises(FileNotFoundError):
        await start(GatewaySettings(redis_url=redis_url, port=0, http_port=0,
                                    predictor_warm_start={"m": str(tmp_path / "missing.csv")}))
