"""Start a worker: engine, runner, gRPC server, registry entry and heartbeat."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from kvfleet.common import redis_schema as rs
from kvfleet.common.aio import cancel_and_wait
from kvfleet.common.config import WorkerSettings
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.grpc_util import Running, start_server
from kvfleet.common.proto.worker.v1 import worker_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.policies import policy_set
from kvfleet.services.worker.engine import Engine, EngineConfig
from kvfleet.services.worker.runner import EngineRunner
from kvfleet.services.worker.servicer import WorkerServicer
from kvfleet.services.worker.transfer import PairGroups

log = logging.getLogger(__name__)
SERVICE = "kvfleet.worker.v1.Worker"
CPU_DEFAULT_MEMORY_BYTES = 1 << 30


@dataclass
class RunningWorker:
    grpc: Running
    runner: EngineRunner
    servicer: WorkerServicer
    heartbeat: asyncio.Task[None]
    settings: WorkerSettings

    @property
    def address(self) -> str:
        return self.grpc.address

    def addresses(self) -> dict[str, str]:
        return {"grpc": self.grpc.address}

    async def stop(self) -> None:
        await cancel_and_wait(self.heartbeat)
        await self.grpc.stop(grace_s=1.0)
        await self.runner.stop()
        await self.servicer.close()
        store = self.runner.store
        await store.clear_heartbeat(self.settings.worker_id)  # the scheduler requeues at once
        await store.close()


async def _heartbeat(runner: EngineRunner, period_s: float) -> None:
    while True:
        try:
            await runner.write_occupancy(force=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker %s: heartbeat failed", runner.worker_id)
        await asyncio.sleep(period_s)


async def start(settings: WorkerSettings) -> RunningWorker:
    if not settings.redis_url:
        raise ValueError("worker: redis_url is required")
    es = settings.engine
    memory = settings.memory_bytes
    if memory is None and not es.device.startswith("cuda"):
        memory = CPU_DEFAULT_MEMORY_BYTES
    engine = Engine(EngineConfig(
        memory_bytes=memory, cuda_reserve_bytes=es.cuda_reserve_bytes,
        page_size_bytes=es.page_size_bytes,
        max_num_batched_tokens=es.max_num_batched_tokens, max_num_seqs=es.max_num_seqs,
        device=es.device, dtype=es.dtype, num_threads=es.num_threads,
        model_dtypes=es.model_dtypes, compile=es.compile,
    ), policy_set(settings.policy).batch())
    security = FleetSecurity.from_settings(settings)
    security.check_bind(settings.host, settings.allow_unauthenticated, "worker")
    store = RedisStore.for_service(settings)
    runner = EngineRunner(engine, store, settings.worker_id, settings.heartbeat_ttl_s,
                          settings.occupancy_min_s)
    runner.node = settings.node or settings.advertise_host or settings.host
    backend = settings.transfer_backend
    if backend == "auto":
        backend = "nccl" if es.device.startswith("cuda") else "gloo"
    advertised = settings.advertise_host or settings.host
    if not settings.transfer_host:
        settings = settings.model_copy(update={"transfer_host": advertised})
    groups = PairGroups(settings.worker_id, settings.transfer_host, settings.transfer_timeout_s,
                        backend)
    servicer = WorkerServicer(runner, groups, settings)
    running = await start_server(
        settings.host, settings.port,
        lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(servicer, s),
        [SERVICE], serving=False, security=security,
    )
    servicer.grpc = running
    runner.start()
    for model in settings.preload:
        await runner.call(engine.load_model, model)
    await runner.refresh_occupancy()
    runner.info = rs.WorkerInfo(settings.worker_id, f"{advertised}:{running.port}",
                                runner.boot_id, time.time(),
                                f"{settings.transfer_host}:{groups.store_port}")
    await store.register_worker(runner.info)
    if engine.models():
        await running.set_serving(True)
    task = asyncio.create_task(_heartbeat(runner, settings.heartbeat_s), name="heartbeat")
    log.info("worker %s on %s (models %s)", settings.worker_id, running.address, engine.models())
    return RunningWorker(running, runner, servicer, task, settings)
