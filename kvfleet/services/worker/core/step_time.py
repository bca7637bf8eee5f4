"""How long a step takes on this worker, learned from its own steps. Pure.

A batch policy sees ``now_s`` at every plan. When a plan fed a prompt chunk, the time until
the next plan is that step's duration (such steps are never merged into runs, live or
simulated). The model fits ``time = a + b * tokens`` over those steps by exponentially
weighted least squares, so it follows the worker's real speed (its GPU, its model, the load
of its host). It learns only from steps whose sequences are still there at the next plan with
their chunks done, so an idle gap (the worker ran out of work) is never taken for a step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class StepTimeModel:
    decay: float = 0.95  # weight kept by older observations at each new one
    min_observations: int = 4
    num_observations: int = 0
    _sums: list[float] = field(default_factory=lambda: [0.0] * 5)  # w, wx, wxx, wy, wxy
    _pending: tuple[float, int, dict[str, int]] | None = field(default=None, repr=False)

    def planned(self, now_s: float, chunks: Mapping[str, tuple[int, int]]) -> None:
        """A plan at ``now_s`` feeding ``chunks`` (seq id -> (computed before, tokens fed));
        only plans with a prompt chunk (more than one token for a sequence) are timed."""
        if any(n > 1 for _, n in chunks.values()):
            tokens = sum(n for _, n in chunks.values())
            self._pending = (now_s, tokens, {s: c + n for s, (c, n) in chunks.items()})
        else:
            self._pending = None

    def observe(self, now_s: float, computed: Mapping[str, int]) -> None:
        """The next plan: ``computed`` maps sequence ids to their computed tokens now."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        start_s, tokens, expect = pending
        if now_s <= start_s or not any(computed.get(s) == c for s, c in expect.items()):
            return  # nothing of that step is left to show it ran right before now
        x, y = float(tokens), now_s - start_s
        s = self._sums
        for i, v in enumerate((1.0, x, x * x, y, x * y)):
            s[i] = self.decay * s[i] + v
        self.num_observations += 1

    def coefficients(self) -> tuple[float, float] | None:
        """``(a, b)`` of ``time = a + b * tokens``, or None before enough varied steps."""
        if self.num_observations < self.min_observations:
            return None
        w, wx, wxx, wy, wxy = self._sums
        var = w * wxx - wx * wx
        if var <= 1e-12 * max(1.0, w * wxx):
            return None
        b = (w * wxy - wx * wy) / var
        a = (wy - b * wx) / w
        if b <= 0.0:
            return None
        return max(0.0, a), b

    def tokens_within(self, seconds: float) -> int | None:
        """The most tokens a step can feed and take at most ``seconds`` (None: unknown)."""
        coef = self.coefficients()
        if coef is None:
            return None
        a, b = coef
        return max(0, int((seconds - a) / b))
