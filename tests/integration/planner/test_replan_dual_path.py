"""Dual path for re-placement: the live planner measures per-model load from the counts the
gateways write to Redis, the simulator from the arrivals it replays; on the same arrivals both
measure the same load, and the same placement policy turns it into the same new plan."""

from __future__ import annotations

import random
import time

import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import ModelConfig, PlannerSettings, WorkerConfig
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.policies import policy_set
from kvfleet.services.planner.core.types import with_backlog
from kvfleet.services.planner.reconciler import Reconciler
from kvfleet.sim.engine import _load_of

pytestmark = pytest.mark.integration

MODELS = ("tiny-llama", "tiny-qwen2", "tiny-mistral")
WINDOW_S = 60.0


async def test_live_and_simulated_replanning_agree(redis_url):
    settings = PlannerSettings(
        redis_url=redis_url, policy="seallm", load_window_s=WINDOW_S,
        weight_load_bytes_per_s=1e9,
        models=[ModelConfig(name=m) for m in MODELS],
        workers=[WorkerConfig(id="w0", memory_bytes=200_000_000, models=list(MODELS)),
                 WorkerConfig(id="w1", memory_bytes=200_000_000, models=["tiny-mistral"])],
    )
    store = RedisStore.from_url(redis_url)
    rc = Reconciler(store, settings)
    try:
        await rc.publish()
        first = rc.plan
        # Arrivals in whole buckets well inside the window, ending with the last full bucket:
        # tiny-llama is busy.
        bucket = rs.LOAD_BUCKET_S
        now = (int(time.time()) // bucket) * bucket - 0.001
        rng = random.Random(5)
        arrivals = []
        for _ in range(900):
            model = rng.choices(MODELS, weights=(8, 1, 1))[0]
            t = now - rng.uniform(0.0, WINDOW_S - 4 * bucket)  # slack for a slow machine
            arrivals.append((t, model, rng.randint(20, 400), rng.randint(8, 200)))
        for t, model, prompt, out in arrivals:
            await store.record_load(model, t, prompt, out)
        # A backlog: requests still queued count as load, on both paths.
        queued = [rs.RequestRecord(f"q{i}", "tiny-qwen2", tuple(range(30 + i)),
                                   SamplingParams(max_tokens=8), now) for i in range(40)]
        for rec in queued:
            assert await store.enqueue(rec)
        live_load = await rc.measured_load()
        depth = {m: (0, 0) for m in MODELS}
        depth["tiny-qwen2"] = (len(queued), sum(len(r.prompt_token_ids) for r in queued))
        sim_load = with_backlog(_load_of(arrivals, WINDOW_S), depth, WINDOW_S)
        assert sim_load["tiny-qwen2"].request_rate > _load_of(arrivals, WINDOW_S)[
            "tiny-qwen2"].request_rate
        for m in MODELS:
            a, b = live_load[m], sim_load[m]
            assert a.request_rate == pytest.approx(b.request_rate)
            assert a.mean_prompt_tokens == pytest.approx(b.mean_prompt_tokens)
            assert a.mean_output_tokens == pytest.approx(b.mean_output_tokens)
        assert await rc.replan()  # the live planner re-places ...
        simulated = policy_set("seallm").placement().place(rc.spec, first, sim_load, now)
        assert rc.plan.placements == simulated.placements  # ... as the simulator would
        assert rc.plan.version == first.version + 1
        events = [e for e in await store.events(100) if e.kind == "replan"]
        assert events and events[-1].data["version"] == rc.plan.version
    finally:
        await rc.close()
        await store.close()
