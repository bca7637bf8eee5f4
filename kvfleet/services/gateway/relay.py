"""Run one accepted request for a front door: submit, stream, measure, cancel on exit."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from kvfleet.services.gateway.frontend import Chunk, Frontend, Prepared
from kvfleet.services.gateway.metrics import GatewayMetrics


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
