"""Dispatch decisions of a short trace, for comparing the simulator with the live stack.

The live scheduler and the simulator call the same ``DispatchPolicy.decide``. Given the
live fleet's workers (their occupancy views at rest: ids, models, total pages, tokens per
page) and the requests, ``replay_dispatch`` simulates that fleet on a virtual clock and
returns the decisions in the order they were made.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvfleet.policies import POLICY_SETS, PolicySet
from kvfleet.services.scheduler.core.policy import DISPATCH_POLICIES
from kvfleet.services.scheduler.core.types import WorkerView
from kvfleet.services.worker.core.batch_policy import FcfsBatchPolicy
from kvfleet.sim.engine import RequestLike, Simulator
from kvfleet.sim.fleet import SimConfig


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
    )
    sim = Simulator(config, requests, _policy_set(policy), workers=workers, log_dispatch=True)
    sim.run()
    assert sim.dispatch_log is not None
    return list(sim.dispatch_log)
