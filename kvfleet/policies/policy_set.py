"""A policy set: one policy for each decision kvfleet makes (see ``registry``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvfleet.services.planner.core.migration import MigrationPolicy, NoMigrationPolicy
from kvfleet.services.planner.core.overload import NoOverloadPolicy, OverloadPolicy
from kvfleet.services.planner.core.placement import PlacementPolicy, StaticPlacementPolicy
from kvfleet.services.scheduler.core.policy import DispatchPolicy
from kvfleet.services.worker.core.batch_policy import BatchPolicy


@dataclass(frozen=True, slots=True)
class PolicySet:
    name: str
    description: str
    dispatch: Callable[[], DispatchPolicy]
    batch: Callable[[], BatchPolicy]
    migration: Callable[[], MigrationPolicy] = NoMigrationPolicy
    placement: Callable[[], PlacementPolicy] = StaticPlacementPolicy
    overload: Callable[[], OverloadPolicy] = NoOverloadPolicy
