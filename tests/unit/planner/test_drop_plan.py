"""KunServe's drop plan against brute force on small fleets, the stage balance, and the
overload policy's detection, drop and restore timing."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from kvfleet.services.planner.core.drop_plan import (
    DropCandidate,
    balanced_ranges,
    freed_pages,
    plan_drops,
    plan_group,
    plan_key,
    stage_cost,
)
from kvfleet.services.planner.core.kunserve import KunServeOverloadPolicy, model_load
from kvfleet.services.planner.core.overload import (
    FleetLoad,
    OverloadThresholds,
    OverloadWorkerView,
)
from kvfleet.services.scheduler.core.stages import ModelShapeView, StageView, serving_models

pytestmark = pytest.mark.unit

PAGE = 1 << 16
SHAPE = ModelShapeView(num_layers=8, layer_bytes=40 * PAGE, first_bytes=30 * PAGE,
                       last_bytes=31 * PAGE, kv_bytes_per_token_layer=128)


def _brute_gain(shape, members, ranges):
    """The group's gain with the best assignment of members to stages (every order)."""
    page = members[0].page_size_bytes
    tpp_full = shape.tokens_per_page(page, shape.num_layers)
    tpp = shape.tokens_per_page(page, max(b - a for a, b in ranges))
    before = sum(m.num_total_pages for m in members) * tpp_full
    best = None
    for order in itertools.permutations(members):
        after = min(m.num_total_pages + freed_pages(shape, r, page)
                    for m, r in zip(order, ranges, strict=True)) * tpp
        best = after - before if best is None else max(best, after - before)
    return best


def _brute_ranges(num_layers, g, head):
    best = None
    for cuts in itertools.combinations(range(1, num_layers), g - 1):
        bounds = (0, *cuts, num_layers)
        ranges = tuple(zip(bounds, bounds[1:], strict=False))
        cost = stage_cost(ranges, num_layers, head)
        best = cost if best is None else min(best, cost)
    return best


def _brute_best(shape, candidates, deficit, max_size):
    best = None
    for g in range(2, min(max_size, len(candidates)) + 1):
        for members in itertools.combinations(candidates, g):
            if len({m.page_size_bytes for m in members}) > 1:
                continue
            ranges = balanced_ranges(shape.num_layers, g)
            gain = _brute_gain(shape, members, ranges)
            if gain <= 0:
                continue
            covers = gain >= deficit
            key = (not covers, g if covers else -gain,
                   len({m.node for m in members}) != 1, -gain)
            best = key if best is None else min(best, key)
    return best


@pytest.mark.parametrize("num_layers,g,head", [(8, 2, 0.0), (9, 2, 0.0), (10, 3, 0.0),
                                               (12, 4, 2.0), (7, 3, 1.5), (30, 2, 0.0)])
def test_stages_are_balanced_as_brute_force(num_layers, g, head):
    ranges = balanced_ranges(num_layers, g, head)
    assert ranges[0][0] == 0 and ranges[-1][1] == num_layers
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert stage_cost(ranges, num_layers, head) == _brute_ranges(num_layers, g, head)


@pytest.mark.parametrize("seed", range(12))
def test_drop_plan_matches_brute_force_on_small_fleets(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 6)
    candidates = [
        DropCandidate(f"w{i}", rng.choice(["a", "b"]), rng.choice([60, 60, 80, 100]),
                      PAGE if rng.random() < 0.9 else 2 * PAGE)
        for i in range(n)
    ]
    deficit = rng.choice([1, 200, 900, 3000, 50_000])
    plan = plan_group(SHAPE, candidates, deficit, max_group_size=4)
    best = _brute_best(SHAPE, candidates, deficit, 4)
    if best is None:
        assert plan is None
        return
    assert plan is not None
    assert plan_key(plan, deficit) == best
    by_id = {c.worker_id: c for c in candidates}
    assert plan.gain_tokens == _brute_gain(SHAPE, [by_id[w] for w in plan.members],
                                           plan.ranges)


def test_smallest_covering_group_on_one_node_first():
    cands = [DropCandidate(f"w{i}", "n0" if i < 2 else "n1", 100, PAGE) for i in range(6)]
    plan = plan_group(SHAPE, cands, deficit_tokens=1)
    assert plan is not None and len(plan.members) == 2
    assert set(plan.members) == {"w0", "w1"} and plan.single_node
    assert plan.ranges == ((0, 4), (4, 8))
    # a deficit one pair cannot cover: a bigger group, as long as the others cannot cover it
    pair_gain = plan.gain_tokens
    bigger = plan_group(SHAPE, cands, deficit_tokens=pair_gain + 1)
    assert bigger is not None and len(bigger.members) == 3 and bigger.gain_tokens > pair_gain
    # several groups until the deficit is covered
    plans = plan_drops(SHAPE, cands, deficit_tokens=3 * pair_gain, max_group_size=2)
    assert [len(p.members) for p in plans] == [2, 2, 2]
    assert len({w for p in plans for w in p.members}) == 6


def _view(wid, total, free, *, queued=0, tpp=16, layers=None, group=None, node="n0"):
    return OverloadWorkerView(
        wid, ("m",), total, free, 0, queued, {"m": tpp}, PAGE,
        {"m": layers} if layers else {}, {"m": SHAPE}, {"m": group} if group else {}, node)


def test_overload_detection_drop_and_restore_timing():
    t = OverloadThresholds(overload_ratio=1.0, overload_hold_s=1.0, restore_ratio=0.5,
                           restore_hold_s=2.0, cooldown_s=0.5)
    policy = KunServeOverloadPolicy(t)
    calm = FleetLoad((_view("w0", 100, 80), _view("w1", 100, 80)))
    hot = FleetLoad((_view("w0", 100, 0, queued=30), _view("w1", 100, 0, queued=30)),
                    {"m": 500})
    assert model_load(hot, "m").ratio > 1
    assert policy.decide(calm, 0.0) == ()
    assert policy.decide(hot, 1.0) == ()  # not for long enough yet
    assert policy.decide(calm, 1.5) == ()  # the overload passed: the clock restarts
    assert policy.decide(hot, 2.0) == ()
    actions = policy.decide(hot, 3.1)
    assert [a.kind for a in actions] == ["drop"]
    drop = actions[0]
    assert [s.worker_id for s in drop.stages] == ["w0", "w1"]
    assert [(s.first_layer, s.last_layer) for s in drop.stages] == [(0, 4), (4, 8)]
    assert drop.tokens_per_page == SHAPE.tokens_per_page(PAGE, 4)
    # the group formed: the leader reports the pooled pages, the other stage its own
    sv = [StageView(drop.group_id, k, ("w0", "w1"), ((0, 4), (4, 8))) for k in range(2)]
    grouped = [_view("w0", 300, 290, tpp=drop.tokens_per_page, layers=(0, 4), group=sv[0]),
               _view("w1", 300, 300, tpp=drop.tokens_per_page, layers=(4, 8), group=sv[1])]
    assert serving_models(("m",), {"m": (4, 8)}, {"m": SHAPE}, {"m": sv[1]}) == ()
    assert policy.decide(FleetLoad(tuple(grouped)), 3.2) == ()  # cooldown
    assert policy.decide(FleetLoad(tuple(grouped)), 4.0) == ()  # low, not for long yet
    busy = [dataclasses.replace(v, busy=True) for v in grouped]  # an action in flight
    assert policy.decide(FleetLoad(tuple(busy)), 5.0) == ()
    restore = policy.decide(FleetLoad(tuple(grouped)), 6.1)
    assert [(a.kind, a.group_id) for a in restore] == [("restore", drop.group_id)]
    assert restore[0].leader_id == "w0"


def test_no_action_while_a_member_is_busy_and_only_whole_replicas_are_candidates():
    policy = KunServeOverloadPolicy(OverloadThresholds(overload_hold_s=0.0, cooldown_s=0.0))
    workers = (
        OverloadWorkerView("w0", ("m",), 100, 0, 0, 50, {"m": 16}, PAGE, {}, {"m": SHAPE},
                           busy=True),
        OverloadWorkerView("w1", ("m",), 100, 0, 0, 50, {"m": 16}, PAGE, {}, {"m": SHAPE}),
    )
    assert policy.decide(FleetLoad(workers), 0.0) == ()
    other = OverloadWorkerView("w2", ("m", "x"), 100, 0, 0, 50, {"m": 16, "x": 16}, PAGE, {},
                               {"m": SHAPE})
    free = OverloadWorkerView("w0", ("m",), 100, 0, 0, 50, {"m": 16}, PAGE, {}, {"m": SHAPE})
    # w2 holds another model too: it cannot become a stage, so no pair is left
    assert policy.decide(FleetLoad((free, other)), 1.0) == ()
