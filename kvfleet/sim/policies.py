"""Named policy sets the simulator can run: each is a dispatch policy, a worker batch policy
and a migration policy, taken from kvfleet's own pure cores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvfleet.services.planner.core.migration import (
    KvBalancePolicy,
    MigrationPolicy,
    NoMigrationPolicy,
)
from kvfleet.services.scheduler.core.policy import DispatchPolicy, make_dispatch_policy
from kvfleet.services.worker.core.batch_policy import BatchPolicy, FcfsBatchPolicy


@dataclass(frozen=True, slots=True)
class PolicySet:
    name: str
    description: str
    dispatch: str
    make_batch: Callable[[], BatchPolicy]
    make_migration: Callable[[], MigrationPolicy]

    def make_dispatch(self) -> DispatchPolicy:
        return make_dispatch_policy(self.dispatch)


POLICY_SETS: dict[str, PolicySet] = {
    p.name: p
    for p in (
        PolicySet("vllm", "FCFS batches, recompute preemption, least-loaded dispatch",
                  "most-free-kv", FcfsBatchPolicy, NoMigrationPolicy),
        PolicySet("round-robin", "FCFS batches, round-robin dispatch",
                  "round-robin", FcfsBatchPolicy, NoMigrationPolicy),
        PolicySet("llumnix", "least-loaded dispatch plus migrations that balance KV load",
                  "most-free-kv", FcfsBatchPolicy, KvBalancePolicy),
        PolicySet("best-fit", "best-fit KV placement, no migration",
                  "best-fit", FcfsBatchPolicy, NoMigrationPolicy),
        PolicySet("worst-fit", "worst-fit KV placement, no migration",
                  "worst-fit", FcfsBatchPolicy, NoMigrationPolicy),
    )
}


def policy_set(name: str) -> PolicySet:
    try:
        return POLICY_SETS[name]
    except KeyError:
        known = ", ".join(POLICY_SETS)
        raise ValueError(f"unknown policy {name!r}; known: {known}") from None
