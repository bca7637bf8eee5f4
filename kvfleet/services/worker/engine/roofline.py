"""The machine's limits and the work a model's batches need: a hardware roofline.

``measure_machine`` times a large matrix product per dtype (FLOP/s) and large copies and reads
(bytes/s) on this device. ``step_work`` counts the FLOPs and bytes that one step of a model
needs (weights read once, KV read and written, the LM head for the rows that are sampled).
The bound of a step is the slower of its arithmetic at the measured FLOP/s and its traffic at
the measured bandwidth; an engine's time over the bound is how far it is from the machine.

A dtype's arithmetic rate is the best way the machine has to multiply numbers stored in that
dtype: native (bfloat16 GEMM where the CPU has it), or widened to float32 when that is faster
(on CPUs without bfloat16 arithmetic); both rates are reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from kvfleet.common.models.spec import ModelSpec

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class MachineLimits:
    device: str
    threads: int
    native_matmul_flops: dict[str, float]  # dtype -> FLOP/s of its own GEMM
    matmul_flops: dict[str, float]  # dtype -> best FLOP/s for data of that dtype
    copy_bytes_s: float  # bytes read + written per second by a large copy
    read_bytes_s: float  # bytes read per second by a large reduction

    @property
    def memory_bytes_s(self) -> float:
        return max(self.copy_bytes_s, self.read_bytes_s)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["memory_bytes_s"] = self.memory_bytes_s
        return d


def _best_seconds(fn: Callable[[], object], budget_s: float, sync: Callable[[], None]) -> float:
    fn()
    sync()
    best = float("inf")
    start = time.perf_counter()
    runs = 0
    while runs < 3 or time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
        runs += 1
        if runs >= 200:
            break
    return best


def _matmul_flops(
    dtype: torch.dtype, device: torch.device, budget_s: float, sync: Callable[[], None]
) -> float:
    """Best FLOP/s of square GEMMs; the size grows while a product stays quick."""
    best = 0.0
    n = 512
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        s = _best_seconds(lambda a=a, b=b: torch.mm(a, b), budget_s, sync)
        best = max(best, 2 * n**3 / s)
        if s > 0.05 or n >= 4096:
            return best
        n *= 2


def measure_machine(
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    device: str = "cpu",
    budget_s: float = 0.5,
    copy_bytes: int = 256 << 20,
) -> MachineLimits:
    """Time GEMMs per dtype and large copies/reads on ``device`` (a few seconds)."""
    dev = torch.device(device)
    sync: Callable[[], None] = (
        (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    )
    native: dict[str, float] = {}
    for name in dict.fromkeys(("float32", *dtypes)):
        native[name] = _matmul_flops(_DTYPES[name], dev, budget_s, sync)
    best = {name: max(rate, native["float32"]) for name, rate in native.items()}
    n = copy_bytes // 4
    src = torch.ones(n, device=dev)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), budget_s, sync)
    read_s = _best_seconds(lambda: src.sum(), budget_s, sync)
    return MachineLimits(
        device=str(dev),
        threads=torch.get_num_threads(),
        native_matmul_flops=native,
        matmul_flops=best,
        copy_bytes_s=2 * n * 4 / copy_s,
        read_bytes_s=n * 4 / read_s,
    )


def best_limits(runs: list[MachineLimits]) -> MachineLimits:
    """The best of several measurements, rate by rate (a shared machine is rarely quiet)."""

    def best(key: str) -> dict[str, float]:
        names = getattr(runs[0], key)
        return {n: max(getattr(r, key)[n] for r in runs) for n in names}

    return MachineLimits(
        device=runs[0].device,
        threads=runs[0].threads,
        native_matmul_flops=best("native_matmul_flops"),
        matmul_flops=best("matmul_flops"),
        copy_bytes_s=max(r.copy_bytes_s for r in runs),
        read_bytes_s=max(r.read_bytes_s for r in runs),
    )


@dataclass(frozen=True, slots=True)
class StepWork:
    """FLOPs and bytes of memory traffic one step needs at least."""

    flops: float
    bytes: float

    def __add__(self, other: StepWork) -> StepWork:
        return StepWork(self.flops + other.flops, self.bytes + other.bytes)

    def bound_s(self, limits: MachineLimits, dtype: str) -> float:
        """Seconds at the machine's limit: the slower of arithmetic and memory traffic."""
        return max(self.flops / limits.matmul_flops[dtype], self.bytes / limits.memory_bytes_s)


def step_work(
    spec: ModelSpec,
    element_bytes: int,
    chunks: list[tuple[int, int]],
    num_sampled: int,
    layers: tuple[int, int] | None = None,
) -> StepWork:
    """Work of one step of ``spec`` (layers [first, last), default all) over ``chunks``:
    (tokens already in the KV, new tokens) per sequence; ``num_sampled`` rows go through the
    LM head. Weights are read once per step; every sequence reads its KV once per layer."""
    first, last = layers if layers is not None else (0, spec.num_layers)
    n_layers = last - first
    h, d = spec.hidden_size, spec.head_dim
    new = sum(n for _, n in chunks)
    layer_params = spec.layer_param_count()
    flops = 2.0 * new * layer_params * n_layers
    # attention: q.k and p.v over the keys each new token sees (causal within its chunk)
    seen = sum(n * c + n * (n + 1) / 2 for c, n in chunks)
    flops += 4.0 * spec.num_heads * d * seen * n_layers
    weight_bytes = layer_params * n_layers * element_bytes
    kv_token = spec.kv_bytes_per_token(n_layers, element_bytes)
    kv_bytes = sum((c + n) * kv_token for c, n in chunks)  # read every key, write the new ones
    act_bytes = new * h * element_bytes * (2 if first == 0 else 1)
    if last == spec.num_layers and num_sampled:
        flops += 2.0 * num_sampled * spec.vocab_size * h
        weight_bytes += spec.vocab_size * h * element_bytes
    return StepWork(flops, weight_bytes + kv_bytes + act_bytes)


@dataclass(frozen=True, slots=True)
class WorkloadBound:
    """Seconds at the machine's limit for a batch of equal requests: one prefill step of
    every prompt, then decode steps of the whole batch."""

    prefill_s: float
    decode_s: float
    prefill: StepWork
    decode: StepWork

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


def batch_workload_bound(
    spec: ModelSpec,
    element_bytes: int,
    num_requests: int,
    prompt_tokens: int,
    output_tokens: int,
    limits: MachineLimits,
    dtype: str,
) -> WorkloadBound:
    """The bound of ``num_requests`` prompts of ``prompt_tokens`` prefilled in one step, then
    ``output_tokens - 1`` decode steps (the first token comes from the prefill)."""
    prefill = step_work(spec, element_bytes, [(0, prompt_tokens)] * num_requests, num_requests)
    decode_s = 0.0
    decode = StepWork(0.0, 0.0)
    for i in range(1, output_tokens):
        w = step_work(
            spec, element_bytes, [(prompt_tokens + i - 1, 1)] * num_requests, num_requests
        )
        decode = decode + w
        decode_s += w.bound_s(limits, dtype)
    return WorkloadBound(prefill.bound_s(limits, dtype), decode_s, prefill, decode)
