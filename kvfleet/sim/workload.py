"""Small workload helpers for the simulator's own tests and scale runs.

Real traces and the full synthetic generator come from ``kvfleet.workload``; this module
only adds a fast seeded Poisson source with lognormal lengths, cheap enough for a million
requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SimRequest:
    """A request with the fields the simulator reads (as ``kvfleet.workload.RequestSpec``)."""

    request_id: str
    arrival_s: float
    model: str
    input_tokens: int
    output_tokens: int


def poisson_requests(
    num_requests: int,
    rate_per_s: float,
    *,
    input_mean: float = 1155.0,
    output_mean: float = 211.0,
    sigma: float = 0.8,
    max_input: int = 8192,
    max_output: int = 1024,
    model: str = "default",
    seed: int = 0,
) -> list[SimRequest]:
    """Poisson arrivals, lognormal input and output lengths with the given means."""
    if num_requests < 0 or rate_per_s <= 0:
        raise ValueError("need num_requests >= 0 and rate_per_s > 0")
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, num_requests))

    def lengths(mean: float, cap: int) -> np.ndarray:
        mu = np.log(mean) - sigma**2 / 2
        return np.clip(rng.lognormal(mu, sigma, num_requests).astype(np.int64), 1, cap)

    ins = lengths(input_mean, max_input)
    outs = lengths(output_mean, max_output)
    return [
        SimRequest(f"r{i}", float(t), model, int(a), int(b))
        for i, (t, a, b) in enumerate(zip(arrivals.tolist(), ins.tolist(), outs.tolist(), strict=True))
    ]
