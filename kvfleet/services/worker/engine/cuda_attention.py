"""Paged decode attention on CUDA with installed kernels (FlashAttention, FlashInfer).

Selected only on CUDA devices, and only when the package imports; anything else uses the
torch path of ``attention.py``. Both kernels read K and V in place from the pool: a model's
view of one layer, ``kv[:, layer, 0]``, is [pages, tokens_per_page, kv_heads, head_dim] with a
page stride of the page size, which is the paged layout both kernels take (FlashAttention-2
needs pages of a multiple of 256 tokens). A kernel that fails on first use is logged and
dropped for the torch path.

Not run by the test suite (no GPU there).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)


class PagedDecodeKernel(Protocol):
    """A paged decode kernel: planned once per step, run once per layer."""

    def plan(
        self,
        page_table: torch.Tensor,
        key_len: torch.Tensor,
        tokens_per_page: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
    ) -> None: ...

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """q [B, num_heads, head_dim]; caches [pages, tokens_per_page, kv_heads, head_dim]."""
        ...


class FlashAttnDecode:
    """FlashAttention's ``flash_attn_with_kvcache`` with a block table (capturable in a CUDA
    graph: no host work per call)."""

    def __init__(self) -> None:
        from flash_attn import flash_attn_with_kvcache

        self._fn = flash_attn_with_kvcache
        self._table: torch.Tensor | None = None
        self._lens: torch.Tensor | None = None

    def plan(
        self,
        page_table: torch.Tensor,
        key_len: torch.Tensor,
        tokens_per_page: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
    ) -> None:
        self._table = page_table.to(torch.int32)
        self._lens = key_len.to(torch.int32)

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        out = self._fn(
            q.unsqueeze(1),
            k_cache,
            v_cache,
            cache_seqlens=self._lens,
            block_table=self._table,
            causal=True,
        )
        return out.squeeze(1)


class FlashInferDecode:
    """FlashInfer's batch decode over pages of any size (planned on the host per step)."""

    def __init__(self, device: torch.device) -> None:
        import flashinfer

        workspace = torch.empty(128 << 20, dtype=torch.uint8, device=device)
        self._wrapper: Any = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")

    def plan(
        self,
        page_table: torch.Tensor,
        key_len: torch.Tensor,
        tokens_per_page: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
    ) -> None:
        tpp = tokens_per_page
        pages = (key_len + tpp - 1) // tpp
        indptr = torch.zeros(len(pages) + 1, dtype=torch.int32, device=key_len.device)
        indptr[1:] = torch.cumsum(pages, 0)
        used = torch.arange(page_table.shape[1], device=key_len.device) < pages.unsqueeze(1)
        self._wrapper.plan(
            indptr,
            page_table[used].to(torch.int32),
            (key_len - (pages - 1) * tpp).to(torch.int32),
            num_heads,
            num_kv_heads,
            head_dim,
            tpp,
            q_data_type=dtype,
            kv_data_type=dtype,
        )

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        return self._wrapper.run(q, (k_cache, v_cache))


def choose_decode_kernel(
    device: torch.device, tokens_per_page: int, for_cuda_graphs: bool = False
) -> PagedDecodeKernel | None:
    """The paged decode kernel for this device and page geometry, or None (torch path).
    FlashInfer plans on the host, so it is not used inside CUDA graphs."""
    if device.type != "cuda":
        return None
    if not for_cuda_graphs and importlib.util.find_spec("flashinfer") is not None:
        try:
            return FlashInferDecode(device)
        except Exception:  # an installed but broken package: the next choice
            log.warning("flashinfer is installed but unusable", exc_info=True)
    if importlib.util.find_spec("flash_attn") is not None and tokens_per_page % 256 == 0:
        try:
            return FlashAttnDecode()
        except Exception:
            log.warning("flash_attn is installed but unusable", exc_info=True)
    return None
