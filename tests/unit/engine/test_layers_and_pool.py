"""Layer ranges chained as a pipeline, drop/restore, and two models sharing one pool."""

from __future__ import annotations

import random

import pytest
from engine_testkit import greedy, request, run_all, tiny_engine, tokens

from kvfleet.services.worker.engine import EngineInputError
from kvfleet.services.worker.engine.kv_pool import PagePool
from kvfleet.services.worker.engine.pipeline import Pipeline

pytestmark = pytest.mark.unit


def prompts(k: int, n: int = 19) -> list[list[int]]:
    rng = random.Random(5)
    return [[rng.randrange(100, 49152) for _ in range(n + 3 * i)] for i in range(k)]


@pytest.fixture(scope="module")
def reference():
    eng = tiny_engine()
    ps = prompts(3)
    for i, p in enumerate(ps):
        eng.add_request(request(f"q{i}", p, greedy(20)))
    out = run_all(eng)
    return ps, [tokens(out[f"q{i}"]) for i in range(3)]


def test_two_layer_ranges_chained_equal_the_full_model(reference):
    ps, ref = reference
    a = tiny_engine(load=False)
    b = tiny_engine(load=False, page_size_bytes=8192)
    a.load_model("tiny-llama", layers=(0, 1))
    b.load_model("tiny-llama", layers=(1, 4))
    with pytest.raises(EngineInputError, match="pipeline"):
        a.add_request(request("x", ps[0], greedy(2)))
    pipe = Pipeline([a, b], "tiny-llama")
    for i, p in enumerate(ps):
        pipe.add_request(request(f"q{i}", p, greedy(20)))
    out = run_all(pipe)
    assert [tokens(out[f"q{i}"]) for i in range(3)] == ref
    assert a.pool.num_used_pages == b.pool.num_used_pages == 0
    acc = a.accounting()
    assert [(w.first_layer, w.last_layer) for w in acc.weights] == [(0, 1)]


def test_drop_frees_weights_into_pool_and_restore_takes_them_back(reference):
    ps, ref = reference
    eng = tiny_engine()
    eng.add_request(request("q0", ps[0], greedy(20)))
    evs = [e for _ in range(5) for e in eng.step()]
    pages_before = eng.pool.num_pages
    weights_before = eng.accounting().weights_bytes
    tpp_before = eng.occupancy().tokens_per_page["tiny-llama"]
    # keep the last layers here; a partner holding [0, 2) would run the rest
    eng.drop_layers("tiny-llama", keep=(2, 4))
    acc = eng.accounting()
    assert acc.weights_bytes < weights_before
    assert eng.pool.num_pages > pages_before
    assert acc.tokens_per_page["tiny-llama"] == 2 * tpp_before
    eng.restore_layers("tiny-llama")
    assert eng.accounting().weights_bytes == weights_before
    assert eng.pool.num_pages == pages_before
    out = run_all(eng)
    assert tokens(evs) + tokens(out["q0"]) == ref[0]
    assert eng.num_preemptions >= 1  # restored layers had no KV: recomputed
    assert eng.pool.num_used_pages == 0


def test_two_models_share_one_pool_and_reuse_freed_pages(reference, tmp_path):
    from kvfleet.common.models.tiny import make_tiny_llama

    ps, ref = reference
    second = str(make_tiny_llama(tmp_path / "tiny-b", seed=99))
    solo = tiny_engine(load=False)
    solo.load_model(second)
    solo.add_request(request("b", ps[1], greedy(20), model=second))
    ref_b = tokens(run_all(solo)["b"])
    assert ref_b != ref[1]  # a different model

    eng = tiny_engine(memory_mb=96)
    eng.load_model(second)
    assert set(eng.occupancy().tokens_per_page) == {"tiny-llama", second}
    eng.pool.resize(12)  # one request (at most 42 tokens = 11 pages) at a time
    eng.add_request(request("a", ps[0], greedy(20)))
    eng.add_request(request("b", ps[1], greedy(20), model=second))
    pages: dict[str, set[int]] = {"a": set(), "b": set()}
    out: dict[str, list] = {}
    while eng.has_unfinished():
        for e in eng.step():
            out.setdefault(e.request_id, []).append(e)
        for rid, seq in eng._seqs.items():
            pages[rid] |= set(seq.pages)
    assert tokens(out["a"]) == ref[0]
    assert tokens(out["b"]) == ref_b
    assert pages["a"] & pages["b"]  # pages freed by one model served the other
    assert eng.pool.num_used_pages == 0
    eng.add_request(request("late", ps[2], greedy(20), model=second))
    eng.step()
    eng.unload_model(second)
    assert eng.models() == ["tiny-llama"]
    events = eng.step()
    assert [(e.request_id, e.finish_reason) for e in events] == [("late", "abort")]
    assert eng.pool.num_used_pages == 0 and not eng.has_unfinished()


def test_pool_resize_moves_used_pages_down():
    import torch

    pool = PagePool(1024, 8, torch.float32, torch.device("cpu"))
    pages = pool.allocate(8)
    assert pages is not None and pool.allocate(1) is None
    pool._pages()[7].fill_(7.0)
    pool.free([p for p in pages if p not in (5, 7)])
    remap = pool.resize(3)
    assert set(remap) == {5, 7}
    new7 = remap[7]
    assert torch.all(pool._pages()[new7] == 7.0)
    assert pool.num_used_pages == 2 and pool.num_free_pages == 1
    with pytest.raises(ValueError):
        pool.resize(1)
    pool.resize(10)
    assert pool.num_free_pages == 8
    assert torch.all(pool._pages()[new7] == 7.0)


def test_pool_memory_is_committed_when_allocated():
    """The budget is resident from the start (a host that cannot back it fails then, not
    under a burst), on a CPU as on a GPU: an untouched allocation would not be. Measured in a
    fresh process: in this one the allocator may hand back pages earlier tests touched."""
    import subprocess
    import sys

    code = (
        "import os, torch\n"
        "from kvfleet.load.stack_probe import rss_bytes\n"
        "from kvfleet.services.worker.engine.kv_pool import PagePool\n"
        "before = rss_bytes(os.getpid())\n"
        "pool = PagePool(1 << 20, 96, torch.float32, torch.device('cpu'))\n"
        "print(rss_bytes(os.getpid()) - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert int(out.stdout.split()[-1]) > 0.9 * (96 << 20)
