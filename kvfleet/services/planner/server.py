"""Start the planner: publish the plan, keep workers on it, answer GetPlan/Reconcile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kvfleet.common.aio import cancel_and_wait
from kvfleet.common.config import PlannerSettings
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.grpc_util import Running, start_server
from kvfleet.common.proto.planner.v1 import planner_pb2, planner_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.policies import policy_set
from kvfleet.services.planner.activity import record_activity
from kvfleet.services.planner.migrator import Migrator
from kvfleet.services.planner.overloader import Overloader
from kvfleet.services.planner.reconciler import Reconciler

log = logging.getLogger(__name__)
SERVICE = "kvfleet.planner.v1.Planner"


class PlannerServicer(planner_pb2_grpc.PlannerServicer):
    def __init__(self, reconciler: Reconciler) -> None:
        self.rc = reconciler

    async def GetPlan(self, request, context):  # noqa: N802
        plan = self.rc.plan
        if plan is None:
            return planner_pb2.GetPlanResponse()
        return planner_pb2.GetPlanResponse(
            version=plan.version,
            placements=[planner_pb2.Placement(worker_id=p.worker_id, model=p.model)
                        for p in plan.placements])

    async def Reconcile(self, request, context):  # noqa: N802
        loads, unloads = await self.rc.reconcile()
        return planner_pb2.ReconcileResponse(num_loads=loads, num_unloads=unloads)


@dataclass
class RunningPlanner:
    grpc: Running
    reconciler: Reconciler
    migrator: Migrator
    tasks: list[asyncio.Task[None]]
    overloader: Overloader | None = None

    def addresses(self) -> dict[str, str]:
        return {"grpc": self.grpc.address}

    async def stop(self) -> None:
        await cancel_and_wait(*self.tasks)
        await self.grpc.stop()
        await self.migrator.close()
        if self.overloader is not None:
            await self.overloader.close()
        await self.reconciler.close()
        await self.reconciler.store.close()


async def _every(what: str, period_s: float, step: Callable[[], Awaitable[object]]) -> None:
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:  # keep planning: one bad tick must not stop the fleet
            log.exception("%s failed", what)
        await asyncio.sleep(period_s)


async def start(settings: PlannerSettings) -> RunningPlanner:
    if not settings.redis_url:
        raise ValueError("planner: redis_url is required")
    security = FleetSecurity.from_settings(settings)
    security.check_bind(settings.host, settings.allow_unauthenticated, "planner")
    store = RedisStore.for_service(settings)
    rc = Reconciler(store, settings)
    await rc.publish()  # a placement error stops the planner here, before it serves
    running = await start_server(
        settings.host, settings.port,
        lambda s: planner_pb2_grpc.add_PlannerServicer_to_server(PlannerServicer(rc), s),
        [SERVICE], security=security,
    )
    migrator = Migrator(store, policy_set(settings.policy).migration(),
                        settings.migration_timeout_s, security=security,
                        link_bytes_per_s=settings.migration_link_bytes_per_s,
                        reprefill_tokens_per_s=settings.reprefill_tokens_per_s,
                        reprefill_busy_share=settings.reprefill_busy_share)

    async def reconcile() -> object:
        if await rc.store.get_plan() is None:  # Redis came back empty: publish again
            log.warning("no plan in Redis; publishing it again")
            await rc.publish()
        return await rc.reconcile()

    tasks = [asyncio.create_task(_every("reconcile", settings.reconcile_s, reconcile),
                                 name="planner-reconcile"),
             asyncio.create_task(_every("activity", settings.activity_interval_s,
                                        lambda: record_activity(store)),
                                 name="planner-activity")]
    if rc.adaptive:
        tasks.append(asyncio.create_task(
            _every("re-placement", settings.replan_s, rc.replan), name="planner-replan"))
    if migrator.policy.name != "none":
        tasks.append(asyncio.create_task(
            _every("migration tick", settings.migration_interval_s, migrator.tick),
            name="planner-migrate"))
    overloader = None
    overload = policy_set(settings.policy).overload()
    if overload.name != "none":
        overloader = Overloader(store, overload, settings.overload, security=security)
        tasks.append(asyncio.create_task(
            _every("overload tick", settings.overload.interval_s, overloader.tick),
            name="planner-overload"))
    log.info("planner on %s, policy %s", running.address, settings.policy)
    return RunningPlanner(running, rc, migrator, tasks, overloader)
