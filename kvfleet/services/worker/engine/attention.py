"""Attention over the paged KV pool.

A model views each page as [layers, k|v, tokens_per_page, kv_heads, head_dim]; one "row" is
the ``kv_heads * head_dim`` elements of one (layer, k|v, token). ``StepAttention`` turns a
step's page table into element offsets once; every layer then adds its own row offset.

Two CPU paths, both reading the keys straight out of the pages (the pool is never copied into
per-sequence tensors that outlive a layer):

- decode (one new token per sequence): scores and the weighted sum of values as two small
  batched products over the key rows read through the page table; under ``torch.compile`` the
  page-table read is fused into one kernel;
- prefill and mixed steps: queries padded to [batch, max_q], one masked SDPA per layer.

On CUDA, ``cuda_attention.py`` replaces the decode path with paged kernels where installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class KvGeometry:
    """Static numbers of a model's pool view (ints, so that compiled code may specialize)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    tokens_per_page: int
    page_stride: int  # elements from one page to the next

    @property
    def row(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def layer_offset(self, layer: int) -> int:
        """Element offset of ``layer``'s K rows inside a page (its V rows follow)."""
        return layer * 2 * self.tokens_per_page * self.row

    @property
    def v_offset(self) -> int:
        return self.tokens_per_page * self.row


def flat_storage(kv: torch.Tensor) -> torch.Tensor:
    """The whole pool storage as one 1-D tensor in ``kv``'s dtype."""
    numel = kv.untyped_storage().nbytes() // kv.element_size()
    return kv.as_strided((numel,), (1,), 0)


@dataclass(slots=True)
class StepAttention:
    """Offsets of one step, shared by every layer (layer 0's K rows; add a layer offset)."""

    slot_pages: torch.Tensor  # [T] page of each new token
    slot_rows: torch.Tensor  # [T] its row (token offset) within the page, layer 0's K
    key_base: torch.Tensor  # [B, S] element offset of every key row of every sequence
    page_table: torch.Tensor  # [B, P] the step's page table
    key_len: torch.Tensor | None  # [B] keys each sequence sees (decode steps)
    mask: torch.Tensor | None  # [B, 1, group * max_q, S] bool (prefill and mixed steps)
    pad_index: torch.Tensor | None  # [T] row of each token in [B * max_q] (prefill, mixed)


def plan_step(
    geo: KvGeometry,
    page_table: torch.Tensor,
    slot_pages: torch.Tensor,
    slot_offsets: torch.Tensor,
    key_limit: torch.Tensor,
    pad_index: torch.Tensor | None,
) -> StepAttention:
    tpp, row = geo.tokens_per_page, geo.row
    b, max_q = key_limit.shape
    s = page_table.shape[1] * tpp
    key_pos = torch.arange(s, device=page_table.device)
    key_base = page_table.repeat_interleave(tpp, dim=1) * geo.page_stride + (key_pos % tpp) * row
    if max_q == 1:
        return StepAttention(
            slot_pages, slot_offsets, key_base, page_table, key_limit[:, 0] + 1, None, None
        )
    limit = key_limit.repeat(1, geo.group).unsqueeze(-1)  # [B, group * max_q, 1]
    mask = (key_pos.view(1, 1, s) <= limit).unsqueeze(1)
    return StepAttention(slot_pages, slot_offsets, key_base, page_table, None, mask, pad_index)


def store_kv(
    flat: torch.Tensor,
    geo: KvGeometry,
    slot_pages: torch.Tensor,
    slot_rows: torch.Tensor,
    layer: int,
    k: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """Write the new tokens' K and V rows ([T, row] each) of ``layer`` into their pages."""
    row = geo.row
    num_pages = flat.numel() // geo.page_stride
    rows = flat.as_strided((num_pages, geo.page_stride // row, row), (geo.page_stride, row, 1))
    k_row = layer * 2 * geo.tokens_per_page
    rows[slot_pages, slot_rows + k_row] = k.reshape(-1, row).to(flat.dtype)
    rows[slot_pages, slot_rows + (k_row + geo.tokens_per_page)] = v.reshape(-1, row).to(flat.dtype)


def gather_rows(flat: torch.Tensor, base: torch.Tensor, row: int) -> torch.Tensor:
    """[*base.shape, row]: the rows starting at element offsets ``base`` (a copy).

    ``index_select`` over an overlapping window of the storage copies whole rows, the
    fastest gather on CPU; compiled, it fuses into the kernel that reads the rows.
    """
    window = flat.as_strided((flat.numel() - row + 1, row), (1, 1))
    return window.index_select(0, base.reshape(-1)).view(*base.shape, row)


def decode_attention(
    q: torch.Tensor,
    flat: torch.Tensor,
    geo: KvGeometry,
    key_base: torch.Tensor,
    key_len: torch.Tensor,
    layer_off: int,
) -> torch.Tensor:
    """One query per sequence. q [B, num_heads * head_dim] -> [B, num_heads * head_dim].

    Keys and values are read head by head ([B, kv_heads, S, head_dim], so that both products
    run as plain batched GEMMs on them without another copy)."""
    b, s = key_base.shape
    h, g, d = geo.num_kv_heads, geo.group, geo.head_dim
    heads = torch.arange(h, device=q.device).view(1, h, 1) * d
    base = (key_base + layer_off).view(b, 1, s) + heads  # [B, H, S]
    kv = gather_rows(flat, torch.stack((base, base + geo.v_offset)), d).to(q.dtype)
    keys, values = kv[0], kv[1]  # [B, H, S, d]
    qg = q.view(b, h, g, d)
    scores = torch.matmul(qg, keys.transpose(-1, -2)) * (d**-0.5)  # [B, H, g, S]
    hidden = torch.arange(s, device=q.device).view(1, s) >= key_len.view(b, 1)
    scores = scores.masked_fill(hidden.view(b, 1, 1, s), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, values).reshape(b, h * g * d)  # [B, H, g, d]


def padded_attention(
    q: torch.Tensor,
    flat: torch.Tensor,
    geo: KvGeometry,
    key_base: torch.Tensor,
    mask: torch.Tensor,
    pad_index: torch.Tensor | None,
    layer_off: int,
) -> torch.Tensor:
    """Several queries per sequence (prefill chunks, mixed steps), padded to [B, max_q].

    q [T, num_heads * head_dim] -> [T, num_heads * head_dim].
    """
    b, s = key_base.shape
    h, g, d = geo.num_kv_heads, geo.group, geo.head_dim
    max_q = mask.shape[2] // g
    base = key_base + layer_off
    keys = gather_rows(flat, base, geo.row).to(q.dtype).view(b, s, h, d).transpose(1, 2)
    values = gather_rows(flat, base + geo.v_offset, geo.row).to(q.dtype)
    values = values.view(b, s, h, d).transpose(1, 2)
    if pad_index is not None:
        qp = q.new_zeros(b * max_q, h * g * d)
        qp[pad_index] = q
    else:
        qp = q
    # [B, max_q, H, g, d] -> [B, H, g * max_q, d]: each KV head serves its group
    qg = qp.view(b, max_q, h, g, d).permute(0, 2, 3, 1, 4).reshape(b, h, g * max_q, d)
    out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask)
    out = out.view(b, h, g, max_q, d).permute(0, 3, 1, 2, 4).reshape(b * max_q, h * g * d)
    if pad_index is not None:
        out = out[pad_index]
    return out
