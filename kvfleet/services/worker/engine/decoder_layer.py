"""One decoder layer of the Llama family over paged KV, as a function of tensors only.

Everything that varies between layers or steps is a tensor argument (the layer index too, as
a 0-d tensor), and everything fixed for a model is in ``LayerConsts``; so one compiled
version of ``layer_forward`` serves every layer of a model and every batch shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvfleet.services.worker.engine.attention import (
    KvGeometry,
    StepAttention,
    decode_attention,
    padded_attention,
    store_kv,
)
from kvfleet.services.worker.engine.cpu_attention import paged_decode
from kvfleet.services.worker.engine.cuda_attention import PagedDecodeKernel
from kvfleet.services.worker.engine.linear import LinearFn


@dataclass(frozen=True, slots=True)
class LayerConsts:
    geo: KvGeometry
    eps: float
    linear: LinearFn
    decode_kernel: PagedDecodeKernel | None = None  # CUDA paged kernel, planned for the step
    cpu_decode_kernel: bool = False  # the C paged decode kernel (cpu_attention.py)


@dataclass(slots=True)
class LayerWeights:
    qkv: torch.Tensor  # [q | k | v rows, hidden]: one product for the three projections
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    gate_up: torch.Tensor  # [gate | up rows, hidden]
    down: torch.Tensor
    ln1: torch.Tensor
    ln2: torch.Tensor

    def num_bytes(self) -> int:
        ts = [self.qkv, self.o, self.gate_up, self.down, self.ln1, self.ln2]
        if self.qkv_bias is not None:
            ts.append(self.qkv_bias)
        return sum(t.numel() * t.element_size() for t in ts)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def layer_forward(
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    flat: torch.Tensor,
    attn: StepAttention,
    layer: int,
    w: LayerWeights,
    c: LayerConsts,
) -> torch.Tensor:
    """h [T, hidden] -> h [T, hidden]; writes the layer's K and V of the new tokens."""
    geo = c.geo
    nq, nkv, d = geo.num_heads, geo.num_kv_heads, geo.head_dim
    t = h.shape[0]
    x = rms_norm(h, w.ln1, c.eps)
    qkv = c.linear(x, w.qkv, w.qkv_bias)
    # rotary embedding of q and k in one pass: [T, nq + nkv, d]
    qk = qkv[:, : (nq + nkv) * d].view(t, nq + nkv, d)
    qk = qk * cos + _rotate_half(qk) * sin
    q = qk[:, :nq].reshape(t, nq * d)
    k = qk[:, nq:]
    v = qkv[:, (nq + nkv) * d :]
    store_kv(flat, geo, attn.slot_pages, attn.slot_rows, layer, k, v)
    layer_off = geo.layer_offset(layer)
    if attn.key_len is not None and c.decode_kernel is not None:
        pages = flat.numel() // geo.page_stride
        shape = (pages, geo.tokens_per_page, nkv, d)
        stride = (geo.page_stride, geo.row, d, 1)
        k_cache = flat.as_strided(shape, stride, layer_off)
        v_cache = flat.as_strided(shape, stride, layer_off + geo.v_offset)
        out = c.decode_kernel.run(q.view(t, nq, d).to(flat.dtype), k_cache, v_cache)
        out = out.reshape(t, nq * d).to(h.dtype)
    elif attn.key_len is not None and c.cpu_decode_kernel:
        out = paged_decode(
            q,
            flat,
            attn.page_table,
            attn.key_len,
            nkv,
            d,
            geo.tokens_per_page,
            geo.page_stride,
            layer_off,
            layer_off + geo.v_offset,
        )
    elif attn.key_len is not None:
        out = decode_attention(q, flat, geo, attn.key_base, attn.key_len, layer_off)
    else:
        assert attn.mask is not None
        out = padded_attention(q, flat, geo, attn.key_base, attn.mask, attn.pad_index, layer_off)
    h = h + c.linear(out, w.o, None)
    x = rms_norm(h, w.ln2, c.eps)
    gate, up = c.linear(x, w.gate_up, None).chunk(2, dim=-1)
    return h + c.linear(F.silu(gate) * up, w.down, None)
