"""The scheduler's gRPC API: converts and delegates."""

from __future__ import annotations

import logging
import time

import grpc

from kvfleet.common.proto.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from kvfleet.services.scheduler.dispatcher import Dispatcher

log = logging.getLogger(__name__)


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, dispatcher: Dispatcher, migrate_timeout_s: float = 120.0) -> None:
        self.d = dispatcher
        self.migrate_timeout_s = migrate_timeout_s

    async def Migrate(self, request, context):  # noqa: N802
        store = self.d.store
        rec = await store.get_request(request.request_id)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no request {request.request_id!r}")
        if rec.state == "finished" or not rec.worker_id:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"request {rec.request_id} is {rec.state}, not running")
        if rec.worker_id == request.target_worker_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"request {rec.request_id} already runs on {rec.worker_id}")
        workers = await store.workers()
        src = workers.get(rec.worker_id)
        dst = workers.get(request.target_worker_id)
        if dst is None or dst[1] is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no live worker {request.target_worker_id!r}")
        if rec.model not in dst[1].models:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"worker {request.target_worker_id} does not hold {rec.model}")
        if src is None or src[1] is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"worker {rec.worker_id} is dead")
        t0 = time.monotonic()
        try:
            reply = await self.d.workers.migrate(src[0].address, rec.request_id,
                                                 request.target_worker_id, dst[0].address,
                                                 self.migrate_timeout_s, request.mode)
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), f"migration failed: {e.details()}")
        await store.event("migrate", time.time(), request_id=rec.request_id,
                          src=rec.worker_id, dst=request.target_worker_id,
                          num_tokens=reply.num_tokens, num_bytes=reply.num_bytes,
                          mode=reply.mode or "stop", pause_s=round(reply.pause_s, 6))
        return scheduler_pb2.MigrateResponse(
            source_worker_id=rec.worker_id, target_worker_id=request.target_worker_id,
            num_tokens=reply.num_tokens, num_bytes=reply.num_bytes,
            duration_s=time.monotonic() - t0, pause_s=reply.pause_s, mode=reply.mode or "stop",
        )

    async def Drain(self, request, context):  # noqa: N802
        store = self.d.store
        workers = await store.workers()
        if request.worker_id not in workers:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no worker {request.worker_id!r}")
        await store.set_draining(request.worker_id, not request.undrain)
        await store.event("undrain" if request.undrain else "drain", time.time(),
                          worker_id=request.worker_id)
        return scheduler_pb2.DrainResponse(
            num_running=len(await store.worker_requests(request.worker_id)))
