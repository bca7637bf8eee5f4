"""Data the engine takes and gives: requests, sampling parameters, token events, snapshots."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from kvfleet.common.models.errors import UnknownModelError
from kvfleet.common.sampling import SamplingParams
from kvfleet.common.slo import ServiceLevel
from kvfleet.services.scheduler.core.occupancy import SeqReport
from kvfleet.services.scheduler.core.stages import ModelShapeView, StageView


class EngineInputError(ValueError):
    """Bad input: the request or call is refused; the engine keeps serving everything else."""


class ModelNotFoundError(EngineInputError, UnknownModelError):
    """The model is unknown, or not loaded on this engine."""


class OutOfMemoryBudgetError(EngineInputError):
    """The model (or layer range) does not fit the engine's memory budget."""


class PartialModelError(EngineInputError):
    """The engine holds only part of the model (a pipeline stage): the request belongs to
    the group's first stage. Not the request's fault: it can be sent elsewhere."""


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One generation request. ``output_token_ids`` resumes a request generated elsewhere."""

    request_id: str
    model: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    output_token_ids: tuple[int, ...] = ()
    arrival_s: float = 0.0  # wall clock, as the engine's clock
    slo: ServiceLevel = ServiceLevel()
    predicted_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """A new token of a request (or a finish without one: ``token_id`` None on abort)."""

    request_id: str
    token_id: int | None
    text: str
    index: int
    finish_reason: str | None
    ts: float = 0.0  # the engine clock when the step that made it ended


@dataclass(frozen=True, slots=True)
class Occupancy:
    """The engine's KV memory and queues at one moment (what a heartbeat reports)."""

    num_total_pages: int
    num_free_pages: int
    num_reserved_pages: int
    tokens_per_page: dict[str, int]
    num_running: int
    num_waiting: int
    models: tuple[str, ...]
    num_queued_pages: int = 0  # pages the waiting requests need to start
    intake_seq: int = 0  # requests accepted so far (add_request calls that succeeded)
    seqs: tuple[SeqReport, ...] = ()
    page_size_bytes: int = 0
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # range held per model
    shapes: dict[str, ModelShapeView] = field(default_factory=dict)
    groups: dict[str, StageView] = field(default_factory=dict)  # pipeline groups it is in


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
