"""The architecture numbers of a Llama-family model, read from config.json or GGUF metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvfleet.common.models.errors import UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shapes and constants a forward pass needs; no weights."""

    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_context_tokens: int
    tie_word_embeddings: bool
    qkv_bias: bool
    eos_token_ids: tuple[int, ...] = ()

    def kv_bytes_per_token(self, num_layers: int, element_bytes: int) -> int:
        """Bytes of K and V for one token over ``num_layers`` layers."""
        return num_layers * 2 * self.num_kv_heads * self.head_dim * element_bytes

    def layer_param_count(self) -> int:
        h, d = self.hidden_size, self.head_dim
        qkv = h * (self.num_heads + 2 * self.num_kv_heads) * d
        if self.qkv_bias:
            qkv += (self.num_heads + 2 * self.num_kv_heads) * d
        return qkv + self.num_heads * d * h + 3 * h * self.intermediate_size + 2 * h

    def param_count(self, first: int, last: int) -> int:
        """Parameters of a stage holding layers [first, last)."""
        n = (last - first) * self.layer_param_count()
        if first == 0:
            n += self.vocab_size * self.hidden_size
        if last == self.num_layers:
            n += self.hidden_size
            if not self.tie_word_embeddings or first != 0:
                n += self.vocab_size * self.hidden_size
        return n


def _rope_theta(cfg: dict[str, Any]) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise UnsupportedModelError(f"rope type {rope_type!r} is not supported (only default)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def spec_from_hf_config(cfg: dict[str, Any]) -> ModelSpec:
    arch = cfg.get("model_type", "")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    return ModelSpec(
        architecture=arch,
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=int(cfg["intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(cfg),
        max_context_tokens=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
        eos_token_ids=eos_ids,
    )


def spec_from_hf_dir(path: Path) -> ModelSpec:
    return spec_from_hf_config(json.loads((path / "config.json").read_text()))


def spec_from_gguf_fields(
    fields: dict[str, Any], has_output_weight: bool, has_qkv_bias: bool
) -> ModelSpec:
    arch = str(fields["general.architecture"])
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported")
    heads = int(fields[f"{arch}.attention.head_count"])
    hidden = int(fields[f"{arch}.embedding_length"])
    eos = fields.get("tokenizer.ggml.eos_token_id")
    return ModelSpec(
        architecture=arch,
        num_layers=int(fields[f"{arch}.block_count"]),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(fields.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(fields.get(f"{arch}.rope.dimension_count", hidden // heads)),
        intermediate_size=int(fields[f"{arch}.feed_forward_length"]),
        vocab_size=int(fields.get(f"{arch}.vocab_size", 0)) or int(fields["_vocab_len"]),
        rms_norm_eps=float(fields[f"{arch}.attention.layer_norm_rms_epsilon"]),
        rope_theta=float(fields.get(f"{arch}.rope.freq_base", 10000.0)),
        max_context_tokens=int(fields.get(f"{arch}.context_length", 2048)),
        tie_word_embeddings=not has_output_weight,
        qkv_bias=has_qkv_bias,
        eos_token_ids=() if eos is None else (int(eos),),
    )
