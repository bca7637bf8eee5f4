"""Export a running sequence's KV (base + incremental), import it into another engine with a
different page size, and continue with identical tokens."""

from __future__ import annotations

import json
import random

import pytest
from engine_testkit import greedy, request, run_all, tiny_engine, tokens

from kvfleet.services.worker.engine import EngineInputError, SamplingParams

pytestmark = pytest.mark.unit


def prompt(n: int, seed: int = 3) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 49152) for _ in range(n)]


def run_steps(eng, n: int) -> list:
    evs = []
    for _ in range(n):
        evs.extend(eng.step())
    return evs


@pytest.mark.parametrize(
    "sampling",
    [
        greedy(24),
        SamplingParams(
            max_tokens=24, temperature=0.8, top_k=50, top_p=0.9, seed=11, ignore_eos=True
        ),
    ],
)
def test_incremental_export_import_continues_identically(sampling):
    p = prompt(21)
    ref_eng = tiny_engine()
    ref_eng.add_request(request("m", p, sampling))
    ref = tokens(run_all(ref_eng)["m"])

    src = tiny_engine(page_size_bytes=4096)  # 4 tokens per page
    dst = tiny_engine(page_size_bytes=4096 if sampling.temperature else 16384)
    other = [5, 6, 7, 8, 9]
    src.add_request(request("m", p, sampling))
    src.add_request(request("other", other, greedy(30)))
    evs = run_steps(src, 6)
    base = src.export_sequence("m")
    json.dumps(base.meta)  # the meta travels as JSON
    assert base.tensors[0].shape[2] == base.meta["token_range"][1]
    evs += run_steps(src, 3)  # keeps decoding while the base copy travels
    tail = src.export_sequence("m", since_tokens=base.meta["token_range"][1], stop=True)
    assert tail.meta["token_range"][0] == base.meta["token_range"][1]
    assert "m" not in {e.request_id for e in run_steps(src, 1)}
    dst.import_sequence([base, tail])
    out = run_all(dst)["m"]
    got = [e.token_id for e in evs if e.request_id == "m"] + tokens(out)
    assert got == ref
    assert [e.index for e in out] == list(range(len(ref) - len(out), len(ref)))
    assert dst.pool.num_used_pages == 0
    run_all(src)
    assert src.pool.num_used_pages == 0


def test_import_refuses_gaps_and_wrong_model():
    src = tiny_engine()
    src.add_request(request("g", prompt(30), greedy(10)))
    run_steps(src, 3)
    base = src.export_sequence("g", since_tokens=0)
    part = src.export_sequence("g", since_tokens=10, stop=True)
    dst = tiny_engine()
    with pytest.raises(EngineInputError, match="uncovered"):
        dst.import_sequence([part])
    with pytest.raises(EngineInputError, match="since_tokens"):
        src2 = tiny_engine()
        src2.add_request(request("h", prompt(5), greedy(3)))
        src2.step()
        src2.export_sequence("h", since_tokens=99)
    dst.import_sequence(base)
    assert len(tokens(run_all(dst)["g"])) > 0
    assert dst.pool.num_used_pages == 0


@pytest.mark.parametrize(
    "sampling",
    [greedy(20), SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=5,
                                ignore_eos=True)],
)
def test_a_tokens_only_export_is_reprefilled_and_continues_identically(sampling):
    p = prompt(17, seed=9)
    ref_eng = tiny_engine()
    ref_eng.add_request(request("r", p, sampling))
    ref = tokens(run_all(ref_eng)["r"])

    src = tiny_engine()
    src.add_request(request("r", p, sampling))
    evs = run_steps(src, 7)
    moved = src.export_sequence("r", stop=True, with_kv=False)
    assert moved.tensors == [] and moved.meta["token_range"] == [0, 0]
    assert src.pool.num_used_pages == 0
    dst = tiny_engine(page_size_bytes=8192)
    dst.import_sequence(moved)
    assert dst.pool.num_used_pages == 0  # nothing until it is prefilled again
    out = run_all(dst)["r"]
    assert [e.token_id for e in evs if e.request_id == "r"] + tokens(out) == ref
    assert [e.index for e in out] == list(range(len(ref) - len(out), len(ref)))
