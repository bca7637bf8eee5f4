"""Data the engine takes and gives: requests, sampling parameters, token events, snapshots."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from kvfleet.common.models.errors import UnknownModelError


class EngineInputError(ValueError):
    """Bad input: the request or call is refused; the engine keeps serving everything else."""


class ModelNotFoundError(EngineInputError, UnknownModelError):
    """The model is unknown, or not loaded on this engine."""


class OutOfMemoryBudgetError(EngineInputError):
    """The model (or layer range) does not fit the engine's memory budget."""


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
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise EngineInputError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not math.isfinite(self.temperature) or not 0.0 <= self.temperature <= 100.0:
            raise EngineInputError(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise EngineInputError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not math.isfinite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise EngineInputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise EngineInputError(f"seed must be a non-negative integer, got {self.seed!r}")
        if any((not isinstance(t, int)) or t < 0 for t in self.stop_token_ids):
            raise EngineInputError("stop_token_ids must be non-negative integers")
        if any((not isinstance(s, str)) or not s for s in self.stop):
            raise EngineInputError("stop strings must be non-empty strings")


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One generation request. ``output_token_ids`` resumes a request generated elsewhere."""

    request_id: str
    model: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    output_token_ids: tuple[int, ...] = ()
    arrival_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """A new token of a request (or a finish without one: ``token_id`` None on abort)."""

    request_id: str
    token_id: int | None
    text: str
    index: int
    finish_reason: str | None


@dataclass(frozen=True, slots=True)
class Occupancy:
    num_total_pages: int
    num_free_pages: int
    num_reserved_pages: int
    tokens_per_page: dict[str, int]
    num_running: int
    num_waiting: int
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WeightsEntry:
    model: str
    first_layer: int
    last_layer: int
    num_bytes: int


@dataclass(frozen=True, slots=True)
class Accounting:
    """Where the memory budget goes."""

    memory_bytes: int
    workspace_bytes: int
    page_size_bytes: int
    weights: tuple[WeightsEntry, ...]
    num_total_pages: int
    num_used_pages: int
    num_reserved_pages: int
    tokens_per_page: dict[str, int]

    @property
    def weights_bytes(self) -> int:
        return sum(w.num_bytes for w in self.weights)

    @property
    def pool_bytes(self) -> int:
        return self.num_total_pages * self.page_size_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights_bytes"] = self.weights_bytes
        d["pool_bytes"] = self.pool_bytes
        return d


@dataclass
class SequenceExport:
    """A sequence's KV for a token range and layer range, with everything needed to resume.

    ``tensors[0]`` has shape [num_layers, 2, num_tokens, num_kv_heads, head_dim].
    """

    meta: dict[str, Any]
    tensors: list[torch.Tensor] = field(default_factory=list)
