import json

import pytest

from kvfleet.sim.cost_model import CostModel, load_calibration
from kvfleet.sim.presets import GPU_PRESETS, MODEL_PRESETS, gpu_preset, model_preset

pytestmark = pytest.mark.unit


def h100_7b() -> CostModel:
    return CostModel(gpu_preset("H100"), model_preset("Llama-2-7B"))


def test_small_batch_decode_is_memory_bound_near_the_bandwidth_roofline():
    cm = h100_7b()
    batch, ctx = 4, 4 * 1024
    step = cm.step_cost(batch, ctx, ctx, batch)
    assert step.memory_s > 10 * step.compute_s
    # The pure bandwidth bound: weights plus the KV read, at the GPU's full HBM bandwidth.
    bound = (cm.model.weight_bytes + ctx * cm.kv_bytes_per_token) / cm.gpu.hbm_bytes_per_s
    assert bound < step.total_s < 1.8 * bound
    assert 4e-3 < step.total_s < 9e-3  # ~13.5 GB of weights over 3.35 TB/s


def test_long_prompt_prefill_is_compute_bound_near_the_flops_roofline():
    cm = h100_7b()
    n = 8192
    pairs = n * (n + 1) / 2
    step = cm.step_cost(n, pairs, n, 1)
    assert step.compute_s > 10 * step.memory_s
    bound = (2 * cm.model.matmul_params * n + cm.model.attn_flops_per_token_ctx * pairs) / 989e12
    assert bound < step.total_s < 2.0 * bound
    assert cm.prefill_s(n) == pytest.approx(step.total_s)


def test_decode_run_closed_form_matches_the_sum_of_steps_in_both_regimes():
    cm = h100_7b()
    for batch, ctx0 in ((8, 8 * 500), (256, 256 * 50)):  # memory bound; crosses into compute
        run = cm.decode_run(batch, ctx0)
        for k in (1, 2, 17, 900):
            brute = sum(cm.decode_s(batch, ctx0 + batch * i) for i in range(k))
            assert run.time_of(k) == pytest.approx(brute, rel=1e-9)
        total = run.time_of(900)
        for k in (1, 5, 400, 900):
            t = run.time_of(k)
            assert run.steps_by(t - 1e-12, 900) == k
            assert run.steps_by(t + 1e-12, 900) == min(k + 1, 900)
        assert run.steps_by(total * 2, 900) == 900


def test_memory_budget_and_kv_bytes_per_token():
    llama2 = model_preset("Llama-2-7B")
    assert llama2.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2  # 0.5 MiB
    assert model_preset("llama-3-8b").kv_bytes_per_token == llama2.kv_bytes_per_token // 4
    cm = h100_7b()
    kv_tokens = cm.kv_budget_bytes() / cm.kv_bytes_per_token
    assert 100_000 < kv_tokens < 140_000
    assert CostModel(gpu_preset("A100-40G"), model_preset("Llama-3-70B"), tp=8).kv_budget_bytes() > 0
    assert {"A100-40G", "A100-80G", "H100", "H200", "RTX4090"} <= set(GPU_PRESETS)
    assert len(MODEL_PRESETS) >= 7
    with pytest.raises(ValueError, match="unknown GPU"):
        gpu_preset("TPU")


def test_calibration_from_measured_steps_recovers_scale_and_overhead(tmp_path):
    cm = h100_7b()
    steps = []
    for n, kv in ((1, 1000), (8, 8000), (512, 512), (2048, 2048)):
        c = cm.step_cost(n, kv, kv, 1)
        steps.append({"num_tokens": n, "kv_tokens": kv, "num_seqs": 1,
                      "time_s": 0.004 + 2.0 * max(c.compute_s, c.memory_s)})
    path = tmp_path / "steps.json"
    path.write_text(json.dumps({"steps": steps}))
    calib = load_calibration(path, cm)
    assert calib.time_scale == pytest.approx(2.0, rel=1e-6)
    assert calib.step_overhead_s == pytest.approx(0.004, rel=1e-6)


def test_calibration_from_bench_engine_json_matches_measured_throughput(tmp_path):
    cpu = CostModel(gpu_preset("CPU"), model_preset("SmolLM2-135M"))
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"kvfleet_tok_s": 40.0, "hf_generate_tok_s": 30.0, "workload": {
        "model": "smollm2-135m", "num_requests": 4, "prompt_tokens": 64, "output_tokens": 32}}))
    calib = load_calibration(path, cpu)
    tuned = CostModel(gpu_preset("CPU"), model_preset("SmolLM2-135M"), calibration=calib)
    # The benchmark's run, predicted: one prefill of the batch, then 31 decode steps.
    predicted = tuned.step_cost(4 * 64, 4 * 64 * 65 / 2, 4 * 64, 4).total_s
    predicted += tuned.decode_run(4, 4 * 65).time_of(31)
    assert 4 * 32 / predicted == pytest.approx(40.0, rel=1e-6)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="kvfleet_tok_s"):
        load_calibration(bad, cpu)
