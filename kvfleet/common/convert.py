"""Conversions between the shared protobuf messages and kvfleet's records."""

from __future__ import annotations

from kvfleet.common.proto.common.v1 import common_pb2
from kvfleet.common.sampling import SamplingParams
from kvfleet.common.slo import PRIORITIES, ServiceLevel, priority_rank


def sampling_to_pb(s: SamplingParams) -> common_pb2.SamplingParams:
    msg = common_pb2.SamplingParams(
        max_tokens=s.max_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
        stop_token_ids=list(s.stop_token_ids), stop=list(s.stop), ignore_eos=s.ignore_eos,
    )
    if s.seed is not None:
        msg.seed = s.seed
    return msg


def sampling_from_pb(msg: common_pb2.SamplingParams, default_max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=msg.max_tokens or default_max_tokens,
        temperature=msg.temperature,
        top_k=msg.top_k,
        top_p=msg.top_p if msg.HasField("top_p") else 1.0,
        seed=msg.seed if msg.HasField("seed") else None,
        stop_token_ids=tuple(msg.stop_token_ids),
        stop=tuple(msg.stop),
        ignore_eos=msg.ignore_eos,
    )


def service_level_to_pb(slo: ServiceLevel) -> common_pb2.ServiceLevel:
    msg = common_pb2.ServiceLevel()
    if slo.ttft_s is not None:
        msg.ttft_s = slo.ttft_s
    if slo.tpot_s is not None:
        msg.tpot_s = slo.tpot_s
    if slo.priority is not None:
        msg.priority = PRIORITIES[slo.priority]
    return msg


def service_level_from_pb(msg: common_pb2.ServiceLevel) -> ServiceLevel:
    """Raises :class:`SloError` for an unknown priority name (the caller validates ranges)."""
    return ServiceLevel(
        ttft_s=msg.ttft_s if msg.HasField("ttft_s") else None,
        tpot_s=msg.tpot_s if msg.HasField("tpot_s") else None,
        priority=priority_rank(msg.priority) if msg.priority else None,
    )
