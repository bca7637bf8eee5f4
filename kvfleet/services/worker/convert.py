"""Protobuf messages the worker receives, as engine types."""

from __future__ import annotations

from kvfleet.common.convert import sampling_from_pb, service_level_from_pb
from kvfleet.common.proto.worker.v1 import worker_pb2
from kvfleet.services.worker.engine import EngineRequest

DEFAULT_MAX_TOKENS = 16


def engine_request(msg: worker_pb2.AssignRequest) -> EngineRequest:
    """Raises :class:`~kvfleet.common.slo.SloError` for an unknown priority name."""
    return EngineRequest(
        request_id=msg.request_id,
        model=msg.model,
        prompt_token_ids=tuple(msg.prompt_token_ids),
        sampling=sampling_from_pb(msg.sampling, DEFAULT_MAX_TOKENS),
        output_token_ids=tuple(msg.output_token_ids),
        arrival_s=msg.arrival_s,
        slo=service_level_from_pb(msg.service_level),
        predicted_output_tokens=(
            msg.predicted_output_tokens if msg.HasField("predicted_output_tokens") else None
        ),
    )
