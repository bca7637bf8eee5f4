"""kvfleet's own forward pass for the Llama family (Llama, Mistral, Qwen2), over paged KV.

A ``ModelStage`` holds layers [first, last) of a model (the embedding with the first range,
the final norm and LM head with the last). One call runs every token of a step: the linear
layers see all tokens flattened (q/k/v and gate/up each as one product), attention reads each
sequence's keys through its page table (``attention.py``). The step's attention offsets are
built once and shared by every layer; the layer itself is ``decoder_layer.layer_forward``,
run eagerly or compiled (``compiled_decode.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvfleet.common.models.spec import ModelSpec
from kvfleet.services.worker.engine import cpu_attention
from kvfleet.services.worker.engine.attention import KvGeometry, flat_storage, plan_step
from kvfleet.services.worker.engine.compiled_decode import CudaGraphDecoder, LayerRunner
from kvfleet.services.worker.engine.cuda_attention import PagedDecodeKernel, choose_decode_kernel
from kvfleet.services.worker.engine.decoder_layer import LayerConsts, LayerWeights, rms_norm
from kvfleet.services.worker.engine.linear import choose_kernels

__all__ = ["LayerWeights", "ModelStage", "StepBatch"]


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
        compile_mode: str = "off",
    ) -> None:
        self.spec = spec
        self.first = first
        self.last = last
        self.dtype = dtype
        self.device = device
        self.compile_mode = compile_mode
        self.runner = LayerRunner(compile_mode, device)
        self.kernels = choose_kernels(device, dtype, packed=self.runner.mode == "off")
        cdt = self.kernels.compute_dtype
        pack = self.kernels.pack
        self._graphs: CudaGraphDecoder | None = None
        self._decode_kernels: dict[int, PagedDecodeKernel | None] = {}  # by tokens per page

        def take(name: str, as_dtype: torch.dtype = dtype) -> torch.Tensor:
            return weights.pop(name).to(device=device, dtype=as_dtype).contiguous()

        self.embed = take("model.embed_tokens.weight") if first == 0 else None
        self.layers: list[LayerWeights] = []
        for i in range(first, last):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            bias = None
            if spec.qkv_bias:
                bias = torch.cat(
                    [take(a + n, cdt) for n in ("q_proj.bias", "k_proj.bias", "v_proj.bias")]
                )
            self.layers.append(
                LayerWeights(
                    qkv=pack(
                        torch.cat(
                            [
                                take(a + "q_proj.weight"),
                                take(a + "k_proj.weight"),
                                take(a + "v_proj.weight"),
                            ]
                        )
                    ),
                    qkv_bias=bias,
                    o=pack(take(a + "o_proj.weight")),
                    gate_up=pack(
                        torch.cat(
                            [take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]
                        )
                    ),
                    down=pack(take(p + "mlp.down_proj.weight")),
                    ln1=take(p + "input_layernorm.weight", cdt),
                    ln2=take(p + "post_attention_layernorm.weight", cdt),
                )
            )
        self.norm = self.lm_head = None
        if last == spec.num_layers:
            self.norm = take("model.norm.weight", cdt)
            if "lm_head.weight" in weights:
                self.lm_head = pack(take("lm_head.weight"))
            elif self.embed is not None:
                self.lm_head = self.embed  # tied: one plain tensor for lookup and head
            else:
                self.lm_head = pack(take("model.embed_tokens.weight"))
        d = spec.head_dim
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        pos = torch.arange(spec.max_context_tokens, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        # [positions, 1, head_dim]: broadcast over the heads of a token
        self.cos = emb.cos().to(device=device, dtype=cdt).unsqueeze(1)
        self.sin = emb.sin().to(device=device, dtype=cdt).unsqueeze(1)

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

    def geometry(self, kv: torch.Tensor) -> KvGeometry:
        spec = self.spec
        return KvGeometry(
            spec.num_heads, spec.num_kv_heads, spec.head_dim, kv.shape[3], kv.stride(0)
        )

    def _cpu_kernel_usable(self, kv_dtype: torch.dtype) -> bool:
        s = self.spec
        if not cpu_attention.supports(s.num_heads, s.num_kv_heads, s.head_dim, kv_dtype):
            return False
        if self.kernels.compute_dtype != torch.float32:
            return False
        return cpu_attention.kernel_library() is not None

    def decode_kernel(self, tokens_per_page: int, in_graph: bool) -> PagedDecodeKernel | None:
        key = tokens_per_page * 2 + int(in_graph)
        if key not in self._decode_kernels:
            self._decode_kernels[key] = choose_decode_kernel(self.device, tokens_per_page, in_graph)
        return self._decode_kernels[key]

    @torch.inference_mode()
    def forward(
        self, kv: torch.Tensor, batch: StepBatch, hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the held layers. ``kv`` is this model's pool view
        [pages, layers, 2, tokens_per_page, kv_heads, head_dim].

        Input: token ids (first stage) or ``hidden`` [T, hidden]. Output: logits [n, vocab]
        for ``batch.sample_index`` (last stage) or hidden states [T, hidden].
        """
        whole = hidden is None and self.is_first and self.is_last
        if (
            whole
            and batch.max_q == 1
            and self.device.type == "cuda"
            and self.runner.mode
            in (
                "decode",
                "all",
            )
        ):
            if self._graphs is None:
                self._graphs = CudaGraphDecoder(self)
            return self._graphs.run(kv, batch)
        return self.run_layers(kv, batch, hidden)

    def run_layers(
        self, kv: torch.Tensor, batch: StepBatch, hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``forward`` without CUDA graphs."""
        cdt = self.kernels.compute_dtype
        if hidden is None:
            assert self.embed is not None, "a stage without the embedding needs hidden states"
            h = F.embedding(batch.input_ids, self.embed).to(cdt)
        else:
            h = hidden.to(cdt)
        geo = self.geometry(kv)
        decode = batch.max_q == 1
        kernel = None
        if decode and self.device.type == "cuda":
            kernel = self.decode_kernel(
                geo.tokens_per_page, torch.cuda.is_current_stream_capturing()
            )
        cpu_kernel = decode and self.device.type == "cpu" and self._cpu_kernel_usable(kv.dtype)
        consts = LayerConsts(geo, self.spec.rms_norm_eps, self.kernels.linear, kernel, cpu_kernel)
        attn = plan_step(
            geo,
            batch.page_table,
            batch.slot_pages,
            batch.slot_offsets,
            batch.key_limit,
            batch.pad_index,
        )
        if kernel is not None and attn.key_len is not None:
            s = self.spec
            kernel.plan(
                batch.page_table,
                attn.key_len,
                geo.tokens_per_page,
                s.num_heads,
                s.num_kv_heads,
                s.head_dim,
                kv.dtype,
            )
        cos, sin = self.cos[batch.positions], self.sin[batch.positions]
        flat = flat_storage(kv)
        layer_fn = self.runner.layer_fn(decode)
        for li, layer in enumerate(self.layers):
            h = layer_fn(h, cos, sin, flat, attn, li, layer, consts)
        if not self.is_last:
            return h
        assert self.norm is not None and self.lm_head is not None
        h = rms_norm(h[batch.sample_index], self.norm, self.spec.rms_norm_eps)
        return self.kernels.linear(h, self.lm_head, None).float()
