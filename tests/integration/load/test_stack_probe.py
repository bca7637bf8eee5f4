"""The soak's leak checks on real Redis: finished requests' records linger with a TTL and are
not leaks; an unfinished request, a request still assigned, or a queue entry left is."""

import time

import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.load import soak, stack_probe

pytestmark = pytest.mark.integration


def _rec(rid: str) -> rs.RequestRecord:
    return rs.RequestRecord(rid, "m", (1, 2), SamplingParams(max_tokens=2), time.time())


async def test_audit_tells_lingering_records_from_leaks(redis_url):
    store = RedisStore.from_url(redis_url)
    try:
        await store.set_plan(rs.PlanRecord(1, (("w0", "m"),), time.time()))
        await store.enqueue(_rec("done"))
        await store.set_assigned("done", "w0")
        await store.append_tokens("done", [rs.TokenEntry(0, 5, "a", "length")])
        await store.finish("done", "length", "w0")
        await store.r.delete(rs.queue_key("m"), rs.queued_key("m"))
        await store.r.set(rs.queued_tokens_key("m"), 0)
        await store.record_load("m", time.time(), 2, 2)  # bounded bookkeeping, not a leak
        await store.add_fleet_sample(rs.FleetSample(time.time(), ("w0",), ()))
        audit = await stack_probe.audit_keys(store)
        assert audit.leaked == [] and audit.lingering == 2  # request hash + token stream
        await store.r.persist(rs.load_key("m"))  # a load hash that would never expire is one
        assert "load:m" in " ".join((await stack_probe.audit_keys(store)).leaked)
        await store.r.delete(rs.load_key("m"))

        await store.enqueue(_rec("stuck"))  # accepted, never served
        await store.set_assigned("stuck", "w0")
        audit = await stack_probe.audit_keys(store)
        leaked = " ".join(audit.leaked)
        assert "request:stuck" in leaked and "worker:w0:requests" in leaked
        assert "queue:m" in leaked and "active" in leaked
    finally:
        await store.close()


def test_summary_compares_first_and_last_windows_after_the_warm_up():
    o = soak.SoakOptions(duration_s=300, window_s=60, warmup_s=30)
    # the warm-up's slow ramp (5 s) is left out; the soak's last minute is twice its first
    samples = [soak.Sample(t, 200, 0.1, 5.0 if t < 30 else 1.0 if t < 90 else 2.0, 8, False)
               for t in range(330)]
    samples.append(soak.Sample(40, -1, 0.1, 0.2, 2, True))
    samples.append(soak.Sample(10, 503, 0.0, 0.1, 0, False))  # a warm-up error still counts
    s = soak.summarize(samples, o)
    assert s["num_served"] == 300 and s["num_disconnected"] == 1
    assert s["num_warmup_requests"] == 31
    assert s["p99_ratio_last_to_first"] == pytest.approx(2.0)
    assert s["p99_e2e_by_window_s"] == [1.0, 2.0, 2.0, 2.0, 2.0]
    assert s["statuses"] == {"200": 330, "-1": 1, "503": 1}


async def test_capacity_search_rides_out_one_noisy_level():
    """Throughput 0.3, 0.5, then a noisy 0.4 at 4 clients, then 1.0, 1.6, 1.65, 1.6: the
    search must not stop at the dip; it stops after two levels without a 5% gain, and each
    level lasts at least four times the slowest request of the one before."""
    rates = {1: 0.3, 2: 0.5, 4: 0.4, 8: 1.0, 16: 1.6, 32: 1.65, 64: 1.6}
    seen: list[tuple[int, float]] = []

    async def level(clients: int, seconds: float) -> tuple[float, float]:
        seen.append((clients, seconds))
        return rates[clients], clients / rates[clients] * 0.5

    best, levels = await soak.measure_capacity(level, soak.SoakOptions(level_s=20.0))
    assert best == 1.65 and [c for c, _ in seen] == [1, 2, 4, 8, 16, 32, 64]
    assert seen[0][1] == 20.0 and seen[-1][1] == pytest.approx(4 * 32 / 1.65 * 0.5)
    assert [lv["clients"] for lv in levels] == [1, 2, 4, 8, 16, 32, 64]


def test_cpu_use_is_measured_from_the_warm_up_on():
    series = [{"t": 0.0, "cpu_s": {"w": 0.0, "g": 0.0}},
              {"t": 30.0, "cpu_s": {"w": 25.0, "g": 3.0}},
              {"t": 90.0, "cpu_s": {"w": 85.0, "g": 6.0}}]
    assert soak._cpu_cores_used(series, 30.0) == {"w": 1.0, "g": 0.05}
    assert soak._cpu_cores_used(series, 60.0) == {}  # one sample is no span
