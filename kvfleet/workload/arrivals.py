"""Synthetic arrival times: Poisson or gamma renewal processes over a rate profile.

A rate profile is a base rate with an optional linear ramp-up from a start rate and optional
periodic spikes. Arrivals are drawn as a unit-rate renewal process (exponential gaps for
Poisson; gamma gaps with the requested coefficient of variation for bursty load) in
"operational time" and mapped back through the inverse of the cumulative rate, so that the
expected count in any interval is the integral of the rate over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Process = Literal["poisson", "gamma"]


@dataclass(frozen=True, slots=True)
class ArrivalSpec:
    """How requests of one stream arrive.

    rate: steady request rate (req/s) after the ramp and outside spikes.
    process: ``poisson`` (gaps exponential, CV 1) or ``gamma`` (gaps gamma with ``cv``).
    cv: coefficient of variation of the gaps for ``gamma`` (> 1 is burstier than Poisson).
    ramp_s: length of a linear ramp from ``ramp_from_rate`` up to ``rate`` at the start.
    spike_rate / spike_s / spike_period_s / spike_start_s: during
    ``[spike_start_s + k*spike_period_s, ... + spike_s)`` the rate is ``spike_rate``.
    """

    rate: float
    process: Process = "poisson"
    cv: float = 1.0
    ramp_s: float = 0.0
    ramp_from_rate: float = 0.0
    spike_rate: float = 0.0
    spike_s: float = 0.0
    spike_period_s: float = 0.0
    spike_start_s: float = 0.0

    def __post_init__(self) -> None:
        if self.process not in ("poisson", "gamma"):
            raise ValueError(f"arrival process must be poisson or gamma, got {self.process!r}")
        for name in (
            "rate",
            "ramp_s",
            "ramp_from_rate",
            "spike_rate",
            "spike_s",
            "spike_period_s",
            "spike_start_s",
        ):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.process == "gamma" and not (self.cv > 0 and np.isfinite(self.cv)):
            raise ValueError(f"gamma arrivals need cv > 0, got {self.cv}")
        if self.spike_s > 0 and self.spike_period_s > 0 and self.spike_s > self.spike_period_s:
            raise ValueError("spike_s must not exceed spike_period_s")
        if self.spike_s > 0 and self.spike_rate <= 0:
            raise ValueError("spikes need spike_rate > 0")

    @property
    def has_spikes(self) -> bool:
        return self.spike_s > 0 and self.spike_rate > 0

    def rate_at(self, t_s: np.ndarray) -> np.ndarray:
        """The rate profile (req/s) at times ``t_s``."""
        t = np.asarray(t_s, dtype=float)
        r = np.full_like(t, self.rate)
        if self.ramp_s > 0:
            ramp = self.ramp_from_rate + (self.rate - self.ramp_from_rate) * t / self.ramp_s
            r = np.where(t < self.ramp_s, ramp, r)
        if self.has_spikes:
            rel = t - self.spike_start_s
            if self.spike_period_s > 0:
                in_spike = (rel >= 0) & (np.mod(rel, self.spike_period_s) < self.spike_s)
            else:
                in_spike = (rel >= 0) & (rel < self.spike_s)
            r = np.where(in_spike, self.spike_rate, r)
        return r


def _grid_step(spec: ArrivalSpec, duration_s: float) -> float:
    step = min(0.05, duration_s / 1000.0)
    if spec.has_spikes:
        step = min(step, spec.spike_s / 50.0)
    if spec.ramp_s > 0:
        step = min(step, spec.ramp_s / 200.0)
    return max(step, 1e-4)


def generate_arrivals(spec: ArrivalSpec, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted arrival times in ``[0, duration_s)``."""
    if duration_s <= 0:
        raise ValueError(f"duration must be > 0, got {duration_s}")
    step = _grid_step(spec, duration_s)
    grid = np.arange(0.0, duration_s + step, step)
    grid[-1] = duration_s if grid[-1] > duration_s else grid[-1]
    # Rates are piecewise constant or linear between grid points: use the midpoint rule.
    mids = (grid[:-1] + grid[1:]) / 2
    cum = np.concatenate(([0.0], np.cumsum(spec.rate_at(mids) * np.diff(grid))))
    total = float(cum[-1])
    if total <= 0:
        return np.empty(0)
    # Unit-rate renewal process in operational time, a few sigmas beyond the expected count.
    cv = spec.cv if spec.process == "gamma" else 1.0
    n_draw = int(total + 10 * cv * np.sqrt(total + 1) + 16)
    ops: list[np.ndarray] = []
    last = 0.0
    while last < total:
        if spec.process == "gamma":
            shape = 1.0 / (cv * cv)
            gaps = rng.gamma(shape, 1.0 / shape, size=n_draw)
        else:
            gaps = rng.exponential(1.0, size=n_draw)
        # A stationary start: the first gap is a uniform fraction of a full gap.
        if not ops:
            gaps[0] *= rng.uniform()
        chunk = last + np.cumsum(gaps)
        ops.append(chunk)
        last = float(chunk[-1])
    op_times = np.concatenate(ops)
    op_times = op_times[op_times < total]
    # Invert the cumulative rate: find the grid segment holding each operational time.
    idx = np.searchsorted(cum, op_times, side="right")
    idx = np.clip(idx, 1, len(cum) - 1)
    lo_cum, hi_cum = cum[idx - 1], cum[idx]
    frac = (op_times - lo_cum) / np.maximum(hi_cum - lo_cum, 1e-300)
    times = grid[idx - 1] + frac * (grid[idx] - grid[idx - 1])
    return times[times < duration_s]
