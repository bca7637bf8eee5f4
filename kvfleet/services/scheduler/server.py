"""Start the scheduler: gRPC server + dispatch loop."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from kvfleet.common.aio import cancel_and_wait
from kvfleet.common.config import SchedulerSettings
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.grpc_util import Running, start_server
from kvfleet.common.proto.scheduler.v1 import scheduler_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.policies import policy_set
from kvfleet.services.scheduler.dispatcher import Dispatcher
from kvfleet.services.scheduler.servicer import SchedulerServicer

log = logging.getLogger(__name__)
SERVICE = "kvfleet.scheduler.v1.Scheduler"


@dataclass
class RunningScheduler:
    grpc: Running
    dispatcher: Dispatcher
    task: asyncio.Task[None]
    stopping: asyncio.Event

    @property
    def address(self) -> str:
        return self.grpc.address

    def addresses(self) -> dict[str, str]:
        return {"grpc": self.grpc.address}

    async def stop(self, grace_s: float = 5.0) -> None:
        # Let the loop finish its tick: cancelling redis-py inside a blocking XREADGROUP
        # can leave the read hanging. Cancel only if the tick does not end in time.
        self.stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace_s)
        except TimeoutError:
            await cancel_and_wait(self.task)
        await self.grpc.stop()
        await self.dispatcher.close()
        await self.dispatcher.store.close()


async def _loop(d: Dispatcher, tick_s: float, stopping: asyncio.Event) -> None:
    block_ms = max(1, int(tick_s * 1000))
    while not stopping.is_set():
        try:
            await d.recover()
            break
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis not reachable yet: keep trying
            log.exception("scheduler recovery failed; retrying")
            await asyncio.sleep(1.0)
    alive_s = 0.0
    while not stopping.is_set():
        try:
            if time.monotonic() - alive_s > 1.0:  # liveness for the gateways' readiness
                await d.store.scheduler_alive(d.queues.consumer, time.time())
                alive_s = time.monotonic()
            await d.tick(block_ms)
        except asyncio.CancelledError:
            raise
        except Exception:  # keep scheduling: one bad tick must not stop the fleet
            log.exception("scheduler tick failed")
            await asyncio.sleep(tick_s)
        if d.queue:
            await asyncio.sleep(tick_s)


async def start(settings: SchedulerSettings) -> RunningScheduler:
    if not settings.redis_url:
        raise ValueError("scheduler: redis_url is required")
    security = FleetSecurity.from_settings(settings)
    security.check_bind(settings.host, settings.allow_unauthenticated, "scheduler")
    store = RedisStore.for_service(settings)
    dispatcher = Dispatcher(store, policy_set(settings.policy).dispatch(),
                            settings.consumer, settings.rpc_timeout_s, settings.reclaim_idle_s,
                            queue_fraction=settings.worker_queue_fraction, security=security)
    running = await start_server(
        settings.host, settings.port,
        lambda s: scheduler_pb2_grpc.add_SchedulerServicer_to_server(SchedulerServicer(dispatcher), s),
        [SERVICE], security=security,
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(_loop(dispatcher, settings.tick_s, stopping),
                               name="scheduler-loop")
    log.info("scheduler %s on %s, policy %s", settings.consumer, running.address,
             settings.policy)
    return RunningScheduler(running, dispatcher, task, stopping)
