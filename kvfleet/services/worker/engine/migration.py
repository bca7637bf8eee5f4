"""Export and import a sequence's KV pages with its tokens and sampling state.

An export covers tokens [since_tokens, num_computed) for the layers the engine holds, as one
tensor [num_layers, 2, num_tokens, num_kv_heads, head_dim]. A base export plus incremental
ones rebuild the sequence in another engine, whose page size (and so tokens per page) may
differ. The meta dict is JSON-serializable.
"""

from __future__ import annotations

import base64

import torch

from kvfleet.common.slo import ServiceLevel
from kvfleet.services.worker.engine.kv_pool import PagePool
from kvfleet.services.worker.engine.loaded_model import LoadedModel
from kvfleet.services.worker.engine.sequence import Sequence
from kvfleet.services.worker.engine.types import (
    EngineInputError,
    EngineRequest,
    ModelNotFoundError,
    OutOfMemoryBudgetError,
    SamplingParams,
    SequenceExport,
)

EXPORT_VERSION = 1


def _slots(pages: list[int], start: int, end: int, tpp: int) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(start, end)
    page_ids = torch.tensor(pages, dtype=torch.long)[pos // tpp] if end > start else pos
    return page_ids, pos % tpp


def read_kv(pool: PagePool, m: LoadedModel, pages: list[int], start: int, end: int) -> torch.Tensor:
    """KV of tokens [start, end) held in ``pages``: [num_layers, 2, n, kv_heads, head_dim]."""
    page_ids, offsets = _slots(pages, start, end, m.layout.tokens_per_page)
    view = pool.view(m.layout)
    kv = view[page_ids.to(pool.device), :, :, offsets.to(pool.device)]  # [n, L, 2, H, D]
    return kv.permute(1, 2, 0, 3, 4).contiguous()


def write_kv(pool: PagePool, m: LoadedModel, pages: list[int], kv: torch.Tensor) -> None:
    """Write ``kv`` [num_layers, 2, n, kv_heads, head_dim] as tokens [0, n) into ``pages``."""
    n = kv.shape[2]
    if n == 0:
        return
    page_ids, offsets = _slots(pages, 0, n, m.layout.tokens_per_page)
    view = pool.view(m.layout)
    kv = kv.to(device=pool.device, dtype=pool.dtype)
    view[page_ids.to(pool.device), :, :, offsets.to(pool.device)] = kv.permute(2, 0, 1, 3, 4)


def export_sequence(pool: PagePool, m: LoadedModel, seq: Sequence, since_tokens: int) -> SequenceExport:
    end = seq.num_computed
    if not 0 <= since_tokens <= end:
        raise EngineInputError(
            f"request {seq.seq_id}: since_tokens={since_tokens} is outside [0, {end}]"
        )
    kv = read_kv(pool, m, seq.pages, since_tokens, end)
    rng = None
    if seq.generator is not None:
        rng = base64.b64encode(seq.generator.get_state().numpy().tobytes()).decode()
    meta = {
        "version": EXPORT_VERSION,
        "request_id": seq.seq_id,
        "model": seq.model,
        "arrival_s": seq.req.arrival_s,
        "slo": seq.req.slo.to_dict(),
        "predicted_output_tokens": seq.req.predicted_output_tokens,
        "prompt_token_ids": seq.tokens[: seq.num_prompt_tokens],
        "output_token_ids": seq.tokens[seq.num_prompt_tokens :],
        "sampling": seq.sampling.to_dict(),
        "rng_state": rng,
        "text": seq.text,
        "num_emitted_chars": seq.num_emitted_chars,
        "layer_range": [m.stage.first, m.stage.last],
        "token_range": [since_tokens, end],
        "shape": list(kv.shape),
        "dtype": str(kv.dtype).removeprefix("torch."),
    }
    return SequenceExport(meta, [kv])


def import_sequence(
    pool: PagePool, models: dict[str, LoadedModel], exports: list[SequenceExport], order: int
) -> Sequence:
    """Rebuild a sequence (pages allocated and written) from a base export plus incremental
    ones; ``order`` is its arrival order in the importing engine."""
    if not exports:
        raise EngineInputError("import_sequence needs at least one export")
    parts = sorted(exports, key=lambda e: e.meta["token_range"][0])
    last = max(exports, key=lambda e: e.meta["token_range"][1])
    meta = last.meta
    if any(e.meta.get("version") != EXPORT_VERSION for e in parts):
        raise EngineInputError(f"unsupported export version (expected {EXPORT_VERSION})")
    m = models.get(meta["model"])
    if m is None:
        raise ModelNotFoundError(f"model {meta['model']!r} is not loaded on this engine")
    if list(meta["layer_range"]) != [m.stage.first, m.stage.last]:
        raise EngineInputError(
            f"export holds layers {meta['layer_range']}, this engine holds "
            f"[{m.stage.first}, {m.stage.last}) of {meta['model']!r}"
        )
    covered = 0
    pieces = []
    for e in parts:
        start, end = e.meta["token_range"]
        if start > covered:
            raise EngineInputError(f"exports leave tokens [{covered}, {start}) uncovered")
        if end > covered:
            pieces.append(e.tensors[0][:, :, covered - start :])
            covered = end
    end = covered
    sampling = SamplingParams.from_dict(meta["sampling"])
    req = EngineRequest(
        meta["request_id"],
        meta["model"],
        tuple(meta["prompt_token_ids"]),
        sampling,
        tuple(meta["output_token_ids"]),
        float(meta["arrival_s"]),
        ServiceLevel.from_dict(meta.get("slo")),
        meta.get("predicted_output_tokens"),
    )
    seq = Sequence(req, order, m.tokenizer, m.spec.max_context_tokens)
    seq.text = meta["text"]
    seq.num_emitted_chars = int(meta["num_emitted_chars"])
    if meta["rng_state"] is not None and seq.generator is not None:
        raw = base64.b64decode(meta["rng_state"])
        seq.generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    tpp = m.layout.tokens_per_page
    pages = pool.allocate(-(-end // tpp))
    if pages is None:
        raise OutOfMemoryBudgetError(
            f"request {seq.seq_id}: not enough free KV pages to import {end} tokens"
        )
    seq.pages = pages
    if end:
        write_kv(pool, m, pages, torch.cat(pieces, dim=2))
    seq.num_computed = end
    return seq
