"""Sampling options, stop conditions, resume from generated tokens, and thread-safe intake."""

from __future__ import annotations

import threading

import pytest
from engine_testkit import greedy, request, run_all, tiny_engine, tokens

from kvfleet.services.worker.engine import SamplingParams

pytestmark = pytest.mark.unit

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173]


@pytest.fixture(scope="module")
def eng():
    return tiny_engine()


def one(eng, sp: SamplingParams, prompt=PROMPT, **kw):
    eng.add_request(request("one", prompt, sp, **kw))
    return run_all(eng)["one"]


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(eng):
    sp = SamplingParams(
        max_tokens=16, temperature=1.0, top_k=40, top_p=0.95, seed=7, ignore_eos=True
    )
    a = tokens(one(eng, sp))
    b = tokens(one(eng, sp))
    c = tokens(one(eng, SamplingParams(max_tokens=16, temperature=1.0, seed=8, ignore_eos=True)))
    g = tokens(one(eng, greedy(16)))
    assert a == b
    assert a != g and c != a
    top1 = tokens(
        one(eng, SamplingParams(max_tokens=16, temperature=1.0, top_k=1, seed=3, ignore_eos=True))
    )
    assert top1 == g  # top-k 1 is greedy


def test_stop_token_and_stop_string(eng):
    g = one(eng, greedy(20))
    ids = tokens(g)
    cut = one(eng, greedy(20, stop_token_ids=(ids[5],)))
    assert tokens(cut)[-1] == ids[5] and cut[-1].finish_reason == "stop"
    assert len(cut) == ids.index(ids[5]) + 1
    text = "".join(e.text for e in g)
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    assert stop.strip()
    s = one(eng, greedy(20, stop=(stop,)))
    out = "".join(e.text for e in s)
    assert s[-1].finish_reason == "stop"
    assert out == text[: text.index(stop)]


def test_resume_from_generated_tokens_continues_identically(eng):
    ids = tokens(one(eng, greedy(12)))
    rest = one(eng, greedy(12), output_token_ids=tuple(ids[:5]))
    assert tokens(rest) == ids[5:]
    assert [e.index for e in rest] == list(range(5, 12))


def test_requests_added_from_another_thread_while_stepping():
    eng = tiny_engine()
    out: dict[str, list] = {}
    done = threading.Event()

    def producer() -> None:
        for i in range(6):
            eng.add_request(request(f"t{i}", PROMPT[: 3 + i], greedy(6)))
        done.set()

    th = threading.Thread(target=producer)
    th.start()
    while not (done.is_set() and not eng.has_unfinished()):
        for e in eng.step():
            out.setdefault(e.request_id, []).append(e)
    th.join()
    assert sorted(out) == [f"t{i}" for i in range(6)]
    assert all(len(tokens(v)) == 6 for v in out.values())
    assert eng.pool.num_used_pages == 0
