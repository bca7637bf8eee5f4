"""MELL's epochs (departures, updates, allocations -> one de-duplicated plan) and its adaptive
migration modes (KV over the links, or tokens and a re-prefill, within per-epoch budgets)."""

import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.services.planner.core.mell import MellPolicy, dedupe
from kvfleet.services.planner.core.migration import (
    MigrationCandidate,
    MigrationOrder,
    MigrationWorkerView,
    migration_views,
)
from kvfleet.services.planner.core.migration_modes import (
    MoveCost,
    WorkerBudget,
    choose_modes,
)
from kvfleet.services.planner.core.packing import Move
from kvfleet.services.scheduler.core.occupancy import OccupancyReport, SeqReport

pytestmark = pytest.mark.unit

PAGES = 120  # pages per worker; one token per page below


def cand(rid, tokens, arrival=0.0, kv_bytes=None, pages=None):
    pages = tokens if pages is None else pages
    return MigrationCandidate(rid, "m", pages, arrival, tokens, tokens - 1, 1, None, True,
                              pages * 1000 if kv_bytes is None else kv_bytes)


def view(wid, *items, link=0.0, comp=0.0):
    used = sum(c.num_pages for c in items)
    return MigrationWorkerView(wid, ("m",), PAGES, PAGES - used, 0, (), False, tuple(items),
                               {"m": 1}, link, comp)


def test_dedupe_drops_moves_that_cancel_and_joins_chains():
    moves = [Move("a", "w0", "w1"), Move("b", "w2", "w3"), Move("a", "w1", "w2"),
             Move("b", "w3", "w2"), Move("c", "w4", "w5")]
    assert dedupe(moves) == [Move("a", "w0", "w2"), Move("c", "w4", "w5")]


def test_an_epoch_refills_a_hole_from_the_newest_worker_and_then_stays_quiet():
    policy = MellPolicy()
    # Two M-workers: w0 holds two M, w1 (opened later) one M.
    first = [view("w0", cand("a", 45), cand("b", 45)), view("w1", cand("c", 45)), view("w2")]
    assert policy.decide(first, 0.0) == ()
    # "a" finished: w0 has a hole an M from the newest M-worker fills.
    second = [view("w0", cand("b", 45)), view("w1", cand("c", 45)), view("w2")]
    assert policy.decide(second, 0.5) == (MigrationOrder("c", "w1", "w0", "live"),)
    # Until "c" shows up on w0 it is in flight: no second order for it.
    assert policy.decide(second, 1.0) == ()
    landed = [view("w0", cand("b", 45), cand("c", 45)), view("w1"), view("w2")]
    assert policy.decide(landed, 1.5) == ()
    assert policy.stats.orders == 1


def test_a_new_request_the_rules_allow_where_it_landed_does_not_move():
    policy = MellPolicy()
    assert policy.decide([view("w0", cand("a", 70)), view("w1")], 0.0) == ()
    # The dispatcher put a T beside the L: the rules allow it.
    assert policy.decide([view("w0", cand("a", 70), cand("t", 20, 1.0)), view("w1")], 0.5) == ()


def test_a_request_growing_into_another_class_moves_only_if_its_worker_breaks_the_rules():
    policy = MellPolicy()
    s_bin = [view("w0", cand("s1", 35), cand("s2", 35), cand("s3", 35)), view("w1")]
    assert policy.decide(s_bin, 0.0) == ()
    grown = [view("w0", cand("s1", 35), cand("s2", 50, pages=35), cand("s3", 35)), view("w1")]
    # s2 is now an M (50 tokens): an S-worker may not hold it, and 35+35+50 > 120 anyway.
    orders = policy.decide(grown, 0.5)
    assert [(o.request_id, o.src_worker_id) for o in orders] == [("s2", "w0")]


def test_budgets_pick_the_mode_and_defer_what_fits_neither():
    moves = [MoveCost("a", "w0", "w1", 8_000, 100), MoveCost("b", "w0", "w2", 8_000, 100),
             MoveCost("c", "w0", "w2", 8_000, 5_000), MoveCost("d", "w4", "w5", 0, 50, False)]
    budgets = {"w0": WorkerBudget(10_000, 0.0), "w1": WorkerBudget(10_000, 0.0),
               "w2": WorkerBudget(10_000, 1_000.0), "w3": WorkerBudget(10_000, 1_000.0)}
    chosen, deferred = choose_modes(moves, budgets, epoch_s=1.0)
    # a takes w0's link; b re-prefills on w2 (w0's link is spent); c fits neither what is
    # left of w0's link nor of w2's compute this epoch; d has no KV: tokens, for free.
    assert [(c.request_id, c.mode) for c in chosen] == [("a", "live"), ("b", "reprefill"),
                                                        ("d", "reprefill")]
    assert [m.request_id for m in deferred] == ["c"]


def test_the_cheaper_mode_wins_when_both_fit():
    slow_link = {"w0": WorkerBudget(1_000.0, 0.0), "w1": WorkerBudget(1_000.0, 10_000.0)}
    chosen, _ = choose_modes([MoveCost("a", "w0", "w1", 500, 100)], slow_link, epoch_s=1.0)
    assert chosen[0].mode == "reprefill"  # 0.01 s of prefill beats 0.5 s of copying
    fast_link = {"w0": WorkerBudget(1e9, 0.0), "w1": WorkerBudget(1e9, 10_000.0)}
    chosen, _ = choose_modes([MoveCost("a", "w0", "w1", 500, 100)], fast_link, epoch_s=1.0)
    assert chosen[0].mode == "live"


def test_a_move_larger_than_an_epochs_budget_still_goes_on_an_unused_link():
    chosen, deferred = choose_modes([MoveCost("a", "w0", "w1", 10**9, 10**6)],
                                    {"w0": WorkerBudget(1_000.0), "w1": WorkerBudget(1_000.0)},
                                    epoch_s=0.5)
    assert [c.mode for c in chosen] == ["live"] and deferred == []


def test_the_policy_orders_the_same_migrations_from_heartbeats_and_from_simulated_reports():
    """The live planner reads heartbeats (JSON through Redis); the simulator passes reports
    directly: both reach the policy through ``migration_views`` and decide the same."""
    def report(wid, seqs):
        return OccupancyReport(wid, ("m",), PAGES, PAGES - sum(s.num_pages for s in seqs), 0, 0,
                               {"m": 1}, len(seqs), 0, "boot", 0, tuple(seqs), 4096)

    def seq(rid, n):
        return SeqReport(rid, "m", n, n, n - 1, 3, 1.0, 10)

    epochs = [
        [report("w0", [seq("a", 45), seq("b", 45)]), report("w1", [seq("c", 45)])],
        [report("w0", [seq("b", 46)]), report("w1", [seq("c", 46)])],
    ]
    sim, live = MellPolicy(), MellPolicy()
    for t, reports in enumerate(epochs):
        heartbeats = [rs.Occupancy.from_json(rs.Occupancy(
            r.worker_id, r.models, r.num_total_pages, r.num_free_pages, 0,
            dict(r.tokens_per_page), r.num_running, 0, False, 0.0, 0, r.boot_id, 0, r.seqs,
            r.page_size_bytes).to_json()).report() for r in reports]
        a = sim.decide(migration_views(reports), float(t))
        b = live.decide(migration_views(heartbeats), float(t))
        assert a == b
    assert a == (MigrationOrder("c", "w1", "w0", "live"),)
