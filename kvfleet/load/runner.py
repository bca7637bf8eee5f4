"""Replays a workload against one target in real time and records what the client saw.

Each request is sent at its arrival time (at most ``max_concurrency`` in flight when set; a
request waiting for a slot is sent late and its latency counts from when it was sent, as in
vLLM). Arrivals end with the workload; requests still running ``drain_timeout_s`` after the
last arrival are cancelled and recorded as failed, so a run always ends by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvfleet.load.client import ChunkTimer, LoadClient, Outcome, Prepared
from kvfleet.load.metrics import RequestRecord
from kvfleet.load.slo import SloSet
from kvfleet.load.tokens import PromptBuilder
from kvfleet.workload.spec import RequestSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunSettings:
    max_concurrency: int | None = None
    drain_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class RunResult:
    records: tuple[RequestRecord, ...]
    duration_s: float


def prepare(
    specs: Sequence[RequestSpec],
    builders: dict[str, PromptBuilder],
    slos: SloSet | None = None,
) -> list[Prepared]:
    """Build every prompt before the run starts, so building does not disturb the timing.
    ``slos``: each request carries its model's TTFT and TPOT targets to the server."""
    out = []
    for spec in specs:
        builder = builders.get(spec.model) or builders.get("*")
        if builder is None:
            raise ValueError(f"no tokenizer for model {spec.model!r}")
        ids, text = builder.build(spec)
        slo = slos.for_model(spec.model) if slos is not None else None
        out.append(Prepared(spec, tuple(ids), text,
                            slo.ttft_s if slo else None, slo.tpot_s if slo else None))
    return out


def _record(req: Prepared, t0: float, outcome: Outcome) -> RequestRecord:
    timer = outcome.timer
    return RequestRecord(
        request_id=req.spec.request_id,
        model=req.spec.model,
        scheduled_s=req.spec.arrival_s,
        start_s=timer.start - t0,
        input_tokens=req.spec.input_tokens,
        max_tokens=req.spec.output_tokens,
        output_tokens=outcome.output_tokens if outcome.success else timer.tokens,
        success=outcome.success,
        ttft_s=timer.ttft_s,
        e2el_s=timer.e2el_s,
        itl_s=tuple(timer.gaps),
        error=outcome.error,
        ttft_slo_s=req.ttft_slo_s,
        tpot_slo_s=req.tpot_slo_s,
        predicted_output_tokens=outcome.predicted_output_tokens,
    )


async def run_load(
    client: LoadClient,
    requests: Sequence[Prepared],
    settings: RunSettings = RunSettings(),
    on_start: Callable[[Prepared], None] | None = None,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> RunResult:
    sem = asyncio.Semaphore(settings.max_concurrency) if settings.max_concurrency else None
    t0 = time.perf_counter()
    records: dict[str, RequestRecord] = {}

    async def one(req: Prepared) -> None:
        if sem is not None:
            await sem.acquire()
        outcome = Outcome(ChunkTimer(), False, error="cancelled: the run ended before it finished")
        try:
            if on_start:
                on_start(req)
            outcome = await client.send(req, req.spec.model)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a client bug must not lose the other requests
            log.exception("request %s failed in the client", req.spec.request_id)
            outcome = Outcome(outcome.timer, False, error=f"client error: {exc!r}")
        finally:
            if sem is not None:
                sem.release()
        rec = _record(req, t0, outcome)
        records[req.spec.request_id] = rec
        if on_done:
            on_done(rec)

    tasks: list[asyncio.Task[None]] = []
    for req in requests:
        delay = t0 + req.spec.arrival_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(req), name=req.spec.request_id))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=settings.drain_timeout_s)
        if pending:
            log.warning("cancelling %d requests still running at the end of the run", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    duration = time.perf_counter() - t0
    ordered = tuple(records[r.spec.request_id] for r in requests if r.spec.request_id in records)
    return RunResult(ordered, duration)
