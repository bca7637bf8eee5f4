"""kvfleet's own forward pass for the Llama family (Llama, Mistral, Qwen2), over paged KV.

A ``ModelStage`` holds layers [first, last) of a model (the embedding with the first range,
the final norm and LM head with the last). One call runs every token of a step: the linear
layers see all tokens flattened, attention gathers each sequence's pages and runs one
batched masked SDPA per layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvfleet.common.models.spec import ModelSpec


@dataclass(slots=True)
class StepBatch:
    """Tensors describing one step's tokens for one model (built by ``batch_builder``)."""

    input_ids: torch.Tensor  # [T] token ids of the new tokens
    positions: torch.Tensor  # [T]
    slot_pages: torch.Tensor  # [T] page id receiving each new token's KV
    slot_offsets: torch.Tensor  # [T] offset within that page
    page_table: torch.Tensor  # [B, max_pages]
    max_q: int
    pad_index: torch.Tensor | None  # [T] position of each token in the [B * max_q] padding
    key_limit: torch.Tensor  # [B, max_q] last key position each query may see
    sample_index: torch.Tensor  # [n] rows of T whose logits are wanted


@dataclass(slots=True)
class LayerWeights:
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    ln1: torch.Tensor
    ln2: torch.Tensor

    def num_bytes(self) -> int:
        ts = [self.qkv, self.o, self.gate_up, self.down, self.ln1, self.ln2]
        if self.qkv_bias is not None:
            ts.append(self.qkv_bias)
        return sum(t.numel() * t.element_size() for t in ts)


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class ModelStage:
    """Weights of layers [first, last) and the forward pass over them."""

    def __init__(
        self,
        spec: ModelSpec,
        weights: dict[str, torch.Tensor],
        first: int,
        last: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.spec = spec
        self.first = first
        self.last = last
        self.dtype = dtype
        self.device = device

        def take(name: str) -> torch.Tensor:
            return weights.pop(name).to(device=device, dtype=dtype).contiguous()

        self.embed = take("model.embed_tokens.weight") if first == 0 else None
        self.layers: list[LayerWeights] = []
        for i in range(first, last):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            bias = None
            if spec.qkv_bias:
                bias = torch.cat(
                    [take(a + "q_proj.bias"), take(a + "k_proj.bias"), take(a + "v_proj.bias")]
                )
            self.layers.append(
                LayerWeights(
                    qkv=torch.cat(
                        [
                            take(a + "q_proj.weight"),
                            take(a + "k_proj.weight"),
                            take(a + "v_proj.weight"),
                        ]
                    ),
                    qkv_bias=bias,
                    o=take(a + "o_proj.weight"),
                    gate_up=torch.cat(
                        [take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]
                    ),
                    down=take(p + "mlp.down_proj.weight"),
                    ln1=take(p + "input_layernorm.weight"),
                    ln2=take(p + "post_attention_layernorm.weight"),
                )
            )
        self.norm = self.lm_head = None
        if last == spec.num_layers:
            self.norm = take("model.norm.weight")
            if "lm_head.weight" in weights:
                self.lm_head = take("lm_head.weight")
            elif self.embed is not None:
                self.lm_head = self.embed
            else:
                self.lm_head = take("model.embed_tokens.weight")
        d = spec.head_dim
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        pos = torch.arange(spec.max_context_tokens, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos().to(device=device, dtype=dtype)
        self.sin = emb.sin().to(device=device, dtype=dtype)

    def narrow(self, first: int, last: int) -> ModelStage:
        """A stage over layers [first, last) of this one, sharing its tensors."""
        if not self.first <= first < last <= self.last:
            raise ValueError(f"[{first}, {last}) is not inside [{self.first}, {self.last})")
        new = copy.copy(self)
        new.first, new.last = first, last
        new.layers = self.layers[first - self.first : last - self.first]
        if first != 0:
            new.embed = None
        if last != self.spec.num_layers:
            new.norm = new.lm_head = None
        return new

    @property
    def num_layers(self) -> int:
        return self.last - self.first

    @property
    def is_first(self) -> bool:
        return self.first == 0

    @property
    def is_last(self) -> bool:
        return self.last == self.spec.num_layers

    def num_bytes(self) -> int:
        n = sum(layer.num_bytes() for layer in self.layers)
        for t in (self.embed, self.norm):
            if t is not None:
                n += t.numel() * t.element_size()
        if self.lm_head is not None and self.lm_head is not self.embed:
            n += self.lm_head.numel() * self.lm_head.element_size()
        return n

    @torch.inference_mode()
    def forward(
        self, kv: torch.Tensor, batch: StepBatch, hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the held layers. ``kv`` is this model's pool view
        [pages, layers, 2, tokens_per_page, kv_heads, head_dim].

        Input: token ids (first stage) or ``hidden`` [T, hidden]. Output: logits [n, vocab]
        for ``batch.sample_index`` (last stage) or hidden states [T, hidden].
        """
        spec = self.spec
        if hidden is None:
            assert self.embed is not None, "a stage without the embedding needs hidden states"
            h = F.embedding(batch.input_ids, self.embed)
        else:
            h = hidden.to(self.dtype)
        cos = self.cos[batch.positions].unsqueeze(1)
        sin = self.sin[batch.positions].unsqueeze(1)
        nq, nkv, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
        b, max_q = batch.page_table.shape[0], batch.max_q
        g = nq // nkv
        tpp = kv.shape[3]
        # Rows of kv_heads * head_dim elements: a page holds rows (layer, k|v, offset).
        rows = kv.as_strided(
            (kv.shape[0], kv.shape[1] * 2 * tpp, nkv * d), (kv.stride(0), nkv * d, 1)
        )
        row = nkv * d
        # Every row start as one element offset: index_select on an overlapping window view
        # copies whole rows, the fastest gather on CPU.
        numel = kv.untyped_storage().nbytes() // kv.element_size()
        window = kv.as_strided((numel - row + 1, row), (1, 1))
        s = batch.page_table.shape[1] * tpp
        key_pos = torch.arange(s, device=h.device)
        gather_base = (
            batch.page_table.repeat_interleave(tpp, dim=1) * kv.stride(0) + (key_pos % tpp) * row
        ).view(-1)  # [B * S] element offsets
        mask = (key_pos.view(1, 1, s) <= batch.key_limit.repeat(1, g).unsqueeze(-1)).unsqueeze(1)
        t_tokens = h.shape[0]
        for li, layer in enumerate(self.layers):
            x = _rms_norm(h, layer.ln1, spec.rms_norm_eps)
            qkv = F.linear(x, layer.qkv, layer.qkv_bias)
            q, k, v = qkv.split([nq * d, nkv * d, nkv * d], dim=-1)
            q = q.view(t_tokens, nq, d)
            k = k.view(t_tokens, nkv, d)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k_row = li * 2 * tpp
            v_row = k_row + tpp
            rows[batch.slot_pages, batch.slot_offsets + k_row] = k.reshape(t_tokens, nkv * d)
            rows[batch.slot_pages, batch.slot_offsets + v_row] = v
            keys = window.index_select(0, gather_base + k_row * row)
            values = window.index_select(0, gather_base + v_row * row)
            keys = keys.view(b, s, nkv, d).transpose(1, 2)
            values = values.view(b, s, nkv, d).transpose(1, 2)
            if batch.pad_index is not None:
                qp = q.new_zeros(b * max_q, nq, d)
                qp[batch.pad_index] = q
            else:
                qp = q
            # [B, max_q, nkv, g, d] -> [B, nkv, g * max_q, d]: each KV head serves its group
            qg = qp.view(b, max_q, nkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, nkv, g * max_q, d)
            out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask)
            out = out.view(b, nkv, g, max_q, d).permute(0, 3, 1, 2, 4).reshape(b * max_q, nq * d)
            if batch.pad_index is not None:
                out = out[batch.pad_index]
            h = h + F.linear(out, layer.o)
            x = _rms_norm(h, layer.ln2, spec.rms_norm_eps)
            gate, up = F.linear(x, layer.gate_up).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, layer.down)
        if not self.is_last:
            return h
        assert self.norm is not None and self.lm_head is not None
        h = _rms_norm(h[batch.sample_index], self.norm, spec.rms_norm_eps)
        return F.linear(h, self.lm_head).float()
