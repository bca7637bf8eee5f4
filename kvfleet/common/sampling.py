"""How a request's output is sampled: the one definition every service and the engine use.

The gateway validates it against the API's limits, Redis stores it as JSON in the request
record, the scheduler passes it to a worker in ``Assign``, and the engine samples with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

MAX_STOP_STRINGS = 16
"""Stop strings one request may give."""
MAX_STOP_STRING_CHARS = 256
"""Characters in one stop string at most (the engine holds back up to this much output)."""
MAX_U32 = (1 << 32) - 1
"""Largest value of a uint32 wire field (max_tokens, top_k, token ids)."""
MAX_SEED = (1 << 63) - 1


class SamplingError(ValueError):
    """A sampling parameter is out of range."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling. ``temperature == 0`` is greedy."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def validate(self) -> None:
        """The engine's hard limits (the gateway applies the API's tighter ones)."""
        if not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= MAX_U32:
            raise SamplingError(f"max_tokens must be an integer in [1, {MAX_U32}], "
                                f"got {self.max_tokens!r}")
        if not math.isfinite(self.temperature) or not 0.0 <= self.temperature <= 100.0:
            raise SamplingError(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not isinstance(self.top_k, int) or not 0 <= self.top_k <= MAX_U32:
            raise SamplingError(f"top_k must be an integer in [0, {MAX_U32}], got {self.top_k!r}")
        if not math.isfinite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (
            not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED
        ):
            raise SamplingError(f"seed must be an integer in [0, 2^63), got {self.seed!r}")
        if any((not isinstance(t, int)) or not 0 <= t <= MAX_U32 for t in self.stop_token_ids):
            raise SamplingError(f"stop_token_ids must be integers in [0, {MAX_U32}]")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise SamplingError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if any((not isinstance(s, str)) or not s for s in self.stop):
            raise SamplingError("stop strings must be non-empty strings")
        if any(len(s) > MAX_STOP_STRING_CHARS for s in self.stop):
            raise SamplingError(f"a stop string has at most {MAX_STOP_STRING_CHARS} characters")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop_token_ids"] = list(self.stop_token_ids)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingParams:
        d = dict(d)
        d["stop_token_ids"] = tuple(d.get("stop_token_ids", ()))
        d["stop"] = tuple(d.get("stop", ()))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: str) -> SamplingParams:
        return cls.from_dict(json.loads(raw))
