"""The engine step sweep: it times the steps it means to (by their shapes), leaves the engine
as it found it, and writes a calibration the simulator fits its step model to."""

import json

import pytest
from typer.testing import CliRunner

from kvfleet.services.worker.engine import Engine, EngineConfig, EngineRequest, SamplingParams
from kvfleet.services.worker.engine.step_sweep import SweepGrid, sweep_on

pytestmark = pytest.mark.unit

TINY = "tiny-llama"
GRID = SweepGrid(batch_sizes=(1, 3), contexts=(40,), prefill_chunks=(8, 24),
                 prefill_contexts=(0, 30), prefill_batch_chunks=(8,), repeats=2)


def test_the_sweep_measures_the_shapes_it_sets_up_and_leaves_the_engine_as_it_was():
    eng = Engine(EngineConfig(memory_bytes=300_000_000, num_threads=1))
    eng.load_model(TINY)
    policy, free = eng.policy, eng.pool.num_free_pages
    result = sweep_on(eng, TINY, GRID)
    by = {}
    for s in result.steps:
        by.setdefault(s.scenario, []).append(s)
    decode = by["decode b=3 ctx=40"]
    assert len(decode) == 2 and all(s.num_seqs == 3 and s.num_tokens == 3 for s in decode)
    assert [s.kv_tokens for s in decode] == [3 * 41, 3 * 42] and decode[0].max_kv == 41
    (a, b) = by["prefill n=24 ctx=30"]
    assert (a.num_tokens, a.num_seqs, a.kv_tokens, a.max_q) == (24, 1, 54, 24)
    assert a.attn_pairs == 24 * 30 + 24 * 25 / 2
    mixed = by["mixed b=3 ctx=40 n=24"][0]
    assert (mixed.num_seqs, mixed.num_tokens, mixed.max_q, mixed.max_kv) == (3, 26, 24, 41)
    assert by["prefill 3x8"][0].num_tokens == 24
    assert all(s.time_s > 0 and 0 < s.cpu_s for s in result.steps)
    assert eng.policy is policy and eng.pool.num_free_pages == free
    assert not eng.has_unfinished()
    # the engine still serves
    eng.add_request(EngineRequest("after", TINY, (5, 6, 7), SamplingParams(max_tokens=2)))
    while eng.has_unfinished():
        eng.step()


def test_bench_engine_sweep_writes_a_calibration_the_simulator_reads(tmp_path):
    from kvfleet.cli.main import app
    from kvfleet.sim.cost_model import CostModel, load_calibration
    from kvfleet.sim.presets import gpu_preset, model_preset

    out = tmp_path / "steps.json"
    result = CliRunner().invoke(app, [
        "bench", "engine", "--sweep", "--model", TINY, "--threads", "1",
        "--sweep-batches", "1,2", "--sweep-contexts", "16", "--sweep-chunks", "8",
        "--memory-bytes", "300000000", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["fit"] == "linear" and data["model"] == TINY and data["steps"]
    assert data["fit_report"]["num_points"] >= 4
    calib = load_calibration(out, CostModel(gpu_preset("CPU"), model_preset("SmolLM2-135M")))
    assert calib.step_model is not None and calib.cpu_time  # fitted to the steps' CPU time
    bad = CliRunner().invoke(app, ["bench", "engine", "--sweep", "--sweep-batches", "x"])
    assert bad.exit_code == 2 and "integers" in bad.output
