import json

import pytest
from typer.testing import CliRunner

from kvfleet.cli.main import app
from kvfleet.sim.sweep import SweepPoint, analyse, best_budgets, gpus_needed, sustained_rate

pytestmark = pytest.mark.unit


def point(policy, budget, speed, meets, gpus=8, attainment=1.0):
    return SweepPoint(policy, budget, gpus, speed, 10.0 * speed, 100, 100, 0.5, 0.03, 0.1,
                      0.02, 2.0, attainment, 10.0 * speed * attainment, 1000.0, 0, 5.0, meets)


def test_sustained_rate_stops_at_the_first_rate_that_misses():
    pts = [point("a", 1, 1, True), point("a", 1, 2, True), point("a", 1, 3, False),
           point("a", 1, 4, True)]  # a lucky point past the knee does not count
    assert sustained_rate(pts) == 20.0
    assert sustained_rate([point("a", 1, 1, False)]) == 0.0


def test_each_policy_is_reported_at_its_best_budget_against_the_reference():
    pts = [
        point("vllm", 1024, 1, True), point("vllm", 1024, 2, True), point("vllm", 1024, 3, False),
        point("vllm", 2048, 1, True), point("vllm", 2048, 2, False), point("vllm", 2048, 3, False),
        point("eco", 1024, 1, True), point("eco", 1024, 2, True),
        point("eco", 1024, 3, True, attainment=0.995),
    ]
    assert best_budgets(pts, 8) == {"vllm": 1024, "eco": 1024}
    a = analyse(pts, "vllm", 8)
    assert a["reference_rate"] == 20.0 and a["reference_speed"] == 2
    eco = a["policies"]["eco"]
    assert eco["sustained_rate"] == 30.0 and eco["rate_ratio_to_reference"] == 1.5
    assert eco["at_reference_rate"]["speed"] == 2
    assert a["policies"]["vllm"]["budgets"] == {"1024": 20.0, "2048": 10.0}
    more = [point("eco", 1024, 2, True, gpus=6), point("eco", 1024, 2, False, gpus=5),
            point("vllm", 1024, 2, False, gpus=6)]
    assert gpus_needed(pts + more, 2) == {"vllm": 8, "eco": 6}


def test_sweep_command_writes_the_analysis_and_plot(tmp_path):
    args = ["sim", "--arrivals", "poisson", "--rate", "4", "--duration", "8", "--input-len",
            "100-400", "--output-len", "10-60", "--gpus", "1", "--gpu", "A100-80G",
            "--slo", "ttft=2s,tpot=100ms", "sweep", "--policies", "vllm,ecoserve",
            "--speeds", "1,2", "--budgets", "512,1024", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert set(data["policies"]) == {"vllm", "ecoserve"}
    assert data["policies"]["ecoserve"]["best_token_budget"] in (512, 1024)
    assert (tmp_path / "goodput_vs_rate.png").stat().st_size > 0
    assert len((tmp_path / "sweep.csv").read_text().splitlines()) == 1 + 2 * 2 * 2
    # no SLO: a clear error
    no_slo = args[:args.index("--slo")] + args[args.index("sweep"):]
    bad = CliRunner().invoke(app, no_slo)
    assert bad.exit_code == 2 and "--slo" in bad.output
