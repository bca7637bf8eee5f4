import pytest

from kvfleet.services.planner.core.migration import (
    KvBalancePolicy,
    MigrationCandidate,
    MigrationOrder,
    MigrationWorkerView,
    NoMigrationPolicy,
)

pytestmark = pytest.mark.unit


def worker(wid, free, total=100, queued=0, cands=(), models=("m",)):
    return MigrationWorkerView(
        wid, models, total, free, queued,
        tuple(MigrationCandidate(f"{wid}-r{i}", "m", pages, float(t)) for i, (pages, t) in enumerate(cands)),
    )


def test_moves_newest_request_from_most_loaded_to_least_loaded():
    views = [
        worker("hot", free=5, cands=[(20, 1.0), (10, 3.0)]),
        worker("warm", free=10, cands=[(5, 2.0)]),
        worker("cold", free=90),
        worker("idle", free=100),
    ]
    orders = KvBalancePolicy().decide(views, 0.0)
    assert orders == (
        MigrationOrder("hot-r1", "hot", "idle"),
        MigrationOrder("warm-r0", "warm", "cold"),
    )


def test_no_move_when_balanced_or_the_destination_cannot_hold_it():
    balanced = [worker("a", free=50, cands=[(5, 1.0)]), worker("b", free=50, cands=[(5, 1.0)])]
    assert KvBalancePolicy().decide(balanced, 0.0) == ()
    full = [worker("a", free=0, cands=[(80, 1.0)]), worker("b", free=70)]
    assert KvBalancePolicy().decide(full, 0.0) == ()
    other_model = [worker("a", free=0, cands=[(5, 1.0)]), worker("b", free=100, models=("x",))]
    assert KvBalancePolicy().decide(other_model, 0.0) == ()


def test_queued_demand_counts_as_load():
    views = [worker("a", free=40, queued=50, cands=[(10, 1.0)]), worker("b", free=100)]
    assert KvBalancePolicy().decide(views, 0.0) == (MigrationOrder("a-r0", "a", "b"),)


def test_no_migration_baseline_never_moves_anything():
    assert NoMigrationPolicy().decide([worker("a", 0, cands=[(1, 0.0)]), worker("b", 100)], 0.0) == ()
