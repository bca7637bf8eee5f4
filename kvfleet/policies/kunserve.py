"""KunServe (Cheng et al., EuroSys 2026): under KV overload, replicas of a model drop
complementary layers, serve together as a pipeline and use the freed weight memory as KV
pages; the layers are restored once the burst has passed. Requests are dispatched and
batched as the vLLM baseline does, so that the comparison isolates the memory policy."""

from __future__ import annotations

from kvfleet.policies.policy_set import PolicySet
from kvfleet.services.planner.core.kunserve import KunServeOverloadPolicy
from kvfleet.services.scheduler.core.policy import MostFreeKvPolicy
from kvfleet.services.worker.core.batch_policy import FcfsBatchPolicy

SETS = (
    PolicySet("kunserve", "vLLM's dispatch and batching; under KV overload replicas drop "
              "layers into pipeline groups (freed weights become KV), restored afterwards",
              MostFreeKvPolicy, FcfsBatchPolicy, overload=KunServeOverloadPolicy),
)
