"""EcoServe and the baselines its paper compares against (issue 9): SLO-aware batching with
exact KV reservation and lending, Orca's reserve-max_tokens admission, and vLLM v0's
prefill-pauses-decode batching. Every set dispatches to the least-loaded worker, whose free
pages are net of the pages its batch policy holds in reserve."""

from __future__ import annotations

from kvfleet.policies.policy_set import PolicySet
from kvfleet.services.scheduler.core.policy import MostFreeKvPolicy
from kvfleet.services.worker.core.ecoserve_policy import EcoServeBatchPolicy, OrcaBatchPolicy
from kvfleet.services.worker.core.vllm_v0_policy import VllmV0BatchPolicy

SETS = (
    PolicySet("ecoserve", "separate prompt and generation queues, generation batches by "
              "predicted length, KV reserved for the predicted length and lent while unused, "
              "SLO-slack ordering, least-loaded dispatch", MostFreeKvPolicy, EcoServeBatchPolicy),
    PolicySet("orca", "KV reserved for max_tokens at admission, arrival order, whole "
              "prompts, least-loaded dispatch", MostFreeKvPolicy, OrcaBatchPolicy),
    PolicySet("vllm-v0", "FCFS without chunked prefill (a prefill pauses decoding), "
              "recompute preemption, least-loaded dispatch", MostFreeKvPolicy,
              VllmV0BatchPolicy),
)
