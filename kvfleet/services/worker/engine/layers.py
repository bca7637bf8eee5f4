"""Drop and restore layer ranges of a loaded model.

Dropping keeps the KV of the layers that stay (re-laid out: fewer layers per token means
more tokens per page) and frees the dropped weights into the page pool. Restoring reloads
the weights from the checkpoint, takes the memory back from the pool, and re-prefills the
model's sequences (their KV for the restored layers does not exist), i.e. a recompute
preemption.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch

from kvfleet.common.models import read_weights
from kvfleet.common.models.tokenizer import load_tokenizer
from kvfleet.services.worker.engine.kv_pool import PagePool
from kvfleet.services.worker.engine.loaded_model import LoadedModel, weights_bytes
from kvfleet.services.worker.engine.migration import read_kv, write_kv
from kvfleet.services.worker.engine.model import ModelStage
from kvfleet.services.worker.engine.sequence import Sequence
from kvfleet.services.worker.engine.types import EngineInputError, OutOfMemoryBudgetError

log = logging.getLogger(__name__)


class LayerHost(Protocol):
    """What dropping and restoring layers needs of the engine that holds the model."""

    pool: PagePool
    device: torch.device

    def model(self, name: str) -> LoadedModel: ...
    def sequences(self, model: str | None = None) -> list[Sequence]: ...
    def preempt(self, seq: Sequence) -> None: ...
    def resize_pool(self, num_pages: int | None = None) -> None: ...
    def pool_pages(self, extra_weight_bytes: int = 0) -> int: ...


def drop_layers(eng: LayerHost, name: str, keep: tuple[int, int]) -> None:
    m = eng.model(name)
    first, last = keep
    old_first = m.stage.first
    if not m.stage.first <= first < last <= m.stage.last:
        raise EngineInputError(
            f"{name!r}: can keep a range inside [{m.stage.first}, {m.stage.last}), not {keep}"
        )
    seqs = [s for s in eng.sequences(name) if s.pages]
    saved = []
    for s in seqs:
        kv = read_kv(eng.pool, m, s.pages, 0, s.num_computed)[first - old_first : last - old_first]
        saved.append((s, kv))
        eng.pool.free(s.pages)
        s.pages = []
    freed = m.stage.num_bytes()
    m.stage = m.stage.narrow(first, last)
    freed -= m.stage.num_bytes()
    m.layout = eng.pool.layout_for(
        last - first, m.spec.num_kv_heads, m.spec.head_dim, m.layout.dtype
    )
    eng.resize_pool()
    tpp = m.layout.tokens_per_page
    for s, kv in saved:
        pages = eng.pool.allocate(-(-s.num_computed // tpp))
        assert pages is not None, "the pool only grew"
        s.pages = pages
        write_kv(eng.pool, m, pages, kv)
    log.info(
        "%s: dropped to layers [%d, %d), %d weight bytes freed into the pool",
        name,
        first,
        last,
        freed,
    )


def restore_layers(eng: LayerHost, name: str, layers: tuple[int, int] | None) -> None:
    m = eng.model(name)
    first, last = layers if layers is not None else (0, m.spec.num_layers)
    if not (0 <= first <= m.stage.first and m.stage.last <= last <= m.spec.num_layers):
        raise EngineInputError(
            f"{name!r}: cannot restore to {(first, last)} from [{m.stage.first}, {m.stage.last})"
        )
    old = m.stage
    extra = weights_bytes(m.spec, first, last, old.dtype) - old.num_bytes()
    new_layout = eng.pool.layout_for(
        last - first, m.spec.num_kv_heads, m.spec.head_dim, m.layout.dtype
    )
    pages_after = eng.pool_pages(extra)
    other_used = sum(len(s.pages) for s in eng.sequences() if s.model != name)
    if pages_after < other_used:
        raise OutOfMemoryBudgetError(
            f"{name!r}: restoring [{first}, {last}) needs {extra} more weight bytes; "
            f"{other_used} pages of other models are in use and only {max(pages_after, 0)} "
            "would remain"
        )
    for s in [s for s in eng.sequences(name) if s.pages]:
        eng.preempt(s)
    eng.resize_pool(pages_after)  # give the memory back before the weights take it
    stage = ModelStage(
        m.spec,
        read_weights(m.source, first, last),
        first,
        last,
        old.dtype,
        eng.device,
        compile_mode=old.compile_mode,
    )
    m.stage = stage
    m.layout = new_layout
    eng.resize_pool()
    if m.tokenizer is None and stage.is_last:
        m.tokenizer = load_tokenizer(name)
    log.info("%s: restored to layers [%d, %d)", name, first, last)
