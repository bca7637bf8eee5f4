"""The layer step compiled: ``torch.compile`` of ``decoder_layer.layer_forward``, and on CUDA
the whole decode forward captured as CUDA graphs, one per shape bucket.

One compiled function serves every layer and every model: everything that varies is a tensor
or an int the compiler treats as symbolic, and the model's constants are guarded. On CPU the
function is compiled with dynamic shapes (batch, pages and token counts are symbolic), so a
worker compiles a handful of graphs at start (size-1 batches are their own graphs) and never
again. On CUDA a decode step is padded to a bucket (batch size and page-table width rounded
up), so a few CUDA graphs cover every step; padding rows repeat the last real row, so they
write the very same K and V to the very same slot and change nothing.

Modes (``EngineConfig.compile``): "off", "decode" (decode steps only), "all" (prefill and
mixed steps too), "auto" (decode on CUDA, off on CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from kvfleet.services.worker.engine.decoder_layer import layer_forward

log = logging.getLogger(__name__)

LayerFn = Callable[..., torch.Tensor]

_compiled: dict[str, LayerFn] = {}


def resolve_mode(mode: str, device: torch.device) -> str:
    if mode == "auto":
        return "decode" if device.type == "cuda" else "off"
    return mode


def compiled_layer(device: torch.device) -> LayerFn:
    """The compiled ``layer_forward`` for a device type (one per process)."""
    key = device.type
    if key not in _compiled:
        import torch._dynamo

        # one code object serves every layer, model and shape class: allow its variants
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        dynamic = device.type == "cpu"  # CUDA: static shapes per bucket (CUDA graphs)
        _compiled[key] = torch.compile(layer_forward, dynamic=dynamic)
    return _compiled[key]


class LayerRunner:
    """Which layer function a step runs: eager, or compiled for decode (and prefill)."""

    def __init__(self, mode: str, device: torch.device) -> None:
        self.mode = resolve_mode(mode, device)
        self.device = device

    def layer_fn(self, decode: bool) -> LayerFn:
        if self.mode == "all" or (self.mode == "decode" and decode):
            return compiled_layer(self.device)
        return layer_forward


# ---------------------------------------------------------------------- buckets (CUDA graphs)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def bucket(n: int, buckets: tuple[int, ...] = BATCH_BUCKETS) -> int:
    """The smallest bucket holding ``n`` (powers of two past the last bucket)."""
    for b in buckets:
        if n <= b:
            return b
    return 1 << (n - 1).bit_length()


def pad_decode_batch(batch: Any, batch_size: int, num_pages: int) -> Any:
    """A decode ``StepBatch`` padded to ``batch_size`` rows and ``num_pages`` table columns.

    Extra rows repeat the last real row (same token, position, slot and pages: they write
    the same K and V to the same slot); extra columns point at the row's last page (never
    read: the key length masks them). ``sample_index`` keeps only the real rows.
    """
    b, p = batch.page_table.shape
    if batch.max_q != 1:
        raise ValueError("only decode batches (one new token per sequence) are padded")
    if batch_size < b or num_pages < p:
        raise ValueError(f"cannot pad [{b}, {p}] down to [{batch_size}, {num_pages}]")
    rows = torch.arange(batch_size, device=batch.page_table.device).clamp(max=b - 1)
    table = batch.page_table[rows]
    if num_pages > p:
        table = torch.cat([table, table[:, -1:].expand(-1, num_pages - p)], dim=1)
    return replace(
        batch,
        input_ids=batch.input_ids[rows],
        positions=batch.positions[rows],
        slot_pages=batch.slot_pages[rows],
        slot_offsets=batch.slot_offsets[rows],
        page_table=table,
        key_limit=batch.key_limit[rows],
    )


class CudaGraphDecoder:
    """Decode forwards of one model stage replayed from CUDA graphs, one per
    (batch bucket, page-table bucket). Graphs hold the pool's address: they are dropped
    when the pool's storage moves (resize). Never run without a GPU."""

    def __init__(self, stage: Any) -> None:
        self.stage = stage
        self.graphs: dict[tuple[int, int], tuple[Any, Any, torch.Tensor]] = {}
        self.storage_ptr: int | None = None
        self.pool = torch.cuda.graph_pool_handle()

    def run(self, kv: torch.Tensor, batch: Any) -> torch.Tensor:
        ptr = kv.untyped_storage().data_ptr()
        if ptr != self.storage_ptr:
            self.graphs.clear()
            self.storage_ptr = ptr
        b, p = batch.page_table.shape
        key = (bucket(b), bucket(p))
        padded = pad_decode_batch(batch, *key)
        if key not in self.graphs:
            self.graphs[key] = self._capture(kv, padded)
        graph, static, out = self.graphs[key]
        for name in (
            "input_ids",
            "positions",
            "slot_pages",
            "slot_offsets",
            "page_table",
            "key_limit",
        ):
            getattr(static, name).copy_(getattr(padded, name))
        graph.replay()
        return out[batch.sample_index]

    def _capture(self, kv: torch.Tensor, padded: Any) -> tuple[Any, Any, torch.Tensor]:
        n = padded.page_table.shape[0]
        static = replace(
            padded,
            input_ids=padded.input_ids.clone(),
            positions=padded.positions.clone(),
            slot_pages=padded.slot_pages.clone(),
            slot_offsets=padded.slot_offsets.clone(),
            page_table=padded.page_table.clone(),
            key_limit=padded.key_limit.clone(),
            sample_index=torch.arange(n, device=padded.input_ids.device),
        )
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up (and compile) outside the capture
            for _ in range(2):
                self.stage.run_layers(kv, static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.stage.run_layers(kv, static)
        log.info(
            "captured a decode CUDA graph for batch %d, %d pages", n, padded.page_table.shape[1]
        )
        return graph, static, out
