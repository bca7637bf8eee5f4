"""The worker's mechanism around the engine.

The engine's step loop runs in a single-thread executor, so the event loop never blocks
and every call that touches engine state (step, load, export, import) is serialized on that
one thread. Tokens go to each request's Redis stream after every step, and occupancy goes
to the heartbeat key, rate-limited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kvfleet.common import redis_schema as rs
from kvfleet.common.bounded import RecentSet
from kvfleet.common.redis_store import RedisStore
from kvfleet.services.worker.engine import (
    Engine,
    EngineRequest,
    Occupancy,
    SequenceExport,
    TokenEvent,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineRunner:
    def __init__(self, engine: Engine, store: RedisStore, worker_id: str, heartbeat_ttl_s: float,
                 occupancy_min_s: float) -> None:
        self.engine = engine
        self.store = store
        self.worker_id = worker_id
        self.ttl_ms = int(heartbeat_ttl_s * 1000)
        self.occupancy_min_s = occupancy_min_s
        self._exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.step_lock = asyncio.Lock()  # held across step + token writes, and by export
        self._wake = asyncio.Event()
        self.running: set[str] = set()     # requests this worker owns, not finished
        # exported away: their events here are not ours (bounded: a step emits them at once)
        self.migrated = RecentSet(max_items=10_000, ttl_s=600.0)
        # cancels that arrived before their Assign (which comes within seconds, or never)
        self.cancelled = RecentSet(max_items=10_000, ttl_s=120.0)
        # requests assigned elsewhere since (our writes were refused): ignore their events
        self.fenced = RecentSet(max_items=10_000, ttl_s=600.0)
        self.leases: dict[str, int] = {}  # request -> the lease this worker writes under
        self.write_retry_s = 15.0  # keep retrying a failed token write this long
        self.loading = False
        self.draining: set[str] = set()  # models being unloaded: no new requests for them
        self._occ: Occupancy | None = None
        self._occ_written_s = 0.0
        self._task: asyncio.Task[None] | None = None
        self._write: asyncio.Task[None] | None = None  # the last step's token writes
        self.info: rs.WorkerInfo | None = None  # registry entry, renewed with each heartbeat
        self.boot_id = secrets.token_hex(6)
        self.num_steps = 0
        self.node = ""  # reported in heartbeats (workers of one node share fast links)
        #: while leading a pipeline group: an idle engine steps the group this often
        self.keepalive_s: float | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the engine thread."""
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"engine-{self.worker_id}")

    def wake(self) -> None:
        self._wake.set()

    async def refresh_occupancy(self, force: bool = True) -> None:
        self._occ = await self.call(self.engine.occupancy)
        await self.write_occupancy(force)

    def occupancy_record(self) -> rs.Occupancy:
        occ = self._occ
        if occ is None:
            return rs.Occupancy(self.worker_id, (), 0, 0, loading=self.loading, ts=time.time(),
                                boot_id=self.boot_id)
        return rs.Occupancy(
            self.worker_id, tuple(m for m in occ.models if m not in self.draining),
            occ.num_total_pages, occ.num_free_pages,
            occ.num_reserved_pages, dict(occ.tokens_per_page), occ.num_running, occ.num_waiting,
            self.loading, time.time(), occ.num_queued_pages, self.boot_id, occ.intake_seq,
            occ.seqs, occ.page_size_bytes, dict(occ.layers), dict(occ.shapes), dict(occ.groups),
            self.node,
        )

    async def write_occupancy(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._occ_written_s < self.occupancy_min_s:
            return
        self._occ_written_s = now
        if force and self.info is not None:  # a worker taken for dead comes back visible
            await self.store.register_worker(self.info)
        await self.store.heartbeat(self.occupancy_record(), self.ttl_ms)

    def _step(self) -> tuple[list[TokenEvent], Occupancy]:
        return self.engine.step(), self.engine.occupancy()

    async def _loop(self) -> None:
        while True:
            if not self.engine.has_unfinished():
                self._wake.clear()
                if not self.engine.has_unfinished():
                    await self._idle()
                    continue
            async with self.step_lock:
                try:
                    events, self._occ = await self.call(self._step)
                except Exception:
                    log.exception("worker %s: engine step failed", self.worker_id)
                    await asyncio.sleep(0.1)
                    continue
                self.num_steps += 1
                if events:
                    # the next step runs while these tokens go to Redis; writes stay in order
                    self._write = asyncio.create_task(self._publish_after(self._write, events))
            await self.write_occupancy(force=False)

    async def _idle(self) -> None:
        """Wait for work; a pipeline group's first stage keeps its group alive meanwhile."""
        if self.keepalive_s is None or self.engine.pipeline is None:
            await self._wake.wait()
            return
        try:
            await asyncio.wait_for(self._wake.wait(), self.keepalive_s)
        except TimeoutError:
            pipeline = self.engine.pipeline
            if pipeline is not None:
                async with self.step_lock:
                    await self.call(pipeline.keepalive)

    async def emit(self, events: list[TokenEvent]) -> None:
        """Write events made outside a step (after every write before them) and wait."""
        if events:
            self._write = asyncio.create_task(self._publish_after(self._write, events))
        await self.flush()

    async def flush(self) -> None:
        """Wait until every token produced so far is in Redis."""
        while self._write is not None and not self._write.done():
            await asyncio.shield(self._write)

    async def _publish_after(self, previous: asyncio.Task[None] | None,
                             events: list[TokenEvent]) -> None:
        if previous is not None:
            await asyncio.shield(previous)
        deadline = time.monotonic() + self.write_retry_s
        delay = 0.05
        while True:
            try:
                await self._publish(events)
                return
            except Exception as e:  # Redis away (restarting?): retry, in order, for a while
                if time.monotonic() + delay > deadline:
                    rids = sorted({ev.request_id for ev in events})
                    log.error("worker %s: writing tokens failed for %.0fs (%s); aborting %s",
                              self.worker_id, self.write_retry_s, e, rids)
                    for rid in rids:  # never skip a token silently: stop the request here
                        self._drop(rid)
                    return
                log.warning("worker %s: writing tokens failed (%s); retrying", self.worker_id, e)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    async def _publish(self, events: list[TokenEvent]) -> None:
        by_request: dict[str, list[rs.TokenEntry]] = {}
        finish: dict[str, str] = {}
        for ev in events:
            if ev.request_id in self.migrated or ev.request_id in self.fenced:
                continue
            by_request.setdefault(ev.request_id, []).append(
                rs.TokenEntry(ev.index, ev.token_id, ev.text, ev.finish_reason, self.worker_id,
                              ev.ts))
            if ev.finish_reason:
                finish[ev.request_id] = ev.finish_reason
        if not by_request:
            return
        rids = sorted(by_request)
        async with self.store.r.pipeline(transaction=False) as p:
            for rid in rids:
                await self.store.append_fenced(rid, self.worker_id, self.leases.get(rid, 0),
                                               by_request[rid], finish.get(rid, ""), pipe=p)
            written = await p.execute()
        for rid, ok in zip(rids, written, strict=True):
            if not ok:
                log.warning("request %s: assigned elsewhere since (lease %s); stopping it on %s",
                            rid, self.leases.get(rid), self.worker_id)
                self._drop(rid)
            elif rid in finish:
                self.running.discard(rid)
                self.leases.pop(rid, None)
                log.debug("request %s: finished (%s) on %s", rid, finish[rid], self.worker_id)

    def _drop(self, rid: str) -> None:
        """Stop a request here without writing anything more for it."""
        self.fenced.add(rid)
        self.running.discard(rid)
        self.leases.pop(rid, None)
        self.engine.abort(rid)
        self.wake()

    async def add(self, req: EngineRequest, lease: int = 0) -> int:
        """Queue a request (validated synchronously by the engine; raises on bad input); its
        tokens are written under ``lease``. Returns its intake sequence number."""
        seq = self.engine.add_request(req)
        self.leases[req.request_id] = lease
        self.running.add(req.request_id)
        self.migrated.discard(req.request_id)
        self.fenced.discard(req.request_id)
        self.wake()
        return seq

    def abort(self, request_id: str) -> bool:
        found = self.engine.abort(request_id)
        self.wake()
        return found

    async def export(
        self, request_id: str, since_tokens: int = 0, with_kv: bool = True
    ) -> SequenceExport:
        """Stop a request here and return its state (its KV from ``since_tokens`` on, or none
        with ``with_kv=False``). Holding the step lock guarantees every token produced here
        is already in Redis and no step runs in between."""
        async with self.step_lock:
            await self.flush()
            export = await self.call(self.engine.export_sequence, request_id, since_tokens,
                                     True, with_kv)
            self.migrated.add(request_id)
            self.running.discard(request_id)
        return export

    async def snapshot(self, request_id: str, since_tokens: int) -> SequenceExport:
        """A copy of a request's KV from ``since_tokens`` on, taken between two steps while
        it keeps running here (a round of a live migration)."""
        return await self.call(self.engine.export_sequence, request_id, since_tokens, False)

    async def import_(self, request_id: str, export: SequenceExport | list[SequenceExport],
                      take_ownership: Callable[[], Awaitable[int]] | None = None) -> None:
        """Continue an exported sequence (one export, or a base and incremental ones) here.
        ``take_ownership`` (the record moving to us under a new lease, which it returns) runs
        after the import and before any step: if it fails, the sequence is dropped again and
        nothing was written for it."""
        async with self.step_lock:
            await self.call(self.engine.import_sequence, export)
            if take_ownership is not None:
                try:
                    self.leases[request_id] = await take_ownership()
                except BaseException:
                    await self.call(self.engine.export_sequence, request_id, 0, True)
                    raise
            self.running.add(request_id)
            self.migrated.discard(request_id)
            self.fenced.discard(request_id)
        self.wake()

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._exec.shutdown(wait=True, cancel_futures=True)
