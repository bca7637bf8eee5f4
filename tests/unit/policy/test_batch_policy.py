import pytest

from kvfleet.services.worker.core.batch_policy import (
    EngineView,
    FcfsBatchPolicy,
    SeqView,
    pages_needed,
)

pytestmark = pytest.mark.unit


def seq(i, *, tokens, computed=0, pages=0, tpp=16, arrival=None):
    return SeqView(
        seq_id=f"s{i}",
        model="m",
        arrival_s=float(i if arrival is None else arrival),
        num_prompt_tokens=tokens,
        num_tokens=tokens,
        num_computed_tokens=computed,
        num_pages=pages,
        tokens_per_page=tpp,
        max_tokens=16,
    )


def test_pages_needed_rounds_up_and_counts_held_pages():
    s = seq(0, tokens=40, computed=16, pages=1)
    assert pages_needed(s, 24) == 2  # 40 tokens -> 3 pages, 1 held
    assert pages_needed(s, 0) == 0


def test_fcfs_admits_in_order_with_chunked_prefill():
    view = EngineView(
        running=(),
        waiting=(seq(0, tokens=30), seq(1, tokens=30)),
        num_free_pages=100,
        token_budget=40,
        max_num_seqs=8,
    )
    plan = FcfsBatchPolicy().plan(view, 0.0)
    assert [(c.seq_id, c.num_tokens) for c in plan.chunks] == [("s0", 30), ("s1", 10)]
    assert plan.preempt == ()


def test_fcfs_preempts_newest_running_when_pages_run_out():
    running = (
        seq(0, tokens=33, computed=32, pages=2),
        seq(1, tokens=33, computed=32, pages=2),
    )
    view = EngineView(
        running=running,
        waiting=(seq(2, tokens=4),),
        num_free_pages=0,
        token_budget=64,
        max_num_seqs=8,
    )
    plan = FcfsBatchPolicy().plan(view, 0.0)
    assert plan.preempt == ("s1",)
    assert [(c.seq_id, c.num_tokens) for c in plan.chunks] == [("s0", 1)]


def test_fcfs_stops_at_first_waiting_request_that_does_not_fit():
    view = EngineView(
        running=(),
        waiting=(seq(0, tokens=64), seq(1, tokens=4)),
        num_free_pages=2,
        token_budget=128,
        max_num_seqs=8,
    )
    plan = FcfsBatchPolicy(chunked_prefill=False).plan(view, 0.0)
    assert plan.chunks == ()
