"""The planner's overload loop: on every tick, the policy set's overload policy looks at the
workers' heartbeats (occupancy, layer ranges, pipeline groups) and the scheduler's queue
depths, and orders layer actions, which go to the group's first stage (``DropLayers`` forms
a group, ``RestoreLayers`` dissolves one). Workers a layer action is still changing are
shown to the policy as busy, so it does not act on them twice.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from kvfleet.common.aio import cancel_and_wait
from kvfleet.common.clock import Clock, WallClock
from kvfleet.common.config import OverloadSettings
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.worker_client import WorkerClient
from kvfleet.services.planner.core.overload import (
    FleetLoad,
    LayerAction,
    OverloadPolicy,
    overload_views,
)
from kvfleet.services.planner.layer_actions import run_drop, run_restore

log = logging.getLogger(__name__)


class Overloader:
    def __init__(self, store: RedisStore, policy: OverloadPolicy, settings: OverloadSettings,
                 clock: Clock | None = None, security: FleetSecurity | None = None) -> None:
        self.store = store
        self.policy = policy
        self.settings = settings
        self.clock = clock or WallClock()
        policy.configure(settings.thresholds())
        self.workers = WorkerClient(settings.timeout_s, security)
        self.inflight: dict[str, tuple[asyncio.Task[None], frozenset[str]]] = {}
        self.num_drops = 0
        self.num_restores = 0
        self.num_failures = 0

    def busy(self) -> set[str]:
        return {w for _, members in self.inflight.values() for w in members}

    async def tick(self) -> tuple[LayerAction, ...]:
        """Decide and start this tick's layer actions; returns the actions started."""
        workers = await self.store.workers()
        live = {wid: (info, occ) for wid, (info, occ) in sorted(workers.items())
                if occ is not None and not occ.loading}
        reports = [occ.report() for _, occ in live.values()]
        models = sorted({m for r in reports for m in r.models})
        queued = {m: (await self.store.queue_depth(m))[1] for m in models}
        fleet = FleetLoad(tuple(overload_views(reports, self.busy())), queued)
        actions = self.policy.decide(fleet, self.clock.now_s())
        started = []
        for action in actions:
            members = frozenset(s.worker_id for s in action.stages)
            if action.group_id in self.inflight or not members <= set(live):
                continue
            addresses = {w: live[w][0].address for w in members}
            task = asyncio.create_task(self._run(action, addresses),
                                       name=f"{action.kind}-{action.group_id}")
            self.inflight[action.group_id] = (task, members)
            task.add_done_callback(lambda _t, g=action.group_id: self.inflight.pop(g, None))
            started.append(action)
        return tuple(started)

    async def _run(self, action: LayerAction, addresses: dict[str, str]) -> None:
        t0 = time.monotonic()
        leader = addresses[action.leader_id]
        try:
            if action.kind == "drop":
                log.info("group %s: dropping layers of %s on %s (%s)", action.group_id,
                         action.model, [s.worker_id for s in action.stages], action.reason)
                reply = await run_drop(self.store, self.workers, action, addresses,
                                       self.settings.timeout_s)
                self.num_drops += 1
            else:
                log.info("group %s: restoring %s (%s)", action.group_id, action.model,
                         action.reason)
                reply = await run_restore(  # type: ignore[assignment]
                    self.workers, action, leader, self.settings.timeout_s)
                self.num_restores += 1
        except grpc.aio.AioRpcError as e:
            self.num_failures += 1
            log.warning("group %s: %s failed: %s %s", action.group_id, action.kind, e.code(),
                        e.details())
            await self.store.event("failure", self.clock.now_s(), what=action.kind,
                                   group_id=action.group_id, detail=str(e.details()))
            return
        stages = [{"worker_id": s.worker_id, "num_sent": s.num_sent,
                   "num_recomputed": s.num_recomputed, "bytes_sent": s.bytes_sent,
                   "exchange_s": round(s.exchange_s, 4), "relayout_s": round(s.relayout_s, 4),
                   "reload_s": round(s.reload_s, 4)} for s in reply.stages]
        duration = time.monotonic() - t0
        log.info("group %s: %s done in %.2fs", action.group_id, action.kind, duration)
        await self.store.event(
            action.kind, self.clock.now_s(), group_id=action.group_id, model=action.model,
            members=[s.worker_id for s in action.stages],
            ranges=[[s.first_layer, s.last_layer] for s in action.stages],
            duration_s=round(duration, 4), reason=action.reason, stages=stages,
            **({"reload_s": round(reply.reload_s, 4)} if action.kind == "restore" else {}))

    async def close(self) -> None:
        await cancel_and_wait(*(t for t, _ in self.inflight.values()))
        await self.workers.close()
