import pytest

from kvfleet.cli.admin import kv_usage_rows
from kvfleet.common import redis_schema as rs
from kvfleet.services.scheduler.core.occupancy import SeqReport

pytestmark = pytest.mark.unit


def test_kv_usage_counts_pages_per_model_in_each_unified_pool():
    w0 = rs.Occupancy("w0", ("a", "b"), 100, 60, tokens_per_page={"a": 16, "b": 4}, seqs=(
        SeqReport("r1", "a", 30, 400, 399, 10, 0.0), SeqReport("r2", "b", 10, 40, 39, 3, 0.0),
        SeqReport("r3", "b", 0, 12, 0, 0, 0.0)))
    w1 = rs.Occupancy("w1", ("a",), 50, 45, tokens_per_page={"a": 16}, seqs=(
        SeqReport("r4", "a", 5, 70, 69, 2, 0.0),))
    rows = kv_usage_rows({"w0": w0, "w1": w1, "w2": None})
    assert ("w0", "a", 30, 100, 16, 1, 0) in rows
    assert ("w0", "b", 10, 100, 4, 1, 1) in rows
    assert ("w1", "a", 5, 50, 16, 1, 0) in rows
    assert ("*", "a", 35, 150, 0, 2, 0) in rows and ("*", "b", 10, 100, 0, 1, 1) in rows
