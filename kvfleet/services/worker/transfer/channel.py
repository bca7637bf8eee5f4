"""Send a JSON-able meta dict and a list of tensors over a two-rank process group.

Wire order: meta length (int64[1]), meta bytes (uint8[n], JSON with the tensors' shapes and
dtypes), then each tensor. Blocking calls: run them in a thread, never on the event loop.
"""

from __future__ import annotations

import json
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


def recv_payload(pg: dist.ProcessGroup, src: int,
                 device: str = "cpu") -> tuple[dict[str, Any], list[torch.Tensor]]:
    header = torch.empty(1, dtype=torch.int64, device=device)
    pg.recv([header], src, _TAG).wait()
    raw = torch.empty(int(header.item()), dtype=torch.uint8, device=device)
    pg.recv([raw], src, _TAG).wait()
    meta = json.loads(bytes(raw.cpu().numpy()).decode())
    tensors = []
    for spec in meta.pop("_tensors"):
        t = torch.empty(spec["shape"], dtype=_dtype(spec["dtype"]), device=device)
        pg.recv([t], src, _TAG).wait()
        tensors.append(t)
    return meta, tensors
