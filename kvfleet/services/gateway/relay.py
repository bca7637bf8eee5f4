"""Run one accepted request for a front door: submit, stream, measure, cancel on exit."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from kvfleet.services.gateway.frontend import Chunk, Frontend, Prepared
from kvfleet.services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


async def _learn(frontend: Frontend, p: Prepared, num_output_tokens: int) -> None:
    """Teach the length predictor a completed request; a failure only costs the sample."""
    try:
        await frontend.predictor.observe(p.model, len(p.prompt_token_ids), num_output_tokens)
    except Exception as e:  # Redis trouble must not break a finished stream
        log.warning("request %s: predictor update failed: %s", p.request_id, e)


async def relay(frontend: Frontend, metrics: GatewayMetrics, p: Prepared,
                api: str) -> AsyncIterator[Chunk]:
    """Yield the request's chunks; if the consumer stops early (client gone), cancel it."""
    t0 = time.monotonic()
    finished = False
    first = True
    num_out = 0
    metrics.in_flight.inc()
    metrics.prompt_tokens.labels(p.model).inc(len(p.prompt_token_ids))
    try:
        await frontend.submit(p)
        async for chunk in frontend.stream(p.request_id):
            if first and chunk.token_ids:
                metrics.ttft.labels(p.model).observe(time.monotonic() - t0)
                first = False
            num_out += len(chunk.token_ids)
            if chunk.finish_reason:
                finished = True
                if chunk.finish_reason in ("stop", "length"):
                    await _learn(frontend, p, num_out)
            yield chunk
        metrics.e2e.labels(p.model).observe(time.monotonic() - t0)
        metrics.requests.labels(api, p.model, "ok").inc()
    finally:
        metrics.in_flight.dec()
        metrics.output_tokens.labels(p.model).inc(num_out)
        if not finished:
            metrics.cancelled.inc()
            metrics.requests.labels(api, p.model, "cancelled").inc()
            frontend.cancel_soon(p.request_id)
