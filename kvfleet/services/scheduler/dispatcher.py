"""The scheduler's loop: read queues, watch worker liveness, dispatch through the pure core.

One iteration (``tick``): pull new queue entries, requeue the requests of workers whose
heartbeat expired, ask the dispatch core for assignments, and send ``Assign`` to the chosen
workers. Queue entries are acknowledged only after their request is assigned. Requests no
worker has room for stay queued here (the gateway bounds the queue). Each accepted
assignment counts against its worker until a heartbeat shows it (``core/occupancy.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from kvfleet.common import redis_schema as rs
from kvfleet.common.clock import Clock, WallClock
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.worker_client import WorkerClient
from kvfleet.services.scheduler.adapters.queue import RequestQueues
from kvfleet.services.scheduler.core.dispatch import DispatchInput, dispatch
from kvfleet.services.scheduler.core.occupancy import PendingAssignment, unreflected
from kvfleet.services.scheduler.core.policy import DispatchPolicy
from kvfleet.services.scheduler.core.types import RequestView

log = logging.getLogger(__name__)


@dataclass
class Queued:
    model: str
    entry_id: str
    record: rs.RequestRecord
    num_output: int


def request_view(rec: rs.RequestRecord, num_output: int) -> RequestView:
    return RequestView(
        rec.request_id, rec.model, rec.arrival_s, len(rec.prompt_token_ids),
        rec.sampling.max_tokens, num_output, rec.slo.ttft_s, rec.slo.tpot_s, rec.slo.rank,
        rec.predicted_output_tokens,
    )


class Dispatcher:
    def __init__(
        self,
        store: RedisStore,
        policy: DispatchPolicy,
        consumer: str,
        rpc_timeout_s: float,
        reclaim_idle_s: float,
        clock: Clock | None = None,
        queue_fraction: float = 1.0,
        security: FleetSecurity | None = None,
        max_queued: int = 10_000,
    ) -> None:
        self.store = store
        self.policy = policy
        self.queues = RequestQueues(store.r, consumer)
        self.workers = WorkerClient(rpc_timeout_s, security)
        self.clock = clock or WallClock()
        self.reclaim_idle_ms = int(reclaim_idle_s * 1000)
        self.queue: dict[str, Queued] = {}
        self.queue_fraction = queue_fraction
        self.pending: dict[str, list[PendingAssignment]] = {}  # by worker id
        #: every decision's input and output, when set (tests compare them with the simulator)
        self.decision_log: list[tuple[DispatchInput, tuple[tuple[str, str], ...]]] | None = None
        self.max_queued = max_queued
        self._last_sweep = 0.0
        self._last_claim = 0.0
        self.num_assigned = 0
        self.num_ticks = 0

    async def recover(self) -> None:
        """After a (re)start: take back our own pending entries, and idle ones of others."""
        entries = await self.queues.read_own_pending()
        entries += await self.queues.claim_idle(self.reclaim_idle_ms)
        await self._admit(entries, await self.store.workers())
        log.info("recovered %d pending queue entries", len(entries))

    async def tick(self, block_ms: int | None) -> None:
        self.num_ticks += 1
        workers = await self.store.workers()
        await self._reap_dead(workers)
        # Bounded: with max_queued requests in memory, new ones wait in their Redis streams.
        room = self.max_queued - len(self.queue)
        entries = await self.queues.read_new(block_ms if not self.queue else None,
                                             count=max(0, min(512, room)))
        if time.monotonic() - self._last_sweep > 1.0:
            self._last_sweep = time.monotonic()
            await self._sweep()
        if time.monotonic() - self._last_claim > max(1.0, self.reclaim_idle_ms / 2000):
            self._last_claim = time.monotonic()
            entries += await self.queues.claim_idle(self.reclaim_idle_ms)
        if entries:
            workers = await self.store.workers()
            await self._admit(entries, workers)
        if self.queue:
            await self._dispatch(workers)

    async def _admit(
        self, entries: list[tuple[str, str, str]],
        workers: dict[str, tuple[rs.WorkerInfo, rs.Occupancy | None]],
    ) -> None:
        for model, entry_id, rid in entries:
            try:  # one unreadable record must not stop the others
                await self._admit_one(model, entry_id, rid, workers)
            except Exception as e:
                log.warning("request %s: unreadable queue entry %s (%s); failing it", rid,
                            entry_id, e)
                await self._fail(rid, model, entry_id, "error")

    async def _fail(self, rid: str, model: str, entry_id: str, reason: str) -> None:
        """End a request that cannot be scheduled, so its client hears of it."""
        q = self.queue.pop(rid, None)
        try:
            if q is not None:
                await self.store.release_queued(q.record)  # out of the model's queue bound
            if rid and await self.store.r.exists(rs.request_key(rid)):
                await self.store.append_tokens(rid, [rs.TokenEntry(0, None, "", reason)])
                await self.store.finish(rid, reason)
        finally:
            await self.queues.ack(model, entry_id)

    async def _sweep(self) -> None:
        """Drop queued requests that were cancelled or ran past their deadline meanwhile."""
        now_s = self.clock.now_s()
        for q in list(self.queue.values()):
            rid = q.record.request_id
            try:
                cancelled, state = await self.store.r.hmget(rs.request_key(rid), "cancelled",
                                                            "state")
                if cancelled == "1":
                    await self._drop_cancelled(q.record, q.model, q.entry_id)
                    self.queue.pop(rid, None)
                elif state is None or state == rs.FINISHED:
                    await self.store.release_queued(q.record)
                    await self.queues.ack(q.model, q.entry_id)
                    self.queue.pop(rid, None)
                elif q.record.deadline_s is not None and now_s > q.record.deadline_s:
                    log.info("request %s: deadline passed while queued", rid)
                    await self._fail(rid, q.model, q.entry_id, "timeout")
            except Exception:
                log.exception("request %s: sweep failed", rid)

    async def _admit_one(
        self, model: str, entry_id: str, rid: str,
        workers: dict[str, tuple[rs.WorkerInfo, rs.Occupancy | None]],
    ) -> None:
        if rid in self.queue:
            return
        rec = await self.store.get_request(rid)
        if rec is None or rec.state == rs.FINISHED:
            if rec is not None:
                await self.store.release_queued(rec)
            await self.queues.ack(model, entry_id)
            return
        if rec.cancelled:
            await self._drop_cancelled(rec, model, entry_id)
            return
        if rec.state == rs.ASSIGNED and rec.worker_id and workers.get(rec.worker_id, (0, None))[1]:
            await self.store.release_queued(rec)
            await self.queues.ack(model, entry_id)  # assigned by a predecessor already
            return
        num_output = len(rs.output_tokens(await self.store.all_tokens(rid)))
        self.queue[rid] = Queued(model, entry_id, rec, num_output)

    async def _drop_cancelled(self, rec: rs.RequestRecord, model: str, entry_id: str) -> None:
        await self.store.append_tokens(rec.request_id, [rs.TokenEntry(
            len(rs.output_tokens(await self.store.all_tokens(rec.request_id))), None, "",
            "abort")])
        await self.store.finish(rec.request_id, "abort")
        await self.store.release_queued(rec)
        await self.queues.ack(model, entry_id)

    async def _reap_dead(self, workers: dict[str, tuple[rs.WorkerInfo, rs.Occupancy | None]]) -> None:
        for wid, (_info, occ) in workers.items():
            if occ is not None:
                continue
            rids = await self.store.worker_requests(wid)
            now_s = self.clock.now_s()
            log.warning("worker %s: heartbeat expired; requeueing %d requests", wid, len(rids))
            for rid in sorted(rids):
                rec = await self.store.get_request(rid)
                if rec is None or rec.state == rs.FINISHED or rec.worker_id != wid:
                    continue
                if rec.cancelled:
                    await self.store.finish(rid, "abort", wid)
                    continue
                await self.store.requeue(rec, now_s, reason=f"worker {wid} dead")
            await self.store.r.delete(rs.worker_requests_key(wid))
            await self.store.forget_worker(wid)
            self.pending.pop(wid, None)
            await self.store.event("worker_dead", now_s, worker_id=wid, num_requeued=len(rids))

    async def _dispatch(self, workers: dict[str, tuple[rs.WorkerInfo, rs.Occupancy | None]]) -> None:
        reports = tuple(
            occ.report() for _wid, (_info, occ) in sorted(workers.items())
            if occ is not None and not (occ.loading and not occ.models)
        )
        live = {r.worker_id: r for r in reports}
        self.pending = {
            wid: left for wid, ps in self.pending.items()
            if wid in live and (left := unreflected(ps, live[wid]))
        }
        ordered = sorted(self.queue.values(), key=lambda q: (q.record.arrival_s, q.record.request_id))
        inp = DispatchInput(
            self.clock.now_s(), tuple(request_view(q.record, q.num_output) for q in ordered),
            reports, tuple(p for ps in self.pending.values() for p in ps),
            frozenset(await self.store.draining()), self.queue_fraction,
        )
        out = dispatch(self.policy, inp)
        if self.decision_log is not None:
            self.decision_log.append(
                (inp, tuple((a.request_id, a.worker_id) for a in out.decisions.assignments)))
        results = await asyncio.gather(*(
            self._assign(self.queue[a.request_id], a.worker_id, workers[a.worker_id][0].address,
                         out.pages[a.request_id], inp.now_s)
            for a in out.decisions.assignments
        ), return_exceptions=True)
        for a, r in zip(out.decisions.assignments, results, strict=True):
            if isinstance(r, Exception):  # isolate: this request fails, the others go on
                q = self.queue.get(a.request_id)
                log.warning("request %s: assignment failed: %r", a.request_id, r)
                if q is not None and not isinstance(r, (OSError, ConnectionError)):
                    await self._fail(a.request_id, q.model, q.entry_id, "error")

    async def _assign(self, q: Queued, worker_id: str, address: str, num_pages: int,
                      decided_s: float = 0.0) -> None:
        rid = q.record.request_id
        ok, lease = await self.store.assign(rid, worker_id)
        if not ok:
            await self.store.r.srem(rs.worker_requests_key(worker_id), rid)
            await self._drop_cancelled(q.record, q.model, q.entry_id)
            self.queue.pop(rid, None)
            return
        output = rs.output_tokens(await self.store.all_tokens(rid))
        assigned_s = self.clock.now_s()  # before the worker can produce a token
        try:
            reply = await self.workers.assign(address, q.record, output, lease)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.aio.AioRpcError) else None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                log.warning("request %s: rejected by worker %s: %s", rid, worker_id,
                            e.details() if isinstance(e, grpc.aio.AioRpcError) else e)
                await self.store.append_tokens(rid, [rs.TokenEntry(len(output), None, "", "error")])
                await self.store.finish(rid, "error", worker_id)
                await self.store.release_queued(q.record)
                await self.queues.ack(q.model, q.entry_id)
                self.queue.pop(rid, None)
                return
            log.warning("request %s: assign to %s failed (%s); keeping it queued", rid,
                        worker_id, code)
            async with self.store.r.pipeline(transaction=True) as p:
                p.hset(rs.request_key(rid), mapping={"state": rs.QUEUED, "worker": ""})
                p.srem(rs.worker_requests_key(worker_id), rid)
                await p.execute()
            return
        self.pending.setdefault(worker_id, []).append(
            PendingAssignment(rid, worker_id, reply.boot_id, reply.intake_seq, num_pages))
        await self.store.release_queued(q.record)
        await self.queues.ack(q.model, q.entry_id)
        self.queue.pop(rid, None)
        self.num_assigned += 1
        log.debug("request %s: assigned to %s (%d output tokens so far)", rid, worker_id,
                  len(output))
        await self.store.event("assign", assigned_s, request_id=rid, worker_id=worker_id,
                               num_output=len(output), decided_s=decided_s)

    async def close(self) -> None:
        await self.workers.close()
