"""Resumable seeded sampling, linear stop-string hold-back, import validation, and the KV
pool's memory accounting (never two pools at once; sized after the weights)."""

from __future__ import annotations

import time
import weakref

import pytest
import torch
from engine_testkit import greedy, request, run_all, tiny_engine, tokens
from hypothesis import given, settings
from hypothesis import strategies as st

from kvfleet.common.sampling import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS, SamplingError
from kvfleet.services.worker.engine import EngineInputError, SamplingParams
from kvfleet.services.worker.engine.kv_pool import PagePool
from kvfleet.services.worker.engine.sampler import draw, token_uniform
from kvfleet.services.worker.engine.sequence import StopMatcher

pytestmark = pytest.mark.unit
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173]
SAMPLED = SamplingParams(max_tokens=24, temperature=1.0, top_k=50, top_p=0.95, seed=1234,
                         ignore_eos=True)


@pytest.fixture(scope="module")
def eng():
    return tiny_engine()


def test_sampled_tokens_are_a_function_of_seed_and_index(eng):
    eng.add_request(request("full", PROMPT, SAMPLED))
    full = tokens(run_all(eng)["full"])
    # resumed from any point (another worker, after a crash) with the same seed: same stream
    for k in (1, 7, 23):
        eng.add_request(request(f"r{k}", PROMPT, SAMPLED, output_token_ids=tuple(full[:k])))
        assert tokens(run_all(eng)[f"r{k}"]) == full[k:]
    # in a batch with other requests: still the same stream
    eng.add_request(request("batched", PROMPT, SAMPLED))
    eng.add_request(request("noise", PROMPT[:4], SamplingParams(max_tokens=30, temperature=1.0)))
    assert tokens(run_all(eng)["batched"]) == full


def test_uniforms_are_uniform_and_draw_never_picks_zero_probability():
    us = [token_uniform(7, i) for i in range(20_000)]
    assert 0.0 <= min(us) and max(us) < 1.0
    assert abs(sum(us) / len(us) - 0.5) < 0.01
    assert token_uniform(7, 3) == token_uniform(7, 3) != token_uniform(8, 3)
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0], dtype=torch.float64)
    picks = {draw(probs, u) for u in (0.0, 0.25, 0.5, 0.75, 1.0 - 2**-53)}
    assert picks == {1, 3}


def naive_held_back(text: str, stops: tuple[str, ...]) -> int:
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if s.startswith(text[-n:]):
                best = max(best, n)
                break
    return best


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text("ab", min_size=1, max_size=6), min_size=1, max_size=3),
    st.lists(st.text("abc", max_size=4), max_size=12),
)
def test_stop_matcher_agrees_with_the_naive_scan(stops, deltas):
    m = StopMatcher(tuple(stops))
    text = ""
    for d in deltas:
        hit = m.feed(d)
        before = len(text)
        text += d
        hits = [i for s in stops if (i := text.find(s, max(0, before - len(s) + 1))) >= 0]
        assert hit == (min(hits) if hits else None)
        if hit is not None:
            return
        assert m.held_back == naive_held_back(text, tuple(stops))


def test_long_stop_strings_cost_linear_time_per_token():
    stop = "a" * (MAX_STOP_STRING_CHARS - 1) + "b"
    m = StopMatcher((stop,) * MAX_STOP_STRINGS)
    t0 = time.perf_counter()
    for _ in range(2000):  # 2000 tokens that keep almost matching
        assert m.feed("a") is None
    assert time.perf_counter() - t0 < 2.0
    assert m.held_back == MAX_STOP_STRING_CHARS - 1


def test_stop_string_caps_are_enforced_by_the_engine(eng):
    with pytest.raises(SamplingError):
        SamplingParams(stop=("x" * (MAX_STOP_STRING_CHARS + 1),)).validate()
    with pytest.raises(EngineInputError):
        eng.add_request(request("many", PROMPT, greedy(4, stop=("x",) * (MAX_STOP_STRINGS + 1))))
    with pytest.raises(EngineInputError):
        eng.add_request(request("wide", PROMPT, SamplingParams(max_tokens=1 << 32)))


def test_import_checks_the_export_and_leaks_no_pages(eng):
    eng.add_request(request("m", PROMPT, SAMPLED))
    for _ in range(3):
        eng.step()
    export = eng.export_sequence("m", stop=True)
    free = eng.pool.num_free_pages
    bad_shape = type(export)(dict(export.meta), [export.tensors[0][:, :, :-1]])
    bad_tokens = type(export)({**export.meta, "output_token_ids": [10**9]}, export.tensors)
    bad_range = type(export)({**export.meta, "token_range": [0, 10**6]}, export.tensors)
    missing = type(export)({k: v for k, v in export.meta.items() if k != "seed"}, export.tensors)
    for e in (bad_shape, bad_tokens, bad_range, missing):
        with pytest.raises(EngineInputError):
            eng.import_sequence(e)
        assert eng.pool.num_free_pages == free
    eng.import_sequence(export)
    out = tokens(run_all(eng)["m"])
    eng.add_request(request("ref", PROMPT, SAMPLED))
    assert tokens(run_all(eng)["ref"])[-len(out):] == out
    assert eng.pool.num_used_pages == 0


def test_pool_resize_never_holds_two_storages(monkeypatch):
    pool = PagePool(1024, 8, torch.float32, torch.device("cpu"))
    pages = pool.allocate(6)
    for p in pages:
        pool._pages()[p].fill_(float(p))
    pool.free(pages[:3])
    old = weakref.ref(pool.storage)
    real = PagePool._new_storage
    seen = []

    def new_storage(self, num_pages):
        if num_pages:  # the real allocation: the previous storage must be gone already
            seen.append(old() is None)
        return real(self, num_pages)

    monkeypatch.setattr(PagePool, "_new_storage", new_storage)
    remap = pool.resize(4)
    assert seen == [True]
    for p in pages[3:]:
        assert torch.all(pool._pages()[remap.get(p, p)] == float(p))
    assert pool.storage_bytes == 4 * 1024


def test_pool_is_sized_after_the_weights_and_shrinks_before_loading_more():
    eng = tiny_engine(load=False)
    assert eng.pool.num_pages == 0 and eng.pool.storage_bytes == 0
    sizes = []
    real = PagePool._new_storage

    def new_storage(self, num_pages):
        sizes.append(num_pages)
        return real(self, num_pages)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PagePool, "_new_storage", new_storage)
        eng.load_model("tiny-llama")
    acc = eng.accounting()
    assert acc.pool_bytes + acc.weights_bytes + acc.workspace_bytes <= acc.memory_bytes
    assert eng.pool.num_pages == eng.pool_pages() == max(sizes)
    with pytest.MonkeyPatch.context() as mp:
        sizes.clear()
        mp.setattr(PagePool, "_new_storage", new_storage)
        import tempfile

        from kvfleet.common.models.tiny import make_tiny_llama

        with tempfile.TemporaryDirectory() as d:
            second = str(make_tiny_llama(f"{d}/b", seed=5))
            eng.load_model(second)
    # shrunk (to leave room for the second model's weights) before growing to the final size
    nonzero = [s for s in sizes if s]
    assert nonzero[0] <= nonzero[-1] == eng.pool.num_pages
    acc = eng.accounting()
    assert acc.pool_bytes + acc.weights_bytes + acc.workspace_bytes <= acc.memory_bytes
