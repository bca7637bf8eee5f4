"""bfloat16 models (alone, and sharing a pool with a float32 one), the paged decode attention
against the padded SDPA path, and the decode-batch padding the CUDA graphs rely on."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from engine_testkit import greedy, request, run_all, tiny_engine, tokens
from test_hf_equality import hf_model, prefill_logits

from kvfleet.common.models import load_tokenizer
from kvfleet.services.worker.engine import cpu_attention
from kvfleet.services.worker.engine.attention import (
    KvGeometry,
    decode_attention,
    padded_attention,
    plan_step,
)
from kvfleet.services.worker.engine.batch_builder import build_batch
from kvfleet.services.worker.engine.compiled_decode import bucket, pad_decode_batch
from kvfleet.services.worker.engine.sequence import Sequence

pytestmark = pytest.mark.unit


def prompts(k: int, n: int = 17, seed: int = 11) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 49152) for _ in range(n + 5 * i)] for i in range(k)]


def test_bfloat16_logits_follow_transformers_and_pages_hold_twice_the_tokens():
    eng32 = tiny_engine()
    eng16 = tiny_engine(dtype="bfloat16")
    tpp = eng16.occupancy().tokens_per_page["tiny-llama"]
    assert tpp == 2 * eng32.occupancy().tokens_per_page["tiny-llama"]
    assert eng16.accounting().weights_bytes < 0.55 * eng32.accounting().weights_bytes
    tok = load_tokenizer("tiny-llama")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}])
    mine = prefill_logits(eng16, "tiny-llama", prompt)
    with torch.inference_mode():
        ref = hf_model("tiny-llama")(torch.tensor([prompt])).logits[0, -1]
    # bfloat16 weights and KV: about 3 significant digits
    assert (mine - ref).abs().max() <= 0.02 * ref.abs().max(), (mine - ref).abs().max()


def test_bfloat16_batched_equals_one_at_a_time():
    ps = prompts(4)
    solo = tiny_engine(dtype="bfloat16")
    ref = []
    for p in ps:
        solo.add_request(request("s", p, greedy(12)))
        ref.append(tokens(run_all(solo)["s"]))
    eng = tiny_engine(dtype="bfloat16", budget=24, max_seqs=3)
    for i, p in enumerate(ps):
        eng.add_request(request(f"b{i}", p, greedy(12)))
    out = run_all(eng)
    assert [tokens(out[f"b{i}"]) for i in range(4)] == ref
    assert eng.pool.num_used_pages == 0


def test_float32_and_bfloat16_models_share_one_pool(tmp_path):
    from kvfleet.common.models.tiny import make_tiny_llama

    second = str(make_tiny_llama(tmp_path / "tiny-b16", seed=99))
    ps = prompts(2)
    ref32 = tiny_engine()
    ref32.add_request(request("a", ps[0], greedy(16)))
    ref_a = tokens(run_all(ref32)["a"])
    ref16 = tiny_engine(load=False, model_dtypes={second: "bfloat16"})
    ref16.load_model(second)
    ref16.add_request(request("b", ps[1], greedy(16), model=second))
    ref_b = tokens(run_all(ref16)["b"])

    eng = tiny_engine(memory_mb=96, model_dtypes={second: "bfloat16"})
    eng.load_model(second)
    tpp = eng.occupancy().tokens_per_page
    assert tpp[second] == 2 * tpp["tiny-llama"]
    eng.pool.resize(10)  # one request at a time: pages freed by one model serve the other
    eng.add_request(request("a", ps[0], greedy(16)))
    eng.add_request(request("b", ps[1], greedy(16), model=second))
    pages: dict[str, set[int]] = {"a": set(), "b": set()}
    out: dict[str, list] = {}
    while eng.has_unfinished():
        for e in eng.step():
            out.setdefault(e.request_id, []).append(e)
        for rid, seq in eng._seqs.items():
            pages[rid] |= set(seq.pages)
    assert tokens(out["a"]) == ref_a
    assert tokens(out["b"]) == ref_b
    assert pages["a"] & pages["b"]
    assert eng.pool.num_used_pages == 0


def test_bfloat16_export_import_across_page_sizes():
    p = prompts(1, n=23)[0]
    ref_eng = tiny_engine(dtype="bfloat16")
    ref_eng.add_request(request("m", p, greedy(20)))
    ref = tokens(run_all(ref_eng)["m"])
    src = tiny_engine(dtype="bfloat16", page_size_bytes=4096)
    dst = tiny_engine(dtype="bfloat16", page_size_bytes=16384)
    src.add_request(request("m", p, greedy(20)))
    evs = [e for _ in range(5) for e in src.step()]
    export = src.export_sequence("m", stop=True)
    assert export.meta["dtype"] == "bfloat16"
    dst.import_sequence(export)
    assert tokens(evs) + tokens(run_all(dst)["m"]) == ref


def _random_pool(seed: int, pages: int, geo_layers: int, tpp: int, h: int, d: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(pages, geo_layers, 2, tpp, h, d, generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode_attention_equals_padded_sdpa(dtype):
    """The torch decode path and the C kernel, both reading through the page table, against
    the padded SDPA path, for every layer of a pool of random pages."""
    num_pages, layers, tpp, h, g, d = 12, 3, 5, 2, 3, 16
    kv = _random_pool(0, num_pages, layers, tpp, h, d).to(dtype)
    geo = KvGeometry(h * g, h, d, tpp, kv.stride(0))
    flat = kv.view(-1)
    rng = random.Random(1)
    lengths = [1, 7, 13, 20]
    tables = [rng.sample(range(num_pages), -(-n // tpp)) for n in lengths]
    width = max(len(t) for t in tables)
    table = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    limit = torch.tensor([[n - 1] for n in lengths])
    slot_pages = torch.tensor([t[(n - 1) // tpp] for t, n in zip(tables, lengths, strict=True)])
    slot_offsets = torch.tensor([(n - 1) % tpp for n in lengths])
    q = torch.randn(len(lengths), h * g * d)
    decode = plan_step(geo, table, slot_pages, slot_offsets, limit, None)
    assert decode.key_len is not None
    # the same step through the padded path (its mask, no padding needed for one query)
    padded = replace(decode, key_len=None)
    padded.mask = (
        torch.arange(table.shape[1] * tpp).view(1, 1, -1) <= limit.repeat(1, g).unsqueeze(-1)
    ).unsqueeze(1)
    assert cpu_attention.kernel_library() is not None, "the C kernel did not build"
    for layer in range(layers):
        off = geo.layer_offset(layer)
        a = decode_attention(q, flat, geo, decode.key_base, decode.key_len, off)
        b = padded_attention(q, flat, geo, padded.key_base, padded.mask, None, off)
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
        c = cpu_attention.paged_decode(
            q, flat, table, decode.key_len, h, d, tpp, geo.page_stride, off, off + geo.v_offset
        )
        assert torch.allclose(c, b, atol=1e-5, rtol=1e-4), (c - b).abs().max()


def test_decode_batch_padded_to_a_bucket_changes_nothing():
    eng = tiny_engine()
    m = eng.model("tiny-llama")
    tpp = m.layout.tokens_per_page
    seqs = []
    for i, p in enumerate(prompts(3)):
        seq = Sequence(request(f"x{i}", p, greedy(4)), i, None, 1 << 20)
        seq.pages = eng.pool.allocate(-(-(len(p) + 1) // tpp)) or []
        seqs.append(seq)
    view = eng.pool.view(m.layout)
    m.stage.forward(view, build_batch([(s, s.num_tokens) for s in seqs], tpp, eng.device))
    for s in seqs:
        s.num_computed = s.num_tokens
        s.tokens.append(4242)
    batch = build_batch([(s, 1) for s in seqs], tpp, eng.device)
    before = eng.pool.storage.clone()
    ref = m.stage.forward(view, batch)
    kv_ref = eng.pool.storage.clone()
    eng.pool.storage.copy_(before)
    width = bucket(batch.page_table.shape[1]) + 1
    padded = pad_decode_batch(batch, bucket(3), width)
    assert padded.page_table.shape == (4, width)
    got = m.stage.forward(view, padded)
    assert torch.equal(got, ref)
    assert torch.equal(eng.pool.storage, kv_ref)
    assert bucket(3) == 4 and bucket(17) == 24 and bucket(600) == 1024


@pytest.mark.slow
def test_compiled_decode_equals_eager():
    """The compiled layer step (torch.compile, dynamic shapes) gives the eager path's tokens;
    one batch size throughout, so the test compiles one graph."""
    ps = prompts(3)
    out = {}
    for mode in ("off", "decode"):
        eng = tiny_engine(compile=mode)
        for i, p in enumerate(ps):
            eng.add_request(request(f"c{i}", p, greedy(10)))
        got = run_all(eng)
        out[mode] = [tokens(got[f"c{i}"]) for i in range(3)]
        assert eng.pool.num_used_pages == 0
    assert out["decode"] == out["off"]
