"""The per-model request queues: Redis streams read through one consumer group.

An entry stays pending in the group until the scheduler has assigned its request (XACK),
so entries read by a scheduler that dies are read again by its successor (its own pending
entries under the same consumer name, or other consumers' by XAUTOCLAIM once idle).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from kvfleet.common import redis_schema as rs

log = logging.getLogger(__name__)


class RequestQueues:
    def __init__(self, client: aioredis.Redis, consumer: str) -> None:
        self.r = client
        self.consumer = consumer
        self._groups: set[str] = set()

    async def models(self) -> list[str]:
        models = sorted(await self.r.smembers(rs.QUEUE_MODELS_KEY))
        for m in models:
            if m not in self._groups:
                try:
                    await self.r.xgroup_create(rs.queue_key(m), rs.QUEUE_GROUP, id="0",
                                               mkstream=True)
                except ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise
                self._groups.add(m)
        return models

    async def read_new(self, block_ms: int | None,
                       count: int = 512) -> list[tuple[str, str, str]]:
        """New entries as (model, entry_id, request_id); at most ``count`` per stream."""
        if count <= 0:
            return []
        return await self._read(">", block_ms, count)

    async def read_own_pending(self) -> list[tuple[str, str, str]]:
        return await self._read("0", None)

    async def _read(self, start: str, block_ms: int | None,
                    count: int = 512) -> list[tuple[str, str, str]]:
        """A blocking read (``block_ms`` set) waits that long even when there is no stream to
        read yet, or the read fails: the scheduler's idle loop paces itself on this wait."""
        models = await self.models()
        if not models:
            await self._idle(block_ms)
            return []
        streams = {rs.queue_key(m): start for m in models}
        try:
            reply = await self.r.xreadgroup(rs.QUEUE_GROUP, self.consumer, streams,
                                            count=count, block=block_ms)
        except ResponseError as e:  # a stream deleted under us: recreate groups next time
            log.warning("xreadgroup failed: %s", e)
            self._groups.clear()
            await self._idle(block_ms)
            return []
        return self._entries(reply)

    @staticmethod
    async def _idle(block_ms: int | None) -> None:
        if block_ms:
            await asyncio.sleep(block_ms / 1000)

    async def claim_idle(self, min_idle_ms: int) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        for m in await self.models():
            start = "0-0"
            while True:
                reply = await self.r.xautoclaim(rs.queue_key(m), rs.QUEUE_GROUP, self.consumer,
                                                min_idle_time=min_idle_ms, start_id=start,
                                                count=256)
                start, items = reply[0], reply[1]
                for entry_id, fields in items:
                    if fields:
                        out.append((m, entry_id, _rid(fields)))
                if start in ("0-0", b"0-0"):
                    break
        return out

    async def ack(self, model: str, entry_id: str) -> None:
        async with self.r.pipeline(transaction=False) as p:
            p.xack(rs.queue_key(model), rs.QUEUE_GROUP, entry_id)
            p.xdel(rs.queue_key(model), entry_id)
            await p.execute()

    def _entries(self, reply: object) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        items_by_stream = reply.items() if isinstance(reply, dict) else (reply or [])
        for key, items in items_by_stream:  # type: ignore[union-attr]
            model = key[len(rs.queue_key("")):]
            for entry_id, fields in items:
                if not fields:  # deleted while pending
                    continue
                out.append((model, entry_id, _rid(fields)))
        return out


def _rid(fields: object) -> str:
    """The entry's request id; "" for an unreadable entry (acked and dropped by the caller,
    never allowed to stop the read of the others)."""
    try:
        return rs.parse_queue_entry(fields)  # type: ignore[arg-type]
    except (rs.SchemaError, KeyError, ValueError, AttributeError, UnicodeDecodeError):
        log.warning("unreadable queue entry %r", fields)
        return ""
