"""A GGUF model's tokenizer, converted once into the model cache as a Hugging Face tokenizer
directory (transformers reads it far faster than the GGUF file)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from kvfleet.common.models.cache_files import cache_dir, publish_dir, staging_dir
from kvfleet.common.models.sources import ModelSource

log = logging.getLogger(__name__)


def gguf_tokenizer_dir(source: ModelSource) -> Path:
    stat = source.path.stat()
    key = hashlib.sha1(f"{source.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    out = cache_dir() / "tokenizers" / f"{source.path.stem}-{key.hexdigest()[:10]}"
    if not (out / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        log.info("converting the tokenizer of %s into %s", source.path, out)
        hf = AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name)
        tmp = staging_dir(out)
        hf.save_pretrained(str(tmp))
        publish_dir(tmp, out)
    return out
