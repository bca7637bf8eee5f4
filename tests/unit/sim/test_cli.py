import csv
import json

import pytest
from typer.testing import CliRunner

from kvfleet.cli.main import app

pytestmark = pytest.mark.unit

WORKLOAD = ["--arrivals", "poisson", "--rate", "8", "--duration", "10", "--input-len",
            "100-800", "--output-len", "10-100", "--gpus", "2", "--gpu", "A100-80G"]


def test_sim_writes_load_generator_files_and_fleet_series(tmp_path):
    result = CliRunner().invoke(app, ["sim", *WORKLOAD, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["completed"] == summary["num_prompts"] > 0
    for key in ("mean_ttft_ms", "p99_tpot_ms", "mean_itl_ms", "median_e2el_ms",
                "request_throughput", "output_throughput"):
        assert summary[key] is not None and summary[key] > 0
    with (tmp_path / "fleet.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and {"active_gpus", "kv_utilization", "migrations_per_s",
                     "scheduler_queue"} <= set(rows[0])
    assert max(int(r["active_gpus"]) for r in rows) >= 1
    with (tmp_path / "requests.csv").open() as f:
        assert len(list(csv.DictReader(f))) == summary["num_prompts"]
    assert "events/s" in result.output


def test_sim_compare_prints_one_row_per_policy_and_size(tmp_path):
    result = CliRunner().invoke(app, ["sim", *WORKLOAD, "compare", "--policies",
                                      "vllm,round-robin", "--gpus", "1,2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with (tmp_path / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["policy"], r["GPUs"]) for r in rows] == [
        ("vllm", "1"), ("round-robin", "1"), ("vllm", "2"), ("round-robin", "2")]
    assert (tmp_path / "vllm-2gpu" / "summary.json").is_file()


def test_sim_rejects_bad_input_clearly():
    result = CliRunner().invoke(app, ["sim", *WORKLOAD, "--policy", "nope"])
    assert result.exit_code == 2 and "unknown policy" in result.output
    result = CliRunner().invoke(app, ["sim", "--trace", "no/such/file.csv"])
    assert result.exit_code == 2 and "not found" in result.output



def _flags(typer_app) -> set[str]:
    import typer.main

    group = typer.main.get_group(typer_app)
    return {opt for p in group.params for opt in getattr(p, "opts", []) if opt.startswith("--")}


# What only a live run has (a target, client timeouts, reports); the rest describes the
# workload. --model names the requests' model in `kvfleet load` and the cost-model preset in
# `kvfleet sim`, where the requests' model is --request-model.
LOAD_RUN_ONLY = {
    "--target", "--allow-remote", "--max-concurrency", "--drain-timeout", "--request-timeout",
    "--slo", "--send-slo", "--no-send-slo", "--tokenizer", "--length-control", "--out", "--plots", "--progress", "--label",
    "--dry-run", "--model", "--isolation-probe",  # the simulator knows isolated latencies
}


def test_sim_takes_the_load_generators_workload_flags():
    from kvfleet.cli import load, sim

    workload_flags = _flags(load.app) - LOAD_RUN_ONLY
    assert {"--trace", "--arrivals", "--spike-len", "--start", "--duration"} <= workload_flags
    assert workload_flags <= _flags(sim.app)
    assert "--request-model" in _flags(sim.app)


def test_bench_fidelity_takes_the_load_generators_workload_flags():
    from kvfleet.cli import bench, load

    fidelity = typer_command_flags(bench.app, "fidelity")
    workload_flags = _flags(load.app) - LOAD_RUN_ONLY
    assert workload_flags <= fidelity
    assert {"--model", "--workers", "--json", "--policy", "--calibration",
            "--overheads"} <= fidelity


def typer_command_flags(typer_app, name: str) -> set[str]:
    import typer.main

    command = typer.main.get_group(typer_app).commands[name]
    return {opt for p in command.params for opt in getattr(p, "opts", []) if opt.startswith("--")}


def test_bench_fidelity_refuses_bad_input_before_starting_anything():
    result = CliRunner().invoke(app, ["bench", "fidelity", "--arrivals", "poisson",
                                      "--model", "tiny-llama", "--policy", "nope"])
    assert result.exit_code == 2 and "unknown policy" in result.output
    result = CliRunner().invoke(app, ["bench", "fidelity", "--trace", "no/such.csv"])
    assert result.exit_code == 2 and "not found" in result.output
    result = CliRunner().invoke(app, ["bench", "fidelity", "--model", "tiny-llama",
                                      "--mix", "other:rate=1", "--duration", "2"])
    assert result.exit_code == 2 and "serves 'tiny-llama' only" in result.output


def test_sim_applies_the_stacks_hops_from_a_bench_gateway_file(tmp_path):
    hops = tmp_path / "gateway.json"
    hops.write_text(json.dumps({"overheads": {"front_s": 0.2, "relay_s": 0.05}}))
    runs = {}
    for name, extra in (("bare", []), ("hops", ["--overheads", str(hops)])):
        result = CliRunner().invoke(app, ["sim", *WORKLOAD, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    # 250 ms of intake and relay (the dispatch ticks differ a little between the two)
    assert runs["hops"]["mean_ttft_ms"] > runs["bare"]["mean_ttft_ms"] + 200
    hops.write_text(json.dumps({"overheads": {"relay_s": -1}}))
    result = CliRunner().invoke(app, ["sim", *WORKLOAD, "--overheads", str(hops)])
    assert result.exit_code == 2 and ">= 0" in result.output
