"""Bad input gets a clear error and the engine keeps serving everything else."""

from __future__ import annotations

import pytest
from engine_testkit import greedy, request, run_all, tiny_engine, tokens

from kvfleet.services.worker.engine import (
    EngineInputError,
    ModelNotFoundError,
    OutOfMemoryBudgetError,
    SamplingParams,
)

pytestmark = pytest.mark.unit

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356]


@pytest.fixture(scope="module")
def eng():
    return tiny_engine()


def test_bad_requests_are_refused_while_a_good_one_runs(eng):
    eng.add_request(request("good", PROMPT, greedy(8)))
    first = eng.step()
    with pytest.raises(EngineInputError, match="context"):
        eng.add_request(request("long", [5] * 2048, greedy(4)))
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        eng.add_request(request("unk", PROMPT, greedy(4), model="no-such-model"))
    bad = [
        SamplingParams(temperature=-1.0),
        SamplingParams(temperature=float("nan")),
        SamplingParams(top_p=0.0),
        SamplingParams(top_p=1.5),
        SamplingParams(top_k=-3),
        SamplingParams(max_tokens=0),
        SamplingParams(seed=-1),
        SamplingParams(stop=("",)),
    ]
    for sp in bad:
        with pytest.raises(EngineInputError):
            eng.add_request(request("bad", PROMPT, sp))
    with pytest.raises(EngineInputError, match="token ids"):
        eng.add_request(request("vocab", [49152], greedy(2)))
    with pytest.raises(EngineInputError, match="empty"):
        eng.add_request(request("empty", [], greedy(2)))
    with pytest.raises(EngineInputError, match="already in use"):
        eng.add_request(request("good", PROMPT, greedy(2)))
    out = run_all(eng)
    assert set(out) == {"good"}
    assert len(tokens(first + out["good"])) == 8
    assert eng.pool.num_used_pages == 0


def test_unknown_model_and_budget_are_refused_at_load(eng):
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        eng.load_model("no-such-model")
    small = tiny_engine(memory_mb=8, load=False)
    with pytest.raises(OutOfMemoryBudgetError, match="needs"):
        small.load_model("tiny-llama")
    assert small.models() == []
    with pytest.raises(EngineInputError, match="layer range"):
        eng.load_model("smollm2-135m", layers=(3, 2))
    # the engine still serves
    eng.add_request(request("after", PROMPT, greedy(3)))
    assert len(tokens(run_all(eng)["after"])) == 3


def test_abort_frees_pages_and_emits_abort(eng):
    eng.add_request(request("a", PROMPT, greedy(50)))
    eng.add_request(request("b", PROMPT, greedy(5)))
    first = [e for e in eng.step() if e.request_id == "b"]
    assert eng.abort("a") is True
    assert eng.abort("nope") is False
    out = run_all(eng)
    assert out["a"][-1].finish_reason == "abort" and out["a"][-1].token_id is None
    assert len(tokens(first + out["b"])) == 5
    assert eng.pool.num_used_pages == 0
