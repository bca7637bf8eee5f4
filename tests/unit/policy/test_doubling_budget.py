"""The doubling-budget batch policy: levels, cross-model priorities, eviction by priority,
feasible plans (property-based) and a bound on every request's wait."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvfleet.services.worker.core.batch_policy import EngineView, SeqView, pages_needed
from kvfleet.services.worker.core.doubling_budget import (
    DoublingBudgetPolicy,
    budget_end,
    budget_level,
)
from kvfleet.services.worker.core.step_cost import ModelStepCost

pytestmark = pytest.mark.unit

FAST = ModelStepCost(s_per_token=1e-5, s_weights=0.005, overhead_s=1e-3)  # a 1B-like model
SLOW = ModelStepCost(s_per_token=1e-4, s_weights=0.040, overhead_s=1e-3)  # a 70B-like model
COSTS = {"fast": FAST, "slow": SLOW}


def seq(sid, model="fast", *, prompt=32, out=0, computed=None, pages=None, tpp=16, arrival=0.0,
        pred=None, max_tokens=256, ttft=None, tpot=None, priority=1, first=None):
    tokens = prompt + out
    if computed is None:
        computed = tokens - 1 if out else 0
    if pages is None:
        pages = -(-computed // tpp)
    return SeqView(sid, model, arrival, prompt, tokens, computed, pages, tpp, max_tokens, out,
                   pred, ttft, tpot, priority, first)


def view(running=(), waiting=(), free=1000, budget=512, max_seqs=64, costs=COSTS):
    return EngineView(tuple(running), tuple(waiting), free, budget, max_seqs, costs)


def test_budget_levels_double():
    assert [budget_level(u, 10) for u in (0, 9, 10, 29, 30, 69, 70)] == [0, 0, 1, 1, 2, 2, 3]
    assert [budget_end(k, 10) for k in range(4)] == [10, 30, 70, 150]


def test_a_request_past_its_budget_drops_a_level_and_yields_to_a_fresh_one():
    p = DoublingBudgetPolicy(min_budget=4)
    over = seq("over", out=40, pred=8, arrival=0.0)  # used 40 of 8: level 2
    fresh = seq("fresh", arrival=0.0, pred=8)
    order = [r.seq.seq_id for r in p.ranked(view([over], [fresh]), now_s=0.01)]
    assert order == ["fresh", "over"]


def test_a_short_request_of_a_fast_model_is_not_stuck_behind_a_slow_model():
    p = DoublingBudgetPolicy()
    slow = [seq(f"slow{i}", "slow", out=5, pred=500, arrival=0.0) for i in range(8)]
    short = seq("short", "fast", out=2, pred=4, arrival=1.0)
    plan = p.plan(view(slow, [], free=1000), now_s=1.01)
    assert {c.seq_id for c in plan.chunks} == {s.seq_id for s in slow}  # alone, they run
    plan = p.plan(view([*slow, short]), now_s=1.01)
    # The slow model's step would multiply the short request's time many times over: it runs
    # alone; the slow ones keep their pages (paused, not preempted).
    assert [c.seq_id for c in plan.chunks] == ["short"]
    assert plan.preempt == ()


def test_a_waiting_model_joins_once_its_requests_fall_behind():
    p = DoublingBudgetPolicy()
    slow = [seq(f"slow{i}", "slow", out=5, pred=500, arrival=0.0) for i in range(8)]
    short = seq("short", "fast", out=2, pred=4, arrival=0.0)
    # Long after arrival the slow requests are far behind their isolated time: urgent.
    plan = p.plan(view([*slow, short]), now_s=400.0)
    assert {c.seq_id for c in plan.chunks} == {"short", *(s.seq_id for s in slow)}


def test_an_slo_deadline_makes_a_request_urgent():
    p = DoublingBudgetPolicy()
    a = seq("a", "fast", out=3, pred=4, arrival=1.0)
    b = seq("b", "slow", out=3, pred=400, arrival=0.0, ttft=1.0, tpot=0.05, first=0.5)
    ranked = p.ranked(view([a, b]), now_s=0.6)
    assert ranked[0].seq.seq_id == "b" and ranked[0].urgent  # its 4th token is due at 0.65


def test_eviction_under_pressure_takes_the_lowest_priority_first():
    p = DoublingBudgetPolicy(min_budget=4)
    low = seq("low", prompt=16, out=60, pred=4, computed=75, pages=5)  # far past its budget
    mid = seq("mid", out=1, pred=64, arrival=0.0, computed=32, pages=2)
    new = seq("new", prompt=80, arrival=0.0, pred=8)
    plan = p.plan(view([low, mid], [new], free=1), now_s=0.0)
    assert plan.preempt == ("low",)
    assert {c.seq_id for c in plan.chunks} == {"new", "mid"}


def test_eviction_never_throws_away_more_work_than_it_makes_room_for():
    p = DoublingBudgetPolicy(min_budget=4)
    low = seq("low", out=60, pred=4, arrival=0.0, computed=91, pages=6)  # far past its budget
    mid = seq("mid", prompt=48, out=1, pred=64, arrival=0.0, computed=48, pages=3)
    new = seq("new", prompt=40, arrival=0.0, pred=8)
    plan = p.plan(view([low, mid], [new], free=1), now_s=0.0)
    # Evicting "low" (or "mid") would cost 91 (48) tokens of recompute to start a 40-token prompt: "new" waits
    # and the running requests go on with their KV.
    assert plan.preempt == ()
    assert "new" not in {c.seq_id for c in plan.chunks}
    assert "mid" in {c.seq_id for c in plan.chunks}


def test_a_full_pool_still_moves():
    p = DoublingBudgetPolicy(min_budget=4)
    # Every running request needs a page for its next token and none is free: the worker
    # does not stall; the lowest-priority one gives up its pages.
    a = seq("a", out=1, pred=64, computed=32, pages=2, arrival=0.0)
    b = seq("b", prompt=41, out=40, pred=4, computed=80, pages=5, arrival=0.0)
    plan = p.plan(view([a, b], [], free=0), now_s=0.0)
    assert plan.preempt == ("b",)
    assert [c.seq_id for c in plan.chunks] == ["a"]


running_seqs = st.lists(
    st.tuples(st.sampled_from(["fast", "slow"]), st.integers(1, 60), st.integers(1, 40),
              st.floats(0, 5, allow_subnormal=False), st.integers(1, 100)),
    max_size=10,
)
waiting_seqs = st.lists(
    st.tuples(st.sampled_from(["fast", "slow"]), st.integers(1, 120), st.floats(0, 5, allow_subnormal=False),
              st.one_of(st.none(), st.integers(1, 200))),
    max_size=10,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(running=running_seqs, waiting=waiting_seqs, free=st.integers(0, 40),
       budget=st.integers(1, 256), max_seqs=st.integers(1, 16), now=st.floats(5, 50, allow_subnormal=False))
def test_every_plan_is_feasible(running, waiting, free, budget, max_seqs, now):
    run = [seq(f"r{i}", m, prompt=p, out=o, arrival=a, pred=pr)
           for i, (m, p, o, a, pr) in enumerate(running)]
    wait = [seq(f"w{i}", m, prompt=p, arrival=a, pred=pr)
            for i, (m, p, a, pr) in enumerate(waiting)]
    v = view(run, wait, free, budget, max_seqs)
    plan = DoublingBudgetPolicy().plan(v, now)
    by_id = {s.seq_id: s for s in (*run, *wait)}
    chunked = [c.seq_id for c in plan.chunks]
    assert len(set(chunked)) == len(chunked) and not set(chunked) & set(plan.preempt)
    assert all(by_id[r].num_pages > 0 for r in plan.preempt)  # only holders are evicted
    assert plan.num_tokens <= budget and len(plan.chunks) <= max_seqs
    need = 0
    for c in plan.chunks:
        s = by_id[c.seq_id]
        assert 0 < c.num_tokens <= s.num_uncomputed_tokens
        need += pages_needed(s, c.num_tokens)
    assert need <= free + sum(by_id[r].num_pages for r in plan.preempt)
    fits = [w for w in wait if pages_needed(w, min(w.num_tokens, budget)) <= free]
    if run or fits:  # something always moves
        assert plan.chunks or plan.preempt
