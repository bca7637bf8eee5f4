"""Async Redis operations over the layouts in :mod:`kvfleet.common.redis_schema`.

Every service goes through this class, so the schema's keys are written in one way only.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis

from kvfleet.common import redis_schema as rs

log = logging.getLogger(__name__)


def connect(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=True)


class RedisStore:
    def __init__(self, client: aioredis.Redis) -> None:
        # decode_responses=True: every reply is str; Any spares casts at each call site
        self.r: Any = client

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        return cls(connect(url))

    async def close(self) -> None:
        await self.r.aclose()

    # requests -----------------------------------------------------------------------------

    async def enqueue(self, rec: rs.RequestRecord) -> None:
        """Store a new request and put it on its model's queue, atomically."""
        async with self.r.pipeline(transaction=True) as p:
            p.hset(rs.request_key(rec.request_id), mapping=rec.to_fields())
            p.zadd(rs.ACTIVE_KEY, {rec.request_id: rec.arrival_s})
            p.sadd(rs.QUEUE_MODELS_KEY, rec.model)
            p.xadd(rs.queue_key(rec.model), rs.queue_entry(rec.request_id))
            await p.execute()

    async def requeue(self, rec: rs.RequestRecord, now_s: float, reason: str) -> None:
        """Put an unfinished request back on its queue (its worker died)."""
        async with self.r.pipeline(transaction=True) as p:
            p.hset(
                rs.request_key(rec.request_id),
                mapping={"state": rs.QUEUED, "worker": "", "resumes": str(rec.num_resumes + 1)},
            )
            p.sadd(rs.QUEUE_MODELS_KEY, rec.model)
            p.xadd(rs.queue_key(rec.model), rs.queue_entry(rec.request_id))
            p.xadd(
                rs.EVENTS_KEY,
                rs.Event(
                    "requeue",
                    now_s,
                    {"request_id": rec.request_id, "from": rec.worker_id, "reason": reason},
                ).to_fields(),
                maxlen=rs.EVENTS_MAXLEN,
                approximate=True,
            )
            await p.execute()

    async def get_request(self, request_id: str) -> rs.RequestRecord | None:
        fields = await self.r.hgetall(rs.request_key(request_id))
        if not fields:
            return None
        return rs.RequestRecord.from_fields(request_id, fields)

    async def set_assigned(self, request_id: str, worker_id: str) -> bool:
        """Record the worker; returns False if the request was cancelled meanwhile (the
        gateway sets ``cancelled`` then reads ``worker``, so one of us sees the other)."""
        async with self.r.pipeline(transaction=True) as p:
            p.hset(rs.request_key(request_id), mapping={"state": rs.ASSIGNED, "worker": worker_id})
            p.sadd(rs.worker_requests_key(worker_id), request_id)
            p.hget(rs.request_key(request_id), "cancelled")
            out = await p.execute()
        return out[2] != "1"

    async def move_request(self, request_id: str, src: str, dst: str) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.hset(rs.request_key(request_id), "worker", dst)
            p.srem(rs.worker_requests_key(src), request_id)
            p.sadd(rs.worker_requests_key(dst), request_id)
            await p.execute()

    async def mark_cancelled(self, request_id: str) -> str | None:
        """Flag a request cancelled; returns its worker id if it has one."""
        async with self.r.pipeline(transaction=True) as p:
            p.exists(rs.request_key(request_id))
            p.hset(rs.request_key(request_id), "cancelled", "1")
            p.hget(rs.request_key(request_id), "worker")
            exists, _, worker = await p.execute()
        if not exists:
            await self.r.delete(rs.request_key(request_id))
            return None
        return worker or ""

    async def finish(self, request_id: str, reason: str, worker_id: str = "") -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.hset(
                rs.request_key(request_id), mapping={"state": rs.FINISHED, "finish_reason": reason}
            )
            p.zrem(rs.ACTIVE_KEY, request_id)
            if worker_id:
                p.srem(rs.worker_requests_key(worker_id), request_id)
            p.expire(rs.request_key(request_id), rs.FINISHED_TTL_S)
            p.expire(rs.tokens_key(request_id), rs.FINISHED_TTL_S)
            await p.execute()

    async def active_requests(self, limit: int = 1000) -> list[str]:
        return list(await self.r.zrange(rs.ACTIVE_KEY, 0, limit - 1))

    # tokens -------------------------------------------------------------------------------

    async def append_tokens(self, request_id: str, entries: list[rs.TokenEntry]) -> None:
        async with self.r.pipeline(transaction=False) as p:
            for e in entries:
                p.xadd(rs.tokens_key(request_id), e.to_fields())
            await p.execute()

    async def read_tokens(
        self, request_id: str, last_id: str, block_ms: int | None
    ) -> tuple[list[rs.TokenEntry], str]:
        reply = await self.r.xread({rs.tokens_key(request_id): last_id}, block=block_ms)
        entries: list[rs.TokenEntry] = []
        for _key, items in reply or []:
            for entry_id, fields in items:
                entries.append(rs.TokenEntry.from_fields(fields))
                last_id = entry_id
        return entries, last_id

    async def all_tokens(self, request_id: str) -> list[rs.TokenEntry]:
        items = await self.r.xrange(rs.tokens_key(request_id))
        return [rs.TokenEntry.from_fields(f) for _, f in items]

    # workers ------------------------------------------------------------------------------

    async def register_worker(self, info: rs.WorkerInfo) -> None:
        await self.r.hset(rs.WORKERS_KEY, info.worker_id, info.to_json())

    async def heartbeat(self, occ: rs.Occupancy, ttl_ms: int) -> None:
        await self.r.set(rs.heartbeat_key(occ.worker_id), occ.to_json(), px=ttl_ms)

    async def clear_heartbeat(self, worker_id: str) -> None:
        await self.r.delete(rs.heartbeat_key(worker_id))

    async def workers(self) -> dict[str, tuple[rs.WorkerInfo, rs.Occupancy | None]]:
        """Every registered worker with its occupancy (None when its heartbeat expired)."""
        infos = await self.r.hgetall(rs.WORKERS_KEY)
        ids = sorted(infos)
        beats = await self.r.mget([rs.heartbeat_key(w) for w in ids]) if ids else []
        out: dict[str, tuple[rs.WorkerInfo, rs.Occupancy | None]] = {}
        for wid, beat in zip(ids, beats, strict=True):
            try:
                out[wid] = (
                    rs.WorkerInfo.from_json(infos[wid]),
                    rs.Occupancy.from_json(beat) if beat else None,
                )
            except (rs.SchemaError, ValueError, KeyError, TypeError):
                log.warning("worker %s: unreadable registry entry", wid)
        return out

    async def worker_address(self, worker_id: str) -> str | None:
        raw = await self.r.hget(rs.WORKERS_KEY, worker_id)
        return rs.WorkerInfo.from_json(raw).address if raw else None

    async def forget_worker(self, worker_id: str) -> None:
        await self.r.hdel(rs.WORKERS_KEY, worker_id)

    async def worker_requests(self, worker_id: str) -> set[str]:
        return set(await self.r.smembers(rs.worker_requests_key(worker_id)))

    async def draining(self) -> set[str]:
        return set(await self.r.smembers(rs.DRAINING_KEY))

    async def set_draining(self, worker_id: str, draining: bool) -> None:
        if draining:
            await self.r.sadd(rs.DRAINING_KEY, worker_id)
        else:
            await self.r.srem(rs.DRAINING_KEY, worker_id)

    # plan and events ----------------------------------------------------------------------

    async def get_plan(self) -> rs.PlanRecord | None:
        raw = await self.r.get(rs.PLAN_KEY)
        return rs.PlanRecord.from_json(raw) if raw else None

    async def set_plan(self, plan: rs.PlanRecord) -> None:
        await self.r.set(rs.PLAN_KEY, plan.to_json())

    async def set_models(self, infos: list[rs.ModelInfo]) -> None:
        """Replace the served models' per-model settings."""
        async with self.r.pipeline(transaction=True) as p:
            p.delete(rs.MODELS_KEY)
            if infos:
                p.hset(rs.MODELS_KEY, mapping={i.name: i.to_json() for i in infos})
            await p.execute()

    async def model_info(self, model: str) -> rs.ModelInfo | None:
        raw = await self.r.hget(rs.MODELS_KEY, model)
        return rs.ModelInfo.from_json(raw) if raw else None

    async def event(self, kind: str, now_s: float, **data: Any) -> None:
        await self.r.xadd(
            rs.EVENTS_KEY,
            rs.Event(kind, now_s, data).to_fields(),
            maxlen=rs.EVENTS_MAXLEN,
            approximate=True,
        )

    async def events(self, count: int = 50) -> list[rs.Event]:
        items = await self.r.xrevrange(rs.EVENTS_KEY, count=count)
        return [rs.Event.from_fields(f) for _, f in reversed(items)]
