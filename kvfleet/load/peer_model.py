"""A plain Hugging Face checkpoint directory of the bundled SmolLM2 model, for peers (such
as ``transformers serve``) that need one. Made once from the GGUF file, dequantized, and kept
under the cache folder."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from kvfleet.common.models.sources import smollm2_gguf_path
from kvfleet.workload.paths import cache_dir

log = logging.getLogger(__name__)


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
