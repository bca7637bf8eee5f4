"""Engine configuration."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field


class EngineConfig(BaseModel):
    """How an engine uses its device and memory."""

    memory_bytes: int | None = Field(default=None, gt=0)
    """Budget for weights + KV pool + activations. None: CUDA device memory less a reserve
    (required on CPU)."""
    page_size_bytes: int = Field(default=1 << 20, ge=256, le=1 << 30)
    """Bytes per KV page; each model's tokens per page follow from its per-token KV bytes."""
    max_num_batched_tokens: int = Field(default=2048, ge=1, le=1 << 20)
    """Per-step token budget (prefill chunks plus decode tokens)."""
    max_num_seqs: int = Field(default=64, ge=1, le=65536)
    """Most sequences in one step."""
    device: str = "cpu"
    """torch device: "cpu", "cuda" or "cuda:N"."""
    dtype: str = Field(default="float32", pattern="^(float32|bfloat16|float16)$")
    """Weights and KV dtype of every model without an entry in ``model_dtypes``. Activations
    follow it, except on CPUs without bfloat16 arithmetic, where 16-bit models compute in
    float32 (the weights and KV stay 16-bit in memory)."""
    model_dtypes: dict[str, Annotated[str, Field(pattern="^(float32|bfloat16|float16)$")]] = {}
    """Per-model dtype (model name as loaded -> dtype); the KV pool is shared all the same."""
    compile: str = Field(default="auto", pattern="^(auto|off|decode|all)$")
    """torch.compile of the layer step: "decode" compiles decode steps (on CUDA also captured
    as CUDA graphs per batch bucket), "all" prefill too, "off" none; "auto" is "decode" on
    CUDA and "off" on CPU, where compiling costs minutes at start and gains little (a CPU
    decode step is bound by its matrix products, which stay library calls)."""
    num_threads: int | None = Field(default=None, ge=1, le=1024)
    """CPU threads for torch; None: the number of cores."""
    cuda_reserve_bytes: int = Field(default=1 << 30, ge=0)
    """Device memory left aside when memory_bytes is None on CUDA."""
