"""A worker's part in pipeline groups (KunServe): forming, serving and dissolving them.

Forming (``DropLayers`` on the first stage): the first stage calls ``JoinPipeline`` on every
other member (live registered workers only, at their registered addresses); all of them form
one process group through the first stage's registered transfer store under an unguessable
name, stop their step loops (holding the runner's step lock, after their tokens are in
Redis) and run the KV exchange and layer drop (``engine/regroup.py``). The first stage then
steps the group from its runner (``Engine.step`` delegates to the ``PipelineLeader``); every
other member runs its stage in a thread of its own (``PipelineFollower.serve``).

A request that changes owner moves in Redis under a new lease, taken by its new owner
before that owner steps again, so the old owner's writes for it are refused from then on.

Dissolving (``RestoreLayers`` on the first stage): every member reads its missing layers in
the background (``PrefetchLayers``) while the group serves; then the first stage sends the
dissolve header down the pipeline at a step boundary and every member rebuilds its requests
with the whole model. A member that loses the group (a peer died or timed out) reloads its
layers and serves alone; the first stage recomputes its requests.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kvfleet.common.config import WorkerSettings
from kvfleet.common.proto.worker.v1 import worker_pb2
from kvfleet.services.worker.core.pipeline_policy import ExchangeCosts
from kvfleet.services.worker.engine import EngineInputError
from kvfleet.services.worker.engine.pipeline_group import (
    DISSOLVE,
    GroupSpec,
    PipelineFollower,
    PipelineLeader,
)
from kvfleet.services.worker.engine.regroup import (
    Prefetched,
    RegroupResult,
    abandon_group,
    dissolve_group,
    join_group,
    prefetch,
)
from kvfleet.services.worker.runner import EngineRunner
from kvfleet.services.worker.transfer.pair_groups import PairGroups
from kvfleet.services.worker.transfer.pipeline_channel import (
    GroupChannel,
    form_channel,
    join_store,
)

log = logging.getLogger(__name__)


def group_spec(msg: worker_pb2.DropLayersRequest, rank: int) -> GroupSpec:
    return GroupSpec(
        msg.group_id, msg.model, tuple(s.worker_id for s in msg.stages),
        tuple((s.first_layer, s.last_layer) for s in msg.stages), msg.tokens_per_page, rank,
    )


def stats_pb(worker_id: str, res: RegroupResult | dict[str, Any]) -> worker_pb2.RegroupStats:
    d = res.stats() if isinstance(res, RegroupResult) else res
    return worker_pb2.RegroupStats(
        worker_id=worker_id, num_sent=d["num_sent"], num_recomputed=d["num_recomputed"],
        bytes_sent=d["bytes_sent"], exchange_s=d["exchange_s"], relayout_s=d["relayout_s"],
        reload_s=d["reload_s"], num_moved=d["num_moved"])


LiveWorker = Callable[[str], Awaitable[Any]]  # worker id -> its registry entry, if live


class PipelineMember:
    def __init__(self, runner: EngineRunner, settings: WorkerSettings, pairs: PairGroups,
                 live_worker: LiveWorker) -> None:
        self.runner = runner
        self.settings = settings
        self.pairs = pairs
        self.backend = pairs.backend
        self.live_worker = live_worker
        p = settings.pipeline
        self.costs = ExchangeCosts(p.link_bytes_per_s, p.link_latency_s, p.prefill_tokens_per_s)
        self.spec: GroupSpec | None = None
        self.channel: GroupChannel | None = None
        self.prefetched: Prefetched | None = None
        self._thread: threading.Thread | None = None
        self._busy = asyncio.Lock()  # one regroup at a time
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    @property
    def engine(self) -> Any:
        return self.runner.engine

    def _device(self) -> str:
        return self.settings.engine.device

    async def _thread_call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def _check_free(self, model: str) -> None:
        if self.spec is not None or self.engine.stage_spec is not None:
            raise EngineInputError(f"{self.worker_id} is already in a pipeline group")
        if model not in self.engine.models():
            raise EngineInputError(f"{model!r} is not loaded on {self.worker_id}")

    # ------------------------------------------------------------ forming
    async def drop(self, msg: worker_pb2.DropLayersRequest,
                   join_call: Any) -> worker_pb2.DropLayersResponse:
        """On the first stage: form the group; ``join_call(address, JoinPipelineRequest)``
        reaches another member."""
        t0 = time.monotonic()
        async with self._busy:
            if not msg.stages or msg.stages[0].worker_id != self.worker_id:
                raise EngineInputError(f"DropLayers goes to the group's first stage, not "
                                       f"{self.worker_id}")
            spec = group_spec(msg, 0)
            self._check_free(spec.model)
            spec.validate(self.engine.model(spec.model).spec.num_layers)
            addresses = {}
            for stage in msg.stages[1:]:  # live workers of this fleet, at their addresses
                info = await self.live_worker(stage.worker_id)
                if info is None:
                    raise EngineInputError(f"{stage.worker_id!r} is not a live worker")
                if stage.address and stage.address != info.address:
                    raise EngineInputError(f"worker {stage.worker_id} is registered at "
                                           f"{info.address}, not {stage.address[:100]}")
                addresses[stage.worker_id] = info.address
            rendezvous = f"pipeline/{spec.group_id}/{secrets.token_hex(8)}"
            calls = [
                asyncio.ensure_future(join_call(addresses[s.worker_id], worker_pb2.JoinPipelineRequest(
                    group=msg, rank=k, store_host=self.settings.transfer_host,
                    store_port=self.pairs.store_port, rendezvous=rendezvous)))
                for k, s in enumerate(msg.stages) if k > 0
            ]
            try:
                channel = await self._thread_call(
                    form_channel, rendezvous, 0, spec.num_stages, self.pairs.store,
                    self.backend, self.settings.pipeline.timeout_s, self._device())
                res = await self._join(spec, channel, self._take_moved_in)
            except BaseException:
                for c in calls:
                    c.cancel()
                raise
            replies = await asyncio.gather(*calls)
            self.spec, self.channel = spec, channel
            self.runner.keepalive_s = self.settings.pipeline.keepalive_s
            self.runner.wake()
            await self.runner.refresh_occupancy()
        log.info("group %s: formed with %s in %.2fs", spec.group_id, list(spec.members),
                 time.monotonic() - t0)
        return worker_pb2.DropLayersResponse(
            duration_s=time.monotonic() - t0,
            stages=[stats_pb(self.worker_id, res), *(r.stats for r in replies)])

    async def _join(self, spec: GroupSpec, channel: GroupChannel,
                    after: Callable[[GroupSpec, GroupChannel, RegroupResult], Awaitable[None]],
                    ) -> RegroupResult:
        """Join with the step loop stopped; ``after`` runs before it steps again."""
        async with self.runner.step_lock:
            await self.runner.flush()
            try:
                res: RegroupResult = await self.runner.call(
                    join_group, self.engine, spec, channel, self.costs)
            except Exception:
                self.engine.stage_spec = None
                raise
            await after(spec, channel, res)
        return res

    async def _take_moved_in(self, spec: GroupSpec, channel: GroupChannel,
                             res: RegroupResult) -> None:
        """The first stage: own the group's requests (new leases) and lead its steps."""
        for rid, src in res.moved_in:
            self._own(rid, await self.runner.store.move_request(rid, src, self.worker_id))
        leader = PipelineLeader(self.engine, spec, channel, res.follower_pages)
        leader.adopt(self.engine.sequences(spec.model))
        leader.on_failure = self._leader_failed
        self.engine.pipeline = leader

    async def _give_moved_out(self, spec: GroupSpec, channel: GroupChannel,
                              res: RegroupResult) -> None:
        """Another stage: its requests belong to the first stage now (which takes their
        leases); nothing more is written for them here."""
        for rid, _owner in res.moved_out:
            self._disown(rid)

    def _own(self, rid: str, lease: int) -> None:
        r = self.runner
        r.leases[rid] = lease
        r.running.add(rid)
        r.migrated.discard(rid)
        r.fenced.discard(rid)

    def _disown(self, rid: str) -> None:
        r = self.runner
        r.migrated.add(rid)
        r.running.discard(rid)
        r.leases.pop(rid, None)

    async def join(self, msg: worker_pb2.JoinPipelineRequest) -> worker_pb2.JoinPipelineResponse:
        """On another member: join the first stage's group and run this stage."""
        async with self._busy:
            spec = group_spec(msg.group, msg.rank)
            if spec.members[spec.rank] != self.worker_id:
                raise EngineInputError(f"rank {spec.rank} of the group is not {self.worker_id}")
            self._check_free(spec.model)
            # The first stage is a live worker of this fleet; the group forms through its
            # registered transfer store, nothing else.
            leader = await self.live_worker(spec.members[0])
            endpoint = f"{msg.store_host}:{msg.store_port}"
            if leader is None or not leader.transfer_address or \
                    endpoint != leader.transfer_address:
                raise EngineInputError(f"{spec.members[0]!r} is not a live worker with the "
                                       f"transfer store {endpoint[:100]}")
            if not msg.rendezvous.startswith(f"pipeline/{spec.group_id}/"):
                raise EngineInputError("the group's rendezvous name is malformed")
            timeout = self.settings.pipeline.timeout_s
            store = await self._thread_call(join_store, msg.store_host, msg.store_port, timeout)
            channel = await self._thread_call(
                form_channel, msg.rendezvous, spec.rank, spec.num_stages, store, self.backend,
                timeout, self._device())
            res = await self._join(spec, channel, self._give_moved_out)
            self.spec, self.channel = spec, channel
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._serve, args=(spec, channel), name=f"stage-{spec.group_id}",
                daemon=True)
            self._thread.start()
            await self.runner.refresh_occupancy()
        return worker_pb2.JoinPipelineResponse(stats=stats_pb(self.worker_id, res))

    # ------------------------------------------------------------ serving (other stages)
    def _serve(self, spec: GroupSpec, channel: GroupChannel) -> None:
        loop = self._loop
        assert loop is not None
        moved: list[tuple[str, str]] = []
        paused = False
        try:
            header = PipelineFollower(self.engine, spec, channel).serve()
            if header["kind"] == DISSOLVE:
                pre = self.prefetched or prefetch(self.engine, spec.model)
                # requests homed here must not step before their leases are ours
                asyncio.run_coroutine_threadsafe(self._pause(), loop).result()
                paused = True
                res = dissolve_group(self.engine, spec, channel, self.costs, pre)
                moved = res.moved_in
        except Exception:
            log.exception("group %s: stage %d lost the group; serving alone", spec.group_id,
                          spec.rank)
            try:
                abandon_group(self.engine, spec.model)
            except Exception:
                log.exception("group %s: reloading the layers failed", spec.group_id)
        asyncio.run_coroutine_threadsafe(self._after_serve(moved, paused), loop)

    async def _pause(self) -> None:
        await self.runner.step_lock.acquire()
        await self.runner.flush()

    async def _after_serve(self, moved_in: list[tuple[str, str]], paused: bool) -> None:
        try:
            for rid, src in moved_in:
                self._own(rid, await self.runner.store.move_request(rid, src, self.worker_id))
        finally:
            if paused:
                self.runner.step_lock.release()
        self.spec = self.channel = None
        self.prefetched = None
        self.runner.wake()
        await self.runner.refresh_occupancy()

    def _leader_failed(self, error: Exception) -> None:
        """In the engine thread, under the engine lock: the group is broken."""
        spec = self.spec
        if spec is None:
            return
        abandon_group(self.engine, spec.model)
        self.spec = self.channel = None
        self.runner.keepalive_s = None

    # ------------------------------------------------------------ dissolving
    async def prefetch(self, model: str) -> worker_pb2.PrefetchLayersResponse:
        """Read the missing layers into host memory (the group keeps serving)."""
        if model not in self.engine.models():
            raise EngineInputError(f"{model!r} is not loaded on {self.worker_id}")
        pre: Prefetched = await self._thread_call(prefetch, self.engine, model)
        self.prefetched = pre
        return worker_pb2.PrefetchLayersResponse(reload_s=pre.reload_s, num_bytes=pre.num_bytes)

    async def restore(self, msg: worker_pb2.RestoreLayersRequest,
                      prefetch_call: Any) -> worker_pb2.RestoreLayersResponse:
        """On the first stage: reload everywhere, then dissolve. ``prefetch_call(worker_id,
        model)`` reaches another member. On a worker outside any group: reload its layers."""
        t0 = time.monotonic()
        async with self._busy:
            spec = self.spec
            if spec is None or spec.model != msg.model:
                return await self._restore_alone(msg.model, t0)
            if msg.group_id and msg.group_id != spec.group_id:
                raise EngineInputError(f"{self.worker_id} leads {spec.group_id}, not "
                                       f"{msg.group_id}")
            if not spec.is_leader:
                raise EngineInputError(f"RestoreLayers goes to the first stage of "
                                       f"{spec.group_id}, {spec.members[0]}")
            replies = await asyncio.gather(
                self.prefetch(spec.model),
                *(prefetch_call(w, spec.model) for w in spec.members[1:]))
            reload_s = max(r.reload_s for r in replies)
            pre = self.prefetched
            assert pre is not None and self.channel is not None
            channel = self.channel
            async with self.runner.step_lock:
                # the micro-batches in flight finish, and their tokens are written, first
                await self.runner.emit(await self.runner.call(self._drain))
                res: RegroupResult = await self.runner.call(self._dissolve, spec, channel, pre)
                for rid, _home in res.moved_out:  # their homes take their leases
                    self._disown(rid)
            self.spec = self.channel = None
            self.prefetched = None
            self.runner.keepalive_s = None
            self.runner.wake()
            await self.runner.refresh_occupancy()
        log.info("group %s: dissolved in %.2fs (reload %.2fs in the background)",
                 spec.group_id, time.monotonic() - t0, reload_s)
        return worker_pb2.RestoreLayersResponse(
            duration_s=time.monotonic() - t0, reload_s=reload_s,
            stages=[stats_pb(self.worker_id, res),
                    *(stats_pb(w, d) for w, d in zip(spec.members[1:], res.members,
                                                     strict=True))])

    def _drain(self) -> list[Any]:
        eng = self.engine
        with eng._lock:
            leader = eng.pipeline
            return leader.drain() if leader is not None else []

    def _dissolve(self, spec: GroupSpec, channel: GroupChannel,
                  pre: Prefetched) -> RegroupResult:
        eng = self.engine
        with eng._lock:
            leader = eng.pipeline
            if leader is None:
                raise EngineInputError(f"group {spec.group_id} is no longer served here")
            assert not leader.send_control(DISSOLVE)  # drained, and no step ran since
            return dissolve_group(eng, spec, channel, self.costs, pre)

    async def _restore_alone(self, model: str, t0: float) -> worker_pb2.RestoreLayersResponse:
        eng = self.engine
        if model not in eng.models():
            raise EngineInputError(f"{model!r} is not loaded on {self.worker_id}")
        if eng.stage_spec is not None:
            raise EngineInputError(f"{self.worker_id} is a later stage of group "
                                   f"{eng.stage_spec.group_id}: restore it on its first stage")
        m = eng.model(model)
        if (m.stage.first, m.stage.last) == (0, m.spec.num_layers):  # whole already
            return worker_pb2.RestoreLayersResponse(duration_s=time.monotonic() - t0)
        async with self.runner.step_lock:
            await self.runner.flush()
            await self.runner.call(eng.restore_layers, model)
        await self.runner.refresh_occupancy()
        self.runner.wake()
        return worker_pb2.RestoreLayersResponse(duration_s=time.monotonic() - t0)
