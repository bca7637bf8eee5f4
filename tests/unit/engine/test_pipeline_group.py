"""Pipeline groups at the engine level: engines in threads joined by in-process links run
exactly what the cross-worker group runs (join with a KV exchange, lockstep steps with
micro-batches, dissolve with requests moved back). Outputs equal one engine's, greedy and
seeded, whether KV is sent or recomputed, with two or three stages; every page comes back.
"""

from __future__ import annotations

import random
import threading

import pytest
from engine_testkit import greedy, request, run_all, tiny_engine, tokens

from kvfleet.services.worker.core.pipeline_policy import (
    RECOMPUTE,
    SEND,
    ExchangeCosts,
    assign_homes,
    kv_move,
    lane_limits,
)
from kvfleet.services.worker.engine import PartialModelError, SamplingParams
from kvfleet.services.worker.engine.pipeline_group import (
    DISSOLVE,
    GroupSpec,
    PipelineFollower,
    PipelineLeader,
)
from kvfleet.services.worker.engine.regroup import dissolve_group, join_group, prefetch
from kvfleet.services.worker.engine.stage_link import LocalLinks

pytestmark = pytest.mark.unit
MODEL = "tiny-llama"


def test_each_lane_gets_a_replicas_budget_and_a_share_of_the_requests():
    assert lane_limits(2, 2048, 64, 10) == (2048, 5)
    assert lane_limits(3, 2048, 4, 30) == (2048, 4)  # never more than the engine's cap
    assert lane_limits(2, 1, 64, 0) == (1, 1)


def test_kv_is_sent_or_recomputed_whichever_is_cheaper_and_homes_fit():
    fast = ExchangeCosts(link_bytes_per_s=1e9, prefill_tokens_per_s=1e3)
    slow = ExchangeCosts(link_bytes_per_s=1e3, prefill_tokens_per_s=1e6)
    assert kv_move(100, 1 << 20, fast) == SEND
    assert kv_move(100, 1 << 20, slow) == RECOMPUTE
    assert kv_move(0, 0, slow) == SEND
    homes, overflow = assign_homes({"a": 5, "b": 4, "c": 3, "d": 9}, {"x": 12, "y": 10})
    assert not overflow
    for member in ("x", "y"):
        room = {"x": 12, "y": 10}[member]
        assert sum({"a": 5, "b": 4, "c": 3, "d": 9}[r] for r, m in homes.items()
                   if m == member) <= room
    homes, overflow = assign_homes({"a": 5, "b": 5}, {"x": 6})
    assert overflow == {"b"} and homes == {"a": "x", "b": "x"}


def _prompts(k: int) -> list[list[int]]:
    rng = random.Random(11)
    return [[rng.randrange(100, 49152) for _ in range(15 + 9 * i)] for i in range(k)]


def _sampling(i: int) -> SamplingParams:
    if i % 2:
        return SamplingParams(max_tokens=24, temperature=0.9, top_k=50, seed=40 + i,
                              ignore_eos=True)
    return greedy(24)


def _reference(prompts):
    eng = tiny_engine()
    for i, p in enumerate(prompts):
        eng.add_request(request(f"q{i}", p, _sampling(i)))
    return {k: tokens(v) for k, v in run_all(eng).items()}


class CountingLinks(LocalLinks):
    """In-process links that record how many micro-batches the leader had in flight."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.most_in_flight = 0
        self.leader: PipelineLeader | None = None

    def end(self, rank: int):  # type: ignore[no-untyped-def]
        link = super().end(rank)
        send = link.send

        def counting(dst, meta, tensors=None):  # type: ignore[no-untyped-def]
            if rank == 0 and tensors and self.leader is not None:
                self.most_in_flight = max(self.most_in_flight, len(self.leader.inflight) + 1)
            return send(dst, meta, tensors)

        link.send = counting  # type: ignore[method-assign]
        return link


def _run_group(prompts, ranges, costs: ExchangeCosts, steps_before: int, steps_in: int):
    n = len(ranges)
    engines = [tiny_engine(budget=64) for _ in range(n)]
    for i, p in enumerate(prompts):  # requests spread over the replicas
        engines[i % n].add_request(request(f"q{i}", p, _sampling(i)))
    got: dict[str, list] = {}

    def collect(evs):
        for e in evs:
            got.setdefault(e.request_id, []).append(e)

    for _ in range(steps_before):
        for e in engines:
            collect(e.step())
    members = tuple(f"w{k}" for k in range(n))
    widest = max(b - a for a, b in ranges)
    tpp = engines[0].pool.layout_for(widest, 2, 16).tokens_per_page
    spec = GroupSpec("g", MODEL, members, ranges, tpp, 0)
    links = CountingLinks(n)
    results: dict[int, object] = {}

    def member(k: int) -> None:
        eng = engines[k]
        results[k] = join_group(eng, spec.with_rank(k), links.end(k), costs)
        header = PipelineFollower(eng, spec.with_rank(k), links.end(k)).serve()
        assert header["kind"] == DISSOLVE
        results[-k] = dissolve_group(eng, spec.with_rank(k), links.end(k), costs,
                                     prefetch(eng, MODEL))

    threads = [threading.Thread(target=member, args=(k,)) for k in range(1, n)]
    for t in threads:
        t.start()
    lead = engines[0]
    res = join_group(lead, spec, links.end(0), costs)
    leader = PipelineLeader(lead, spec, links.end(0), res.follower_pages)
    leader.adopt(lead.sequences(MODEL))
    lead.pipeline = leader
    links.leader = leader
    with pytest.raises(PartialModelError):  # a later stage takes no requests
        engines[1].add_request(request("late", prompts[0], greedy(2)))
    for _ in range(steps_in):
        collect(lead.step())
    with lead._lock:
        collect(leader.drain())
    used_in_group = [e.pool.num_used_pages for e in engines]
    pre = prefetch(lead, MODEL)
    with lead._lock:
        collect(leader.send_control(DISSOLVE))  # the micro-batches in flight finish first
        dissolve_group(lead, spec, links.end(0), costs, pre)
    for t in threads:
        t.join(60)
    while any(e.has_unfinished() for e in engines):
        for e in engines:
            collect(e.step())
    return engines, {k: tokens(v) for k, v in got.items()}, res, links, used_in_group


@pytest.mark.parametrize("ranges,costs", [
    (((0, 2), (2, 4)), ExchangeCosts(1e12, 0.0, 1.0)),  # KV is sent
    (((0, 2), (2, 4)), ExchangeCosts(1.0, 0.0, 1e12)),  # KV is recomputed
    (((0, 1), (1, 3), (3, 4)), ExchangeCosts(1e12, 0.0, 1.0)),
])
def test_group_equals_one_engine_through_join_steps_and_dissolve(ranges, costs):
    prompts = _prompts(6)
    ref = _reference(prompts)
    engines, out, res, links, used = _run_group(prompts, ranges, costs, 4, 6)
    assert out == ref  # greedy and seeded, every token once, in order
    assert links.most_in_flight == len(ranges)  # one micro-batch in flight per stage
    if costs.link_bytes_per_s > 1:
        assert res.num_sent > 0 and res.num_recomputed == 0
    else:
        assert res.num_sent == 0 and res.num_recomputed > 0
    # each request holds as many pages on every stage (the others free a finished one's
    # pages when the next micro-batch tells them)
    assert used[0] > 0 and all(u >= used[0] for u in used[1:])
    fresh = tiny_engine(budget=64)
    for e in engines:
        assert e.pool.num_used_pages == 0
        assert e.pool.num_pages == fresh.pool.num_pages
        assert e.accounting().weights_bytes == fresh.accounting().weights_bytes
        assert e.stage_spec is None and e.pipeline is None
