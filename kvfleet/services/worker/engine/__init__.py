"""The worker engine: real models, one unified paged KV pool, continuous batching."""

from kvfleet.services.worker.core.batch_policy import BatchPolicy, FcfsBatchPolicy
from kvfleet.services.worker.engine.config import EngineConfig
from kvfleet.services.worker.engine.engine import Engine
from kvfleet.services.worker.engine.types import (
    Accounting,
    EngineInputError,
    EngineRequest,
    ModelNotFoundError,
    Occupancy,
    OutOfMemoryBudgetError,
    PartialModelError,
    SamplingParams,
    SequenceExport,
    TokenEvent,
    WeightsEntry,
)

__all__ = [
    "Accounting",
    "BatchPolicy",
    "Engine",
    "EngineConfig",
    "EngineInputError",
    "EngineRequest",
    "FcfsBatchPolicy",
    "ModelNotFoundError",
    "Occupancy",
    "OutOfMemoryBudgetError",
    "PartialModelError",
    "SamplingParams",
    "SequenceExport",
    "TokenEvent",
    "WeightsEntry",
]
