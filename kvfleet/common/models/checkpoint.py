"""Read a checkpoint's spec and weights (Hugging Face names, float tensors).

Safetensors checkpoints are read tensor by tensor, only for the layers asked for. GGUF files
are dequantized once here; llama.cpp's rotary permutation of q/k rows is undone so the
weights match the Hugging Face layout.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from kvfleet.common.models.errors import UnsupportedModelError
from kvfleet.common.models.sources import ModelSource
from kvfleet.common.models.spec import ModelSpec, spec_from_gguf_fields, spec_from_hf_dir

_GGUF_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GGUF_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.")


def _wanted(name: str, spec: ModelSpec, first: int, last: int) -> bool:
    m = _LAYER_RE.match(name)
    if m:
        return first <= int(m.group(1)) < last
    if name == "model.embed_tokens.weight":
        return first == 0 or (last == spec.num_layers and spec.tie_word_embeddings)
    if name in ("model.norm.weight", "lm_head.weight"):
        return last == spec.num_layers
    return False


def read_spec(source: ModelSource) -> ModelSpec:
    if source.kind == "hf":
        return spec_from_hf_dir(source.path)
    return _gguf_spec(_gguf_reader(source.path))


def read_weights(source: ModelSource, first: int, last: int) -> dict[str, torch.Tensor]:
    """Weights of layers [first, last) plus embedding / final norm / head as the range needs."""
    spec = read_spec(source)
    it = _hf_tensors(source.path) if source.kind == "hf" else _gguf_tensors(source.path, spec)
    return {
        name: t
        for name, t in it(lambda n: _wanted(n, spec, first, last))  # type: ignore[operator]
    }


def _hf_tensors(path: Path):  # type: ignore[no-untyped-def]
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(f"{path}: no safetensors weights found")

    def gen(want) -> Iterator[tuple[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
        for fname in files:
            with safe_open(str(path / fname), framework="pt") as f:
                for key in f.keys():
                    if want(key):
                        yield key, f.get_tensor(key).float()

    return gen


@functools.lru_cache(maxsize=4)
def _gguf_reader(path: Path):  # type: ignore[no-untyped-def]
    import gguf

    return gguf.GGUFReader(str(path))


def _gguf_fields(reader) -> dict:  # type: ignore[no-untyped-def]
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key not in ("tokenizer.ggml.eos_token_id",):
            if key == "tokenizer.ggml.tokens":
                out["_vocab_len"] = len(field.data)
            continue
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - unreadable metadata is skipped
            continue
    return out


def _gguf_spec(reader) -> ModelSpec:  # type: ignore[no-untyped-def]
    names = {t.name for t in reader.tensors}
    return spec_from_gguf_fields(
        _gguf_fields(reader),
        has_output_weight="output.weight" in names,
        has_qkv_bias="blk.0.attn_q.bias" in names,
    )


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _gguf_tensors(path: Path, spec: ModelSpec):  # type: ignore[no-untyped-def]
    import gguf
    import numpy as np

    reader = _gguf_reader(path)

    def hf_name(name: str) -> str | None:
        if name in _GGUF_TOP:
            return _GGUF_TOP[name]
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in _GGUF_NAMES:
            return f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.{parts[3]}"
        return None

    def gen(want) -> Iterator[tuple[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
        for ti in reader.tensors:
            name = hf_name(ti.name)
            if name is None or not want(name):
                continue
            arr = gguf.quants.dequantize(ti.data, ti.tensor_type)
            shape = tuple(int(x) for x in reversed(ti.shape))
            t = torch.from_numpy(np.array(arr.reshape(shape), dtype=np.float32))
            if spec.architecture in ("llama", "mistral"):
                if ".q_proj." in name:
                    t = _unpermute(t, spec.num_heads)
                elif ".k_proj." in name:
                    t = _unpermute(t, spec.num_kv_heads)
            yield name, t

    return gen
