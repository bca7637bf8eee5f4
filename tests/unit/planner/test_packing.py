"""MELL's packing rules: size classes, Allocate/Depart/Update, the invariants and the bound on
migrations per operation, on random arrival, growth and departure sequences."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvfleet.services.planner.core.packing import (
    Bin,
    Item,
    MellRules,
    Packing,
    SizeClass,
    size_class,
    violations,
)

pytestmark = pytest.mark.unit

C = 120


def fleet(n: int = 40, capacity: int = C) -> Packing:
    return Packing([Bin(f"w{i:02d}", capacity, rank=i) for i in range(n)])


def test_size_classes_follow_the_capacity_fractions():
    assert [size_class(s, 120) for s in (15, 16, 30, 31, 40, 41, 60, 61, 120)] == [
        SizeClass.TINY, SizeClass.T, SizeClass.T, SizeClass.S, SizeClass.S, SizeClass.M,
        SizeClass.M, SizeClass.L, SizeClass.L,
    ]


def test_pages_follow_each_workers_tokens_per_page():
    b = Bin("w", 100, tokens_per_page={"a": 16, "b": 4})
    assert b.pages(Item("r", "a", 33)) == 3 and b.pages(Item("r", "b", 33)) == 9


def test_an_l_request_opens_a_worker_and_pulls_the_largest_m_or_s_that_fits():
    p = fleet()
    rules = MellRules()
    rules.allocate(p, Item("m1", "x", 50))
    rules.allocate(p, Item("m2", "x", 45))  # the same M-bin (2 M)
    assert p.where["m1"] == p.where["m2"] == "w00"
    rules.allocate(p, Item("l1", "x", 70))
    assert p.where["l1"] == "w01"  # the lowest-ranked idle worker
    assert p.where["m1"] == "w01" and [(m.request_id, m.src, m.dst) for m in p.moves] == [
        ("m1", "w00", "w01")]  # 50 fits beside 70; pulled from the newest M-bin


def test_t_goes_to_an_l_worker_with_room_then_to_the_newest_t_worker():
    p = fleet()
    rules = MellRules()
    rules.allocate(p, Item("l", "x", 80))
    rules.allocate(p, Item("t1", "x", 25))
    assert p.where["t1"] == p.where["l"]  # room beside the L
    rules.allocate(p, Item("t2", "x", 25))  # 80 + 25 + 25 > 120
    rules.allocate(p, Item("t3", "x", 25))
    assert p.where["t2"] == p.where["t3"] != p.where["l"]


def test_tiny_requests_fill_the_oldest_gaps_first():
    p = fleet()
    rules = MellRules()
    rules.allocate(p, Item("l", "x", 100))
    rules.allocate(p, Item("l2", "x", 100))
    rules.allocate(p, Item("tiny", "x", 10))
    assert p.where["tiny"] == p.where["l"] == "w00"


def test_a_hole_in_an_m_worker_is_refilled_from_the_newest_m_worker():
    p = fleet()
    rules = MellRules()
    for rid in ("a", "b", "c"):
        rules.allocate(p, Item(rid, "x", 45))
    assert (p.where["a"], p.where["b"], p.where["c"]) == ("w00", "w00", "w01")
    rules.depart(p, "a")
    assert p.where["c"] == "w00" and not p.bins["w01"].items  # w01 is idle again
    assert violations(p) == []


def test_a_request_that_grows_out_of_its_class_is_reallocated():
    p = fleet()
    rules = MellRules()
    for rid in ("s1", "s2", "s3"):
        rules.allocate(p, Item(rid, "x", 35))
    rules.update(p, Item("s2", "x", 55))  # now an M: an S-bin may not hold it
    assert p.where["s2"] != "w00" and len(p.moves) <= 10
    assert violations(p) == []


def test_a_worker_that_does_not_serve_the_model_is_never_chosen():
    p = Packing([Bin("a", C, rank=0, models=("m1",)), Bin("b", C, rank=1, models=("m2",))])
    assert MellRules().allocate(p, Item("r", "m2", 10)) == "b"
    assert MellRules().allocate(p, Item("q", "m3", 10)) is None


OPS = st.lists(
    st.tuples(
        st.sampled_from(["arrive", "arrive", "grow", "depart"]),
        st.integers(0, 10**6),
        st.sampled_from([(1, 15), (16, 30), (31, 40), (41, 60), (61, 120), (1, 15), (1, 15)]),
        st.integers(1, 40),
    ),
    min_size=1, max_size=160,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, capacity=st.sampled_from([64, 120, 1000]))
def test_invariants_and_the_migration_bound_hold_on_random_sequences(ops, capacity):
    p = fleet(60, capacity)
    rules = MellRules(max_moves=10)
    live: dict[str, int] = {}
    for n, (op, pick, (lo, hi), growth) in enumerate(ops):
        before = len(p.moves)
        if op == "arrive" or not live:
            size = max(1, (lo + pick % (hi - lo + 1)) * capacity // 120)
            rid = f"r{n}"
            assert rules.allocate(p, Item(rid, "x", size)) is not None
            live[rid] = size
        elif op == "depart":
            rid = sorted(live)[pick % len(live)]
            rules.depart(p, rid)
            del live[rid]
        else:
            rid = sorted(live)[pick % len(live)]
            live[rid] = min(capacity, live[rid] + max(1, growth * capacity // 120))
            rules.update(p, Item(rid, "x", live[rid]))
        assert len(p.moves) - before <= 10
        strict = [v for v in violations(p) if "TINY" not in v]
        assert strict == [], strict
        assert set(p.where) == set(live)
        assert all(b.used == sum(b.pages(i) for i in b.items.values()) for b in p.bins.values())
    # Bins of tiny requests only are consolidated too, within the bound of one operation.
    before = len(p.moves)
    rules.repair(p)
    assert len(p.moves) - before <= 10
    assert len(p.moves) - before == 10 or violations(p) == []
