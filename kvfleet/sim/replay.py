"""Dispatch decisions of a short trace, for comparing the simulator with the live stack.

The live scheduler and the simulator call the same ``DispatchPolicy.decide``. Given the
live fleet's workers (their occupancy views at rest: ids, models, total pages, tokens per
page) and the requests, ``replay_dispatch`` simulates that fleet on a virtual clock and
returns the decisions in the order they were made.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvfleet.policies import POLICY_SETS, PolicySet
from kvfleet.services.scheduler.core.admission import QueueDepth
from kvfleet.services.scheduler.core.dispatch import DispatchInput
from kvfleet.services.scheduler.core.occupancy import worker_view
from kvfleet.services.scheduler.core.policy import DISPATCH_POLICIES
from kvfleet.services.scheduler.core.types import RequestView, WorkerView
from kvfleet.services.worker.core.batch_policy import FcfsBatchPolicy
from kvfleet.sim.engine import RequestLike, Simulator
from kvfleet.sim.fleet import SimConfig
from kvfleet.sim.seq import SimSeq


def _policy_set(policy: str) -> PolicySet:
    if policy in POLICY_SETS:
        return POLICY_SETS[policy]
    if policy in DISPATCH_POLICIES:
        return PolicySet(policy, f"{policy} dispatch, FCFS batches",
                         DISPATCH_POLICIES[policy], FcfsBatchPolicy)
    known = ", ".join(sorted(set(POLICY_SETS) | set(DISPATCH_POLICIES)))
    raise ValueError(f"unknown policy {policy!r}; known: {known}")


def replay_dispatch(
    requests: Sequence[RequestLike],
    workers: Sequence[WorkerView],
    policy: str = "round-robin",
    *,
    gpu: str = "CPU",
    model: str = "SmolLM2-135M",
    calibration: str | None = None,
    dispatch_interval_s: float = 0.0,
    worker_queue_fraction: float = 1.0,
) -> list[tuple[str, str]]:
    """``[(request_id, worker_id), ...]`` in decision order.

    ``policy`` is a policy set (``vllm``, ``round-robin``, ...) or a dispatch policy name
    (``most-free-kv``, ``round-robin``, ``best-fit``, ``worst-fit``). ``gpu``/``model`` (and
    ``calibration``, a ``kvfleet bench engine`` JSON) give the step times that decide how
    occupancy evolves between arrivals. ``dispatch_interval_s`` 0 decides at each distinct
    arrival time; larger values batch arrivals as a polling scheduler does.
    """
    config = SimConfig(
        gpu=gpu, models=[model], num_gpus=max(1, len(workers)), tp=1, policy="vllm",
        calibration=calibration, dispatch_interval_s=dispatch_interval_s,
        worker_queue_fraction=worker_queue_fraction,
    )
    sim = Simulator(config, requests, _policy_set(policy), workers=workers, log_dispatch=True)
    sim.run()
    assert sim.dispatch_log is not None
    return list(sim.dispatch_log)


def replay_decisions(
    log: Sequence[tuple[DispatchInput, tuple[tuple[str, str], ...]]],
    policy: str,
    worker_queue_fraction: float = 1.0,
) -> list[tuple[tuple[str, str], ...]]:
    """The simulator's dispatch decisions for a live scheduler's logged inputs.

    For each logged decision, the simulated workers take the live workers' reports as their
    published state and the live scheduler's unreflected assignments as their pending ones,
    the simulator's queue holds the live queue, and the simulator's own dispatch step decides
    (one policy object across all decisions, as in both services).
    """
    if not log:
        return []
    first = log[0][0]
    views = [worker_view(r, queue_fraction=worker_queue_fraction) for r in first.reports]
    config = SimConfig(gpu="CPU", models=["SmolLM2-135M"], num_gpus=max(1, len(views)), tp=1,
                       worker_queue_fraction=worker_queue_fraction)
    sim = Simulator(config, [], _policy_set(policy), workers=views, log_dispatch=True)
    assert sim.dispatch_log is not None
    out = []
    for inp, _ in log:
        if [r.worker_id for r in inp.reports] != [w.worker_id for w in sim.workers]:
            raise ValueError("the live fleet changed during the log; replay needs a fixed fleet")
        for w, report in zip(sim.workers, inp.reports, strict=True):
            w.published = report
            w.pending = [p for p in inp.pending if p.worker_id == w.worker_id]
            w._invalidate()
            w._view = None
            sim._dirty.append(w.idx)
        sim._pending = [_seq(i, r) for i, r in enumerate(inp.queue)]
        sim._depth = {}
        for s in sim._pending:
            sim._depth[s.model] = sim._depth.get(s.model, QueueDepth()).add(s.num_prompt_tokens)
        start = len(sim.dispatch_log)
        sim._dispatch(inp.now_s)
        out.append(tuple(sim.dispatch_log[start:]))
    return out


def _seq(idx: int, r: RequestView) -> SimSeq:
    seq = SimSeq(idx, r.request_id, r.model, r.arrival_s, r.num_prompt_tokens, r.max_tokens)
    seq.ttft_slo_s, seq.tpot_slo_s, seq.priority = r.ttft_slo_s, r.tpot_slo_s, r.priority
    seq.predicted_output_tokens = r.predicted_output_tokens
    return seq
