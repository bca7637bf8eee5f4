"""Synthetic arrivals (Poisson, gamma, ramp, spikes) and multi-model mixes."""

import numpy as np
import pytest

from kvfleet.workload import (
    ArrivalSpec,
    LengthDist,
    ModelLoad,
    generate_arrivals,
    generate_mix,
    parse_model_load,
)

pytestmark = pytest.mark.unit


def _cv(t):
    gaps = np.diff(t)
    return gaps.std() / gaps.mean()


def test_poisson_rate_and_cv():
    t = generate_arrivals(ArrivalSpec(rate=20.0), 500.0, np.random.default_rng(0))
    assert len(t) == pytest.approx(10_000, rel=0.05)
    assert _cv(t) == pytest.approx(1.0, abs=0.05)
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] < 500


def test_gamma_burstiness_matches_cv():
    t = generate_arrivals(
        ArrivalSpec(rate=20.0, process="gamma", cv=3.0), 2000.0, np.random.default_rng(0)
    )
    assert len(t) == pytest.approx(40_000, rel=0.1)
    assert _cv(t) == pytest.approx(3.0, rel=0.1)


def test_ramp_grows_linearly():
    t = generate_arrivals(ArrivalSpec(rate=40.0, ramp_s=100.0), 100.0, np.random.default_rng(0))
    first, second = np.sum(t < 50), np.sum(t >= 50)
    # Integral of a 0 -> 40 ramp: 500 in the first half, 1500 in the second.
    assert first == pytest.approx(500, rel=0.15) and second == pytest.approx(1500, rel=0.1)


def test_spikes_raise_the_rate_inside_them_only():
    spec = ArrivalSpec(
        rate=2.0, spike_rate=50.0, spike_s=5.0, spike_period_s=30.0, spike_start_s=10.0
    )
    t = generate_arrivals(spec, 600.0, np.random.default_rng(0))
    phase = np.mod(t - 10.0, 30.0)
    inside = (t >= 10.0) & (phase < 5.0)
    # 20 spikes x 5 s x 50/s = 5000 inside; 600 - 100 s outside x 2/s = 1000 outside.
    assert inside.sum() == pytest.approx(5000, rel=0.05)
    assert (~inside).sum() == pytest.approx(1000, rel=0.1)


def test_zero_rate_gives_no_requests_and_bad_specs_fail():
    assert len(generate_arrivals(ArrivalSpec(rate=0.0), 10.0, np.random.default_rng(0))) == 0
    with pytest.raises(ValueError, match="poisson or gamma"):
        ArrivalSpec(rate=1.0, process="weibull")
    with pytest.raises(ValueError, match="rate must be"):
        ArrivalSpec(rate=-1.0)
    with pytest.raises(ValueError, match="spike_s must not exceed"):
        ArrivalSpec(rate=1.0, spike_rate=2.0, spike_s=10.0, spike_period_s=5.0)


def test_mix_is_seeded_and_models_are_independent():
    a = ModelLoad("a", ArrivalSpec(rate=5.0), LengthDist.fixed(100), LengthDist.uniform(1, 8))
    b = ModelLoad(
        "b",
        ArrivalSpec(rate=1.0, process="gamma", cv=4.0),
        LengthDist.fixed(9),
        LengthDist.fixed(3),
    )
    one = generate_mix([a, b], 100.0, seed=5)
    assert one == generate_mix([a, b], 100.0, seed=5)
    assert {r.model for r in one} == {"a", "b"}
    assert all(x.arrival_s <= y.arrival_s for x, y in zip(one, one[1:], strict=False))
    only_a = [(r.arrival_s, r.output_tokens) for r in generate_mix([a], 100.0, seed=5)]
    assert only_a == [(r.arrival_s, r.output_tokens) for r in one if r.model == "a"]
    assert {r.input_tokens for r in one if r.model == "b"} == {9}


def test_parse_model_load_and_its_errors():
    base = ModelLoad("_", ArrivalSpec(rate=3.0), LengthDist.fixed(64), LengthDist.fixed(16))
    m = parse_model_load("qwen:rate=2,arrivals=gamma,cv=2.5,output=8-32", base)
    assert m.model == "qwen" and m.arrivals.rate == 2.0 and m.arrivals.process == "gamma"
    assert m.arrivals.cv == 2.5 and m.input_len.values == (64,) and m.output_len.values[-1] == 32
    assert parse_model_load("plain", base).arrivals.rate == 3.0
    for bad, match in [
        ("x:rate", "not key=value"),
        ("x:foo=1", "unknown key"),
        ("x:rate=fast", "needs a number"),
        ("x:input=a-b", "bad length"),
        (":rate=1", "expected MODEL"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_model_load(bad, base)
