"""Per-request sampling over a step's logits: greedy rows in one argmax, others one by one."""

from __future__ import annotations

import torch

from kvfleet.services.worker.engine.sequence import Sequence


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One token per row of ``logits`` [n, vocab] (float32) for ``seqs``."""
    out = logits.argmax(dim=-1).tolist()
    for i, seq in enumerate(seqs):
        sp = seq.sampling
        if sp.temperature <= 0:
            continue
        row = logits[i].float() / sp.temperature
        if 0 < sp.top_k < row.shape[0]:
            kth = torch.topk(row, sp.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if sp.top_p < 1.0:
            sorted_p, idx = torch.sort(probs, descending=True)
            cum = sorted_p.cumsum(0)
            drop = (cum - sorted_p) >= sp.top_p  # keep the smallest prefix reaching top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
        out[i] = int(torch.multinomial(probs.cpu(), 1, generator=seq.generator).item())
    return out
