"""The planner's migration loop: on every tick, the policy set's migration policy looks at
the workers' heartbeats (occupancy and per-request sizes) and orders migrations, which go
through the source worker's ``Migrate`` (KV over torch.distributed to the destination, live
or stop-and-copy, or tokens to re-prefill there: the order's mode). The policy's budgets are
the planner's settings: each worker's link, and the re-prefill tokens per second it offers
(all of them when it runs nothing, a share when it does).

A request is not offered to the policy again while its migration is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from kvfleet.common.aio import cancel_and_wait
from kvfleet.common.clock import Clock, WallClock
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.worker_client import WorkerClient
from kvfleet.services.planner.core.migration import (
    MigrationOrder,
    MigrationPolicy,
    migration_views,
)

log = logging.getLogger(__name__)


class Migrator:
    def __init__(
        self, store: RedisStore, policy: MigrationPolicy, timeout_s: float,
        clock: Clock | None = None, security: FleetSecurity | None = None,
        link_bytes_per_s: float = 0.0, reprefill_tokens_per_s: float = 0.0,
        reprefill_busy_share: float = 0.0,
    ) -> None:
        self.store = store
        self.policy = policy
        self.timeout_s = timeout_s
        self.clock = clock or WallClock()
        self.link_bytes_per_s = link_bytes_per_s
        self.reprefill_tokens_per_s = reprefill_tokens_per_s
        self.reprefill_busy_share = reprefill_busy_share
        self.workers = WorkerClient(timeout_s, security)
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.num_migrations = 0
        self.num_failures = 0

    async def tick(self) -> tuple[MigrationOrder, ...]:
        """Decide and start this tick's migrations; returns the orders started."""
        workers = await self.store.workers()
        live = {wid: (info, occ) for wid, (info, occ) in sorted(workers.items()) if occ is not None}
        reports = [occ.report() for _, occ in live.values()]
        views = migration_views(
            reports, self.inflight, await self.store.draining(),
            link_bytes_per_s=self.link_bytes_per_s,
            reprefill_tokens_per_s={
                r.worker_id: self.reprefill_tokens_per_s
                * (self.reprefill_busy_share if r.num_running else 1.0) for r in reports},
        )
        orders = self.policy.decide(views, self.clock.now_s())
        started = []
        for order in orders:
            src, dst = live.get(order.src_worker_id), live.get(order.dst_worker_id)
            if src is None or dst is None or order.request_id in self.inflight:
                continue
            task = asyncio.create_task(self._migrate(order, src[0].address, dst[0].address),
                                       name=f"migrate-{order.request_id}")
            self.inflight[order.request_id] = task
            task.add_done_callback(lambda _t, rid=order.request_id: self.inflight.pop(rid, None))
            started.append(order)
        return tuple(started)

    async def _migrate(self, order: MigrationOrder, src_address: str, dst_address: str) -> None:
        t0 = time.monotonic()
        try:
            reply = await self.workers.migrate(src_address, order.request_id,
                                               order.dst_worker_id, dst_address, self.timeout_s,
                                               order.mode)
        except grpc.aio.AioRpcError as e:
            self.num_failures += 1
            log.warning("request %s: migration %s -> %s failed: %s %s", order.request_id,
                        order.src_worker_id, order.dst_worker_id, e.code(), e.details())
            await self.store.event("failure", self.clock.now_s(), request_id=order.request_id,
                                   what="migrate", detail=str(e.details()))
            return
        self.num_migrations += 1
        log.info("request %s: migrated (%s) %s -> %s (%d tokens in %.3fs, paused %.3fs)",
                 order.request_id, order.mode, order.src_worker_id, order.dst_worker_id,
                 reply.num_tokens, time.monotonic() - t0, reply.pause_s)
        await self.store.event("migrate", self.clock.now_s(), request_id=order.request_id,
                               src=order.src_worker_id, dst=order.dst_worker_id,
                               num_tokens=reply.num_tokens, num_bytes=reply.num_bytes,
                               by=self.policy.name, mode=reply.mode or order.mode,
                               pause_s=round(reply.pause_s, 6))

    async def close(self) -> None:
        await cancel_and_wait(*self.inflight.values())
        await self.workers.close()
