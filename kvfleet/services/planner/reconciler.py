"""The planner's placement loop: publish the placement policy's plan and make live workers
match it.

A placement that adapts (``seallm``) also re-plans on a tick (``replan``) from the per-model
load the gateways record in Redis. Live workers follow a new plan through Load and Unload:
an unload drains (the worker stops taking the model's requests, which wait at the scheduler,
and unloads once those it has are finished), and a model's last replica is unloaded only once
a new one serves it, unless its worker needs the memory for the model it must load."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import grpc

from kvfleet.common import redis_schema as rs
from kvfleet.common.aio import cancel_and_wait
from kvfleet.common.config import PlannerSettings
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.worker_client import WorkerClient
from kvfleet.policies import policy_set
from kvfleet.services.planner.core.types import (
    FleetSpec,
    ModelLoad,
    ModelSpecRef,
    Plan,
    WorkerSpec,
    with_backlog,
)

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
        self.adaptive = hasattr(self.placement, "groups")
        if self.adaptive:
            from kvfleet.services.planner.model_profiles import placement_fleet_spec

            self.spec = placement_fleet_spec(settings)
        else:
            self.spec = fleet_spec(settings)
        self.plan: Plan | None = None
        self.workers = WorkerClient(settings.rpc_timeout_s, FleetSecurity.from_settings(settings))
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self.num_loads = 0
        self.num_unloads = 0
        self.num_replans = 0

    def expected_load(self) -> dict[str, ModelLoad]:
        return {m: ModelLoad(m, *v[:3]) for m, v in self.settings.expected_load.items()
                if len(v) >= 3}

    async def publish(self) -> rs.PlanRecord:
        """Ask the placement policy for a plan; publish it with a new version if it changed."""
        plan = self.placement.place(self.spec, self.plan, self.expected_load(), time.time())
        record = await self._publish(plan)
        await self.store.set_models(
            [rs.ModelInfo(m.name, m.slo.service_level(), m.max_queued_requests,
                          m.max_queued_tokens) for m in self.settings.models]
        )
        return record

    async def _publish(self, plan: Plan) -> rs.PlanRecord:
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
        self.plan = Plan(record.version, plan.placements)
        return record

    async def measured_load(self) -> dict[str, ModelLoad]:
        """Each model's load over the last ``load_window_s`` (from the gateways' counts), with
        the requests still queued for it (``with_backlog``)."""
        now = time.time()
        window = self.settings.load_window_s
        out: dict[str, ModelLoad] = {}
        queued: dict[str, tuple[int, int]] = {}
        for m in self.spec.models:
            n, tin, tout = await self.store.model_load(m.name, now, window)
            if n:
                out[m.name] = ModelLoad(m.name, n / window, tin / n, tout / n)
            queued[m.name] = await self.store.queue_depth(m.name)
        return with_backlog(out, queued, window)

    async def replan(self) -> bool:
        """One re-placement tick: returns whether the plan changed."""
        if not self.adaptive or self.plan is None:
            return False
        load = await self.measured_load()
        if not load:
            return False
        plan = self.placement.place(self.spec, self.plan, load, time.time())
        if plan is self.plan or plan.placements == self.plan.placements:
            return False
        old = self.plan
        await self._publish(plan)
        self.num_replans += 1
        await self.store.event("replan", time.time(), version=self.plan.version,
                               load={m: [round(v.request_rate, 3), round(v.mean_prompt_tokens),
                                         round(v.mean_output_tokens)] for m, v in load.items()})
        log.info("re-placement v%d -> v%d on load %s", old.version, self.plan.version, load)
        return True

    async def reconcile(self) -> tuple[int, int]:
        """Start Load/Unload calls so that live workers hold their planned models."""
        assert self.plan is not None
        loads = unloads = 0
        live = {wid: (info, occ) for wid, (info, occ) in (await self.store.workers()).items()
                if occ is not None}
        holders: dict[str, set[str]] = {}
        for wid, (_, occ) in live.items():
            for m in occ.models:
                holders.setdefault(m, set()).add(wid)
        configured = {w.id for w in self.settings.workers}
        for wid, (info, occ) in live.items():
            task = self._inflight.get(wid)
            if task is not None and not task.done():
                continue
            want = set(self.plan.models_of(wid))
            have = set(occ.models)
            missing = sorted(want - have)
            extra = sorted(have - want) if wid in configured else []
            if missing or extra:
                loads += len(missing)
                unloads += len(extra)
                self._inflight[wid] = asyncio.create_task(
                    self._apply(wid, info.address, missing, extra, holders))
        return loads, unloads

    async def _apply(self, worker_id: str, address: str, load: list[str], unload: list[str],
                     holders: Mapping[str, set[str]]) -> None:
        timeout = self.settings.rpc_timeout_s
        planned = {p.model for p in self.plan.placements} if self.plan else set()
        # A model served elsewhere (or planned nowhere) leaves first; a last replica waits
        # until its new one serves, unless this worker needs the room.
        free_now = [m for m in unload if holders.get(m, set()) - {worker_id} or m not in planned]
        later = [m for m in unload if m not in free_now]
        try:
            for model in free_now:
                await self._unload(worker_id, address, model, timeout)
            refused = []
            for model in load:
                if not await self._load(worker_id, address, model, timeout):
                    refused.append(model)
            if refused and later:
                for model in later:
                    await self._unload(worker_id, address, model, timeout)
                for model in refused:
                    await self._load(worker_id, address, model, timeout)
        except grpc.aio.AioRpcError as e:
            log.warning("worker %s: plan step failed: %s %s", worker_id, e.code(), e.details())
            await self.workers.forget(address)
            await self.store.event("failure", time.time(), worker_id=worker_id,
                                   what="load/unload", detail=str(e.details()))

    async def _unload(self, worker_id: str, address: str, model: str, timeout: float) -> None:
        log.info("worker %s: unloading %s (draining its requests)", worker_id, model)
        await self.workers.unload(address, model, timeout, drain=True)
        self.num_unloads += 1
        await self.store.event("unload", time.time(), worker_id=worker_id, model=model)

    async def _load(self, worker_id: str, address: str, model: str, timeout: float) -> bool:
        """Load ``model``; False when the worker has no room for it yet."""
        log.info("worker %s: loading %s", worker_id, model)
        try:
            await self.workers.load(address, model, timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                log.info("worker %s: no room for %s yet: %s", worker_id, model, e.details())
                return False
            raise
        self.num_loads += 1
        await self.store.event("load", time.time(), worker_id=worker_id, model=model)
        return True

    async def close(self) -> None:
        await cancel_and_wait(*self._inflight.values())
        await self.workers.close()
