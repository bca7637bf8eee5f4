import pytest

from kvfleet.services.worker.core.batch_policy import EngineView, SeqView
from kvfleet.services.worker.core.ecoserve_policy import (
    EcoServeBatchPolicy,
    EcoServeSettings,
    OrcaBatchPolicy,
)
from kvfleet.services.worker.core.slo_order import OrderSettings, next_change_s
from kvfleet.services.worker.core.vllm_v0_policy import VllmV0BatchPolicy

pytestmark = pytest.mark.unit

TPP = 4


def seq(sid, *, prompt, out=0, computed=None, pages=None, pred=None, max_tokens=64,
        arrival=0.0, ttft=None, tpot=None, priority=1):
    """A sequence with ``out`` tokens generated; running (all but its last token computed)
    when ``pages`` is given, else waiting."""
    tokens = prompt + out
    if pages is None:
        computed, pages = 0, 0
    elif computed is None:
        computed = tokens - 1
    return SeqView(sid, "m", arrival, prompt, tokens, computed, pages, TPP, max_tokens, out,
                   pred, ttft, tpot, priority)


def view(running=(), waiting=(), free=100, budget=64, max_seqs=8):
    return EngineView(tuple(running), tuple(waiting), free, budget, max_seqs)


def chunks(plan):
    return [(c.seq_id, c.num_tokens) for c in plan.chunks]


def test_generation_batch_first_then_prompts_fill_the_budget():
    policy = EcoServeBatchPolicy()
    # admit two decoding requests first (their reservations enter the ledger)
    policy.plan(view(waiting=[seq("a", prompt=8, pred=8), seq("b", prompt=8, pred=8)]), 0.0)
    running = [seq("a", prompt=8, out=1, pages=2, pred=8), seq("b", prompt=8, out=1, pages=2, pred=8)]
    plan = policy.plan(view(running, [seq("c", prompt=100, pred=4)], budget=20), 0.1)
    assert chunks(plan) == [("a", 1), ("b", 1), ("c", 18)]  # chunked prefill tops it up


def test_admission_reserves_the_predicted_length_and_reports_it():
    policy = EcoServeBatchPolicy()
    plan = policy.plan(view(waiting=[seq("a", prompt=10, pred=30)], free=50), 0.0)
    assert chunks(plan) == [("a", 10)]
    # 10 + 30 - 1 = 39 tokens -> 10 pages reserved, 3 held after this step
    assert policy.ledger.get("a").pages == 10
    assert plan.num_reserved_pages == 7


def test_a_request_waits_until_its_whole_reservation_fits():
    policy = EcoServeBatchPolicy(EcoServeSettings(lending=False))
    plan = policy.plan(view(waiting=[seq("a", prompt=10, pred=30), seq("b", prompt=4, pred=2)],
                            free=9), 0.0)
    # a needs 10 pages; b would fit but keeps its place behind a (FCFS at equal slack
    # classes is by length: b first)
    assert chunks(plan) == [("b", 4)]
    plan = EcoServeBatchPolicy(EcoServeSettings(lending=False, order="fcfs")).plan(
        view(waiting=[seq("a", prompt=10, pred=30), seq("b", prompt=4, pred=2)], free=9), 0.0)
    assert chunks(plan) == []  # arrival order: nothing passes the head


def test_an_outrun_reservation_grows_by_a_chunk():
    policy = EcoServeBatchPolicy(EcoServeSettings(min_growth_tokens=8, growth_fraction=0.0))
    policy.plan(view(waiting=[seq("a", prompt=7, pred=2)]), 0.0)
    assert policy.ledger.get("a").pages == 2  # 7 + 2 - 1 = 8 tokens
    # it generated 2 tokens and needs KV for the 9th: grow by 8 tokens = 2 pages
    plan = policy.plan(view([seq("a", prompt=7, out=2, pages=2, pred=2)], free=98), 1.0)
    assert chunks(plan) == [("a", 1)]
    assert policy.ledger.get("a").pages == 5 and policy.num_growths == 1


def test_when_growth_is_impossible_the_overrunner_is_preempted_not_a_request_on_track():
    policy = EcoServeBatchPolicy(EcoServeSettings(lending=False))
    policy.plan(view(waiting=[seq("long", prompt=8, pred=40)], free=14), 0.0)  # 12 pages
    policy.plan(view([seq("long", prompt=8, out=1, pages=2, pred=40)],
                     [seq("over", prompt=3, pred=1)], free=12), 0.1)  # 1 page
    # "over" outran its one predicted token and needs a second page: the only room is
    # promised to "long" (within its prediction), so "over" itself is preempted
    running = [seq("long", prompt=8, out=2, pages=3, pred=40),
               seq("over", prompt=3, out=2, pages=1, pred=1)]
    plan = policy.plan(view(running, free=9), 0.2)  # a pool of 13 pages
    assert plan.preempt == ("over",)
    assert chunks(plan) == [("long", 1)]


def test_a_short_request_borrows_a_long_ones_unwritten_pages_and_gives_them_back():
    policy = EcoServeBatchPolicy()
    policy.plan(view(waiting=[seq("long", prompt=4, pred=96, max_tokens=200)], free=25), 0.0)
    assert policy.ledger.get("long").pages == 25  # 4 + 96 - 1 tokens
    long_ = seq("long", prompt=4, out=1, pages=1, pred=96, max_tokens=200)
    plan = policy.plan(view([long_], [seq("short", prompt=4, pred=4)], free=24), 0.1)
    assert chunks(plan) == [("long", 1), ("short", 4)]
    assert policy.ledger.get("short").loans == {"long": 2}
    assert plan.num_reserved_pages == 24 - 1 - 1  # long's promise less short's page
    # short outruns its prediction while long has written up to the loan: long needs a page,
    # none is free: short is preempted (the borrower), never long
    long_ = seq("long", prompt=4, out=89, pages=23, pred=96, max_tokens=200)  # needs a 24th
    short = seq("short", prompt=4, out=4, pages=2, pred=4)
    plan = policy.plan(view([long_, short], free=0), 9.0)
    assert plan.preempt == ("short",) and policy.num_loan_recalls == 1
    assert chunks(plan) == [("long", 1)]


def test_queue_order_held_kv_then_slack_then_length():
    policy = EcoServeBatchPolicy(EcoServeSettings(lending=False))
    waiting = [
        seq("relaxed-long", prompt=40, pred=40, arrival=0.0, ttft=10.0),
        seq("relaxed-short", prompt=4, pred=4, arrival=0.5, ttft=10.0),
        seq("urgent", prompt=40, pred=40, arrival=-8.0, ttft=10.0),  # 2 s of slack left
        seq("late", prompt=4, pred=4, arrival=-11.0, ttft=10.0),  # missed its TTFT
        seq("resumed", prompt=4, out=3, pred=8, arrival=1.0, ttft=10.0),  # held KV before
    ]
    plan = policy.plan(view(waiting=waiting, free=1000, budget=1000), 0.0)
    assert [c.seq_id for c in plan.chunks] == [
        "resumed", "urgent", "relaxed-short", "relaxed-long", "late"]
    # a request late by far (4x its TTFT target) is no longer held back
    starving = seq("starving", prompt=4, pred=4, arrival=-60.0, ttft=10.0)
    plan = policy.plan(view(waiting=[*waiting, starving], free=1000, budget=1000), 0.0)
    assert plan.chunks[1].seq_id == "starving"


def test_the_plan_says_when_its_order_changes_with_time():
    order = OrderSettings(urgent_fraction=0.5)
    q = [seq("a", prompt=4, arrival=0.0, ttft=2.0), seq("b", prompt=4, arrival=0.5, ttft=2.0)]
    assert next_change_s(q, 0.2, order) == 1.0  # a becomes urgent (1 s of slack left)
    assert next_change_s(q, 1.2, order) == 1.5  # then b
    assert next_change_s(q, 1.6, order) == 2.0  # then a is late
    # nothing admissible (no room): the plan carries the time its order changes
    policy = EcoServeBatchPolicy(EcoServeSettings(lending=False))
    plan = policy.plan(view(waiting=q, free=0), 0.2)
    assert plan.chunks == () and plan.replan_at_s == 1.0


def test_decode_plans_repeat_until_a_reservation_runs_out():
    policy = EcoServeBatchPolicy()
    policy.plan(view(waiting=[seq("a", prompt=5, pred=20), seq("b", prompt=5, pred=8)]), 0.0)
    running = [seq("a", prompt=5, out=1, pages=2, pred=20), seq("b", prompt=5, out=1, pages=2, pred=8)]
    plan = policy.plan(view(running, free=96), 0.1)
    # b reserved 5 + 8 - 1 = 12 tokens (3 pages); it has 5 computed: 7 more steps fit
    assert plan.repeat_steps == 7


def test_generation_groups_run_whole_when_the_budget_binds():
    policy = EcoServeBatchPolicy()
    short = [seq(f"s{i}", prompt=4, out=5, pages=2, pred=12) for i in range(3)]
    long_ = [seq(f"l{i}", prompt=4, out=1, pages=1, pred=60) for i in range(3)]
    for s in (*short, *long_):
        policy.ledger.reserve(s.seq_id, 20)
    plan = policy.plan(view([short[0], long_[0], short[1], long_[1], short[2], long_[2]],
                            budget=4), 0.0)
    # room for 4: the group ranked first (its members hold more KV) runs whole, the other
    # does not fit whole and waits
    assert sorted(c.seq_id for c in plan.chunks) == ["s0", "s1", "s2"]


def test_orca_reserves_max_tokens_and_feeds_prompts_whole():
    policy = OrcaBatchPolicy()
    plan = policy.plan(view(waiting=[seq("a", prompt=10, pred=2, max_tokens=30),
                                     seq("b", prompt=30, pred=2, max_tokens=30)],
                            free=30, budget=32), 0.0)
    assert chunks(plan) == [("a", 10)]  # b does not fit the rest of the budget whole
    assert policy.ledger.get("a").pages == 10  # 10 + 30 - 1 tokens
    # a prompt longer than the whole budget runs whole as the only prompt of its step
    plan = OrcaBatchPolicy().plan(view(waiting=[seq("big", prompt=50, max_tokens=4)],
                                       budget=32), 0.0)
    assert chunks(plan) == [("big", 50)]


def test_vllm_v0_prefill_pauses_decoding():
    policy = VllmV0BatchPolicy()
    running = [seq("a", prompt=4, out=1, pages=2)]
    plan = policy.plan(view(running, [seq("b", prompt=6)]), 0.0)
    assert chunks(plan) == [("b", 6)]  # a waits
    plan = policy.plan(view(running, [seq("c", prompt=6)], free=1), 0.0)
    assert chunks(plan) == [("a", 1)]  # c does not fit: decode


def test_vllm_v0_preempts_the_newest_when_decode_runs_out_of_pages():
    running = [seq("a", prompt=8, out=1, pages=2), seq("b", prompt=8, out=1, pages=2)]
    plan = VllmV0BatchPolicy().plan(view(running, free=0), 0.0)
    assert plan.preempt == ("b",) and chunks(plan) == [("a", 1)] and plan.repeat_steps == 1


def test_step_time_model_learns_from_prompt_steps_and_skips_idle_gaps():
    from kvfleet.services.worker.core.step_time import StepTimeModel

    model = StepTimeModel(min_observations=3)
    now = 0.0
    for tokens in (100, 400, 200, 800):
        model.planned(now, {"a": (0, tokens)})
        now += 0.01 + 0.0001 * tokens  # a + b * tokens
        model.observe(now, {"a": tokens})
    a, b = model.coefficients()
    assert a == pytest.approx(0.01) and b == pytest.approx(0.0001)
    assert abs(model.tokens_within(0.05) - 400) <= 1
    # a decode-only plan is not timed; a gap after which nothing of the step is left is not
    model.planned(now, {"b": (6, 1)})
    model.observe(now + 5.0, {"b": 7})
    model.planned(now, {"a": (0, 100)})
    model.observe(now + 5.0, {})
    assert model.num_observations == 4


def test_prompt_tokens_are_cut_to_the_generation_batchs_tpot_slack():
    policy = EcoServeBatchPolicy()
    model = policy.step_time
    for i, tokens in enumerate((100, 400, 200, 800)):  # time = 0.01 + 0.0001 * tokens
        model.planned(float(i), {"x": (0, tokens)})
        model.observe(i + 0.01 + 0.0001 * tokens, {"x": tokens})
    policy.ledger.reserve("g", 10)
    g = seq("g", prompt=8, out=1, pages=2, pred=20, tpot=0.04, ttft=5.0)
    waiting = [seq("p", prompt=3000, pred=4, max_tokens=8)]
    # first seen decoding at t=10 with 1 token: its next token is due by 10.04, so the step
    # may take 0.04 s: (0.04 - 0.01) / 0.0001 = 300 tokens, one of them the decode
    plan = policy.plan(view([g], waiting, free=1000, budget=2048), 10.0)
    assert chunks(plan)[0] == ("g", 1) and abs(plan.chunks[1].num_tokens - 299) <= 1
    # a batch running ahead of its target (slack 0.4 s) takes the whole budget
    g_ahead = seq("g", prompt=8, out=11, pages=5, pred=20, tpot=0.04, ttft=5.0)
    policy2 = EcoServeBatchPolicy()
    policy2.step_time = model
    policy2.ledger.reserve("g", 10)
    policy2._first_token_s["g"] = 10.0
    plan = policy2.plan(view([g_ahead], waiting, free=1000, budget=2048), 10.04)
    assert chunks(plan) == [("g", 1), ("p", 2047)]
    # without TPOT targets nothing is cut
    g_free = seq("g", prompt=8, out=1, pages=2, pred=20)
    policy3 = EcoServeBatchPolicy()
    policy3.step_time = model
    policy3.ledger.reserve("g", 10)
    plan = policy3.plan(view([g_free], waiting, free=1000, budget=2048), 10.0)
    assert chunks(plan) == [("g", 1), ("p", 2047)]
