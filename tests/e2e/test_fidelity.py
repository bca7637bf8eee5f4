"""`kvfleet bench fidelity` at small scale: a short synthetic workload on a live stack of two
tiny-llama workers and in the simulator, with the calibration and the stack's hops measured
in the run. The bound is loose (the machine is shared and small); the full figure, on
smollm2-135m and a slice of the Azure trace, is a benchmark, not a test."""

import json

import pytest

from kvfleet.common.config import EngineSettings
from kvfleet.sim.fidelity import METRICS, FidelityOptions, run_fidelity

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_the_simulator_predicts_a_small_live_run(tmp_path):
    opts = FidelityOptions(
        model="tiny-llama", arrivals="poisson", rate=4.0, duration_s=6.0, input_len="16-200",
        output_len="4-32", seed=3, workers=2, memory_bytes=300_000_000,
        engine=EngineSettings(num_threads=1), sweep_batches=(1, 4, 16), sweep_repeats=2,
        gateway_iterations=8, out=tmp_path, progress=False,
    )
    report = run_fidelity(opts, say=lambda _: None)
    assert report["live"]["completed"] == report["sim"]["completed"] == report["num_requests"]
    assert report["live"]["failed"] == 0
    json.dumps(report)  # the --json report
    for key in METRICS:
        ratio = report["sim_over_live"][key]
        if "ttft" in key:
            # TTFT here is tens of milliseconds, most of it the live scheduler's queue wait,
            # which a shared machine stretches and the simulator keeps at its idle-stack value
            # (live 55 to 59 ms mean against 19 to 22 ms, with CI on the machine); sim/live
            # mean TTFT went from 0.30 to 0.69 over runs of this test. Only a gross error (a
            # hop missed or counted in the wrong unit) fails it; the bench holds the figure.
            low, high = 0.1, 10.0
        else:
            low, high = (0.5, 2.0) if key.startswith("mean") else (1 / 3, 3.0)
        assert low <= ratio <= high, (key, ratio, report["live"], report["sim"])
    assert report["live_steps"]["count"] > 0 and report["calibration"]["step_model"]
    ov = report["overheads"]
    assert ov["cpu_cores"] >= 1 and 0 < ov["calibration_share"] <= 1 and ov["relay_s"] > 0
    for name in ("steps.json", "overheads.json", "live/summary.json", "live/timelines.jsonl",
                 "sim/summary.json", "sim/requests.csv"):
        assert (tmp_path / name).is_file(), name
