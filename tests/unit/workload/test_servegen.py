"""ServeGen pools: unpacked into the cache, the README's aggregates, and generation."""

import numpy as np
import pytest

from kvfleet.workload import load_servegen
from kvfleet.workload.paths import traces_dir
from kvfleet.workload.servegen import WINDOW_S, generate_pool, load_pool, pool_stats

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    if not (traces_dir() / "servegen" / "reason-deepseek-r1.tar.gz").exists():
        pytest.skip("shared traces not present (set KVFLEET_TRACES_DIR)")
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("KVFLEET_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.mark.parametrize(
    "name, clients, rate, peak, active, in_mean, out_mean",
    [
        ("deepseek-r1", 73, 16.0, 42.5, 21.6, 1_268, 1_527),
        ("mm-image", 35, 9.5, 13.3, 14.5, 572, 130),
    ],
)
def test_pool_aggregates_match_readme(cache, name, clients, rate, peak, active, in_mean, out_mean):
    pool = load_pool(name)
    assert len(pool.clients) == clients
    st = pool_stats(pool)
    assert st.num_windows == 144
    assert round(st.mean_rate, 1) == rate and round(st.peak_rate, 1) == peak
    assert round(st.mean_active_clients, 1) == active
    assert round(st.mean_input_tokens) == in_mean and round(st.mean_output_tokens) == out_mean
    assert st.length_coverage == pytest.approx(1.0)
    assert len(list(cache.rglob(".complete"))) >= 1


def test_generated_rate_follows_the_clients_rates(cache):
    pool = load_pool("mm-image")
    start = 40 * WINDOW_S
    expected = sum(float(c.rate[40:43].sum()) * WINDOW_S for c in pool.clients) * 0.25
    reqs = generate_pool(pool, start, 3 * WINDOW_S, np.random.default_rng(1), rate_scale=0.25)
    assert abs(len(reqs) - expected) < 0.1 * expected
    assert reqs[0].arrival_s >= 0 and reqs[-1].arrival_s < 3 * WINDOW_S
    assert len({r.client for r in reqs}) > 5 and {r.model for r in reqs} == {"mm-image"}


def test_two_pools_make_a_seeded_multi_model_mix(cache):
    a = load_servegen(["deepseek-r1", "mm-image"], ["big", "small"], 36_000, 120, 0.05, seed=3)
    b = load_servegen(["deepseek-r1", "mm-image"], ["big", "small"], 36_000, 120, 0.05, seed=3)
    assert a == b and {r.model for r in a} == {"big", "small"}
    assert [r.request_id for r in a[:3]] == ["r0", "r1", "r2"]
    with pytest.raises(ValueError, match="2 ServeGen pools but 1 model"):
        load_servegen(["deepseek-r1", "mm-image"], ["x"], 0, 10)
    with pytest.raises(FileNotFoundError, match="ServeGen pool not found"):
        load_servegen(["no-such-pool"], None, 0, 10)


def test_pool_offsets_and_scales_parse():
    from kvfleet.workload.sources import parse_pool

    assert parse_pool("m-large") == ("m-large", 0.0, 1.0)
    assert parse_pool("m-large@3600*0.5") == ("m-large", 3600.0, 0.5)
    assert parse_pool("deepseek-r1*2") == ("deepseek-r1", 0.0, 2.0)
    for bad in ("m-large@x", "m-large*0", "m-large@-5"):
        with pytest.raises(ValueError):
            parse_pool(bad)
