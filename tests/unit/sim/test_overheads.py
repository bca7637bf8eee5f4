import json

import pytest

from kvfleet.services.scheduler.core.types import WorkerView
from kvfleet.sim import SimConfig, Simulator
from kvfleet.sim.cost_model import Calibration, CostModel
from kvfleet.sim.overhead import StackOverheads, load_overheads
from kvfleet.sim.presets import gpu_preset, model_preset
from kvfleet.sim.report import to_records
from kvfleet.sim.step_model import FEATURES, StepModel
from kvfleet.sim.workload import SimRequest

pytestmark = pytest.mark.unit

STEP_S = 0.1
OV = StackOverheads(front_s=0.01, queue_hop_s=0.002, assign_s=0.003, relay_s=0.004,
                    step_extra_s=0.02, tick_s=0.05)


def flat_cost() -> CostModel:
    """Every engine step takes STEP_S."""
    coef = dict.fromkeys(FEATURES, 0.0)
    coef["forward"] = STEP_S
    return CostModel(gpu_preset("CPU"), model_preset("SmolLM2-135M"),
                     calibration=Calibration(step_model=StepModel.from_dict(coef)))


def run(requests, overheads, pages=100, workers=1, **cfg):
    views = [WorkerView(f"w{i}", ("m",), pages, pages, {"m": 16}) for i in range(workers)]
    config = SimConfig(gpu="CPU", models=["SmolLM2-135M"], num_gpus=workers, tp=1, **cfg)
    sim = Simulator(config, requests, workers=views, cost=flat_cost(), overheads=overheads,
                    check_invariants=True)
    return sim.run()


def test_a_lone_request_pays_every_hop_once_and_the_extra_on_every_step():
    req = [SimRequest("a", 1.0, "m", 10, 3)]  # one prefill step, then two decode steps
    bare = run(req, None, dispatch_interval_s=0.0)
    (b,) = to_records(bare)
    assert b.ttft_s == pytest.approx(STEP_S) and b.e2el_s == pytest.approx(3 * STEP_S)
    live = run(req, OV)
    (r,) = to_records(live)
    step = STEP_S + OV.step_extra_s
    intake = OV.front_s + OV.queue_hop_s
    assert live.seqs[0].dispatch_s == pytest.approx(1.0 + intake)  # the idle scheduler wakes
    assert r.ttft_s == pytest.approx(intake + OV.assign_s + step + OV.relay_s)
    assert r.e2el_s == pytest.approx(intake + OV.assign_s + 3 * step + OV.relay_s)
    assert live.relay_s == OV.relay_s


def test_waiting_requests_go_at_the_schedulers_polls():
    # The pool holds one request at a time (no queueing on the worker): b waits in the
    # scheduler's queue and goes at the first poll after a's finish shows.
    reqs = [SimRequest("a", 0.0, "m", 60, 5), SimRequest("b", 0.01, "m", 60, 5)]
    result = run(reqs, OV, pages=5, worker_queue_fraction=0.0)
    a, b = result.seqs
    assert b.dispatch_s > a.finish_s
    assert b.dispatch_s - a.finish_s <= OV.tick_s + 1e-9
    # b found no room when it was queued (0.022 s); from then on the scheduler polls
    polls = (b.dispatch_s - (0.01 + OV.front_s + OV.queue_hop_s)) / OV.tick_s
    assert polls == pytest.approx(round(polls)) and polls >= 1


def test_a_rate_limited_heartbeat_holds_reports_back():
    ov = StackOverheads(heartbeat_min_s=0.25, heartbeat_s=0.4, tick_s=0.05)
    reqs = [SimRequest("a", 0.0, "m", 60, 5), SimRequest("b", 0.01, "m", 60, 5)]
    result = run(reqs, ov, pages=5, worker_queue_fraction=0.0)
    a, b = result.seqs
    # a's finish (0.5 s) comes < 0.25 s after the last report (the heartbeat at 0.4 s):
    # the worker shows it at its next heartbeat (0.8 s), and b goes at the poll after that.
    assert a.finish_s == pytest.approx(5 * STEP_S)
    assert 0.8 <= b.dispatch_s <= 0.8 + ov.tick_s + 1e-9


def test_overheads_files_are_read_and_checked(tmp_path):
    path = tmp_path / "gw.json"
    path.write_text(json.dumps({"model": "tiny-llama", "overheads": OV.to_dict()}))
    assert load_overheads(path) == StackOverheads(**{**OV.to_dict(), "source": str(path)})
    for bad, message in (({"relay_s": -1}, ">= 0"), ({"hop_s": 1}, "unknown"),
                         ({"tick_s": 0}, "> 0"), ([1, 2], "JSON object")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            load_overheads(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        load_overheads(path)


def test_workers_sharing_cores_slow_each_other_down():
    # 1 core, nothing else running: one busy worker has it to itself, two share it.
    ov = StackOverheads(cpu_cores=1.0, calibration_share=1.0)
    assert ov.cpu_factor(1) == 1.0 and ov.cpu_factor(2) == 2.0
    # steps were measured with a quarter of a core; a worker alone on 2 cores runs 4x faster
    assert StackOverheads(cpu_cores=2.0, calibration_share=0.25).cpu_factor(1) == 0.25
    one = [SimRequest("a", 0.0, "m", 10, 21)]  # one prefill step, then 20 decode steps
    (alone,) = run(one, ov, workers=2).seqs
    assert alone.finish_s == pytest.approx(21 * STEP_S)
    # b runs on the other worker for a's first ten steps: those take twice as long (a's run
    # of decode steps is cut when b starts and when it ends)
    two = [SimRequest("a", 0.0, "m", 10, 21), SimRequest("b", 0.0, "m", 10, 5)]
    a, b = run(two, ov, workers=2).seqs
    assert b.finish_s == pytest.approx(5 * 2 * STEP_S)
    assert a.finish_s == pytest.approx(5 * 2 * STEP_S + 16 * STEP_S)


def test_a_busier_machine_slows_the_steps_that_start_after_it():
    # 2 cores; from t=1 s, 3 more runnable threads: a lone worker gets 2/4 of a core
    ov = StackOverheads(cpu_cores=2.0, background_series=((1.0, 3.0),))
    assert ov.cpu_factor(1, 0.5) == 1.0 and ov.cpu_factor(1, 1.5) == 2.0
    (a,) = run([SimRequest("a", 0.0, "m", 10, 21)], ov).seqs
    assert a.finish_s == pytest.approx(1.0 + 11 * 2 * STEP_S)
    with pytest.raises(ValueError, match="background_series"):
        StackOverheads(background_series=((2.0, 1.0), (1.0, 1.0)))
