"""A model (or layer range of one) loaded in an engine, and the memory arithmetic around it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfleet.common.models.sources import ModelSource
from kvfleet.common.models.spec import ModelSpec
from kvfleet.common.models.tokenizer import Tokenizer
from kvfleet.services.scheduler.core.stages import ModelShapeView
from kvfleet.services.worker.engine.kv_pool import KvLayout
from kvfleet.services.worker.engine.model import ModelStage


@dataclass
class LoadedModel:
    name: str
    source: ModelSource
    spec: ModelSpec
    stage: ModelStage
    layout: KvLayout
    tokenizer: Tokenizer | None

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self.tokenizer.eos_token_ids if self.tokenizer else self.spec.eos_token_ids


def weights_bytes(spec: ModelSpec, first: int, last: int, dtype: torch.dtype) -> int:
    return spec.param_count(first, last) * torch.empty((), dtype=dtype).element_size()


def workspace_bytes(spec: ModelSpec, max_tokens: int, max_seqs: int, dtype: torch.dtype) -> int:
    """Activation workspace estimate for a step of ``max_tokens`` tokens over ``max_seqs``
    sequences: hidden streams, qkv, MLP intermediates, the rope tables and the logits."""
    elt = torch.empty((), dtype=dtype).element_size()
    qkv = (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim
    per_token = 4 * spec.hidden_size + 2 * qkv + 3 * spec.intermediate_size
    rope = 2 * spec.max_context_tokens * spec.head_dim
    return (max_tokens * per_token + rope) * elt + max_seqs * spec.vocab_size * 4


def model_shape(spec: ModelSpec, dtype: torch.dtype) -> ModelShapeView:
    """What the planner needs to know of a model's memory: bytes per layer and per end, and
    KV bytes per token and layer."""
    elt = torch.empty((), dtype=dtype).element_size()
    n = spec.num_layers
    layer = spec.layer_param_count()
    if n >= 2:
        first = spec.param_count(0, 1) - layer
        last = spec.param_count(n - 1, n) - layer
    else:
        first = spec.vocab_size * spec.hidden_size
        last = spec.param_count(0, 1) - layer - first
    shared = first + last + n * layer - spec.param_count(0, n)
    return ModelShapeView(n, layer * elt, first * elt, last * elt,
                          spec.kv_bytes_per_token(1, elt), shared * elt)
