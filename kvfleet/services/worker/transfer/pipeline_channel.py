"""One persistent torch.distributed process group per pipeline group.

The group's first stage hosts a TCPStore (one per worker, port 0 read back); every member
forms the process group once, through a PrefixStore named after the group, when the group
forms. From then on each message is a few point-to-point sends on that group with no
handshake: the meta length (int64[1]), the meta (JSON, with each tensor's shape and dtype),
then the tensors. gloo on CPU; NCCL on CUDA (tensors stay on the device). Sends are posted
and waited on later, so a stage can compute its next micro-batch while the previous one is
on its way.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

_TAG = 11


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


class _Posted:
    """Sends in flight and the buffers they read."""

    def __init__(self, works: list[Any], keep: list[torch.Tensor]) -> None:
        self.works = works
        self.keep = keep

    def wait(self) -> None:
        for w in self.works:
            w.wait()
        self.works = []
        self.keep = []


class GroupChannel:
    """A member's end of its group's process group (a ``StageLink``)."""

    def __init__(self, pg: dist.ProcessGroup, rank: int, world_size: int,
                 device: str = "cpu") -> None:
        self.pg = pg
        self.rank = rank
        self.world_size = world_size
        self.device = device  # where tensors travel from: "cpu" for gloo
        self.bytes_sent = 0

    def send(self, dst: int, meta: dict[str, Any], tensors: list[torch.Tensor] | None = None
             ) -> _Posted:
        tensors = [t.detach().to(self.device).contiguous() for t in tensors or []]
        wire = dict(meta)
        wire["_tensors"] = [{"shape": list(t.shape), "dtype": str(t.dtype)} for t in tensors]
        raw = torch.frombuffer(bytearray(json.dumps(wire).encode()), dtype=torch.uint8)
        raw = raw.to(self.device)
        header = torch.tensor([raw.numel()], dtype=torch.int64, device=self.device)
        keep = [header, raw, *tensors]
        works = [self.pg.send([t], dst, _TAG) for t in keep]
        self.bytes_sent += sum(t.numel() * t.element_size() for t in keep)
        return _Posted(works, keep)

    def recv(self, src: int) -> tuple[dict[str, Any], list[torch.Tensor]]:
        header = torch.empty(1, dtype=torch.int64, device=self.device)
        self.pg.recv([header], src, _TAG).wait()
        raw = torch.empty(int(header.item()), dtype=torch.uint8, device=self.device)
        self.pg.recv([raw], src, _TAG).wait()
        meta = json.loads(bytes(raw.cpu().numpy()).decode())
        tensors = []
        for spec in meta.pop("_tensors"):
            t = torch.empty(spec["shape"], dtype=_dtype(spec["dtype"]), device=self.device)
            self.pg.recv([t], src, _TAG).wait()
            tensors.append(t)
        return meta, tensors


def host_store(host: str, timeout_s: float) -> tuple[dist.TCPStore, int]:
    """The TCPStore a first stage hosts for its groups (port read back)."""
    store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=timeout_s))
    return store, int(store.port)


def form_channel(group_id: str, rank: int, world_size: int, store: dist.Store,
                 backend: str, timeout_s: float, device: str = "cpu") -> GroupChannel:
    """Blocking: form the group's process group (every member calls this at once)."""
    prefixed = dist.PrefixStore(f"pipeline/{group_id}", store)
    timeout = datetime.timedelta(seconds=timeout_s)
    pg: dist.ProcessGroup
    if backend == "nccl":
        pg = dist.ProcessGroupNCCL(prefixed, rank, world_size)
    else:
        pg = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    log.info("pipeline group %s: rank %d of %d formed (%s)", group_id, rank, world_size, backend)
    return GroupChannel(pg, rank, world_size, device if backend == "nccl" else "cpu")


def join_store(host: str, port: int, timeout_s: float) -> dist.TCPStore:
    return dist.TCPStore(host, port, is_master=False,
                         timeout=datetime.timedelta(seconds=timeout_s))
