"""The rate sweep's arithmetic, its tables and plot, and the peer's cache sized to kvfleet's KV."""

from __future__ import annotations

import pytest

from kvfleet.load.bench import BenchPlan, kvfleet_kv_bytes, peer_cache_for, sweep_tables
from kvfleet.load.options import LoadOptions
from kvfleet.load.peers import PeerCache
from kvfleet.load.sweep import (
    RatePoint,
    plot_sweep,
    should_stop,
    slice_rate,
    speed_for_rate,
    sustained_rate,
)
from kvfleet.workload.spec import RequestSpec

pytestmark = pytest.mark.unit


def point(server: str, rate: float, attainment: float) -> RatePoint:
    return RatePoint(server, rate, attainment, rate * attainment, rate, 100.0, 50.0, 900.0)


def test_speed_scales_the_slice_to_the_asked_rate():
    specs = [RequestSpec(f"r{i}", 2.0 * i, "m", 10, 5) for i in range(5)]  # 0.5 req/s
    base = slice_rate(specs)
    assert base == pytest.approx(0.5)
    assert speed_for_rate(base, 2.0) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        slice_rate(specs[:1])
    with pytest.raises(ValueError):
        speed_for_rate(base, 0.0)


def test_sustained_rate_is_the_last_pass_before_the_first_miss():
    pts = [point("a", 1, 1.0), point("a", 2, 0.95), point("a", 4, 0.5), point("a", 8, 0.99)]
    s = sustained_rate(pts, 0.9)
    assert s.tested_rate == 2 and s.stopped_at == 4
    # attainment crosses 0.9 a tenth of the way from 0.95 to 0.5, in log rate
    assert s.interpolated_rate == pytest.approx(2 * 2 ** (0.05 / 0.45))
    assert sustained_rate([point("b", 1, 0.2)], 0.9).tested_rate is None
    assert sustained_rate([point("c", 1, 1.0)], 0.9).interpolated_rate == 1
    assert should_stop([point("a", 1, 1.0), point("a", 2, 0.5), point("a", 4, 0.1)], 0.9)
    assert not should_stop([point("a", 1, 0.5), point("a", 2, 0.95)], 0.9)


def test_sweep_tables_and_plot(tmp_path):
    from rich.console import Console

    pts = [
        point("kvfleet-http", 1, 1.0),
        point("kvfleet-http", 4, 0.95),
        point("transformers-serve", 1, 0.92),
        point("transformers-serve", 4, 0.1),
    ]
    result = {
        "sweep": {
            "min_attainment": 0.9,
            "points": [p.to_dict() for p in pts],
            "sustained": {
                "kvfleet-http": sustained_rate(pts[:2], 0.9).to_dict(),
                "transformers-serve": sustained_rate(pts[2:], 0.9).to_dict(),
            },
            "sustained_rate_kvfleet_over_peer": {
                "kvfleet-http": {"tested": 4.0, "interpolated": 3.5}
            },
        }
    }
    console = Console(width=200, record=True)
    for table in sweep_tables(result):
        console.print(table)
    text = console.export_text()
    assert "4x, 3.5x" in text and "transformers-serve" in text
    assert plot_sweep(pts, 0.9, tmp_path / "sweep.png").stat().st_size > 0


def test_peer_cache_holds_as_many_kv_bytes_as_the_largest_fleet():
    from kvfleet.common.config import EngineSettings

    engine = EngineSettings()
    load = LoadOptions(trace="x.csv")
    pool, token = kvfleet_kv_bytes("tiny-llama", 64 << 20, engine)
    assert pool > 0 and pool % token == 0
    cache = peer_cache_for(
        BenchPlan(load=load, model="tiny-llama", workers=(1, 2), worker_memory_bytes=64 << 20),
        engine,
    )
    assert isinstance(cache, PeerCache)
    assert cache.num_tokens <= 2 * pool // token < cache.num_tokens + cache.block_size
    assert cache.max_batch_tokens == engine.max_num_batched_tokens
    assert cache.flags()[:2] == ["--cb-block-size", "32"]
