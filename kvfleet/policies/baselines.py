"""The baselines: vLLM-like serving and the classic dispatch rules, with or without
Llumnix-style KV-balancing migration."""

from __future__ import annotations

from kvfleet.policies.policy_set import PolicySet
from kvfleet.services.planner.core.migration import KvBalancePolicy
from kvfleet.services.scheduler.core.policy import (
    BestFitPolicy,
    MostFreeKvPolicy,
    RoundRobinPolicy,
    WorstFitPolicy,
)
from kvfleet.services.worker.core.batch_policy import FcfsBatchPolicy

SETS = (
    PolicySet("vllm", "FCFS batches with chunked prefill, recompute preemption, "
              "least-loaded dispatch", MostFreeKvPolicy, FcfsBatchPolicy),
    PolicySet("round-robin", "FCFS batches, round-robin dispatch",
              RoundRobinPolicy, FcfsBatchPolicy),
    PolicySet("llumnix", "least-loaded dispatch plus migrations that balance KV load",
              MostFreeKvPolicy, FcfsBatchPolicy, KvBalancePolicy),
    PolicySet("best-fit", "best-fit KV placement, no migration", BestFitPolicy, FcfsBatchPolicy),
    PolicySet("worst-fit", "worst-fit KV placement, no migration",
              WorstFitPolicy, FcfsBatchPolicy),
)
