"""A step-time model fitted to measured engine steps: a non-negative combination of counts.

The roofline does not describe a CPU engine step: its time is dominated by per-layer and
per-sequence work (kernel calls, batch building, sampling, detokenizing), matrix products
whose efficiency grows with the number of rows, and an attention that may pad every
sequence of a step to the longest one. This model describes one model's forward in one step
by its counts and weighs a few features of them, each with a non-negative number of seconds,
fitted by non-negative least squares on relative error to the steps that
``kvfleet bench engine --sweep`` measures. Which features matter is left to the fit: an
engine that does not pad gets (close to) zero on the padded terms.

Features of a forward over chunks ``(c_i, n_i)`` (``n_i`` new tokens after ``c_i`` cached):

| feature | value |
| --- | --- |
| ``forward`` | 1 |
| ``tokens`` | T = sum n_i |
| ``tokens_to_K`` | min(T, K): matrix products get cheaper per row as rows grow |
| ``seqs`` | B, the number of chunks |
| ``kv_tokens`` | sum (c_i + n_i): KV read |
| ``attn_pairs`` | sum (n_i c_i + n_i (n_i + 1) / 2): query-key pairs |
| ``padded_kv`` | B max(c_i + n_i): KV read when padded to the longest |
| ``padded_pairs`` | P = B max(n_i) max(c_i + n_i): pairs when queries and keys are padded |
| ``padded_pairs_over_K`` | max(0, P - K): a padded attention too big for the caches costs more per pair |

A run of decode steps of a fixed batch grows every context by one token a step, so every
feature is linear in the step index and a run's time has a closed form (``decode_line``;
a ``padded_pairs_over_K`` term counts as active for the whole run when it is at its start).
Pure arithmetic; numpy only for the fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

TOKEN_KNOTS = (16, 64, 256)
PAIR_KNOTS = (1 << 18, 1 << 21, 1 << 24)
FEATURES = (
    "forward", "tokens", *(f"tokens_to_{k}" for k in TOKEN_KNOTS), "seqs", "kv_tokens",
    "attn_pairs", "padded_kv", "padded_pairs", *(f"padded_pairs_over_{k}" for k in PAIR_KNOTS),
)
_J = 2 + len(TOKEN_KNOTS)  # index of "seqs"


@dataclass(frozen=True, slots=True)
class StepShape:
    """The counts of one model's forward in one step."""

    num_tokens: int
    num_seqs: int
    kv_tokens: float
    attn_pairs: float
    max_q: int
    max_kv: int

    @classmethod
    def of_chunks(cls, chunks: Iterable[tuple[int, int]]) -> StepShape:
        """From ``(cached tokens, new tokens)`` per sequence."""
        tokens = seqs = max_q = max_kv = 0
        kv = pairs = 0.0
        for c, n in chunks:
            tokens += n
            seqs += 1
            kv += c + n
            pairs += n * c + n * (n + 1) / 2
            max_q = max(max_q, n)
            max_kv = max(max_kv, c + n)
        return cls(tokens, seqs, kv, pairs, max_q, max_kv)

    def features(self) -> tuple[float, ...]:
        t, b = self.num_tokens, self.num_seqs
        padded = float(b * self.max_q * self.max_kv)
        return (
            1.0, float(t), *(float(min(t, k)) for k in TOKEN_KNOTS), float(b), self.kv_tokens,
            self.attn_pairs, float(b * self.max_kv), padded,
            *(max(0.0, padded - k) for k in PAIR_KNOTS),
        )


@dataclass(frozen=True, slots=True)
class FitReport:
    """How well the fitted model reproduces the samples it was fitted to."""

    num_samples: int
    rms_relative_error: float
    max_relative_error: float
    mean_signed_relative_error: float


@dataclass(frozen=True, slots=True)
class StepModel:
    """Seconds per unit of each of ``FEATURES`` (all >= 0)."""

    coefficients: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.coefficients) != len(FEATURES):
            raise ValueError(f"a step model needs {len(FEATURES)} coefficients")
        if any(not math.isfinite(c) or c < 0 for c in self.coefficients):
            raise ValueError("step model coefficients must be finite and >= 0")

    def step_s(self, shape: StepShape) -> float:
        return sum(c * f for c, f in zip(self.coefficients, shape.features(), strict=True))

    def time_s(
        self, num_tokens: int, num_seqs: int, kv_tokens: float, attn_pairs: float,
        max_q: int, max_kv: int,
    ) -> float:
        """``step_s`` without building the shape (the simulator's hot path)."""
        c = self.coefficients
        t = num_tokens
        total = c[0] + c[1] * t
        for i, k in enumerate(TOKEN_KNOTS):
            total += c[2 + i] * (t if t < k else k)
        j = _J
        padded = num_seqs * max_q * max_kv
        total += (c[j] * num_seqs + c[j + 1] * kv_tokens + c[j + 2] * attn_pairs
                  + c[j + 3] * num_seqs * max_kv + c[j + 4] * padded)
        for i, k in enumerate(PAIR_KNOTS):
            if padded > k:
                total += c[j + 5 + i] * (padded - k)
        return total

    def decode_line(self, batch: int, context_tokens: float, max_context: int) -> tuple[float, float]:
        """``(a, s)``: decode step ``i`` of a run of ``batch`` sequences holding
        ``context_tokens`` tokens (the longest ``max_context``) takes ``a + s i`` seconds.
        Each step reads every sequence's tokens (its new one included) and adds one to each."""
        a = self.time_s(batch, batch, context_tokens, context_tokens, 1, max_context)
        c = self.coefficients
        j = _J
        s = (c[j + 1] + c[j + 2]) * batch + (c[j + 3] + c[j + 4]) * batch
        padded = batch * max_context
        for i, k in enumerate(PAIR_KNOTS):
            if padded > k:
                s += c[j + 5 + i] * batch
        return a, s

    def to_dict(self) -> dict[str, float]:
        return dict(zip(FEATURES, self.coefficients, strict=True))

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> StepModel:
        unknown = set(d) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown step model features: {', '.join(sorted(unknown))}")
        return cls(tuple(float(d.get(f, 0.0)) for f in FEATURES))

    @classmethod
    def fit(cls, shapes: Sequence[StepShape], times_s: Sequence[float]) -> tuple[StepModel, FitReport]:
        """Non-negative least squares on relative error: each sample weighs ``1 / time``, so
        a 5 ms decode step counts as much as a 5 s prefill."""
        import numpy as np

        if len(shapes) != len(times_s) or not shapes:
            raise ValueError("fit needs as many measured times as step shapes, at least one")
        y = np.asarray(times_s, dtype=float)
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("measured step times must be finite and > 0")
        x = np.asarray([s.features() for s in shapes], dtype=float)
        w = 1.0 / y
        coef = nnls(x * w[:, None], np.ones_like(y))
        model = cls(tuple(float(c) for c in coef))
        rel = (x @ coef - y) / y
        report = FitReport(len(y), float(np.sqrt(np.mean(rel**2))), float(np.max(np.abs(rel))),
                           float(np.mean(rel)))
        return model, report


def nnls(a, b, max_iter: int | None = None):  # type: ignore[no-untyped-def]
    """argmin ||a x - b|| subject to x >= 0 (Lawson and Hanson's active-set method), with the
    columns scaled to unit norm for conditioning. ``a``: [m, n], ``b``: [m] numpy arrays."""
    import numpy as np

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m, n = a.shape
    norms = np.linalg.norm(a, axis=0)
    usable = norms > 0
    scale = np.where(usable, norms, 1.0)
    a = a / scale
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 1e-10 * max(m, n) * max(1.0, float(np.abs(a).sum(axis=0).max()))
    max_iter = max_iter or 3 * n
    for _ in range(max_iter):
        grad = a.T @ (b - a @ x)
        candidates = ~passive & usable
        if not candidates.any() or grad[candidates].max() <= tol:
            break
        j = int(np.argmax(np.where(candidates, grad, -np.inf)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > tol):
                x = z
                break
            blocked = passive & (z <= tol)
            alpha = np.min(x[blocked] / np.maximum(x[blocked] - z[blocked], 1e-300))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x / scale
