"""Moving a running request between two real workers (in-process gRPC servers, real Redis,
KV over gloo) in each mode: live (KV copied in rounds while it decodes), re-prefill (tokens
and sampler state only) and stop-and-copy. Greedy and seeded sampled outputs equal an
unmigrated run, and every output index is written exactly once, by the source and then by the
target."""

import asyncio
import time

import grpc
import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import EngineSettings, WorkerSettings
from kvfleet.common.convert import sampling_to_pb
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.services.worker.engine import Engine, EngineConfig, EngineRequest
from kvfleet.services.worker.server import start

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "tiny-llama"
PROMPT = tuple((17 * k) % 3000 + 100 for k in range(300))
GREEDY = SamplingParams(max_tokens=160, ignore_eos=True)
SAMPLED = SamplingParams(max_tokens=160, ignore_eos=True, temperature=0.8, top_p=0.9, seed=7)


def reference(sampling: SamplingParams) -> list[int]:
    eng = Engine(EngineConfig(memory_bytes=300_000_000, num_threads=1))
    eng.load_model(MODEL)
    eng.add_request(EngineRequest("ref", MODEL, PROMPT, sampling))
    out: list[int] = []
    while eng.has_unfinished():
        out += [e.token_id for e in eng.step() if e.token_id is not None]
    return out


async def until(pred, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while not (value := await pred()):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
    return value


@pytest.fixture
async def pair(redis_url):
    workers = []
    for wid in ("w0", "w1"):
        w = await start(WorkerSettings(
            redis_url=redis_url, worker_id=wid, memory_bytes=300_000_000,
            engine=EngineSettings(num_threads=1), preload=[MODEL], transfer_timeout_s=30))
        workers.append(w)
    store = RedisStore.from_url(redis_url)
    try:
        yield store, workers
    finally:
        for w in workers:
            await w.stop()
        await store.close()


@pytest.mark.parametrize("mode", ["live", "reprefill", "stop"])
@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
async def test_a_moved_request_continues_exactly_as_an_unmoved_one(pair, mode, sampling):
    store, (w0, w1) = pair
    ref = reference(sampling)
    rid = f"move-{mode}-{'s' if sampling.temperature else 'g'}"
    await store.enqueue(rs.RequestRecord(rid, MODEL, PROMPT, sampling, time.time()))
    await store.set_assigned(rid, "w0")
    async with grpc.aio.insecure_channel(w0.address) as ch:
        stub = worker_pb2_grpc.WorkerStub(ch)
        await stub.Assign(worker_pb2.AssignRequest(
            request_id=rid, model=MODEL, prompt_token_ids=list(PROMPT),
            sampling=sampling_to_pb(sampling), arrival_s=time.time()))
        await until(lambda: store.r.xlen(rs.tokens_key(rid)))  # decoding on w0
        reply = await stub.Migrate(worker_pb2.MigrateRequest(
            request_id=rid, target_worker_id="w1", target_address=w1.address, mode=mode))

    async def finished():
        rec = await store.get_request(rid)
        return rec.state == rs.FINISHED and rec

    rec = await until(finished)
    assert rec.worker_id == "w1" and rec.finish_reason == "length"
    entries = [e for e in await store.all_tokens(rid) if e.token_id is not None]
    assert [e.index for e in entries] == list(range(len(ref)))  # each index exactly once
    assert [e.token_id for e in entries] == ref
    writers = [e.worker_id for e in entries]
    assert writers[0] == "w0" and writers[-1] == "w1"
    assert writers == sorted(writers)  # w0's tokens, then w1's
    assert reply.mode == mode and reply.pause_s > 0
    if mode == "live":
        assert reply.num_rounds >= 2 and reply.num_tokens >= len(PROMPT)
    if mode == "reprefill":
        assert reply.num_tokens == 0  # no KV travelled


async def test_an_unknown_mode_is_refused_and_the_request_keeps_running(pair):
    store, (w0, w1) = pair
    rid = "stay"
    await store.enqueue(rs.RequestRecord(rid, MODEL, PROMPT, GREEDY, time.time()))
    await store.set_assigned(rid, "w0")
    async with grpc.aio.insecure_channel(w0.address) as ch:
        stub = worker_pb2_grpc.WorkerStub(ch)
        await stub.Assign(worker_pb2.AssignRequest(
            request_id=rid, model=MODEL, prompt_token_ids=list(PROMPT),
            sampling=sampling_to_pb(GREEDY), arrival_s=time.time()))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Migrate(worker_pb2.MigrateRequest(
                request_id=rid, target_worker_id="w1", target_address=w1.address, mode="warp"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def finished():
        rec = await store.get_request(rid)
        return rec.state == rs.FINISHED and rec

    assert (await until(finished)).worker_id == "w0"
