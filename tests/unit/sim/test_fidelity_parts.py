"""The pure parts of `kvfleet bench fidelity`: the ratios and targets, the sweep it sizes
to the workload, and the live steps set against the step model."""

import pytest

from kvfleet.common.config import EngineSettings
from kvfleet.load.timeline import LiveStep
from kvfleet.sim.fidelity import METRICS, FidelityOptions, compare, default_grid, step_check
from kvfleet.sim.overhead import StackOverheads
from kvfleet.sim.step_model import FEATURES, StepModel
from kvfleet.workload.spec import RequestSpec

pytestmark = pytest.mark.unit


def test_ratios_and_targets():
    live = dict.fromkeys(METRICS, 100.0)
    sim = {**live, "mean_ttft_ms": 119.0, "p99_ttft_ms": 136.0, "mean_tpot_ms": None}
    out = compare(live, sim)
    assert out["sim_over_live"]["mean_ttft_ms"] == pytest.approx(1.19)
    assert out["within_target"]["mean_ttft_ms"] and not out["within_target"]["p99_ttft_ms"]
    assert out["sim_over_live"]["mean_tpot_ms"] is None and not out["within_target"]["mean_tpot_ms"]
    assert not out["all_within_target"]
    assert compare(live, live)["all_within_target"]


def test_the_sweep_covers_what_the_workload_makes_the_engine_do():
    opts = FidelityOptions(arrivals="poisson", model="m",
                           engine=EngineSettings(max_num_batched_tokens=1024, max_num_seqs=16))
    specs = [RequestSpec(f"r{i}", float(i), "m", n, 32) for i, n in enumerate((40, 300, 700))]
    grid = default_grid(opts, specs)
    assert max(grid.contexts) == 732 and max(grid.prefill_chunks) == 700
    assert max(grid.batch_sizes) == 16 and 700 in grid.prefill_batch_chunks
    forced = default_grid(opts.model_copy(update={"sweep_batches": (1, 2)}), specs)
    assert forced.batch_sizes == (1, 2)


def test_live_steps_against_the_model():
    coef = dict.fromkeys(FEATURES, 0.0)
    coef.update(forward=0.01, tokens=0.001)
    model = StepModel.from_dict(coef)
    steps = [LiveStep("w0", 1.0, 0.024, ((10, 1), (20, 1))),   # model: 0.012 -> 2x
             LiveStep("w1", 1.1, 0.036, ((0, 20),))]           # model: 0.030 -> 1.2x
    ov = StackOverheads(cpu_cores=1.0, step_extra_s=0.0)
    out = step_check(steps, model, ov)
    assert out["count"] == 2 and out["median_live_over_model"] == pytest.approx(1.6)
    assert out["cpu_factor_all_busy"] == 2.0  # two workers on one core
    assert out["mean_live_over_sim"] == pytest.approx(0.8)
    assert step_check([], model, ov) == {"count": 0}
    # the two steps above did not overlap; a third on w1 spans w0's step's middle
    assert set(out["by_busy_workers"]) == {"1"}
    both = step_check([*steps, LiveStep("w1", 1.005, 0.024, ((10, 1), (20, 1)))], model, ov)
    by = both["by_busy_workers"]
    assert by["1"]["count"] == 1 and by["2"]["count"] == 2
    assert by["2"]["mean_live_over_model"] == pytest.approx(2.0)
    assert by["1"]["sim_cpu_factor"] == 1.0 and by["2"]["sim_cpu_factor"] == 2.0
