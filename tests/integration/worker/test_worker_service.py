"""A real worker (engine with tiny-llama) in-process, driven over gRPC, writing to real Redis."""

import asyncio
import time

import grpc
import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import EngineSettings, WorkerSettings
from kvfleet.common.grpc_util import check_health
from kvfleet.common.proto.common.v1 import common_pb2
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.services.worker.server import start

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "tiny-llama"


async def _until(pred, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while not (value := await pred()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    return value


async def test_worker_loads_serves_cancels_and_refuses_bad_input(redis_url):
    w = await start(
        WorkerSettings(
            redis_url=redis_url,
            worker_id="w0",
            memory_bytes=300_000_000,
            engine=EngineSettings(num_threads=1),
        )
    )
    store = RedisStore.from_url(redis_url)
    try:
        assert not await check_health(w.address)  # no model yet
        assert (await store.workers())["w0"][1].models == ()
        async with grpc.aio.insecure_channel(w.address) as ch:
            stub = worker_pb2_grpc.WorkerStub(ch)
            reply = await stub.Load(worker_pb2.LoadRequest(model=MODEL))
            assert list(reply.models) == [MODEL]
            assert await check_health(w.address)
            occ = (await store.workers())["w0"][1]
            assert occ.models == (MODEL,) and occ.num_free_pages == occ.num_total_pages > 0

            async def run(rid: str, max_tokens: int, **kw) -> None:
                rec = rs.RequestRecord(rid, MODEL, (1, 2, 3, 4), SamplingParams(), time.time())
                await store.enqueue(rec)
                await store.set_assigned(rid, "w0")
                await stub.Assign(
                    worker_pb2.AssignRequest(
                        request_id=rid,
                        model=MODEL,
                        prompt_token_ids=[1, 2, 3, 4],
                        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                        **kw,
                    )
                )

            await run("done", 8)

            async def finished(rid: str):
                rec = await store.get_request(rid)
                return rec.state == rs.FINISHED and rec

            rec = await _until(lambda: finished("done"))
            entries = await store.all_tokens("done")
            assert rec.finish_reason == "length"
            assert [e.index for e in entries] == list(range(8))
            assert entries[-1].finish_reason == "length"
            assert await store.worker_requests("w0") == set()

            # resume: given the first 5 tokens, the worker continues with the same 3
            out = [e.token_id for e in entries]
            await run("resumed", 8, output_token_ids=out[:5])
            await _until(lambda: finished("resumed"))
            resumed = await store.all_tokens("resumed")
            assert [(e.index, e.token_id) for e in resumed] == list(enumerate(out))[5:]

            await run("long", 2000)
            await _until(lambda: store.r.xlen(rs.tokens_key("long")))
            assert (await stub.Cancel(worker_pb2.CancelRequest(request_id="long"))).found
            rec = await _until(lambda: finished("long"))
            assert rec.finish_reason == "abort"

            async def idle():
                occ = (await store.workers())["w0"][1]
                return occ.num_running == 0 and occ.num_free_pages == occ.num_total_pages

            await _until(idle)

            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Assign(
                    worker_pb2.AssignRequest(request_id="x", model="nope", prompt_token_ids=[1])
                )
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            bad = common_pb2.SamplingParams(max_tokens=4, top_p=0.0)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Assign(
                    worker_pb2.AssignRequest(
                        request_id="y", model=MODEL, prompt_token_ids=[1], sampling=bad
                    )
                )
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Migrate(
                    worker_pb2.MigrateRequest(request_id="ghost", target_worker_id="w1")
                )
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            await run("still", 3)
            await _until(lambda: finished("still"))
    finally:
        await w.stop()
        await store.close()
    assert "w0" in (await (s := RedisStore.from_url(redis_url)).workers())
    assert (await s.workers())["w0"][1] is None  # a clean stop clears the heartbeat at once
    await s.close()
