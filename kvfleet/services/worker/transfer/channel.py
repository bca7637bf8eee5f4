"""Send a JSON-able meta dict and a list of tensors over a two-rank process group.

Wire order: meta length (int64[1]), meta bytes (uint8[n], JSON with the tensors' shapes and
dtypes), then each tensor. Blocking calls: run them in a thread, never on the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

_TAG = 7


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def send_payload(pg: dist.ProcessGroup, dst: int, meta: dict[str, Any],
                 tensors: list[torch.Tensor], device: str = "cpu") -> int:
    """Send over ``pg`` from ``device`` ("cpu" for gloo: device tensors are staged through
    host memory). Returns the bytes sent."""
    tensors = [t.to(device).contiguous() for t in tensors]
    wire = dict(meta)
    wire["_tensors"] = [{"shape": list(t.shape), "dtype": str(t.dtype)} for t in tensors]
    raw = torch.frombuffer(bytearray(json.dumps(wire).encode()), dtype=torch.uint8)
    header = torch.tensor([raw.numel()], dtype=torch.int64, device=device)
    pg.send([header], dst, _TAG).wait()
    pg.send([raw.to(device)], dst, _TAG).wait()
    total = header.numel() * 8 + raw.numel()
    for t in tensors:
        pg.send([t], dst, _TAG).wait()
        total += t.numel() * t.element_size()
    return total


MAX_META_BYTES = 4 << 20


class PayloadRefused(ValueError):
    """The sender announced a payload the receiver will not allocate."""


def recv_payload(
    pg: dist.ProcessGroup, src: int, device: str = "cpu",
    check: Callable[[dict[str, Any], list[tuple[list[int], torch.dtype]]], None] | None = None,
    max_meta_bytes: int = MAX_META_BYTES,
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Receive a payload. Nothing is allocated for the tensors before ``check(meta, specs)``
    has accepted their announced shapes and dtypes (it raises to refuse them)."""
    header = torch.empty(1, dtype=torch.int64, device=device)
    pg.recv([header], src, _TAG).wait()
    n = int(header.item())
    if not 0 < n <= max_meta_bytes:
        raise PayloadRefused(f"meta of {n} bytes (at most {max_meta_bytes})")
    raw = torch.empty(n, dtype=torch.uint8, device=device)
    pg.recv([raw], src, _TAG).wait()
    try:
        meta = json.loads(bytes(raw.cpu().numpy()).decode())
        specs = [([int(d) for d in s["shape"]], _dtype(s["dtype"])) for s in meta.pop("_tensors")]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PayloadRefused(f"malformed payload header: {e}") from e
    if not isinstance(meta, dict):
        raise PayloadRefused("payload meta is not an object")
    if check is not None:
        check(meta, specs)
    tensors = []
    for shape, dtype in specs:
        t = torch.empty(shape, dtype=dtype, device=device)
        pg.recv([t], src, _TAG).wait()
        tensors.append(t)
    return meta, tensors

