"""The planner's placement loop: publish the placement policy's plan and make live workers
match it."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import PlannerSettings
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.worker_client import WorkerClient
from kvfleet.policies import policy_set
from kvfleet.services.planner.core.types import FleetSpec, ModelSpecRef, Plan, WorkerSpec

log = logging.getLogger(__name__)


def fleet_spec(settings: PlannerSettings) -> FleetSpec:
    return FleetSpec(
        models=tuple(ModelSpecRef(m.name, m.weight_bytes) for m in settings.models),
        workers=tuple(WorkerSpec(w.id, w.memory_bytes, tuple(w.models)) for w in settings.workers),
    )


class Reconciler:
    def __init__(self, store: RedisStore, settings: PlannerSettings) -> None:
        self.store = store
        self.settings = settings
        self.placement = policy_set(settings.policy).placement()
        self.plan: Plan | None = None
        self.workers = WorkerClient(settings.rpc_timeout_s, FleetSecurity.from_settings(settings))
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self.num_loads = 0
        self.num_unloads = 0

    async def publish(self) -> rs.PlanRecord:
        """Ask the placement policy for a plan; publish it with a new version if it changed."""
        plan = self.placement.place(fleet_spec(self.settings), self.plan, {}, time.time())
        placements = tuple((p.worker_id, p.model) for p in plan.placements)
        current = await self.store.get_plan()
        if current is not None and current.placements == placements:
            record = current
        else:
            version = (current.version + 1) if current else 1
            record = rs.PlanRecord(version, placements, time.time())
            await self.store.set_plan(record)
            await self.store.event("plan", time.time(), version=version,
                                   placements=[list(p) for p in placements])
            log.info("published plan v%d: %s", version, placements)
        await self.store.set_models(
            [rs.ModelInfo(m.name, m.slo.service_level(), m.max_queued_requests,
                          m.max_queued_tokens) for m in self.settings.models]
        )
        self.plan = Plan(record.version, plan.placements)
        return record

    async def reconcile(self) -> tuple[int, int]:
        """Start Load/Unload calls so that live workers hold their planned models."""
        assert self.plan is not None
        loads = unloads = 0
        for wid, (info, occ) in (await self.store.workers()).items():
            if occ is None:
                continue
            task = self._inflight.get(wid)
            if task is not None and not task.done():
                continue
            want = set(self.plan.models_of(wid))
            have = set(occ.models)
            missing = sorted(want - have)
            extra = sorted(have - want) if wid in {w.id for w in self.settings.workers} else []
            if missing or extra:
                loads += len(missing)
                unloads += len(extra)
                self._inflight[wid] = asyncio.create_task(
                    self._apply(wid, info.address, missing, extra))
        return loads, unloads

    async def _apply(self, worker_id: str, address: str, load: list[str], unload: list[str]) -> None:
        timeout = self.settings.rpc_timeout_s
        try:
            for model in unload:
                await self.workers.unload(address, model, timeout)
                self.num_unloads += 1
                await self.store.event("unload", time.time(), worker_id=worker_id, model=model)
            for model in load:
                log.info("worker %s: loading %s", worker_id, model)
                await self.workers.load(address, model, timeout)
                self.num_loads += 1
                await self.store.event("load", time.time(), worker_id=worker_id, model=model)
        except grpc.aio.AioRpcError as e:
            log.warning("worker %s: plan step failed: %s %s", worker_id, e.code(), e.details())
            await self.workers.forget(address)
            await self.store.event("failure", time.time(), worker_id=worker_id,
                                   what="load/unload", detail=str(e.details()))

    async def close(self) -> None:
        for task in self._inflight.values():
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        await self.workers.close()
