"""How long a migrated request stands still: live (multi-stage) migration against
stop-and-copy, for requests holding about 100, 1,000 and 4,000 tokens of KV.

Two real workers (gRPC servers, a real Redis, KV over gloo) serve a real model; for every
size and mode a request is started on w0, moved to w1 once it decodes, and the reply's
pause (from stopping it on w0 to its resuming on w1) is compared with the request's median
decode step on w0 (the gaps between its token timestamps before the move).

    python scripts/mell_pause.py [--model smollm2-135m] [--sizes 100,1000,4000] [--out pause.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's kvfleet

import grpc  # noqa: E402

from kvfleet.common import redis_schema as rs  # noqa: E402
from kvfleet.common.config import EngineSettings, WorkerSettings  # noqa: E402
from kvfleet.common.convert import sampling_to_pb  # noqa: E402
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc  # noqa: E402
from kvfleet.common.redis_server import start_redis  # noqa: E402
from kvfleet.common.redis_store import RedisStore  # noqa: E402
from kvfleet.common.sampling import SamplingParams  # noqa: E402
from kvfleet.services.worker.server import start  # noqa: E402


async def _until(pred, timeout_s: float = 600.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (value := await pred()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(0.01)
    return value


async def one(store: RedisStore, w0, w1, model: str, size: int, mode: str) -> dict:  # type: ignore[no-untyped-def]
    rid = f"pause-{mode}-{size}"
    prompt = tuple((17 * k) % 3000 + 100 for k in range(size))
    sampling = SamplingParams(max_tokens=64, ignore_eos=True)
    await store.enqueue(rs.RequestRecord(rid, model, prompt, sampling, time.time()))
    await store.set_assigned(rid, "w0")
    async with grpc.aio.insecure_channel(w0.address) as ch:
        stub = worker_pb2_grpc.WorkerStub(ch)
        await stub.Assign(worker_pb2.AssignRequest(
            request_id=rid, model=model, prompt_token_ids=list(prompt),
            sampling=sampling_to_pb(sampling), arrival_s=time.time()))
        await _until(lambda: _at_least(store, rid, 12))  # decoding for a while on w0
        reply = await stub.Migrate(worker_pb2.MigrateRequest(
            request_id=rid, target_worker_id="w1", target_address=w1.address, mode=mode))

    async def finished():  # type: ignore[no-untyped-def]
        rec = await store.get_request(rid)
        return rec.state == rs.FINISHED and rec

    await _until(finished)
    entries = [e for e in await store.all_tokens(rid) if e.token_id is not None]
    src = [e.ts for e in entries if e.worker_id == "w0"]
    step = statistics.median(b - a for a, b in zip(src[1:], src[2:], strict=False))
    return {"mode": mode, "kv_tokens": size, "pause_ms": reply.pause_s * 1e3,
            "duration_ms": reply.duration_s * 1e3, "rounds": reply.num_rounds,
            "decode_step_ms": step * 1e3, "pause_in_steps": reply.pause_s / step}


async def _at_least(store: RedisStore, rid: str, n: int) -> bool:
    return await store.r.xlen(rs.tokens_key(rid)) >= n


async def main(model: str, sizes: list[int], out: str | None) -> None:
    redis = start_redis()
    workers = []
    try:
        for wid in ("w0", "w1"):
            workers.append(await start(WorkerSettings(
                redis_url=redis.url, worker_id=wid, memory_bytes=3_000_000_000,
                engine=EngineSettings(num_threads=1), preload=[model], transfer_timeout_s=120)))
        store = RedisStore.from_url(redis.url)
        rows = []
        for size in sizes:
            for mode in ("stop", "live"):
                row = await one(store, *workers, model, size, mode)
                rows.append(row)
                print(f"{mode:5} {size:5} tokens: paused {row['pause_ms']:8.1f} ms "
                      f"({row['pause_in_steps']:.2f} decode steps of {row['decode_step_ms']:.1f} "
                      f"ms), {row['rounds']} rounds, {row['duration_ms']:.0f} ms in all",
                      flush=True)
        for size in sizes:
            by = {r["mode"]: r for r in rows if r["kv_tokens"] == size}
            print(f"{size:5} tokens: live pause / stop-and-copy pause = "
                  f"{by['live']['pause_ms'] / by['stop']['pause_ms']:.2f}")
        if out:
            with open(out, "w") as f:
                json.dump(rows, f, indent=1)
        await store.close()
    finally:
        for w in workers:
            await w.stop()
        redis.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sizes", default="100,1000,4000")
    ap.add_argument("--out")
    a = ap.parse_args()
    asyncio.run(main(a.model, [int(x) for x in a.sizes.split(",")], a.out))
