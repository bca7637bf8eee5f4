"""Greedy tokens and logits equal Hugging Face transformers on the same checkpoints."""

from __future__ import annotations

import pytest
import torch
from engine_testkit import TEST_THREADS, request, run_all, tokens
from transformers import AutoModelForCausalLM

from kvfleet.common.models import load_tokenizer, resolve_model
from kvfleet.services.worker.engine import Engine, EngineConfig, SamplingParams
from kvfleet.services.worker.engine.batch_builder import build_batch
from kvfleet.services.worker.engine.sequence import Sequence

pytestmark = pytest.mark.unit

CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for learning to cook.",
]


def hf_model(name: str):
    src = resolve_model(name)
    if src.kind == "gguf":
        return AutoModelForCausalLM.from_pretrained(
            str(src.path.parent), gguf_file=src.path.name, dtype=torch.float32
        ).eval()
    return AutoModelForCausalLM.from_pretrained(str(src.path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def smollm2():
    eng = Engine(
        EngineConfig(
            memory_bytes=1 << 30,
            page_size_bytes=1 << 20,
            max_num_batched_tokens=1024,
            num_threads=TEST_THREADS,
        )
    )
    eng.load_model("smollm2-135m")
    return eng, hf_model("smollm2-135m"), load_tokenizer("smollm2-135m")


def prefill_logits(eng: Engine, name: str, prompt: list[int]) -> torch.Tensor:
    m = eng.model(name)
    seq = Sequence(request("x", prompt, SamplingParams(), model=name), 0, None, 1 << 20)
    seq.pages = eng.pool.allocate(-(-len(prompt) // m.layout.tokens_per_page)) or []
    try:
        batch = build_batch([(seq, len(prompt))], m.layout.tokens_per_page, eng.device)
        return m.stage.forward(eng.pool.view(m.layout), batch)[0]
    finally:
        eng.pool.free(seq.pages)


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt) :].tolist()


@pytest.mark.slow
def test_smollm2_greedy_chat_matches_transformers(smollm2):
    eng, hf, tok = smollm2
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}]) for c in CHATS]
    for i, p in enumerate(prompts):
        eng.add_request(request(f"c{i}", p, SamplingParams(max_tokens=64), model="smollm2-135m"))
    out = run_all(eng)
    for i, p in enumerate(prompts):
        assert tokens(out[f"c{i}"]) == hf_greedy(hf, p, 64), CHATS[i]
    text = "".join(e.text for e in out["c0"])
    assert "Paris" in text
    assert out["c0"][-1].finish_reason == "stop"
    assert eng.occupancy().num_free_pages == eng.occupancy().num_total_pages


@pytest.mark.slow
def test_smollm2_logits_agree(smollm2):
    eng, hf, tok = smollm2
    prompt = tok.apply_chat_template([{"role": "user", "content": CHATS[1]}])
    mine = prefill_logits(eng, "smollm2-135m", prompt)
    with torch.inference_mode():
        ref = hf(torch.tensor([prompt])).logits[0, -1]
    assert torch.allclose(mine, ref, atol=2e-3, rtol=1e-4), (mine - ref).abs().max()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-mistral"])
def test_tiny_models_greedy_and_logits_match_transformers(name):
    eng = Engine(
        EngineConfig(memory_bytes=128 << 20, page_size_bytes=4096, num_threads=TEST_THREADS)
    )
    eng.load_model(name)
    hf = hf_model(name)
    tok = load_tokenizer(name)
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}]) for c in CHATS]
    for i, p in enumerate(prompts):
        eng.add_request(request(f"t{i}", p, SamplingParams(max_tokens=48), model=name))
    out = run_all(eng)
    for i, p in enumerate(prompts):
        assert tokens(out[f"t{i}"]) == hf_greedy(hf, p, 48)
    mine = prefill_logits(eng, name, prompts[0])
    with torch.inference_mode():
        ref = hf(torch.tensor([prompts[0]])).logits[0, -1]
    assert torch.allclose(mine, ref, atol=1e-4, rtol=1e-4), (mine - ref).abs().max()
