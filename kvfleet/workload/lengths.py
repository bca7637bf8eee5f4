"""Token-length distributions for synthetic load: fixed, uniform, or an empirical PMF.

Written as text on the command line: ``128`` (fixed), ``64-256`` (uniform, inclusive), or
built in code from a probability mass function (ServeGen) or observed values (a trace).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A distribution over positive token counts, as values with probabilities."""

    values: tuple[int, ...]
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values or len(self.values) != len(self.probs):
            raise ValueError("a length distribution needs matching, non-empty values and probs")
        if min(self.values) < 1:
            raise ValueError("token lengths must be >= 1")
        if min(self.probs) < 0 or sum(self.probs) <= 0:
            raise ValueError("probabilities must be >= 0 and not all 0")

    @classmethod
    def fixed(cls, n: int) -> LengthDist:
        return cls((int(n),), (1.0,))

    @classmethod
    def uniform(cls, lo: int, hi: int) -> LengthDist:
        if not 1 <= lo <= hi:
            raise ValueError(f"uniform lengths need 1 <= lo <= hi, got {lo}-{hi}")
        values = tuple(range(lo, hi + 1))
        return cls(values, tuple(1.0 for _ in values))

    @classmethod
    def from_pmf(cls, pmf: dict[float, float]) -> LengthDist:
        """From ``{length: probability}``; lengths are rounded and clipped to >= 1."""
        merged: dict[int, float] = {}
        for value, p in pmf.items():
            key = max(1, int(round(float(value))))
            merged[key] = merged.get(key, 0.0) + float(p)
        items = sorted(merged.items())
        return cls(tuple(k for k, _ in items), tuple(p for _, p in items))

    @classmethod
    def from_samples(cls, samples: list[int]) -> LengthDist:
        values, counts = np.unique(np.asarray(samples, dtype=int), return_counts=True)
        return cls(tuple(int(v) for v in values), tuple(float(c) for c in counts))

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        """``128`` or ``64-256``."""
        s = text.strip()
        try:
            if "-" in s:
                lo, hi = s.split("-", 1)
                return cls.uniform(int(lo), int(hi))
            return cls.fixed(int(s))
        except ValueError as exc:
            raise ValueError(f"bad length {text!r}: expected N or LO-HI ({exc})") from None

    @property
    def mean(self) -> float:
        p = np.asarray(self.probs) / sum(self.probs)
        return float(np.dot(np.asarray(self.values, dtype=float), p))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if len(self.values) == 1:
            return np.full(n, self.values[0], dtype=int)
        p = np.asarray(self.probs, dtype=float)
        return rng.choice(np.asarray(self.values, dtype=int), size=n, p=p / p.sum())
