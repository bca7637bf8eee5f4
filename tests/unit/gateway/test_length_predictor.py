"""The online output-length predictor converges on a stream with a known distribution; the
oracles are exact or seeded-noisy."""

import random

import pytest

from kvfleet.services.gateway.core.length_predictor import (
    LengthQuery,
    NoisyOracleLengthPredictor,
    OnlineLengthPredictor,
    OracleLengthPredictor,
    make_predictor,
    warm_start,
)

pytestmark = pytest.mark.unit


def _q(prompt: int, max_tokens: int = 100_000, actual: int | None = None, rid: str = "r"):
    return LengthQuery(rid, "m", prompt, max_tokens, actual)


def test_online_converges_to_each_buckets_median():
    rng = random.Random(7)
    p = OnlineLengthPredictor(quantile=0.5, min_samples=16, prior_tokens=50)
    assert p.predict(_q(100)) == 50  # nothing learned yet: the prior
    # short prompts answer ~ lognormal(median 40); long prompts ~ lognormal(median 400)
    for _ in range(4000):
        p.observe("m", rng.randint(20, 60), max(1, round(rng.lognormvariate(3.689, 0.5))))
        p.observe("m", rng.randint(2000, 3000), max(1, round(rng.lognormvariate(5.991, 0.5))))
    short, long = p.predict(_q(40)), p.predict(_q(2500))
    assert abs(short - 40) / 40 < 0.08, short
    assert abs(long - 400) / 400 < 0.08, long
    # a bucket never seen falls back to the model's whole histogram (between the two)
    assert short < p.predict(_q(300)) < long


def test_online_expects_the_mean_of_a_heavy_tail():
    rng = random.Random(3)
    p = OnlineLengthPredictor(quantile=0.5, min_samples=16, prior_tokens=50)
    # lognormal(median 100, sigma 1.2): its mean is e^(0.72) ~ 2.05x its median
    for _ in range(8000):
        p.observe("m", rng.randint(20, 60), max(1, round(rng.lognormvariate(4.605, 1.2))))
    median, mean = p.predict(_q(40)), p.expect(_q(40))
    assert abs(median - 100) / 100 < 0.1, median
    assert abs(mean - 205) / 205 < 0.15, mean
    assert p.expect(_q(40, max_tokens=150)) == 150  # clamped like a prediction


def test_online_tracks_the_requested_quantile():
    rng = random.Random(1)
    p90 = OnlineLengthPredictor(quantile=0.9)
    samples = [rng.randint(1, 1000) for _ in range(20000)]
    for n in samples:
        p90.observe("m", 100, n)
    true = sorted(samples)[int(0.9 * len(samples))]
    assert abs(p90.predict(_q(100)) - true) / true < 0.08


def test_predictions_stay_within_max_tokens_and_never_use_it_as_the_answer():
    p = OnlineLengthPredictor(min_samples=1)
    for _ in range(10):
        p.observe("m", 10, 300)
    assert p.predict(_q(10, max_tokens=50)) == 50  # capped
    assert 280 <= p.predict(_q(10, max_tokens=5000)) <= 320  # not max_tokens


def test_warm_start_and_shared_state_round_trip():
    a = OnlineLengthPredictor(min_samples=1)
    assert warm_start(a, [("m", 100, 64)] * 50 + [("other", 10, 5)]) == 51
    b = OnlineLengthPredictor(min_samples=1)
    b.replace("m", a.cells("m"))
    assert b.predict(_q(100)) == a.predict(_q(100))
    assert b.num_samples("m") == 50 and b.num_samples("other") == 0


def test_oracles():
    assert OracleLengthPredictor().predict(_q(10, 500, 123)) == 123
    noisy = NoisyOracleLengthPredictor(spread=0.5, seed=3)
    preds = [noisy.predict(_q(10, 10_000, 1000, f"r{i}")) for i in range(500)]
    assert all(500 <= x <= 1500 for x in preds)
    assert min(preds) < 600 and max(preds) > 1400  # spread over the whole range
    assert preds == [noisy.predict(_q(10, 10_000, 1000, f"r{i}")) for i in range(500)]
    assert preds != [NoisyOracleLengthPredictor(0.5, seed=4).predict(_q(10, 10_000, 1000, f"r{i}"))
                     for i in range(500)]
    with pytest.raises(ValueError):
        OracleLengthPredictor().predict(_q(10))


def test_make_predictor_names():
    assert make_predictor("online", quantile=0.7).name == "online"
    assert make_predictor("noisy-oracle", spread=0.1).name == "noisy-oracle"
    with pytest.raises(ValueError, match="unknown"):
        make_predictor("magic")
    with pytest.raises(ValueError):
        OnlineLengthPredictor(quantile=1.0)
