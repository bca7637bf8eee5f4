"""Clocks are injected so that adapters can run on wall or virtual time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_s(self) -> float: ...


class WallClock:
    def now_s(self) -> float:
        return time.time()


class ManualClock:
    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s

    def now_s(self) -> float:
        return self._now_s

    def advance(self, dt_s: float) -> None:
        self._now_s += dt_s
