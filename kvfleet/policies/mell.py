"""MELL (Liu et al., INFOCOM 2025): the fleet packed onto as few workers as the packing rules
allow, with bounded, adaptive, live migration."""

from __future__ import annotations

from kvfleet.policies.policy_set import PolicySet
from kvfleet.services.planner.core.mell import MellPolicy
from kvfleet.services.scheduler.core.packing_policy import PackingDispatchPolicy
from kvfleet.services.worker.core.batch_policy import FcfsBatchPolicy

SETS = (
    PolicySet("mell", "size-class packing onto the fewest workers (Allocate at dispatch; "
              "Depart/Update epochs of bounded migrations, KV copied live or re-prefilled)",
              PackingDispatchPolicy, FcfsBatchPolicy, MellPolicy),
)
