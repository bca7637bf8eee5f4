"""SeaLLM's re-placement live: the planner measures per-model load from the gateway's counts,
and when one model's load grows it re-places (draining a model off a worker that served it,
loading where the plan says) while requests of both models are running. No request is lost
and every output equals the plain engine's greedy output."""

import asyncio

import pytest

from kvfleet.common.client import GatewayClient, sampling
from kvfleet.common.config import EngineSettings, FleetConfig, ModelConfig, WorkerConfig
from kvfleet.common.launcher import launch
from kvfleet.common.redis_store import RedisStore
from kvfleet.services.worker.engine import Engine, EngineConfig, EngineRequest, SamplingParams
from tests.e2e.conftest import TINY, until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QWEN = "tiny-qwen2"
PAGE = 16384


def rid_model(request_id: str) -> str:
    return TINY if request_id.startswith("llama") else QWEN


def _prompt(n: int, salt: int) -> list[int]:
    return [(salt * 7 + 13 * k) % 3000 + 100 for k in range(n)]


def _memory(models: list[str], kv_pages: int) -> int:
    """A budget that holds ``models`` plus ``kv_pages`` pages (and no more models)."""
    eng = Engine(EngineConfig(memory_bytes=400_000_000, page_size_bytes=PAGE, num_threads=1,
                              max_num_seqs=16))
    for m in models:
        eng.load_model(m)
    acc = eng.accounting()
    return acc.weights_bytes + acc.workspace_bytes + kv_pages * PAGE


def _reference(model: str, prompts: dict[str, tuple[list[int], int]]) -> dict[str, tuple]:
    eng = Engine(EngineConfig(memory_bytes=400_000_000, num_threads=1))
    eng.load_model(model)
    for rid, (p, m) in prompts.items():
        eng.add_request(EngineRequest(rid, model, tuple(p),
                                      SamplingParams(max_tokens=m, ignore_eos=True)))
    out: dict[str, list[int]] = {}
    while eng.has_unfinished():
        for ev in eng.step():
            if ev.token_id is not None:
                out.setdefault(ev.request_id, []).append(ev.token_id)
    return {rid: tuple(v) for rid, v in out.items()}


async def test_a_replacement_during_serving_loses_nothing(tmp_path):
    # tiny-llama load comes in waves until the planner re-places (how soon it does depends on
    # the load it measures, so on the machine's speed)
    waves = [{f"llama-{w}-{i}": (_prompt(40 + 7 * i, i + 100 * w), 96) for i in range(24)}
             for w in range(3)]
    qwen = {f"qwen-{i}": (_prompt(30 + 5 * i, 50 + i), 160) for i in range(4)}
    refs = {**_reference(QWEN, qwen)}
    for wave in waves:
        refs.update(_reference(TINY, wave))
    fleet = FleetConfig(
        policy="seallm",
        models=[ModelConfig(name=TINY), ModelConfig(name=QWEN)],
        # w1 holds one tiny model at a time: serving more tiny-llama there means trading.
        workers=[WorkerConfig(id="w0", memory_bytes=_memory([TINY, QWEN], 200),
                              models=[TINY, QWEN]),
                 WorkerConfig(id="w1", memory_bytes=_memory([TINY], 120), models=[QWEN])],
        http_port=0, grpc_port=0,
        engine=EngineSettings(num_threads=1, max_num_seqs=16, page_size_bytes=PAGE),
        planner={"replan_s": 0.5, "load_window_s": 20.0, "weight_load_bytes_per_s": 1e10},
        worker={"heartbeat_s": 0.1},
    )
    stack = await asyncio.to_thread(launch, fleet, tmp_path / "stack", 300)
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        async with GatewayClient(stack.grpc_address, stack.secrets.api_key) as client:
            def send(model, rid, p, m):
                return asyncio.create_task(client.generate(
                    model, request_id=rid, prompt_token_ids=p,
                    params=sampling(max_tokens=m, ignore_eos=True)))

            tasks = [send(QWEN, rid, p, m) for rid, (p, m) in qwen.items()]

            async def qwen_on_w1():
                recs = [await store.get_request(rid) for rid in qwen]
                return any(r is not None and r.worker_id == "w1" for r in recs)

            await until(qwen_on_w1, timeout_s=60)  # w1 serves tiny-qwen2 when the swap comes

            async def replanned():
                return any(e.kind == "replan" for e in await store.events(1000))

            sent = set(qwen)
            for wave in waves:
                tasks += [send(TINY, rid, p, m) for rid, (p, m) in wave.items()]
                sent |= set(wave)
                try:
                    await until(replanned, timeout_s=60)
                    break
                except AssertionError:
                    continue
            assert await replanned(), "no re-placement under three waves of load"
            outs = await asyncio.gather(*tasks)
        # nothing lost, nothing changed
        assert {o.request_id: o.token_ids for o in outs} == {r: refs[r] for r in sent}
        assert all(o.finish_reason == "length" for o in outs)

        async def unloaded():  # a drained model leaves a moment after its last request ends
            return any(e.kind == "unload" for e in await store.events(1000))

        await until(unloaded, timeout_s=60)
        events = await store.events(1000)
        unloads = [(e.data["worker_id"], e.data["model"]) for e in events if e.kind == "unload"]
        assert unloads  # the re-placement drained a model off a worker ...
        served = {(e.data["worker_id"], rid_model(e.data["request_id"]))
                  for e in events if e.kind == "assign"}
        assert set(unloads) & served  # ... one that had served requests there
        plan = await store.get_plan()
        assert plan is not None and plan.version >= 2

        async def workers_follow_the_plan():
            workers = await store.workers()
            return all(occ is not None and set(occ.models) == set(plan.models_of(wid))
                       for wid, (_, occ) in workers.items())

        await until(workers_follow_the_plan, timeout_s=60)
    finally:
        await store.close()
        await asyncio.to_thread(stack.stop)
