"""Named policy sets: one registry for the live services and the simulator."""

from kvfleet.policies.policy_set import PolicySet
from kvfleet.policies.registry import POLICY_SETS, policy_names, policy_set

__all__ = ["POLICY_SETS", "PolicySet", "policy_names", "policy_set"]
