"""SeaLLM (Zhao et al., arXiv 2504.15720) and the multi-model baselines it is measured
against: several models sharing GPUs.

- ``seallm``: latency-aware two-stage placement with adaptive re-placement, and the
  doubling-budget batch policy across every model on a worker.
- ``dedicated``: every model on its own GPUs (GPUs shared out by load), FCFS.
- ``muxserve``: static co-location by load, FCFS batches in the unified KV pool.
- ``alpaserve``: model-parallel groups with replicas placed for statistical multiplexing, FCFS.

All four dispatch each request to the least-loaded worker holding its model.
"""

from __future__ import annotations

from kvfleet.policies.policy_set import PolicySet
from kvfleet.services.planner.core.baseline_placement import (
    AlpaServePlacementPolicy,
    DedicatedPlacementPolicy,
    MuxServePlacementPolicy,
)
from kvfleet.services.planner.core.seallm_placement import SeaLlmPlacementPolicy
from kvfleet.services.scheduler.core.policy import MostFreeKvPolicy
from kvfleet.services.worker.core.batch_policy import FcfsBatchPolicy
from kvfleet.services.worker.core.doubling_budget import DoublingBudgetPolicy

SETS = (
    PolicySet("seallm", "latency-aware placement and re-placement of several models per "
              "worker, doubling-budget scheduling across models",
              MostFreeKvPolicy, DoublingBudgetPolicy, placement=SeaLlmPlacementPolicy),
    PolicySet("dedicated", "each model on its own workers (shared out by load), FCFS",
              MostFreeKvPolicy, FcfsBatchPolicy, placement=DedicatedPlacementPolicy),
    PolicySet("muxserve", "static co-location by load, FCFS in the unified KV pool",
              MostFreeKvPolicy, FcfsBatchPolicy, placement=MuxServePlacementPolicy),
    PolicySet("alpaserve", "model-parallel groups, replicas placed for statistical "
              "multiplexing, FCFS", MostFreeKvPolicy, FcfsBatchPolicy,
              placement=AlpaServePlacementPolicy),
)
