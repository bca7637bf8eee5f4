"""Predicted latency of the models a worker holds, from their load and step costs. Pure.

The latency-aware placement scores a placement with this model: for each worker, the models
it holds, the request rate each of them sends it (``ModelLoad`` split between replicas), and
each model's step time on that worker (``ModelStepCost``: the simulator's cost model).

A worker runs continuous batching, each model's part of a step after the other's. A request
of model ``m`` (rate ``r``, prompts of ``P`` tokens, outputs of ``O``) sees its own model's step
with ``1 + N_m`` requests in it (``N_m = r L_m``, Little's law, with ``L_m`` its latency) and the
prompt tokens arriving meanwhile (their compute added to the step: chunked prefill runs them
in large compute-bound chunks, so they do not hide under a decode step's memory time), plus
every other model's step in the share of steps that
model has work in (``min(1, N)``). Its latency is about one and a half steps to the first token
and a step per further token. The latencies solve that system by fixed-point iteration; a load
under which they keep growing is overload. Memory adds a second limit: the KV of the requests
in flight must fit the pool, otherwise they queue for it. Normalised latency divides a latency
by the request's time alone on an idle worker (``ModelStepCost.isolated_s`` at the model's
reference parallel degree).
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


def _latencies(shares: Sequence[ModelShare]) -> tuple[dict[str, float], bool]:
    """Each model's mean request latency on the worker, and whether it is overloaded."""
    lat = {s.model: s.cost.prefill_s(max(int(s.load.mean_prompt_tokens), 1))
           + max(s.load.mean_output_tokens - 1.0, 0.0) * s.cost.decode_s(
               1, s.load.mean_prompt_tokens) for s in shares}
    limit = {m: max(1e4 * v, 3600.0) for m, v in lat.items()}
    step = {s.model: 0.0 for s in shares}
    for _ in range(_MAX_ITERATIONS):
        busy = {s.model: s.load.request_rate * lat[s.model] for s in shares}  # N, in flight
        parts = {}
        for s in shares:
            p = max(s.load.mean_prompt_tokens, 1.0)
            o = max(s.load.mean_output_tokens, 1.0)
            ctx = p + o / 2.0
            pre = s.load.request_rate * p * step[s.model]  # prompt tokens arriving per step
            own = 1.0 + busy[s.model]
            parts[s.model] = (s, own, ctx, pre, p)
        new: dict[str, float] = {}
        for s in shares:
            total = 0.0
            for m, (o_s, b, ctx, pre, p) in parts.items():
                if m == s.model:
                    weight, batch = 1.0, b
                else:
                    weight, batch = min(1.0, busy[m] + o_s.load.request_rate * step[s.model]), \
                        max(1.0, busy[m])
                    if weight <= 0.0:
                        continue
                # The decode step, plus the compute of the prompt tokens that arrive meanwhile:
                # chunked prefill runs them in large chunks, compute-bound, so they add to the
                # step rather than hide under its memory time.
                c = o_s.cost
                total += weight * (c.decode_s(batch, batch * ctx) + c.s_per_token * pre
                                   + c.s_per_attn_pair * pre * (p + 1) / 2.0)
            step[s.model] = total
            o = max(s.load.mean_output_tokens, 1.0)
            new[s.model] = (o + 0.5) * total
        converged = all(abs(new[m] - lat[m]) <= 1e-6 * max(lat[m], 1e-12) for m in lat)
        lat = new
        if any(lat[m] > limit[m] for m in lat):
            return lat, True
        if converged:
            break
    return lat, False


def _least_work_s(s: ModelShare) -> float:
    """The least worker time a mean request of ``s`` takes at any batch size: its tokens'
    compute, or reading its KV once per output token, whichever is more, plus its per-sequence
    overhead per step. Its rate times this is a lower bound on the worker's utilisation."""
    c = s.cost
    p = max(s.load.mean_prompt_tokens, 1.0)
    o = max(s.load.mean_output_tokens, 1.0)
    ctx = p + o / 2.0
    compute = c.s_per_token * (p + o) + c.s_per_attn_pair * (p * p / 2.0 + o * ctx)
    memory = c.s_per_kv_token * o * ctx
    return max(compute, memory) + c.overhead_s_per_seq * o


def estimate_worker(shares: Sequence[ModelShare], kv_pool_bytes: float) -> WorkerEstimate:
    """The predicted per-model latency of one worker (see the module doc)."""
    active = [s for s in shares if s.load.request_rate > 0]
    if not active:
        return WorkerEstimate(0.0, 0.0, False, {s.model: 0.0 for s in shares},
                              {s.model: 1.0 for s in shares})
    lat, overloaded = _latencies(active)
    # Growth of the latency under 2% more load: near 1/0.02 when saturated.
    more = [ModelShare(s.model, ModelLoad(s.model, s.load.request_rate * 1.02,
                                          s.load.mean_prompt_tokens, s.load.mean_output_tokens),
                       s.cost, s.kv_bytes_per_token, s.isolated_s) for s in active]
    lat2, over2 = _latencies(more) if not overloaded else (lat, True)
    growth = max(((lat2[m] - lat[m]) / lat[m] / 0.02 for m in lat if lat[m] > 0), default=0.0)
    rho = min(growth / (1.0 + growth), 1.0)
    demand = sum(s.load.request_rate * lat[s.model]
                 * (s.load.mean_prompt_tokens + s.load.mean_output_tokens / 2.0)
                 * s.kv_bytes_per_token for s in active)
    memory_factor = demand / kv_pool_bytes if kv_pool_bytes > 0 else float("inf")
    work = sum(s.load.request_rate * _least_work_s(s) for s in active)
    overloaded = overloaded or over2 or memory_factor >= 1.0 or work >= 1.0
    # How far past capacity, graded, so that spreading an overloaded model over more workers
    # scores better even before any of them keeps up.
    excess = max(memory_factor, work, 1.0)
    latency: dict[str, float] = {}
    normalized: dict[str, float] = {}
    for s in shares:
        if s.load.request_rate <= 0:
            latency[s.model], normalized[s.model] = 0.0, 1.0
        elif overloaded:
            latency[s.model] = float("inf")
            normalized[s.model] = OVERLOAD_NORMALIZED_LATENCY * excess
        else:
            latency[s.model] = lat[s.model]
            normalized[s.model] = lat[s.model] / max(s.isolated_s, 1e-9)
    mean_step = sum(lat[m] for m in lat) / max(len(lat), 1)
    return WorkerEstimate(mean_step, rho, overloaded, latency, normalized)
