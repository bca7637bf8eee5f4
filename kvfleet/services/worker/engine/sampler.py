"""Per-request sampling over a step's logits: greedy rows in one argmax, others one by one.

A sampled token's randomness is a pure function of the request's seed and the token's output
index (one uniform number from a counter-based hash, drawn through the inverse CDF), so a
request resumed on another worker, or migrated, continues the exact stream it would have
produced where it started. No generator state needs to travel with it.
"""

from __future__ import annotations

import torch

from kvfleet.services.worker.engine.sequence import Sequence

_MASK = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a bijection of 64-bit integers with good avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def token_uniform(seed: int, index: int) -> float:
    """A uniform number in [0, 1) for output token ``index`` of a request seeded ``seed``."""
    return (_mix64(_mix64(seed & _MASK) ^ (index & _MASK)) >> 11) / float(1 << 53)


def filtered_probs(row: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p (float32 logits in, float64 out)."""
    row = row.double() / temperature
    if 0 < top_k < row.shape[0]:
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        cum = sorted_p.cumsum(0)
        drop = (cum - sorted_p) >= top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
    return probs


def draw(probs: torch.Tensor, u: float) -> int:
    """The token whose CDF interval holds ``u`` (a zero-probability token is never drawn)."""
    cdf = probs.cumsum(0)
    x = torch.tensor([u * float(cdf[-1])], dtype=cdf.dtype)
    i = min(int(torch.searchsorted(cdf, x, right=True).item()), probs.shape[0] - 1)
    while i > 0 and float(probs[i]) == 0.0:  # u rounded up to the very end of the CDF
        i -= 1
    return i


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One token per row of ``logits`` [n, vocab] (float32) for ``seqs``."""
    out = logits.argmax(dim=-1).tolist()
    for i, seq in enumerate(seqs):
        sp = seq.sampling
        if sp.temperature <= 0:
            continue
        probs = filtered_probs(logits[i].cpu(), sp.temperature, sp.top_k, sp.top_p)
        out[i] = draw(probs, token_uniform(seq.seed, seq.num_output_tokens))
    return out
