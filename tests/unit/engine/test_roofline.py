"""The hardware roofline's arithmetic: FLOPs and bytes of a step, and its bound."""

from __future__ import annotations

import pytest

from kvfleet.common.models import read_spec, resolve_model
from kvfleet.services.worker.engine.roofline import (
    MachineLimits,
    batch_workload_bound,
    best_limits,
    step_work,
)

pytestmark = pytest.mark.unit


def limits(flops: float, bw: float) -> MachineLimits:
    return MachineLimits("cpu", 2, {"float32": flops}, {"float32": flops}, bw, bw / 2)


def test_step_work_counts_weights_attention_and_kv():
    spec = read_spec(resolve_model("tiny-llama"))
    layers = spec.layer_param_count() * spec.num_layers
    head = spec.vocab_size * spec.hidden_size
    decode = step_work(spec, 4, [(10, 1), (20, 1)], num_sampled=2)
    attention = 4 * spec.num_heads * spec.head_dim * (11 + 21) * spec.num_layers
    assert decode.flops == 2 * 2 * layers + attention + 2 * 2 * head
    kv = spec.kv_bytes_per_token(spec.num_layers, 4) * (11 + 21)
    assert decode.bytes == (layers + head) * 4 + kv + 2 * spec.hidden_size * 4 * 2
    middle = step_work(spec, 2, [(0, 8)], num_sampled=1, layers=(1, 3))
    assert middle.flops == 2 * 8 * spec.layer_param_count() * 2 + 4 * spec.num_heads * (
        spec.head_dim * 36 * 2
    )


def test_bound_is_the_slower_of_arithmetic_and_traffic_and_sums_over_steps():
    spec = read_spec(resolve_model("tiny-llama"))
    fast_memory = batch_workload_bound(spec, 4, 4, 16, 5, limits(1e9, 1e15), "float32")
    assert fast_memory.prefill_s == pytest.approx(fast_memory.prefill.flops / 1e9)
    assert fast_memory.decode_s == pytest.approx(fast_memory.decode.flops / 1e9)
    slow_memory = batch_workload_bound(spec, 4, 4, 16, 5, limits(1e15, 1e6), "float32")
    assert slow_memory.decode_s == pytest.approx(slow_memory.decode.bytes / 1e6)
    best = best_limits([limits(1e9, 5e9), limits(2e9, 4e9)])
    assert best.matmul_flops["float32"] == 2e9 and best.memory_bytes_s == 5e9
