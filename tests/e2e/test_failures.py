"""The stack under failure: a worker killed mid-stream, a scheduler restarted with requests
queued, a client that goes away, a request migrated between worker processes."""

import asyncio
import os
import signal
import subprocess
import sys

import httpx
import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.client import GatewayClient, sampling
from kvfleet.common.redis_store import RedisStore
from tests.e2e.conftest import API_KEY, TINY, until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LONG = 1500  # tokens: long enough on tiny-llama to act while the request runs


async def _start_long(c: GatewayClient, ids, request_id: str):
    """Start a long greedy stream; return the stream and the first messages."""
    call = c.stream(
        TINY, prompt_token_ids=ids, params=sampling(LONG, ignore_eos=True), request_id=request_id
    )
    it = call.__aiter__()
    first = [await it.__anext__() for _ in range(2)]
    return call, it, first


async def _drain(it, msgs):
    async for m in it:
        msgs.append(m)
    return msgs


def _check_exactly_once(msgs, ref):
    index = 0
    for m in msgs:
        assert m.index == index, "gap or duplicate in the client's stream"
        index += len(m.token_ids)
    assert tuple(t for m in msgs for t in m.token_ids) == ref.token_ids
    assert "".join(m.text for m in msgs) == ref.text


async def test_sigkill_worker_mid_stream_resumes_elsewhere(stack, reference):
    ids = reference.tokenizer.encode("A request that outlives its worker")
    ref = reference.run(ids, LONG, ignore_eos=True)
    store = RedisStore.from_url(stack.redis_admin_url)
    wid = None
    try:
        async with GatewayClient(stack.grpc_address, API_KEY) as c:
            _, it, msgs = await _start_long(c, ids, "kill-me")
            wid = (await store.get_request("kill-me")).worker_id
            victim = stack.workers()[wid]
            os.kill(victim.popen.pid, signal.SIGKILL)
            await _drain(it, msgs)
        _check_exactly_once(msgs, ref)
        rec = await store.get_request("kill-me")
        assert rec.worker_id != wid and rec.num_resumes == 1
        assert {e.worker_id for e in await store.all_tokens("kill-me")} >= {wid, rec.worker_id}
    finally:
        await store.close()
        if wid is not None:
            await asyncio.to_thread(stack.restart, f"worker-{wid}")


async def test_scheduler_restart_with_queued_requests(stack, reference):
    prompts = [f"queued while the scheduler is away {i}" for i in range(6)]
    refs = [reference.run(reference.tokenizer.encode(p), 10) for p in prompts]
    store = RedisStore.from_url(stack.redis_admin_url)
    with stack.unsupervised("scheduler"):  # keep it down until the requests are queued
        sched = stack.service("scheduler")
        sched.popen.send_signal(signal.SIGKILL)
        sched.popen.wait()
        await _queue_while_away(stack, store, prompts, refs)


async def _queue_while_away(stack, store, prompts, refs):
    try:
        async with GatewayClient(stack.grpc_address, API_KEY) as c:
            tasks = [
                asyncio.create_task(c.generate(TINY, prompt=p, params=sampling(10)))
                for p in prompts
            ]

            async def all_queued():
                return len(await store.active_requests()) == len(prompts)

            await until(all_queued)
            assert not any(t.done() for t in tasks)
            await asyncio.to_thread(stack.restart, "scheduler")
            results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        assert [r.token_ids for r in results] == [r.token_ids for r in refs]
    finally:
        await store.close()


async def test_client_disconnect_cancels_and_frees_kv(stack, reference):
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        body = {
            "model": TINY,
            "prompt": "a stream nobody reads to the end",
            "max_tokens": LONG,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
        }
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=60) as http:
            async with http.stream(
                "POST", "/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
            ) as r:
                rid = r.headers["x-request-id"]
                lines = r.aiter_lines()
                while not (await lines.__anext__()).startswith("data:"):
                    pass
        # the response is closed: the gateway cancels, the worker aborts and frees its pages

        async def aborted():
            rec = await store.get_request(rid)
            return rec.state == rs.FINISHED and rec.finish_reason == "abort"

        await until(aborted)
        rec = await store.get_request(rid)
        assert rec.cancelled

        async def idle():
            return all(
                occ is not None
                and occ.num_running == 0
                and occ.num_free_pages == occ.num_total_pages
                for _, occ in (await store.workers()).values()
            )

        await until(idle)
    finally:
        await store.close()


async def test_migrate_with_admin_cli_keeps_output_and_each_token_once(stack, reference):
    ids = reference.tokenizer.encode("A request that moves house")
    ref = reference.run(ids, LONG, ignore_eos=True)
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        async with GatewayClient(stack.grpc_address, API_KEY) as c:
            _, it, msgs = await _start_long(c, ids, "move-me")
            src = (await store.get_request("move-me")).worker_id
            dst = "w1" if src == "w0" else "w0"
            cli = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kvfleet",
                "admin",
                "--run-dir",
                str(stack.run_dir),
                "migrate",
                "move-me",
                "--to",
                dst,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            drained = asyncio.create_task(_drain(it, msgs))
            out, _ = await cli.communicate()
            assert cli.returncode == 0, out.decode()
            print(out.decode().strip())  # the figures of the move, shown with -s
            assert f"{src} -> {dst}" in out.decode()
            await drained
        _check_exactly_once(msgs, ref)
        assert (await store.get_request("move-me")).worker_id == dst
        writers = [e.worker_id for e in await store.all_tokens("move-me") if e.token_id is not None]
        assert writers[0] == src and writers[-1] == dst
        assert writers == sorted(writers, key=lambda w: w != src)  # src's tokens, then dst's
    finally:
        await store.close()
