"""Live (multi-stage) migration between two workers, as Llumnix does it.

The source copies the request's KV to the target in rounds while the request keeps decoding
here: the first round sends everything computed so far, each later one only the tokens
written since the round before. Once a round finds at most ``final_tokens`` new tokens (or
after ``max_rounds`` rounds) the request stops at a step boundary, the last pages go, and
the target imports all the rounds and resumes it. The request stands still for that last
part only: about one decode step, however long it is.

Wire: every round is one payload over the pair's process group (meta + one KV tensor); the
last one carries ``final``. ``reset`` tells the target to drop earlier rounds (the request
was preempted here meanwhile and its KV is sent again from the start); ``cancel`` tells it
to give up (the request finished here during the copy).

If anything fails after the request stopped here, it resumes here from the rounds it sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from kvfleet.common.config import WorkerSettings
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc
from kvfleet.services.worker.engine import EngineInputError, SequenceExport
from kvfleet.services.worker.runner import EngineRunner
from kvfleet.services.worker.transfer import PairGroups, recv_payload, send_payload
from kvfleet.services.worker.transfer.channel import PayloadRefused

log = logging.getLogger(__name__)


class Endpoint(Protocol):
    """What a migration needs of the worker's service (its servicer provides it)."""

    runner: EngineRunner
    groups: PairGroups
    settings: WorkerSettings

    def stub(self, address: str) -> worker_pb2_grpc.WorkerStub: ...

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    @property
    def wire_device(self) -> str: ...


@dataclass(frozen=True, slots=True)
class LiveResult:
    num_tokens: int
    num_bytes: int
    num_rounds: int
    pause_s: float


class MigrationAborted(Exception):
    """The live migration did not happen; the request runs on here (or has finished)."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


async def send_live(svc: Endpoint, rid: str, target: str, address: str) -> LiveResult:
    """Move ``rid`` to ``target`` (at ``address``) live. Raises MigrationAborted."""
    runner, groups, settings = svc.runner, svc.groups, svc.settings
    group, new = groups.outgoing(target)
    stub = svc.stub(address)
    call = stub.ReceiveSequence(worker_pb2.ReceiveSequenceRequest(
        source_worker_id=settings.worker_id, group_id=group.group_id,
        store_host=settings.transfer_host, store_port=groups.store_port, request_id=rid,
        mode="live"), timeout=settings.transfer_timeout_s)
    sent: list[SequenceExport] = []
    num_bytes = 0
    stopped = False
    pg = None
    try:
        pg = await svc.run_blocking(groups.form_outgoing, group) if new else group.pg

        async def send(meta: dict, tensors: list) -> int:
            return int(await svc.run_blocking(send_payload, pg, 1, meta, tensors, svc.wire_device))

        since = 0
        for _ in range(settings.live_migration_rounds):
            try:
                part = await runner.snapshot(rid, since)
            except EngineInputError:
                if rid in runner.running:  # preempted: its KV is being recomputed
                    break
                await send({"request_id": rid, "cancel": True}, [])
                raise MigrationAborted(grpc.StatusCode.FAILED_PRECONDITION,
                                       f"request {rid} finished during the copy") from None
            part.meta["final"] = False
            num_bytes += await send(part.meta, part.tensors)
            sent.append(part)
            fresh = part.meta["token_range"][1] - since
            since = part.meta["token_range"][1]
            if len(sent) > 1 and fresh <= settings.live_migration_final_tokens:
                break
        t_stop = time.monotonic()
        try:
            final = await runner.export(rid, since_tokens=since)
        except EngineInputError:
            # Preempted since the last round (its KV is shorter now), or gone.
            if rid not in runner.running:
                await send({"request_id": rid, "cancel": True}, [])
                raise MigrationAborted(grpc.StatusCode.FAILED_PRECONDITION,
                                       f"request {rid} finished during the copy") from None
            final = await runner.export(rid, since_tokens=0)
            final.meta["reset"] = True
            sent = []
        stopped = True
        final.meta["final"] = True
        num_bytes += await send(final.meta, final.tensors)
        sent.append(final)
        reply = await call
        pause = time.monotonic() - t_stop
    except MigrationAborted:
        call.cancel()
        raise
    except Exception as e:
        call.cancel()
        groups.drop(group)
        if stopped:
            log.warning("request %s: live migration to %s failed (%s); resuming here", rid,
                        target, e)
            await runner.import_(rid, sent)
        detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
        raise MigrationAborted(grpc.StatusCode.ABORTED, f"migration failed: {detail}") from e
    return LiveResult(reply.num_tokens, num_bytes, len(sent), pause)


async def receive_live(svc: Endpoint, request, context, check: Callable[[dict, list], None]  # type: ignore[no-untyped-def]
                       ) -> worker_pb2.ReceiveSequenceResponse:
    """The target's side: gather the rounds until the final one (``check`` refuses a payload's
    declared sizes before anything is allocated), then import them all and take the request
    over under a new lease before a single step runs here."""
    rid, src = request.request_id, request.source_worker_id
    group = None
    try:
        group = await svc.run_blocking(svc.groups.join_incoming, request.group_id, src,
                                       request.store_host, request.store_port)
        parts: list[SequenceExport] = []
        while True:
            meta, tensors = await svc.run_blocking(recv_payload, group.pg, 0, svc.wire_device,
                                                   check)
            if meta.get("cancel"):
                break
            if meta.get("reset"):
                parts = []
            parts.append(SequenceExport(meta=meta, tensors=tensors))
            if meta.get("final"):
                break
    except Exception as e:
        log.warning("request %s: live receive from %s failed: %s", rid, src, e)
        if isinstance(e, PayloadRefused) and group is not None:
            svc.groups.drop(group)
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"receive failed: {e}")
    if meta.get("cancel"):
        await context.abort(grpc.StatusCode.ABORTED, f"the source gave up moving {rid}")
    store = svc.runner.store
    try:
        await svc.runner.import_(rid, parts, lambda: store.move_request(
            rid, src, svc.settings.worker_id))
    except EngineInputError as e:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
    except Exception as e:  # nothing runs here; the source resumes it
        log.warning("request %s: taking ownership failed: %s", rid, e)
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot take ownership: {e}")
    num_tokens = max(int(p.meta["token_range"][1]) for p in parts)
    return worker_pb2.ReceiveSequenceResponse(num_tokens=num_tokens)
