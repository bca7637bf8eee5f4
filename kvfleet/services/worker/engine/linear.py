"""Matrix products of the forward pass: the fastest kernel this device offers for the weights'
dtype, chosen once per model.

- CPU, float32: oneDNN's inner product on weights reordered once into its blocked layout
  (``pack``; the weights are held only in that layout, no second copy). At the row counts of
  a decode step it runs well above MKL's GEMM behind ``F.linear`` (1.2-1.5x measured on a
  2-core AVX2 machine at 16 rows), it is as fast at a few hundred rows and within a few per
  cent at thousands. A tied LM head stays plain (the embedding lookup needs it; oneDNN takes
  plain weights too), as do weights meant for ``torch.compile``, which cannot take oneDNN's
  opaque tensors.
- CPU, bfloat16 without native bfloat16 arithmetic (no AVX-512 BF16 / AMX): the weights and
  the KV stay bfloat16 in memory, the arithmetic runs in float32 (each weight is widened as it
  is used); native bfloat16 GEMM on such CPUs is several times slower than float32.
- Anything else (CUDA, CPUs with bfloat16 arithmetic): ``F.linear`` in the weights' dtype.

The oneDNN call is wrapped as a custom op so that ``torch.compile`` keeps it as one opaque
kernel (inductor has no lowering for it on non-constant weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@torch.library.custom_op("kvfleet::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x @ w.T + b`` by oneDNN (CPU, float32, 2-D ``x``)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


@onednn_linear.register_fake
def _onednn_linear_fake(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[0])


def _onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return onednn_linear(x, w, b)
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")  # no custom-op hop


def _pack_onednn(w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w)


def _as_is(w: torch.Tensor) -> torch.Tensor:
    return w


def _widened(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, w.float(), None if b is None else b.float())


def _widened_onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return _onednn(x, w.float(), None if b is None else b.float())


def _plain(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, w, b)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (oneDNN's own test)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def _onednn_usable() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(2, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ones(4, 3), None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.all(y == 3.0))


@dataclass(frozen=True, slots=True)
class Kernels:
    """How a model's arithmetic runs: ``compute_dtype`` of activations, and the linear."""

    weight_dtype: torch.dtype
    compute_dtype: torch.dtype
    linear: LinearFn
    name: str
    pack: Callable[[torch.Tensor], torch.Tensor] = _as_is  # a weight into the kernel's layout


def choose_kernels(device: torch.device, dtype: torch.dtype, packed: bool = True) -> Kernels:
    """The kernels for weights of ``dtype`` on ``device``; ``packed``: weights may be held in
    the kernel's own layout (not for compiled code)."""
    if device.type == "cpu":
        if dtype == torch.float32 and _onednn_usable():
            if packed:
                return Kernels(dtype, dtype, _onednn, "onednn-packed", _pack_onednn)
            return Kernels(dtype, dtype, _onednn, "onednn")
        if dtype in (torch.bfloat16, torch.float16) and not cpu_has_native_bf16():
            if _onednn_usable():
                return Kernels(dtype, torch.float32, _widened_onednn, "widened-float32-onednn")
            return Kernels(dtype, torch.float32, _widened, "widened-float32")
    return Kernels(dtype, dtype, _plain, "torch")
