"""Output-length prediction: a pure core the gateway and the simulator share.

``online`` (the default) learns each model's output lengths from completed requests, per
prompt-length bucket, as histograms over log-spaced length bins, and predicts a quantile
(the median by default). A bucket with too few samples falls back to the model's whole
histogram, then to a prior. Its state is plain counts, so the live gateways can share it
through Redis (see ``adapters/predictor_store.py``) and warm-start it from a trace.

``oracle`` and ``noisy-oracle`` know the true length (simulator and tests only): the noisy one
multiplies it by a seeded factor drawn uniformly from ``[1 - spread, 1 + spread]``, the same for
the same request id and seed.

A prediction never exceeds the request's ``max_tokens`` (no request can outgrow it) but is
never taken from it: ``max_tokens`` alone says nothing of when the model stops.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LengthQuery:
    """What a predictor may look at. ``actual_output_tokens`` is for the oracles only; the
    live gateway never knows it."""

    request_id: str
    model: str
    num_prompt_tokens: int
    max_tokens: int
    actual_output_tokens: int | None = None


class LengthPredictor(Protocol):
    name: str

    def predict(self, q: LengthQuery) -> int: ...

    def expect(self, q: LengthQuery) -> int:
        """The mean output length of requests like ``q``: what load estimates add up (a
        quantile, which ``predict`` gives, undercounts a heavy-tailed length's load)."""
        ...

    def observe(self, model: str, num_prompt_tokens: int, num_output_tokens: int) -> None: ...


def _clamp(n: float, max_tokens: int) -> int:
    return max(1, min(int(round(n)), max_tokens))


# ----------------------------------------------------------------------------- online

PROMPT_BUCKET_BASE = 16  # buckets [0, 16), [16, 32), [32, 64), ... doubling
NUM_PROMPT_BUCKETS = 14  # the last one is open-ended (>= 16 * 2^12 = 65536 tokens)
LENGTH_BIN_RATIO = 1.125  # output-length bins grow by 12.5%: a median within about 6%


def prompt_bucket(num_prompt_tokens: int) -> int:
    if num_prompt_tokens < PROMPT_BUCKET_BASE:
        return 0
    return min(NUM_PROMPT_BUCKETS - 1, int(math.log2(num_prompt_tokens / PROMPT_BUCKET_BASE)) + 1)


def length_bin(num_output_tokens: int) -> int:
    return int(math.log(max(1, num_output_tokens)) / math.log(LENGTH_BIN_RATIO))


def bin_value(b: int) -> float:
    """The representative length of bin ``b``: the geometric middle of its range."""
    return LENGTH_BIN_RATIO ** (b + 0.5)


@dataclass
class OnlineLengthPredictor:
    """Quantile of learned output lengths per (model, prompt bucket)."""

    quantile: float = 0.5
    min_samples: int = 16
    prior_tokens: int = 128
    name: str = "online"
    #: model -> prompt bucket -> length bin -> count (bucket -1 holds the model's totals)
    counts: dict[str, dict[int, dict[int, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if self.min_samples < 1 or self.prior_tokens < 1:
            raise ValueError("min_samples and prior_tokens must be >= 1")

    def observe(self, model: str, num_prompt_tokens: int, num_output_tokens: int) -> None:
        if num_output_tokens < 1:
            return
        self.add(model, prompt_bucket(num_prompt_tokens), length_bin(num_output_tokens), 1)

    def add(self, model: str, bucket: int, bin_: int, count: int) -> None:
        """Add ``count`` samples to one cell (and to the model's totals)."""
        per_model = self.counts.setdefault(model, {})
        for b in (bucket, -1):
            cell = per_model.setdefault(b, {})
            cell[bin_] = cell.get(bin_, 0) + count

    def replace(self, model: str, cells: Mapping[tuple[int, int], int]) -> None:
        """Set a model's state to ``{(bucket, bin): count}`` (what the shared store holds)."""
        self.counts.pop(model, None)
        for (bucket, bin_), count in cells.items():
            if count > 0:
                self.add(model, bucket, bin_, count)

    def cells(self, model: str) -> dict[tuple[int, int], int]:
        return {
            (bucket, b): c
            for bucket, hist in self.counts.get(model, {}).items()
            if bucket >= 0
            for b, c in hist.items()
        }

    def num_samples(self, model: str, num_prompt_tokens: int | None = None) -> int:
        bucket = -1 if num_prompt_tokens is None else prompt_bucket(num_prompt_tokens)
        return sum(self.counts.get(model, {}).get(bucket, {}).values())

    def predict(self, q: LengthQuery) -> int:
        hist = self._histogram(q)
        return _clamp(self.prior_tokens if hist is None else _quantile(hist, self.quantile),
                      q.max_tokens)

    def expect(self, q: LengthQuery) -> int:
        hist = self._histogram(q)
        return _clamp(self.prior_tokens if hist is None else _mean(hist), q.max_tokens)

    def _histogram(self, q: LengthQuery) -> Mapping[int, int] | None:
        """The lengths learned for ``q``'s prompt bucket, else for the whole model, once
        either has ``min_samples``; None before that (the prior applies)."""
        per_model = self.counts.get(q.model, {})
        for bucket in (prompt_bucket(q.num_prompt_tokens), -1):
            hist = per_model.get(bucket)
            if hist and sum(hist.values()) >= self.min_samples:
                return hist
        return None


def _mean(hist: Mapping[int, int]) -> float:
    total = sum(hist.values())
    return sum(bin_value(b) * c for b, c in hist.items()) / total


def _quantile(hist: Mapping[int, int], q: float) -> float:
    total = sum(hist.values())
    target = q * total
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= target:
            return bin_value(b)
    return bin_value(max(hist))


def warm_start(
    predictor: OnlineLengthPredictor, samples: Iterable[tuple[str, int, int]]
) -> int:
    """Observe ``(model, prompt tokens, output tokens)`` samples (e.g. a trace); returns how
    many were taken."""
    n = 0
    for model, prompt, output in samples:
        predictor.observe(model, prompt, output)
        n += 1
    return n


# ----------------------------------------------------------------------------- oracles


@dataclass
class OracleLengthPredictor:
    """The true length (simulator and tests)."""

    name: str = "oracle"

    def predict(self, q: LengthQuery) -> int:
        if q.actual_output_tokens is None:
            raise ValueError("the oracle predictor needs the actual output length")
        return _clamp(q.actual_output_tokens, q.max_tokens)

    def expect(self, q: LengthQuery) -> int:
        return self.predict(q)

    def observe(self, model: str, num_prompt_tokens: int, num_output_tokens: int) -> None:
        return None


def _unit(seed: int, key: str) -> float:
    """A deterministic uniform draw in [0, 1) from ``seed`` and ``key`` (FNV-1a, then
    splitmix64), so that the same request gets the same error in every run."""
    h = 0xCBF29CE484222325 ^ (seed & 0xFFFFFFFFFFFFFFFF)
    for byte in key.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    h = (h + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 31
    return (h >> 11) / float(1 << 53)


@dataclass
class NoisyOracleLengthPredictor:
    """The true length times a seeded factor in ``[1 - spread, 1 + spread]``."""

    spread: float = 0.25
    seed: int = 0
    name: str = "noisy-oracle"

    def __post_init__(self) -> None:
        if not 0.0 <= self.spread < 1.0:
            raise ValueError(f"spread must be in [0, 1), got {self.spread}")

    def predict(self, q: LengthQuery) -> int:
        if q.actual_output_tokens is None:
            raise ValueError("the noisy-oracle predictor needs the actual output length")
        factor = 1.0 + self.spread * (2.0 * _unit(self.seed, q.request_id) - 1.0)
        return _clamp(q.actual_output_tokens * factor, q.max_tokens)

    def expect(self, q: LengthQuery) -> int:
        return self.predict(q)

    def observe(self, model: str, num_prompt_tokens: int, num_output_tokens: int) -> None:
        return None


PREDICTORS = ("online", "oracle", "noisy-oracle")


def make_predictor(name: str, **options: float) -> LengthPredictor:
    """``online`` (options: quantile, min_samples, prior_tokens), ``oracle`` or
    ``noisy-oracle`` (options: spread, seed)."""
    if name == "online":
        return OnlineLengthPredictor(
            quantile=float(options.get("quantile", 0.5)),
            min_samples=int(options.get("min_samples", 16)),
            prior_tokens=int(options.get("prior_tokens", 128)),
        )
    if name == "oracle":
        return OracleLengthPredictor()
    if name == "noisy-oracle":
        return NoisyOracleLengthPredictor(
            spread=float(options.get("spread", 0.25)), seed=int(options.get("seed", 0))
        )
    raise ValueError(f"unknown length predictor {name!r}; known: {', '.join(PREDICTORS)}")
