"""How the stages of a pipeline group talk: messages of a JSON-able meta dict and tensors,
point to point by rank, in order per pair. Blocking receives; sends may complete later.

Across workers a ``GroupChannel`` (``worker/transfer/pipeline_channel.py``) carries them
over one persistent torch.distributed process group; ``LocalLinks`` carries them between
engines of one process (tests, and the same code paths without a network).
"""

from __future__ import annotations

import queue
from typing import Any, Protocol

import torch

Message = tuple[dict[str, Any], list[torch.Tensor]]


class SendHandle(Protocol):
    def wait(self) -> None: ...


class StageLink(Protocol):
    """One stage's end of the group's links."""

    rank: int
    world_size: int

    def send(self, dst: int, meta: dict[str, Any], tensors: list[torch.Tensor] | None = None
             ) -> SendHandle:
        """Post a message to ``dst``; the tensors must not change until ``wait`` returns."""
        ...

    def recv(self, src: int) -> Message: ...


class _Done:
    def wait(self) -> None:
        return None


class LocalLinks:
    """Links between ``world_size`` engines in one process: one queue per ordered pair."""

    def __init__(self, world_size: int, timeout_s: float = 120.0) -> None:
        self.world_size = world_size
        self.timeout_s = timeout_s
        self._queues = {(a, b): queue.Queue()  # type: ignore[var-annotated]
                        for a in range(world_size) for b in range(world_size) if a != b}

    def end(self, rank: int) -> LocalLink:
        return LocalLink(self, rank)


class LocalLink:
    def __init__(self, links: LocalLinks, rank: int) -> None:
        self.links = links
        self.rank = rank
        self.world_size = links.world_size

    def send(self, dst: int, meta: dict[str, Any], tensors: list[torch.Tensor] | None = None
             ) -> SendHandle:
        copied = [t.detach().clone() for t in tensors or []]
        self.links._queues[(self.rank, dst)].put((dict(meta), copied))
        return _Done()

    def recv(self, src: int) -> Message:
        try:
            msg: Message = self.links._queues[(src, self.rank)].get(timeout=self.links.timeout_s)
        except queue.Empty:
            raise TimeoutError(f"rank {self.rank}: nothing from rank {src}") from None
        return msg
