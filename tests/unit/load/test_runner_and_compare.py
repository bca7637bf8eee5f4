"""The runner's timing rules (with an in-memory client) and run comparison."""

import asyncio
import time

import pytest

from kvfleet.load.client import ChunkTimer, Outcome, Prepared
from kvfleet.load.compare import compare
from kvfleet.load.options import LoadOptions, build_workload
from kvfleet.load.runner import RunSettings, run_load
from kvfleet.workload import RequestSpec

pytestmark = pytest.mark.unit


class SleepyClient:
    """Streams ``output_tokens`` chunks, one every ``gap_s``."""

    name = "fake"

    def __init__(self, gap_s):
        self.gap_s = gap_s
        self.in_flight = self.peak = 0

    async def check(self, timeout_s, model=""):
        return None

    async def send(self, req, model):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        timer = ChunkTimer()
        try:
            for _ in range(req.spec.output_tokens):
                await asyncio.sleep(self.gap_s)
                timer.chunk()
        finally:
            self.in_flight -= 1
        return Outcome(timer, True, output_tokens=timer.tokens)

    async def close(self):
        return None


def reqs(n, arrival_gap_s, out):
    return [Prepared(RequestSpec(f"r{i}", i * arrival_gap_s, "m", 4, out), (1, 2, 3, 4), "x")
            for i in range(n)]


def test_arrivals_are_honoured_and_timings_measured():
    client = SleepyClient(0.01)
    res = asyncio.run(run_load(client, reqs(3, 0.05, 3)))
    assert [r.request_id for r in res.records] == ["r0", "r1", "r2"]
    for r in res.records:
        assert r.success and r.output_tokens == 3 and len(r.itl_s) == 2
        assert r.start_s == pytest.approx(r.scheduled_s, abs=0.03)
        assert 0.009 < r.ttft_s < 0.05 and r.e2el_s >= r.ttft_s
    assert 0.12 < res.duration_s < 0.5


def test_max_concurrency_delays_sends():
    client = SleepyClient(0.02)
    res = asyncio.run(run_load(client, reqs(4, 0.0, 2), RunSettings(max_concurrency=1)))
    assert client.peak == 1
    starts = sorted(r.start_s for r in res.records)
    assert starts[-1] > 0.1  # the fourth waited for three before it


def test_stragglers_are_cancelled_at_the_drain_timeout():
    client = SleepyClient(10.0)
    t = time.perf_counter()
    res = asyncio.run(run_load(client, reqs(2, 0.0, 5), RunSettings(drain_timeout_s=0.2)))
    assert time.perf_counter() - t < 2.0
    assert [r.success for r in res.records] == [False, False]
    assert all("run ended" in r.error for r in res.records)


def test_compare_ratios():
    a = {"completed": 10, "request_goodput": 2.0, "p99_ttft_ms": 100.0, "mean_tpot_ms": None}
    b = {"completed": 10, "request_goodput": 1.0, "p99_ttft_ms": 250.0, "mean_tpot_ms": 5.0}
    rows = {r.key: r for r in compare(a, b)}
    assert rows["request_goodput"].ratio == 0.5 and rows["p99_ttft_ms"].ratio == 2.5
    assert rows["mean_tpot_ms"].ratio is None and rows["completed"].ratio == 1.0


def test_options_need_a_workload_and_build_one():
    with pytest.raises(ValueError, match="give a workload"):
        LoadOptions()
    with pytest.raises(ValueError, match="cannot be combined"):
        LoadOptions(trace="x.csv", arrivals="poisson")
    specs = build_workload(LoadOptions(arrivals="gamma", rate=5, cv=2, model="m", duration_s=20,
                                       input_len="10-20", output_len="3", speed=2.0,
                                       num_requests=30))
    assert len(specs) == 30 and {s.model for s in specs} == {"m"}
    assert all(10 <= s.input_tokens <= 20 and s.output_tokens == 3 for s in specs)
    assert specs[-1].arrival_s < 10.0
    mixed = build_workload(LoadOptions(mix=["a:rate=3", "b:rate=1,output=9"], duration_s=30))
    assert {s.model for s in mixed} == {"a", "b"}
    assert {s.output_tokens for s in mixed if s.model == "b"} == {9}
