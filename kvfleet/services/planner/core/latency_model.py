"""Predicted latency of the models a worker holds, from their load and step costs. Pure.

The latency-aware placement scores a placement with this model: for each worker, the models
it holds, the request rate each of them sends it (``ModelLoad`` split between replicas), and
each model's step time on that worker (``ModelStepCost``: the simulator's cost model).

A worker runs continuous batching. With a step of ``T`` seconds, model ``m`` (rate ``r``,
prompts of ``P`` tokens, outputs of ``O``) keeps ``N = r O T`` requests decoding (Little's
law) and feeds ``r P T`` prompt tokens a step; each model's part of a step is its cost model's
time for those tokens, counted in the share of steps it has work in. The step time solves
``T = f(T)`` (fixed-point iteration); a load whose step time keeps growing is overload.
Memory adds a second limit: the KV the decoding requests hold must fit the pool, otherwise
requests queue for it. A request's latency is about one and a half steps to its first token,
a step per further token, and a queueing wait of ``T rho / (1 - rho)`` at utilisation
``rho`` (the slope of ``f``). Normalised latency divides it by the request's time alone on
an idle worker (``ModelStepCost.isolated_s`` at the model's reference parallel degree).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kvfleet.services.planner.core.types import ModelLoad
from kvfleet.services.worker.core.step_cost import ModelStepCost

OVERLOAD_NORMALIZED_LATENCY = 1e3
"""The normalised latency charged to a model whose worker cannot keep up (scaled by how far
beyond its capacity it is), so that placements compare even when some are overloaded."""

_MAX_ITERATIONS = 60


@dataclass(frozen=True, slots=True)
class ModelShare:
    """One model on one worker: the load it sends there and what it costs there."""

    model: str
    load: ModelLoad  # the rate is this worker's share
    cost: ModelStepCost
    kv_bytes_per_token: int
    isolated_s: float  # its mean request's latency alone (reference configuration)


@dataclass(frozen=True, slots=True)
class WorkerEstimate:
    step_s: float
    utilization: float
    overloaded: bool
    latency_s: Mapping[str, float]  # mean request latency per model
    normalized: Mapping[str, float]  # mean normalised latency per model

    def weighted(self, shares: Sequence[ModelShare]) -> float:
        """Sum over the worker's requests per second of their normalised latency."""
        return sum(s.load.request_rate * self.normalized[s.model] for s in shares)


def _step_s(shares: Sequence[ModelShare], t: float) -> float:
    total = 0.0
    for s in shares:
        ld = s.load
        if ld.request_rate <= 0:
            continue
        p = max(ld.mean_prompt_tokens, 1.0)
        o = max(ld.mean_output_tokens, 1.0)
        n = ld.request_rate * o * t  # decoding requests
        pre = ld.request_rate * p * t  # prompt tokens per step
        ctx = n * (p + o / 2.0)
        active = min(1.0, n + ld.request_rate * t)
        if active <= 0:
            continue
        scale = 1.0 / active  # the model's work, spread over the steps it is in
        step = s.cost.step_s(
            (n + pre) * scale, (ctx + pre * (p + 1) / 2.0) * scale, (ctx + pre) * scale,
            (n + ld.request_rate * t) * scale,
        )
        total += active * step
    return total


def estimate_worker(shares: Sequence[ModelShare], kv_pool_bytes: float) -> WorkerEstimate:
    """The predicted step time and per-model latency of one worker (see the module doc)."""
    active = [s for s in shares if s.load.request_rate > 0]
    if not active:
        return WorkerEstimate(0.0, 0.0, False, {s.model: 0.0 for s in shares},
                              {s.model: 1.0 for s in shares})
    t0 = sum(s.cost.decode_s(1, s.load.mean_prompt_tokens) for s in active)
    t = max(t0, 1e-6)
    overloaded = False
    for _ in range(_MAX_ITERATIONS):
        nxt = _step_s(active, t)
        if nxt > 1e4 * t0 or nxt > 3600.0:
            overloaded = True
            break
        if abs(nxt - t) <= 1e-6 * t:
            t = nxt
            break
        t = nxt
    eps = 0.01 * t
    rho = (_step_s(active, t + eps) - _step_s(active, t)) / eps if t > 0 else 0.0
    if rho >= 0.999:
        overloaded = True
    demand = sum(
        s.load.request_rate * s.load.mean_output_tokens * t
        * (s.load.mean_prompt_tokens + s.load.mean_output_tokens / 2.0) * s.kv_bytes_per_token
        for s in active
    )
    memory_factor = demand / kv_pool_bytes if kv_pool_bytes > 0 else float("inf")
    latency: dict[str, float] = {}
    normalized: dict[str, float] = {}
    excess = max(rho, memory_factor, 1.0)
    for s in shares:
        if overloaded or memory_factor >= 1.0:
            latency[s.model] = float("inf")
            normalized[s.model] = OVERLOAD_NORMALIZED_LATENCY * excess
            continue
        o = max(s.load.mean_output_tokens, 1.0)
        wait = t * rho / (1.0 - rho)
        lat = 1.5 * t + (o - 1.0) * t + wait
        latency[s.model] = lat
        normalized[s.model] = lat / max(s.isolated_s, 1e-9)
    return WorkerEstimate(t, rho, overloaded or memory_factor >= 1.0, latency, normalized)
