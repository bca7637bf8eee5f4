"""Async Redis operations over the layouts in :mod:`kvfleet.common.redis_schema`.

Every service goes through this class, so the schema's keys are written in one way only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kvfleet.common import redis_schema as rs
from kvfleet.services.scheduler.core.admission import QueueBound

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_POOL_TIMEOUT_S = 10.0

# Admission and enqueue in one step (every gateway replica runs it; Redis runs scripts one at a
# time). KEYS: queued zset, queued-tokens counter, request hash, active zset, queue-models set,
# queue stream. ARGV: request id, arrival, prompt tokens, max requests (-1: no bound), max
# tokens, model, schema version, then the request hash's fields and values.
_ENQUEUE = """
local n = redis.call('ZCARD', KEYS[1])
local maxr = tonumber(ARGV[4])
if maxr >= 0 then
  if maxr == 0 then return 0 end
  local t = tonumber(redis.call('GET', KEYS[2]) or '0')
  if n > 0 and (n >= maxr or t + tonumber(ARGV[3]) > tonumber(ARGV[5])) then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('INCRBY', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], unpack(ARGV, 8))
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[6])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', '1000000', '*', 'v', ARGV[7], 'rid', ARGV[1])  -- rs.QUEUE_MAXLEN
return 1
"""

# A request leaves the scheduler's queue. KEYS: queued zset, queued-tokens. ARGV: id, tokens.
_RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DECRBY', KEYS[2], ARGV[2])
end
return 0
"""

# An accepted request comes back to the scheduler's queue (never refused). ARGV: id, score,
# tokens.
_REQUEUED = """
if redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) == 1 then
  redis.call('INCRBY', KEYS[2], ARGV[3])
end
return 0
"""



def connect(url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS,
            pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S) -> aioredis.Redis:
    """A client whose pool waits up to ``pool_timeout_s`` for a free connection when all
    ``max_connections`` are busy (an overload queues instead of failing), and that retries a
    command on a dropped connection for a few seconds (a Redis restart)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout_s, decode_responses=True,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 8),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis(connection_pool=pool)


# Fenced token write: only the request's current owner under its current lease may append
# (a worker taken for dead, or one the request migrated away from, is refused), and a finish
# is recorded in the same step. KEYS: request hash, token stream, active set, the worker's
# request set. ARGV: worker id, lease, finish reason ("" if none), finished TTL (s), request id,
# then one JSON object of fields per token entry. Returns 1 if written, 0 if fenced.
_FENCED_APPEND = """
local owner = redis.call('HMGET', KEYS[1], 'worker', 'lease', 'state')
if owner[1] ~= ARGV[1] or (owner[2] or '0') ~= ARGV[2] or owner[3] == 'finished' then
  return 0
end
for i = 6, #ARGV do
  local fields = cjson.decode(ARGV[i])
  local flat = {}
  for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  redis.call('XADD', KEYS[2], '*', unpack(flat))
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'state', 'finished', 'finish_reason', ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('SREM', KEYS[4], ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return 1
"""


class RedisStore:
    def __init__(self, client: aioredis.Redis) -> None:
        # decode_responses=True: every reply is str; Any spares casts at each call site
        self.r: Any = client
        self._fenced_append = client.register_script(_FENCED_APPEND)

    @classmethod
    def from_url(cls, url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S) -> RedisStore:
        return cls(connect(url, max_connections, pool_timeout_s))

    @classmethod
    def for_service(cls, settings: Any) -> RedisStore:
        """The store a service's settings describe (URL, pool size and wait)."""
        return cls.from_url(settings.redis_url, settings.redis_max_connections,
                            settings.redis_pool_timeout_s)

    async def close(self) -> None:
        await self.r.aclose()

    # requests -----------------------------------------------------------------------------

    async def enqueue(self, rec: rs.RequestRecord, bound: QueueBound | None = None) -> bool:
        """Store a new request and put it on its model's queue, atomically, if the model's
        queue is within ``bound`` (:mod:`~kvfleet.services.scheduler.core.admission`); returns
        False, changing nothing, when it is full."""
        fields = [x for kv in rec.to_fields().items() for x in kv]
        bound = bound or QueueBound(-1, -1)
        admitted = await self.r.eval(
            _ENQUEUE, 6,
            rs.queued_key(rec.model), rs.queued_tokens_key(rec.model),
            rs.request_key(rec.request_id), rs.ACTIVE_KEY, rs.QUEUE_MODELS_KEY,
            rs.queue_key(rec.model),
            rec.request_id, repr(rec.arrival_s), len(rec.prompt_token_ids), bound.max_requests,
            bound.max_tokens, rec.model, rs.SCHEMA_VERSION, *fields,
        )
        return bool(admitted)

    async def release_queued(self, rec: rs.RequestRecord) -> None:
        """The request left the scheduler's queue (assigned, or dropped): it no longer counts
        against the model's queue bound."""
        await self.r.eval(_RELEASE, 2, rs.queued_key(rec.model),
                          rs.queued_tokens_key(rec.model), rec.request_id,
                          len(rec.prompt_token_ids))

    async def queue_depth(self, model: str) -> tuple[int, int]:
        """(requests, prompt tokens) waiting for a worker."""
        async with self.r.pipeline(transaction=True) as p:
            p.zcard(rs.queued_key(model))
            p.get(rs.queued_tokens_key(model))
            n, tokens = await p.execute()
        return int(n), int(tokens or 0)

    async def requeue(self, rec: rs.RequestRecord, now_s: float, reason: str) -> None:
        """Put an unfinished request back on its queue (its worker died). The lease moves on,
        so whatever the old worker still writes for it is refused."""
        async with self.r.pipeline(transaction=True) as p:
            p.hincrby(rs.request_key(rec.request_id), "lease", 1)
            p.hset(
                rs.request_key(rec.request_id),
                mapping={"state": rs.QUEUED, "worker": "", "resumes": str(rec.num_resumes + 1)},
            )
            p.sadd(rs.QUEUE_MODELS_KEY, rec.model)
            p.xadd(rs.queue_key(rec.model), rs.queue_entry(rec.request_id),
                   maxlen=rs.QUEUE_MAXLEN, approximate=True)
            p.eval(_REQUEUED, 2, rs.queued_key(rec.model), rs.queued_tokens_key(rec.model),
                   rec.request_id, now_s, len(rec.prompt_token_ids))
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

    async def request_owner(self, request_id: str) -> str | None:
        """The owner of a request (its API key's id, "" if none), or None if there is none."""
        async with self.r.pipeline(transaction=False) as p:
            p.exists(rs.request_key(request_id))
            p.hget(rs.request_key(request_id), "owner")
            exists, owner = await p.execute()
        return (owner or "") if exists else None

    async def set_assigned(self, request_id: str, worker_id: str) -> bool:
        """Record the worker; returns False if the request was cancelled meanwhile (the
        gateway sets ``cancelled`` then reads ``worker``, so one of us sees the other)."""
        return (await self.assign(request_id, worker_id))[0]

    async def assign(self, request_id: str, worker_id: str) -> tuple[bool, int]:
        """Record the worker under a new lease; (False if cancelled meanwhile, the lease)."""
        async with self.r.pipeline(transaction=True) as p:
            p.hset(rs.request_key(request_id), mapping={"state": rs.ASSIGNED, "worker": worker_id})
            p.hincrby(rs.request_key(request_id), "lease", 1)
            p.sadd(rs.worker_requests_key(worker_id), request_id)
            p.hget(rs.request_key(request_id), "cancelled")
            out = await p.execute()
        return out[3] != "1", int(out[1])

    async def lease_of(self, request_id: str) -> tuple[str, int, str] | None:
        """(worker, lease, state) of a request, None if there is no such request."""
        worker, lease, state = await self.r.hmget(rs.request_key(request_id), "worker", "lease",
                                                  "state")
        if state is None:
            return None
        return worker or "", int(lease or 0), state

    async def append_fenced(self, request_id: str, worker_id: str, lease: int,
                            entries: list[rs.TokenEntry], finish_reason: str = "",
                            pipe: Any = None) -> bool:
        """Append tokens (and finish) if ``worker_id`` still owns the request under
        ``lease``; False (nothing written) if it does not. With ``pipe`` the call is queued
        on that pipeline (its result comes with the pipeline's)."""
        import json

        keys = [rs.request_key(request_id), rs.tokens_key(request_id), rs.ACTIVE_KEY,
                rs.worker_requests_key(worker_id)]
        argv = [worker_id, str(lease), finish_reason, str(rs.FINISHED_TTL_S), request_id,
                *(json.dumps(e.to_fields()) for e in entries)]
        if pipe is not None:
            await self._fenced_append(keys=keys, args=argv, client=pipe)
            return True
        return bool(await self._fenced_append(keys=keys, args=argv))

    async def move_request(self, request_id: str, src: str, dst: str) -> int:
        """Hand a request from ``src`` to ``dst`` under a new lease (returned)."""
        async with self.r.pipeline(transaction=True) as p:
            p.hset(rs.request_key(request_id), "worker", dst)
            p.hincrby(rs.request_key(request_id), "lease", 1)
            p.srem(rs.worker_requests_key(src), request_id)
            p.sadd(rs.worker_requests_key(dst), request_id)
            out = await p.execute()
        return int(out[1])

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

    async def scheduler_alive(self, consumer: str, now_s: float) -> None:
        async with self.r.pipeline(transaction=False) as p:
            p.zadd(rs.SCHEDULERS_KEY, {consumer: now_s})
            p.zremrangebyscore(rs.SCHEDULERS_KEY, "-inf", now_s - 10 * rs.SCHEDULER_TTL_S)
            await p.execute()

    async def live_schedulers(self, now_s: float | None = None) -> list[str]:
        now_s = time.time() if now_s is None else now_s
        return list(await self.r.zrangebyscore(rs.SCHEDULERS_KEY, now_s - rs.SCHEDULER_TTL_S,
                                               "+inf"))

    # measured load --------------------------------------------------------------------------

    async def record_load(self, model: str, now_s: float, prompt_tokens: int,
                          output_tokens: int) -> None:
        """Count one accepted request in its model's load (what re-placement measures).
        Buckets older than ``LOAD_TTL_S`` are pruned here once the hash outgrows them, so the
        hash stays bounded whether or not anything reads it."""
        key = rs.load_key(model)
        bucket = int(now_s // rs.LOAD_BUCKET_S)
        async with self.r.pipeline(transaction=False) as p:
            for field_name, value in rs.load_fields(bucket, prompt_tokens, output_tokens).items():
                p.hincrby(key, field_name, value)
            p.expire(key, rs.LOAD_TTL_S)
            p.hlen(key)
            size = (await p.execute())[-1]
        if int(size) > rs.LOAD_MAX_FIELDS:
            _, _, _, old = rs.parse_load(await self.r.hgetall(key),
                                         bucket - rs.LOAD_MAX_BUCKETS + 1)
            if old:
                await self.r.hdel(key, *old)

    async def model_load(self, model: str, now_s: float, window_s: float
                         ) -> tuple[int, int, int]:
        """(requests, prompt tokens, output tokens) accepted for ``model`` over the last
        ``window_s`` seconds (whole buckets); older buckets are deleted."""
        key = rs.load_key(model)
        first = int((now_s - window_s) // rs.LOAD_BUCKET_S) + 1
        n, tin, tout, old = rs.parse_load(await self.r.hgetall(key), first)
        if old:
            await self.r.hdel(key, *old)
        return n, tin, tout

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

    async def add_fleet_sample(self, sample: rs.FleetSample) -> None:
        await self.r.xadd(rs.FLEET_ACTIVITY_KEY, sample.to_fields(),
                          maxlen=rs.FLEET_ACTIVITY_MAXLEN, approximate=True)

    async def fleet_samples(self, count: int = 100, since_s: float | None = None
                            ) -> list[rs.FleetSample]:
        """The last ``count`` samples in time order (those from ``since_s`` on, if given)."""
        items = await self.r.xrevrange(rs.FLEET_ACTIVITY_KEY, count=count)
        out = [rs.FleetSample.from_fields(f) for _, f in reversed(items)]
        return out if since_s is None else [x for x in out if x.ts >= since_s]

    async def events(self, count: int = 50) -> list[rs.Event]:
        items = await self.r.xrevrange(rs.EVENTS_KEY, count=count)
        return [rs.Event.from_fields(f) for _, f in reversed(items)]
