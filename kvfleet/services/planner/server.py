"""Start the planner: publish the plan, keep workers on it, answer GetPlan/Reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from kvfleet.common.config import PlannerSettings
from kvfleet.common.grpc_util import Running, start_server
from kvfleet.common.proto.planner.v1 import planner_pb2, planner_pb2_grpc
from kvfleet.common.redis_store import RedisStore
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
    task: asyncio.Task[None]

    def addresses(self) -> dict[str, str]:
        return {"grpc": self.grpc.address}

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.grpc.stop()
        await self.reconciler.close()
        await self.reconciler.store.close()


async def _loop(rc: Reconciler, period_s: float) -> None:
    while True:
        try:
            await rc.reconcile()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconcile failed")
        await asyncio.sleep(period_s)


async def start(settings: PlannerSettings) -> RunningPlanner:
    if not settings.redis_url:
        raise ValueError("planner: redis_url is required")
    store = RedisStore.from_url(settings.redis_url)
    rc = Reconciler(store, settings)
    await rc.publish()  # a placement error stops the planner here, before it serves
    running = await start_server(
        settings.host, settings.port,
        lambda s: planner_pb2_grpc.add_PlannerServicer_to_server(PlannerServicer(rc), s),
        [SERVICE],
    )
    task = asyncio.create_task(_loop(rc, settings.reconcile_s), name="planner-loop")
    return RunningPlanner(running, rc, task)
