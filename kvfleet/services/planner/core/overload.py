"""Overload policies: what the planner does when KV demand outgrows the fleet's memory
(KunServe drops replicated layers and serves as a pipeline). Pure.

The planner calls its overload policy on every tick with each worker's occupancy and the
layer ranges it holds; the policy answers with layer actions for the workers to carry out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kvfleet.services.planner.core.migration import MigrationWorkerView


@dataclass(frozen=True, slots=True)
class LayerAction:
    """Keep only ``keep_layers`` of ``model`` on ``worker_id`` (``kind="drop"``), or reload
    the whole model there (``kind="restore"``); ``group_id`` names the pipeline group."""

    kind: str
    worker_id: str
    model: str
    keep_layers: tuple[int, int] | None = None
    group_id: str = ""


class OverloadPolicy(Protocol):
    name: str

    def decide(
        self, workers: Sequence[MigrationWorkerView], now_s: float
    ) -> tuple[LayerAction, ...]: ...


class NoOverloadPolicy:
    """Does nothing under overload: requests queue, or are preempted, on their workers."""

    name = "none"

    def decide(
        self, workers: Sequence[MigrationWorkerView], now_s: float
    ) -> tuple[LayerAction, ...]:
        return ()
