"""Placement policies: which models each worker holds. Pure.

The planner asks its placement policy for a plan at start and then on every tick, with the
fleet as configured, the plan in force and each model's measured load. A policy that keeps
the plan returns it unchanged; the planner publishes a new version only when the
placements differ, and loads and unloads models to match.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from kvfleet.services.planner.core.policy import static_plan
from kvfleet.services.planner.core.types import FleetSpec, ModelLoad, Plan


class PlacementPolicy(Protocol):
    name: str

    def place(
        self,
        fleet: FleetSpec,
        current: Plan | None,
        load: Mapping[str, ModelLoad],
        now_s: float,
    ) -> Plan: ...


class StaticPlacementPolicy:
    """The configured placement, never changed (every baseline but SeaLLM's)."""

    name = "static"

    def place(
        self,
        fleet: FleetSpec,
        current: Plan | None,
        load: Mapping[str, ModelLoad],
        now_s: float,
    ) -> Plan:
        plan = static_plan(fleet, version=current.version if current else 1)
        if current is not None and plan.placements == current.placements:
            return current
        return plan
