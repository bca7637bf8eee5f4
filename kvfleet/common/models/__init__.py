"""Model checkpoints shared by the gateway and the workers: registry, specs, weights,
tokenizers."""

from kvfleet.common.models.cache_files import cache_dir
from kvfleet.common.models.checkpoint import read_spec, read_weights
from kvfleet.common.models.errors import UnknownModelError, UnsupportedModelError
from kvfleet.common.models.registry import REGISTERED, resolve_model
from kvfleet.common.models.sources import ModelSource
from kvfleet.common.models.spec import ModelSpec
from kvfleet.common.models.tokenizer import IncrementalDetokenizer, Tokenizer, load_tokenizer

__all__ = [
    "REGISTERED",
    "IncrementalDetokenizer",
    "ModelSource",
    "ModelSpec",
    "Tokenizer",
    "UnknownModelError",
    "UnsupportedModelError",
    "cache_dir",
    "load_tokenizer",
    "read_spec",
    "read_weights",
    "resolve_model",
]
