import json
import random

import numpy as np
import pytest

from kvfleet.sim.cost_model import Calibration, CostModel, load_calibration
from kvfleet.sim.presets import gpu_preset, model_preset
from kvfleet.sim.step_model import FEATURES, StepModel, StepShape, nnls

pytestmark = pytest.mark.unit


def test_nnls_finds_the_non_negative_optimum():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 2.0, (40, 5))
    truth = np.array([0.5, 0.0, 2.0, 0.0, 1.5])
    assert nnls(a, a @ truth) == pytest.approx(truth, abs=1e-9)
    # An unconstrained fit would make the second weight negative; NNLS clamps it at zero.
    b = a @ np.array([1.0, -0.5, 0.0, 0.0, 0.0])
    x = nnls(a, b)
    assert (x >= 0).all() and x[1] == 0.0
    assert nnls(np.zeros((3, 2)), np.ones(3)) == pytest.approx([0.0, 0.0])


def engine_like() -> StepModel:
    """A made-up CPU engine: per-forward and per-sequence costs, tokens getting cheaper past
    64 rows, padded attention with a cache cliff."""
    c = dict.fromkeys(FEATURES, 0.0)
    c.update(forward=0.04, tokens=0.002, tokens_to_64=0.003, seqs=0.004, kv_tokens=2e-6,
             padded_kv=1e-6, padded_pairs=5e-8, padded_pairs_over_2097152=4e-8)
    return StepModel.from_dict(c)


def sample_shapes(n: int, seed: int = 1) -> list[StepShape]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        b = rng.choice([1, 2, 4, 8, 16, 32, 64])
        chunks = [(rng.choice([0, 32, 256, 1024]), 1) for _ in range(b)]
        if rng.random() < 0.5:
            chunks[0] = (rng.choice([0, 512]), rng.choice([16, 64, 256, 1024]))
        out.append(StepShape.of_chunks(chunks))
    return out


def test_fit_recovers_a_step_model_from_its_own_times():
    truth = engine_like()
    shapes = sample_shapes(200)
    model, report = StepModel.fit(shapes, [truth.step_s(s) for s in shapes])
    assert report.num_samples == 200 and report.rms_relative_error < 1e-6
    for s in sample_shapes(50, seed=2):  # and predicts shapes it was not fitted on
        assert model.step_s(s) == pytest.approx(truth.step_s(s), rel=1e-6)
    with pytest.raises(ValueError, match="> 0"):
        StepModel.fit(shapes[:2], [0.1, 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        StepModel(tuple([-1.0] + [0.0] * (len(FEATURES) - 1)))


def test_a_calibrated_cost_model_sums_decode_runs_in_closed_form():
    cost = CostModel(gpu_preset("CPU"), model_preset("SmolLM2-135M"),
                     calibration=Calibration(step_model=engine_like()))
    lengths = [40, 300, 2000, 17]  # every sequence's tokens at the start of the run
    run = cost.decode_run(len(lengths), sum(lengths), max(lengths))
    for k in (1, 2, 30, 500):
        steps = [StepShape.of_chunks([(n + i - 1, 1) for n in lengths]) for i in range(k)]
        assert run.time_of(k) == pytest.approx(sum(engine_like().step_s(s) for s in steps))
        assert run.steps_by(run.time_of(k) - 1e-9, 500) == k
    chunks = [(0, 700), (100, 1), (2000, 1)]
    shape = StepShape.of_chunks(chunks)
    assert cost.step_s(shape.num_tokens, shape.attn_pairs, shape.kv_tokens, 3, 700, 2001) == \
        pytest.approx(engine_like().step_s(shape))
    assert cost.prefill_s(512) == pytest.approx(engine_like().step_s(StepShape.of_chunks([(0, 512)])))


def test_load_calibration_fits_a_step_model_to_a_sweep(tmp_path):
    truth = engine_like()
    steps = []
    for i, s in enumerate(sample_shapes(60)):
        for r in range(3):  # repeats of one point count once, at their mean
            noise = (1.2, 1.0, 0.8)[r]
            steps.append({"scenario": f"p{i}", "num_tokens": s.num_tokens, "num_seqs": s.num_seqs,
                          "kv_tokens": s.kv_tokens, "attn_pairs": s.attn_pairs, "max_q": s.max_q,
                          "max_kv": s.max_kv, "time_s": truth.step_s(s) * noise})
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"fit": "linear", "steps": steps}))
    cost = CostModel(gpu_preset("CPU"), model_preset("SmolLM2-135M"))
    calib = load_calibration(path, cost)
    assert calib.step_model is not None and not calib.cpu_time
    for s in sample_shapes(20, seed=5):
        assert calib.step_model.step_s(s) == pytest.approx(truth.step_s(s), rel=1e-6)
    # with every step's CPU time (a busy machine's wall times are longer), that is fitted
    for s in steps:
        s["cpu_s"], s["time_s"] = s["time_s"], 3 * s["time_s"]
    path.write_text(json.dumps({"fit": "linear", "steps": steps}))
    calib = load_calibration(path, cost)
    assert calib.cpu_time and calib.step_model is not None
    assert calib.step_model.step_s(shape := sample_shapes(1, seed=9)[0]) == \
        pytest.approx(truth.step_s(shape), rel=1e-6)
    for bad, message in (({"fit": "cubic", "steps": steps}, "unknown fit"),
                         ({"fit": "linear", "steps": []}, "non-empty"),
                         ({"fit": "linear", "steps": [{"num_tokens": 0, "time_s": 1}]}, "step 0"),
                         ({"fit": "linear", "steps": [{"num_tokens": 4, "time_s": -1}]}, "step 0")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            load_calibration(path, cost)
