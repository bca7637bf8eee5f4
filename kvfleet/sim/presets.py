"""Hardware and model presets for the simulator's cost model.

Figures are the vendors' published dense BF16 tensor throughput and memory bandwidth (no
sparsity), and the model shapes of the published checkpoints' configs. Memory sizes are
what the device reports as usable (GiB) except H200, sold as 141 GB.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One accelerator: memory, peak dense BF16 FLOP/s and HBM bandwidth."""

    name: str
    memory_bytes: int
    peak_flops: float
    hbm_bytes_per_s: float
    #: Fraction of peak FLOP/s a well-tuned kernel reaches on large matmuls.
    mfu: float = 0.6
    #: Fraction of HBM bandwidth a decode step reaches streaming weights and KV.
    mbu: float = 0.8
    #: Fixed host/launch overhead of one engine step, seconds.
    step_overhead_s: float = 1.5e-3
    #: Extra overhead per sequence in a step (scheduling, sampling), seconds.
    seq_overhead_s: float = 1.0e-5


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A decoder-only transformer as the cost model sees it."""

    name: str
    num_params: float
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype_bytes: int = 2

    @property
    def weight_bytes(self) -> int:
        return int(self.num_params * self.dtype_bytes)

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer of one token."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def matmul_params(self) -> float:
        """Parameters a token multiplies through (embedding lookup excluded, LM head kept)."""
        return self.num_params - self.vocab_size * self.hidden_size

    @property
    def attn_flops_per_token_ctx(self) -> float:
        """FLOPs of attention (QK^T and PV) for one query token against one context token."""
        return 4.0 * self.num_layers * self.num_heads * self.head_dim


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link KV blocks cross when a request migrates."""

    name: str
    bytes_per_s: float
    latency_s: float

    def transfer_s(self, num_bytes: int) -> float:
        return self.latency_s + num_bytes / self.bytes_per_s


GPU_PRESETS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        GpuSpec("A100-40G", 40 * GiB, 312e12, 1.555e12),
        GpuSpec("A100-80G", 80 * GiB, 312e12, 2.039e12),
        GpuSpec("H100", 80 * GiB, 989e12, 3.35e12),
        GpuSpec("H200", 141 * 10**9, 989e12, 4.8e12),
        GpuSpec("RTX4090", 24 * GiB, 165e12, 1.008e12, step_overhead_s=2.0e-3),
        # A CPU stand-in; meant to be calibrated from `kvfleet bench engine`.
        GpuSpec("CPU", 16 * GiB, 1.0e12, 5.0e10, mfu=0.3, mbu=0.5, step_overhead_s=5e-3),
    )
}

MODEL_PRESETS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        ModelShape("Llama-2-7B", 6.74e9, 32, 4096, 32, 32, 128, 32000),
        ModelShape("Llama-2-13B", 13.02e9, 40, 5120, 40, 40, 128, 32000),
        ModelShape("Llama-3-8B", 8.03e9, 32, 4096, 32, 8, 128, 128256),
        ModelShape("Llama-3-70B", 70.55e9, 80, 8192, 64, 8, 128, 128256),
        ModelShape("Qwen2-7B", 7.62e9, 28, 3584, 28, 4, 128, 152064),
        ModelShape("Mistral-7B", 7.24e9, 32, 4096, 32, 8, 128, 32000),
        ModelShape("SmolLM2-135M", 0.1345e9, 30, 576, 9, 3, 64, 49152),
        # More sizes, for fleets of many models (SeaLLM's 1B to 70B range).
        ModelShape("Llama-3.2-1B", 1.24e9, 16, 2048, 32, 8, 64, 128256),
        ModelShape("Qwen2-1.5B", 1.54e9, 28, 1536, 12, 2, 128, 151936),
        ModelShape("Llama-3.2-3B", 3.21e9, 28, 3072, 24, 8, 128, 128256),
        ModelShape("Qwen2.5-14B", 14.77e9, 48, 5120, 40, 8, 128, 152064),
        ModelShape("Qwen2.5-32B", 32.76e9, 64, 5120, 40, 8, 128, 152064),
        ModelShape("Yi-34B", 34.39e9, 60, 7168, 56, 8, 128, 64000),
        ModelShape("Llama-2-70B", 68.98e9, 80, 8192, 64, 8, 128, 32000),
    )
}

LINK_PRESETS: dict[str, LinkSpec] = {
    link.name: link
    for link in (
        LinkSpec("nvlink", 300e9, 5e-6),  # NVLink 4, one direction per GPU pair (H100 class)
        LinkSpec("pcie", 25e9, 1e-5),  # PCIe 4.0 x16, achievable
        LinkSpec("100gbe", 12.5e9, 2e-5),
        LinkSpec("25gbe", 3.125e9, 3e-5),
        LinkSpec("10gbe", 1.25e9, 5e-5),
    )
}


def _lookup(table: dict, name: str, what: str):  # type: ignore[no-untyped-def]
    folded = {k.lower().replace("_", "-"): v for k, v in table.items()}
    key = name.lower().replace("_", "-")
    if key in folded:
        return folded[key]
    raise ValueError(f"unknown {what} preset {name!r}; known: {', '.join(sorted(table))}")


def gpu_preset(name: str) -> GpuSpec:
    return _lookup(GPU_PRESETS, name, "GPU")  # type: ignore[no-any-return]


def model_preset(name: str) -> ModelShape:
    return _lookup(MODEL_PRESETS, name, "model")  # type: ignore[no-any-return]


def link_preset(name: str) -> LinkSpec:
    return _lookup(LINK_PRESETS, name, "link")  # type: ignore[no-any-return]
