"""Turn one step's chunks for one model into the tensors of a ``StepBatch``."""

from __future__ import annotations

import torch

from kvfleet.services.worker.engine.model import StepBatch
from kvfleet.services.worker.engine.sequence import Sequence


def build_batch(
    items: list[tuple[Sequence, int]], tokens_per_page: int, device: torch.device
) -> StepBatch:
    """``items``: (sequence, number of new tokens); pages must already cover the new tokens."""
    tpp = tokens_per_page
    ids: list[int] = []
    positions: list[int] = []
    slot_pages: list[int] = []
    slot_offsets: list[int] = []
    tables: list[list[int]] = []
    limits: list[list[int]] = []
    sample_rows: list[int] = []
    max_q = max(n for _, n in items)
    pad_index: list[int] = []
    for b, (seq, n) in enumerate(items):
        start = seq.num_computed
        end = start + n
        ids.extend(seq.tokens[start:end])
        pos = range(start, end)
        positions.extend(pos)
        pages = seq.pages
        slot_pages.extend(pages[p // tpp] for p in pos)
        slot_offsets.extend(p % tpp for p in pos)
        tables.append(pages[: -(-end // tpp)])
        limits.append(list(pos) + [0] * (max_q - n))
        pad_index.extend(range(b * max_q, b * max_q + n))
        if end == seq.num_tokens:
            sample_rows.append(len(ids) - 1)
    width = max(len(t) for t in tables)
    table = [t + [0] * (width - len(t)) for t in tables]

    def tensor(x: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long, device=device)

    return StepBatch(
        input_ids=tensor(ids),
        positions=tensor(positions),
        slot_pages=tensor(slot_pages),
        slot_offsets=tensor(slot_offsets),
        page_table=tensor(table),
        max_q=max_q,
        pad_index=None if max_q == 1 else tensor(pad_index),
        key_limit=tensor(limits),
        sample_index=tensor(sample_rows),
    )
