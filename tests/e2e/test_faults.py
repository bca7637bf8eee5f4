"""Faults under load: 20 concurrent streams (greedy and seeded sampled requests mixed) while a
worker is SIGKILLed, the scheduler is SIGKILLed, Redis (with its append-only file) is SIGKILLed,
or a worker is SIGSTOPped past its heartbeat TTL and then SIGCONTinued. Every stream is
checked against its reference (greedy: the plain engine's; seeded sampled: the plain engine's
with the same seed, which is what a clean run gives): none may be lost (no complete answer),
duplicated (an output index delivered twice) or mixed (tokens that are not the reference's,
e.g. from two runs of the request). The stack's supervisor restarts what was killed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest

from kvfleet.common.client import GatewayClient, sampling
from kvfleet.common.redis_store import RedisStore
from tests.e2e.conftest import API_KEY, TINY, until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
N_STREAMS = 20
MAX_TOKENS = 96
TEMPERATURE = 0.75  # exact in float32, so the wire and the reference agree
STREAM_TIMEOUT_S = 300.0
_run_ids = itertools.count()


@dataclass(frozen=True)
class Spec:
    prompt_ids: tuple[int, ...]
    seed: int | None  # None: greedy

    def params(self):
        if self.seed is None:
            return sampling(MAX_TOKENS, ignore_eos=True)
        return sampling(MAX_TOKENS, temperature=TEMPERATURE, seed=self.seed, ignore_eos=True)

    def engine_params(self):
        from kvfleet.common.sampling import SamplingParams

        if self.seed is None:
            return SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
        return SamplingParams(max_tokens=MAX_TOKENS, temperature=TEMPERATURE, seed=self.seed,
                              ignore_eos=True)


@dataclass
class Outcome:
    request_id: str
    messages: list = field(default_factory=list)
    error: str = ""

    def verdict(self, ref) -> str:
        """"ok", "lost", "duplicated" or "mixed"."""
        expected = 0
        duplicated = gap = False
        for m in self.messages:
            if m.token_ids:
                if m.index < expected:
                    duplicated = True
                elif m.index > expected:
                    gap = True
                expected = max(expected, m.index + len(m.token_ids))
        tokens = tuple(t for m in self.messages for t in m.token_ids)
        finish = next((m.finish_reason for m in self.messages if m.finish_reason), "")
        if duplicated:
            return "duplicated"
        if self.error or finish not in ("length", "stop"):
            return "lost"
        if gap or tokens != ref.token_ids or "".join(m.text for m in self.messages) != ref.text:
            return "mixed"
        return "ok"


@pytest.fixture(scope="module")
def load(reference):
    """20 request specs (every other one seeded sampled) and their references."""
    specs = [
        Spec(tuple(reference.tokenizer.encode(f"Stream {i} keeps going through a fault: ")),
             None if i % 2 == 0 else 1000 + i)
        for i in range(N_STREAMS)
    ]
    refs = reference.run_batch([(s.prompt_ids, s.engine_params()) for s in specs])
    assert all(len(r.token_ids) == MAX_TOKENS for r in refs)
    assert refs[1].token_ids != refs[3].token_ids  # sampled streams differ by their seeds
    return specs, refs


async def _stream(c: GatewayClient, spec: Spec, out: Outcome) -> None:
    try:
        call = c.stream(TINY, prompt_token_ids=list(spec.prompt_ids), params=spec.params(),
                        request_id=out.request_id)
        async for m in call:
            out.messages.append(m)
    except grpc.aio.AioRpcError as e:
        out.error = f"{e.code().name}: {e.details()}"


async def _under_faults(stack, load, fault: Callable[[RedisStore, list[str]], Awaitable[None]]
                        ) -> dict[str, int]:
    """Run the 20 streams, call ``fault`` once every stream has produced tokens, wait for
    every stream to end; returns the verdict counts (printed with -s)."""
    specs, refs = load
    run = next(_run_ids)
    outcomes = [Outcome(f"fault{run}-{os.getpid()}-{i}") for i in range(N_STREAMS)]
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        async with GatewayClient(stack.grpc_address, API_KEY) as c:
            tasks = [asyncio.create_task(_stream(c, s, o))
                     for s, o in zip(specs, outcomes, strict=True)]

            async def all_started():
                return all(o.messages or o.error for o in outcomes)

            await until(all_started, timeout_s=120)
            t0 = time.monotonic()
            await fault(store, [o.request_id for o in outcomes])
            done, pending = await asyncio.wait(tasks, timeout=STREAM_TIMEOUT_S)
            for t in pending:
                t.cancel()
            for o, t in zip(outcomes, tasks, strict=True):
                if t in pending:
                    o.error = o.error or "no end within the timeout"
        verdicts = [o.verdict(r) for o, r in zip(outcomes, refs, strict=True)]
        counts = {k: verdicts.count(k) for k in ("ok", "lost", "duplicated", "mixed")}
        print(f"{counts} (streams ended {time.monotonic() - t0:.1f}s after the fault)")
        bad = {o.request_id: (v, o.error) for o, v in zip(outcomes, verdicts, strict=True)
               if v != "ok"}
        assert counts["ok"] == N_STREAMS, bad
        return counts
    finally:
        await store.close()


async def _owner(store: RedisStore, rids: list[str], worker: str) -> list[str]:
    recs = [await store.get_request(r) for r in rids]
    return [r.request_id for r in recs if r is not None and r.worker_id == worker
            and r.state != "finished"]


async def _wait_healthy(stack, name: str) -> None:
    await asyncio.to_thread(stack.restart, name)  # waits for the supervisor's restart


async def _resumed(stack, rids: list[str]) -> None:
    """The victim's streams really moved: each was resumed on another worker."""
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        for rid in rids:
            rec = await store.get_request(rid)
            assert rec is not None and rec.num_resumes >= 1 and rec.worker_id != "w1", rid
    finally:
        await store.close()
    sampled = sum(int(r.rsplit("-", 1)[1]) % 2 for r in rids)
    print(f"{len(rids)} streams resumed elsewhere ({sampled} of them seeded sampled)")


async def test_sigkill_worker_under_20_streams(stack, load):
    victim = "w1"
    moved: list[str] = []

    async def fault(store, rids):
        moved.extend(await _owner(store, rids, victim))
        assert moved, "no stream on the victim"
        os.kill(stack.workers()[victim].popen.pid, signal.SIGKILL)

    try:
        await _under_faults(stack, load, fault)
        await _resumed(stack, moved)
    finally:
        await _wait_healthy(stack, f"worker-{victim}")


async def test_sigkill_scheduler_under_20_streams(stack, load):
    before = stack.restarts.get("scheduler", 0)

    async def fault(store, rids):
        os.kill(stack.service("scheduler").popen.pid, signal.SIGKILL)

    try:
        await _under_faults(stack, load, fault)
    finally:
        await _wait_healthy(stack, "scheduler")
    assert stack.restarts.get("scheduler", 0) > before  # it was restarted (by the supervisor, well before the streams ended)


async def test_sigkill_redis_with_aof_under_20_streams(stack, load):
    assert stack.redis.appendonly
    old = stack.redis.process

    async def fault(store, rids):
        os.kill(old.pid, signal.SIGKILL)

    await _under_faults(stack, load, fault)

    async def redis_back():
        proc = stack.redis.process
        return proc is not old and proc.poll() is None

    await until(redis_back, timeout_s=60)
    assert stack.restarts.get("redis", 0) >= 1


async def test_sigstop_worker_past_its_ttl_under_20_streams(stack, load):
    victim = "w1"
    pid = stack.workers()[victim].popen.pid
    paused_s = 4.0  # the stack's heartbeat TTL is 1.5 s

    moved: list[str] = []

    async def fault(store, rids):
        moved.extend(await _owner(store, rids, victim))
        assert moved, "no stream on the victim"
        os.kill(pid, signal.SIGSTOP)
        try:
            async def taken_for_dead():
                return not await _owner(store, rids, victim)

            await until(taken_for_dead, timeout_s=60)  # its requests went elsewhere
            await asyncio.sleep(max(0.0, paused_s - 1.5))
        finally:
            os.kill(pid, signal.SIGCONT)

    with stack.unsupervised(f"worker-{victim}"):
        try:
            await _under_faults(stack, load, fault)
        finally:
            os.kill(pid, signal.SIGCONT)
    await _resumed(stack, moved)
    assert stack.workers()[victim].popen.pid == pid  # the same process came back

    async def back():  # it heartbeats and re-registers: the fleet has both workers again
        store = RedisStore.from_url(stack.redis_admin_url)
        try:
            occ = (await store.workers()).get(victim, (None, None))[1]
            return occ is not None and occ.num_running == 0
        finally:
            await store.close()

    await until(back, timeout_s=60)
