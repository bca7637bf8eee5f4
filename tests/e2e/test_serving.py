"""The stack answers through both front doors with the engine's greedy output."""

import asyncio

import grpc
import httpx
import openai
import pytest

from kvfleet.common.client import GatewayClient, sampling
from tests.e2e.conftest import API_KEY, SMOL, TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


def _openai(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.http_url + "/v1", api_key=API_KEY, max_retries=0)


def test_openai_chat_completion_equals_engine_greedy(stack, reference):
    ref = reference.run(reference.chat_ids(MESSAGES), max_tokens=24)
    client = _openai(stack)
    r = client.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=24, temperature=0)
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.completion_tokens == len(ref.token_ids)
    assert r.usage.prompt_tokens == len(reference.chat_ids(MESSAGES))

    stream = client.chat.completions.create(
        model=TINY,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(parts) == ref.text
    assert finish == ref.finish_reason and usage.completion_tokens == len(ref.token_ids)


def test_openai_completions_and_models(stack, reference):
    client = _openai(stack)
    assert {m.id for m in client.models.list()} == {TINY, SMOL}
    ids = reference.tokenizer.encode("Once upon a time")
    ref = reference.run(ids, max_tokens=12)
    r = client.completions.create(
        model=TINY, prompt="Once upon a time", max_tokens=12, temperature=0
    )
    assert r.choices[0].text == ref.text
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=TINY, prompt=ids, max_tokens=12, temperature=0, stream=True
        )
    )
    assert text == ref.text


async def test_grpc_generate_streams_indexed_tokens(stack, reference):
    ids = reference.tokenizer.encode("The quick brown fox")
    ref = reference.run(ids, max_tokens=20, ignore_eos=True)
    async with GatewayClient(stack.grpc_address, API_KEY) as c:
        msgs = [
            m
            async for m in c.stream(
                TINY, prompt_token_ids=ids, params=sampling(20, ignore_eos=True)
            )
        ]
    got = [t for m in msgs for t in m.token_ids]
    assert tuple(got) == ref.token_ids
    assert "".join(m.text for m in msgs) == ref.text
    index = 0
    for m in msgs:  # contiguous indexes: no gap, no duplicate
        assert m.index == index
        index += len(m.token_ids)
    assert len(msgs) > 1 and msgs[-1].finish_reason == "length"
    assert msgs[-1].usage.completion_tokens == 20 and msgs[-1].usage.prompt_tokens == len(ids)


async def test_twenty_concurrent_requests_complete(stack, reference):
    prompts = [f"Request number {i} asks about topic {i * 7}" for i in range(20)]
    refs = [reference.run(reference.tokenizer.encode(p), max_tokens=16) for p in prompts]
    async with GatewayClient(stack.grpc_address, API_KEY) as c:
        results = await asyncio.gather(
            *(c.generate(TINY, prompt=p, params=sampling(16)) for p in prompts)
        )
    assert [r.token_ids for r in results] == [ref.token_ids for ref in refs]
    assert all(r.finish_reason in ("stop", "length") for r in results)
    assert len({r.request_id for r in results}) == 20


def test_smollm2_gives_a_real_chat_answer(stack):
    r = _openai(stack).chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert "Paris" in r.choices[0].message.content


BAD_HTTP = [
    (b"{oops", 400),
    (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}', 404),
    (
        b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
        400,
    ),
    (
        b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}',
        400,
    ),
    (b'{"model": "tiny-llama", "messages": [{"role": "nobody", "content": "hi"}]}', 400),
    (
        b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "'
        + b"word " * 3000
        + b'"}]}',
        400,
    ),
]


async def test_bad_input_at_both_front_doors_keeps_the_fleet_serving(stack, reference):
    good = {"model": TINY, "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=60) as http:
        for body, status in BAD_HTTP:
            r = await http.post(
                "/v1/chat/completions",
                content=body,
                headers={**auth, "Content-Type": "application/json"},
            )
            assert r.status_code == status, (body[:80], r.text)
            assert r.json()["error"]["message"]
        r = await http.post("/v1/chat/completions", json=good)
        assert r.status_code == 401
        r = await http.post(
            "/v1/chat/completions", json=good, headers={"Authorization": "Bearer x"}
        )
        assert r.status_code == 401
        big = await http.post(
            "/v1/completions", json={"model": TINY, "prompt": "word " * 3000}, headers=auth
        )
        assert big.status_code == 400 and big.json()["error"]["code"] == "context_length_exceeded"
        r = await http.post("/v1/chat/completions", json=good, headers=auth)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]

    bad_grpc = [
        ({"model": "no-such-model", "prompt": "hi"}, grpc.StatusCode.NOT_FOUND),
        (
            {"model": TINY, "prompt": "hi", "params": sampling(0, temperature=7.0)},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ({"model": TINY, "prompt": "word " * 3000}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": TINY, "prompt_token_ids": [10**9]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": TINY, "prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    async with GatewayClient(stack.grpc_address, API_KEY) as c:
        for kw, code in bad_grpc:
            model = kw.pop("model")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await c.generate(model, **kw)
            assert e.value.code() == code, kw
    for key in (None, "wrong"):
        async with GatewayClient(stack.grpc_address, key) as c:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await c.generate(TINY, prompt="hi")
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ids = reference.tokenizer.encode("still serving?")
    async with GatewayClient(stack.grpc_address, API_KEY) as c:
        r = await c.generate(TINY, prompt_token_ids=ids, params=sampling(6))
    assert r.token_ids == reference.run(ids, 6).token_ids
