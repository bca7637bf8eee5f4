"""Export and import a sequence's KV pages with its tokens and sampling state.

An export covers tokens [since_tokens, num_computed) for the layers the engine holds, as one
tensor [num_layers, 2, num_tokens, num_kv_heads, head_dim]. A base export plus incremental
ones rebuild the sequence in another engine, whose page size (and so tokens per page) may
differ. The meta dict is JSON-serializable.
"""

from __future__ import annotations

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

EXPORT_VERSION = 2  # 2: the seed replaces the generator state


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
    kv = kv.to(device=pool.device, dtype=m.layout.dtype)
    view[page_ids.to(pool.device), :, :, offsets.to(pool.device)] = kv.permute(2, 0, 1, 3, 4)


def export_sequence(
    pool: PagePool, m: LoadedModel, seq: Sequence, since_tokens: int, with_kv: bool = True
) -> SequenceExport:
    """``with_kv=False`` exports the tokens and sampling state only (token range [0, 0]): the
    importer computes the KV again (a re-prefill migration)."""
    end = seq.num_computed if with_kv else 0
    if with_kv and not 0 <= since_tokens <= end:
        raise EngineInputError(
            f"request {seq.seq_id}: since_tokens={since_tokens} is outside [0, {end}]"
        )
    since_tokens = since_tokens if with_kv else 0
    kv = read_kv(pool, m, seq.pages, since_tokens, end) if with_kv else None
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
        "seed": seq.seed,  # sampled tokens are a function of (seed, index): nothing else
        "text": seq.text,
        "num_emitted_chars": seq.num_emitted_chars,
        "layer_range": [m.stage.first, m.stage.last],
        "token_range": [since_tokens, end],
    }
    if kv is None:
        return SequenceExport(meta, [])
    meta["shape"] = list(kv.shape)
    meta["dtype"] = str(kv.dtype).removeprefix("torch.")
    return SequenceExport(meta, [kv])


def import_sequence(
    pool: PagePool, models: dict[str, LoadedModel], exports: list[SequenceExport], order: int
) -> Sequence:
    """Rebuild a sequence (pages allocated and written) from a base export plus incremental
    ones; ``order`` is its arrival order in the importing engine."""
    if not exports:
        raise EngineInputError("import_sequence needs at least one export")
    try:
        seq, pieces, m = _rebuild(models, exports, order)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        if isinstance(e, EngineInputError):
            raise
        raise EngineInputError(f"malformed sequence export: {type(e).__name__}: {e}") from e
    end = seq.num_computed
    tpp = m.layout.tokens_per_page
    pages = pool.allocate(-(-end // tpp)) if end else []
    if pages is None:
        raise OutOfMemoryBudgetError(
            f"request {seq.seq_id}: not enough free KV pages to import {end} tokens"
        )
    try:
        if end:
            write_kv(pool, m, pages, torch.cat(pieces, dim=2))
    except BaseException:
        pool.free(pages)  # nothing of a failed import stays behind
        raise
    seq.pages = pages
    return seq


def _rebuild(
    models: dict[str, LoadedModel], exports: list[SequenceExport], order: int
) -> tuple[Sequence, list[torch.Tensor], LoadedModel]:
    """Check every export against the model held here and build the sequence (no pages)."""
    parts = sorted(exports, key=lambda e: int(e.meta["token_range"][0]))
    last = max(exports, key=lambda e: int(e.meta["token_range"][1]))
    meta = last.meta
    if any(e.meta.get("version") != EXPORT_VERSION for e in parts):
        raise EngineInputError(f"unsupported export version (expected {EXPORT_VERSION})")
    if any(e.meta.get("request_id") != meta["request_id"] for e in parts):
        raise EngineInputError("exports of different requests")
    m = models.get(meta["model"])
    if m is None:
        raise ModelNotFoundError(f"model {meta['model']!r} is not loaded on this engine")
    if list(meta["layer_range"]) != [m.stage.first, m.stage.last]:
        raise EngineInputError(
            f"export holds layers {meta['layer_range']}, this engine holds "
            f"[{m.stage.first}, {m.stage.last}) of {meta['model']!r}"
        )
    sampling = SamplingParams.from_dict(meta["sampling"])
    sampling.validate()
    prompt = tuple(int(t) for t in meta["prompt_token_ids"])
    output = tuple(int(t) for t in meta["output_token_ids"])
    vocab = m.spec.vocab_size
    if not prompt or any(not 0 <= t < vocab for t in (*prompt, *output)):
        raise EngineInputError(f"export: empty prompt or token ids outside [0, {vocab})")
    num_tokens = len(prompt) + len(output)
    if num_tokens >= m.spec.max_context_tokens:
        raise EngineInputError(f"export: {num_tokens} tokens do not fit the model's context")
    kv_shape = (m.stage.last - m.stage.first, 2, m.spec.num_kv_heads, m.spec.head_dim)
    covered = 0
    pieces = []
    for e in parts:
        start, end = (int(x) for x in e.meta["token_range"])
        if not 0 <= start <= end <= num_tokens:
            raise EngineInputError(f"export: token range [{start}, {end}) outside the sequence")
        if start > covered:
            raise EngineInputError(f"exports leave tokens [{covered}, {start}) uncovered")
        if start == end and not e.tensors:  # tokens only: the KV is computed again here
            continue
        if len(e.tensors) != 1:
            raise EngineInputError("export: expected one KV tensor per export")
        kv = e.tensors[0]
        want = (kv_shape[0], 2, end - start, *kv_shape[2:])
        if tuple(kv.shape) != want or not kv.is_floating_point():
            raise EngineInputError(f"export: KV tensor {tuple(kv.shape)} {kv.dtype}, "
                                   f"expected {want} floating point")
        if end > covered:
            pieces.append(kv[:, :, covered - start :])
            covered = end
    text = str(meta["text"])
    emitted = int(meta["num_emitted_chars"])
    seed = int(meta["seed"])
    if not 0 <= emitted <= len(text) or not 0 <= seed < (1 << 63):
        raise EngineInputError("export: inconsistent text or seed")
    req = EngineRequest(
        str(meta["request_id"]),
        meta["model"],
        prompt,
        sampling,
        output,
        float(meta["arrival_s"]),
        ServiceLevel.from_dict(meta.get("slo")),
        meta.get("predicted_output_tokens"),
    )
    seq = Sequence(req, order, m.tokenizer, m.spec.max_context_tokens)
    seq.restore_text(text, emitted)
    seq.seed = seed
    seq.num_computed = covered
    return seq, pieces, m
