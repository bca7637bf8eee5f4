"""The registry of policy sets. A policy set names one policy for each decision kvfleet makes:

| slot | decides | runs in |
| --- | --- | --- |
| dispatch | which worker takes each queued request | scheduler (live), dispatch tick (sim) |
| batch | which sequences run in each engine step | worker engine (live), simulated worker |
| migration | which running requests move, and where | planner tick (live and sim) |
| placement | which models each worker holds | planner (live and sim) |
| overload | layer drops and restores under KV overload | planner tick (live and sim) |

``kvfleet up --policy NAME`` (or ``policy:`` in the fleet config) and ``kvfleet sim --policy
NAME`` take the same names from here, so every idea and every baseline runs live and
simulated. Each factory returns a fresh policy object (policies may keep state).
"""

from __future__ import annotations

from collections.abc import Iterable

from kvfleet.policies import baselines, ecoserve, kunserve, mell, seallm
from kvfleet.policies.policy_set import PolicySet

POLICY_SETS: dict[str, PolicySet] = {}


def register(sets: Iterable[PolicySet]) -> None:
    for s in sets:
        if s.name in POLICY_SETS:
            raise ValueError(f"policy set {s.name!r} is registered twice")
        POLICY_SETS[s.name] = s


def policy_names() -> list[str]:
    return list(POLICY_SETS)


def policy_set(name: str) -> PolicySet:
    try:
        return POLICY_SETS[name]
    except KeyError:
        known = ", ".join(POLICY_SETS)
        raise ValueError(f"unknown policy {name!r}; known: {known}") from None


register(baselines.SETS)
register(ecoserve.SETS)
register(seallm.SETS)
register(kunserve.SETS)
register(mell.SETS)
