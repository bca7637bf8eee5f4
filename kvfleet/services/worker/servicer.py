"""The worker's gRPC API: converts and delegates to the runner and the transfer channel."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from pathlib import Path

import grpc

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import WorkerSettings
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.grpc_util import ChannelPool, Running
from kvfleet.common.ids import valid_request_id
from kvfleet.common.models.registry import REGISTERED
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc
from kvfleet.common.slo import SloError
from kvfleet.services.worker.convert import engine_request
from kvfleet.services.worker.engine import (
    EngineInputError,
    ModelNotFoundError,
    PartialModelError,
    SequenceExport,
)
from kvfleet.services.worker.live_migration import MigrationAborted, receive_live, send_live
from kvfleet.services.worker.pipeline_member import PipelineMember
from kvfleet.services.worker.runner import EngineRunner
from kvfleet.services.worker.transfer import PairGroups, recv_payload, send_payload
from kvfleet.services.worker.transfer.channel import PayloadRefused

log = logging.getLogger(__name__)
MODES = ("stop", "live", "reprefill")


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, runner: EngineRunner, groups: PairGroups, settings: WorkerSettings) -> None:
        self.runner = runner
        self.groups = groups
        self.settings = settings
        self.grpc: Running | None = None  # set once the server is up (health updates)
        self._pool = ChannelPool(FleetSecurity.from_settings(settings))
        self._transfer = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="transfer")
        self._pair_locks: dict[str, asyncio.Lock] = {}
        self._load_lock = asyncio.Lock()
        self.pipeline = PipelineMember(runner, settings, groups, self._live_worker)

    @property
    def _wire_device(self) -> str:
        return self.settings.engine.device if self.groups.backend == "nccl" else "cpu"

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self._transfer, fn, *args)

    # what a live migration uses (live_migration.Endpoint)
    run_blocking = _run

    @property
    def wire_device(self) -> str:
        return self._wire_device

    def stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        return worker_pb2_grpc.WorkerStub(self._pool.get(address))

    async def Assign(self, request, context):  # noqa: N802
        rid = request.request_id
        if rid in self.runner.running:  # assigned again (a scheduler restarted mid-assign)
            return worker_pb2.AssignResponse(boot_id=self.runner.boot_id)
        try:  # bad input first: INVALID_ARGUMENT whoever sent it
            self.runner.engine.validate(engine_request(request))
        except ModelNotFoundError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except (EngineInputError, SloError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        # Fencing: only an assignment to us under the request's current lease runs here.
        owner = await self.runner.store.lease_of(rid) if valid_request_id(rid) else None
        if owner is None or owner[0] != self.settings.worker_id or owner[2] == rs.FINISHED:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"request {rid[:128]!r} is not assigned to "
                                f"{self.settings.worker_id}")
        if request.lease and request.lease != owner[1]:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"request {rid}: lease {request.lease} is stale ({owner[1]})")
        if request.model in self.runner.draining:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"model {request.model!r} is being unloaded from "
                                f"{self.settings.worker_id}")
        try:
            req = engine_request(request)
            intake_seq = await self.runner.add(req, owner[1])
        except (ModelNotFoundError, PartialModelError) as e:  # the scheduler keeps it queued
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except (EngineInputError, SloError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if rid in self.runner.cancelled:
            self.runner.cancelled.discard(rid)
            self.runner.abort(rid)
        log.debug("request %s: accepted on %s (%d prompt, %d resumed tokens)", rid,
                  self.settings.worker_id, len(req.prompt_token_ids), len(req.output_token_ids))
        return worker_pb2.AssignResponse(boot_id=self.runner.boot_id, intake_seq=intake_seq)

    async def Cancel(self, request, context):  # noqa: N802
        rid = request.request_id
        found = self.runner.abort(rid)
        if not found and rid not in self.runner.running:
            self.runner.cancelled.add(rid)  # the Assign may still be on its way
        return worker_pb2.CancelResponse(found=found)

    def load_allowed(self, model: str) -> bool:
        """A model named in the fleet config (or preloaded), a built-in name when the config
        names none, or a checkpoint under an allow-listed directory. No other local path."""
        named = {m.name for m in self.settings.models} | set(self.settings.preload)
        if model in named or (not self.settings.models and model in REGISTERED):
            return True
        if not self.settings.model_dirs or "\x00" in model:
            return False
        try:
            path = Path(model).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        return any(path.is_relative_to(Path(d).expanduser().resolve())
                   for d in self.settings.model_dirs)

    async def Load(self, request, context):  # noqa: N802
        if not self.load_allowed(request.model):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"model {request.model[:200]!r} is neither in the fleet config "
                                "nor under an allowed model directory")
        async with self._load_lock:
            self.runner.loading = True
            await self.runner.write_occupancy(force=True)
            try:
                if request.model not in self.runner.engine.models():
                    t0 = time.monotonic()
                    await self.runner.call(self.runner.engine.load_model, request.model)
                    log.info("worker %s: loaded %s in %.1fs", self.settings.worker_id,
                             request.model, time.monotonic() - t0)
            except EngineInputError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            finally:
                self.runner.loading = False
            await self.runner.refresh_occupancy()
            if self.grpc is not None:
                await self.grpc.set_serving(True)
            return worker_pb2.LoadResponse(models=self.runner.engine.models())

    async def Unload(self, request, context):  # noqa: N802
        model = request.model
        try:
            if request.drain and model in self.runner.engine.models():
                # No request is lost: new ones stay queued at the scheduler, those here finish.
                self.runner.draining.add(model)
                await self.runner.write_occupancy(force=True)
                t0 = time.monotonic()
                while await self.runner.call(self.runner.engine.has_requests, model):
                    await asyncio.sleep(0.05)
                log.info("worker %s: drained %s in %.1fs", self.settings.worker_id, model,
                         time.monotonic() - t0)
            async with self._load_lock:
                if model in self.runner.engine.models():
                    await self.runner.call(self.runner.engine.unload_model, model)
        finally:
            self.runner.draining.discard(model)
        await self.runner.refresh_occupancy()
        return worker_pb2.UnloadResponse(models=self.runner.engine.models())

    async def _live_worker(self, worker_id: str) -> rs.WorkerInfo | None:
        """A registered worker of this fleet with a live heartbeat, or None."""
        entry = (await self.runner.store.workers()).get(worker_id)
        return entry[0] if entry is not None and entry[1] is not None else None

    async def Migrate(self, request, context):  # noqa: N802
        rid, target = request.request_id, request.target_worker_id
        mode = request.mode or "stop"
        if mode not in MODES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown migration mode {mode[:32]!r}; known: {', '.join(MODES)}")
        if rid not in self.runner.running:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"request {rid} is not running on {self.settings.worker_id}")
        # The target must be a live worker of this fleet, dialled at its registered address:
        # a caller cannot name an address of its own to receive the request.
        info = await self._live_worker(target)
        if info is None or target == self.settings.worker_id:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{target!r} is not another live worker of this fleet")
        if request.target_address and request.target_address != info.address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"worker {target} is registered at {info.address}, not "
                                f"{request.target_address[:100]}")
        lock = self._pair_locks.setdefault(target, asyncio.Lock())
        if mode == "live":
            async with lock:
                t0 = time.monotonic()
                try:
                    live = await send_live(self, rid, target, info.address)
                except MigrationAborted as e:
                    await context.abort(e.code, e.detail)
            dt = time.monotonic() - t0
            log.info("request %s: migrated live %s -> %s, %d tokens, %d bytes in %d rounds, "
                     "%.3fs (paused %.3fs)", rid, self.settings.worker_id, target,
                     live.num_tokens, live.num_bytes, live.num_rounds, dt, live.pause_s)
            return worker_pb2.MigrateResponse(
                num_tokens=live.num_tokens, num_bytes=live.num_bytes, duration_s=dt,
                pause_s=live.pause_s, num_rounds=live.num_rounds, mode=mode)
        async with lock:
            t0 = time.monotonic()
            try:
                export = await self.runner.export(rid, with_kv=mode != "reprefill")
            except (EngineInputError, KeyError) as e:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot export: {e}")
            group, new = self.groups.outgoing(target)
            stub = worker_pb2_grpc.WorkerStub(self._pool.get(info.address))
            call = stub.ReceiveSequence(worker_pb2.ReceiveSequenceRequest(
                source_worker_id=self.settings.worker_id, group_id=group.group_id,
                store_host=self.settings.transfer_host, store_port=self.groups.store_port,
                request_id=rid), timeout=self.settings.transfer_timeout_s)
            try:
                pg = await self._run(self.groups.form_outgoing, group) if new else group.pg
                num_bytes = await self._run(send_payload, pg, 1, export.meta, export.tensors,
                                            self._wire_device)
                reply = await call
            except Exception as e:
                call.cancel()
                self.groups.drop(group)
                log.warning("request %s: migration to %s failed (%s); resuming here", rid,
                            target, e)
                await self.runner.import_(rid, export)
                detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
                await context.abort(grpc.StatusCode.ABORTED, f"migration failed: {detail}")
            dt = time.monotonic() - t0
        log.info("request %s: migrated (%s) %s -> %s, %d tokens, %d bytes in %.3fs", rid, mode,
                 self.settings.worker_id, target, reply.num_tokens, num_bytes, dt)
        return worker_pb2.MigrateResponse(num_tokens=reply.num_tokens, num_bytes=num_bytes,
                                          duration_s=dt, pause_s=dt, num_rounds=1, mode=mode)

    async def ReceiveSequence(self, request, context):  # noqa: N802
        rid, src = request.request_id, request.source_worker_id
        # Only a live worker of this fleet, sending a request it owns, through the transfer
        # store it registered: nothing here dials an address a caller made up.
        info = await self._live_worker(src)
        endpoint = f"{request.store_host}:{request.store_port}"
        if info is None or src == self.settings.worker_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{src!r} is not another live worker of this fleet")
        if not info.transfer_address or endpoint != info.transfer_address:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"worker {src} transfers from {info.transfer_address or '-'}, "
                                f"not {endpoint[:100]}")
        rec = await self.runner.store.get_request(rid) if valid_request_id(rid) else None
        if rec is None or rec.worker_id != src or rec.state == rs.FINISHED:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"request {rid[:128]!r} is not running on {src}")
        try:
            m = self.runner.engine.model(rec.model)
        except ModelNotFoundError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        max_tokens = len(rec.prompt_token_ids) + rec.sampling.max_tokens
        kv = (m.stage.last - m.stage.first, 2, m.spec.num_kv_heads, m.spec.head_dim)

        def check(meta: dict, specs: list) -> None:
            """Sizes the sender may declare: one KV tensor of this model's shape for at most
            the tokens the request can have."""
            if meta.get("request_id") != rid:
                raise PayloadRefused("the payload is of another request")
            if not specs and (meta.get("cancel") or meta.get("token_range") == [0, 0]):
                return  # a live copy given up, or tokens only (re-prefilled here)
            if meta.get("model") != rec.model:
                raise PayloadRefused("the payload is of another model")
            if len(specs) != 1:
                raise PayloadRefused(f"{len(specs)} tensors, expected one")
            shape, dtype = specs[0]
            if (len(shape) != 5 or (shape[0], shape[1], shape[3], shape[4]) != kv
                    or not 0 <= shape[2] <= max_tokens or not dtype.is_floating_point):
                raise PayloadRefused(f"KV tensor {shape} {dtype} does not fit {rec.model}")

        if request.mode == "live":
            return await receive_live(self, request, context, check)
        try:
            group = await self._run(self.groups.join_incoming, request.group_id, src,
                                    request.store_host, request.store_port)
            meta, tensors = await self._run(recv_payload, group.pg, 0, self._wire_device, check)
        except Exception as e:
            log.warning("request %s: receive from %s failed: %s", rid, src, e)
            if isinstance(e, PayloadRefused):
                self.groups.drop(group)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"receive failed: {e}")
        export = SequenceExport(meta=meta, tensors=tensors)
        try:  # import, then take the record over (new lease) before a single step runs here
            await self.runner.import_(rid, export, lambda: self.runner.store.move_request(
                rid, src, self.settings.worker_id))
        except EngineInputError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except Exception as e:  # nothing runs here; the source resumes it
            log.warning("request %s: taking ownership failed: %s", rid, e)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot take ownership: {e}")
        num_tokens = int(tensors[0].shape[2]) if tensors and tensors[0].dim() >= 3 else 0
        return worker_pb2.ReceiveSequenceResponse(num_tokens=num_tokens)

    # ---------------------------------------------------------------- pipeline groups
    async def DropLayers(self, request, context):  # noqa: N802
        async def join(address: str, msg: worker_pb2.JoinPipelineRequest):  # type: ignore[no-untyped-def]
            stub = worker_pb2_grpc.WorkerStub(self._pool.get(address))
            return await stub.JoinPipeline(msg, timeout=self.settings.pipeline.timeout_s)

        try:
            return await self.pipeline.drop(request, join)
        except EngineInputError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except grpc.aio.AioRpcError as e:
            await context.abort(grpc.StatusCode.ABORTED, f"a member failed: {e.details()}")
        except Exception as e:  # noqa: BLE001 (a rendezvous or transfer failure)
            log.exception("DropLayers failed")
            await context.abort(grpc.StatusCode.ABORTED, f"forming the group failed: {e}")

    async def JoinPipeline(self, request, context):  # noqa: N802
        try:
            return await self.pipeline.join(request)
        except EngineInputError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except Exception as e:  # noqa: BLE001
            log.exception("JoinPipeline failed")
            await context.abort(grpc.StatusCode.ABORTED, f"joining the group failed: {e}")

    async def PrefetchLayers(self, request, context):  # noqa: N802
        try:
            return await self.pipeline.prefetch(request.model)
        except EngineInputError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))

    async def RestoreLayers(self, request, context):  # noqa: N802
        async def prefetch(worker_id: str, model: str):  # type: ignore[no-untyped-def]
            info = await self._live_worker(worker_id)
            if info is None:
                raise EngineInputError(f"member {worker_id} is not a live worker")
            stub = worker_pb2_grpc.WorkerStub(self._pool.get(info.address))
            return await stub.PrefetchLayers(worker_pb2.PrefetchLayersRequest(model=model),
                                             timeout=self.settings.pipeline.timeout_s)

        try:
            return await self.pipeline.restore(request, prefetch)
        except EngineInputError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except grpc.aio.AioRpcError as e:
            await context.abort(grpc.StatusCode.ABORTED, f"a member failed: {e.details()}")
        except Exception as e:  # noqa: BLE001
            log.exception("RestoreLayers failed")
            await context.abort(grpc.StatusCode.ABORTED, f"restoring failed: {e}")

    async def close(self) -> None:
        await self._pool.close()
        self._transfer.shutdown(wait=False, cancel_futures=True)
