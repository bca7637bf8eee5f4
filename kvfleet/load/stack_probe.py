"""What a running stack holds, for the soak and overload benchmarks: the resident memory of
each of its processes, its workers' KV pages, and every Redis key with a verdict (expected,
lingering with a TTL, or leaked)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvfleet.common import redis_schema as rs
from kvfleet.common.redis_store import RedisStore


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stack_pids(stack: Any) -> dict[str, int]:
    """name -> pid of every process of a launched stack (Redis included)."""
    pids = {s.name: s.popen.pid for s in stack.services}
    if stack.redis.process is not None:
        pids["redis"] = stack.redis.process.pid
    return pids


@dataclass
class PageCheck:
    worker_id: str
    num_total_pages: int
    num_free_pages: int
    num_running: int
    num_waiting: int

    @property
    def idle(self) -> bool:
        return (self.num_free_pages == self.num_total_pages and self.num_running == 0
                and self.num_waiting == 0)


async def worker_pages(store: RedisStore) -> list[PageCheck]:
    out = []
    for wid, (_info, occ) in sorted((await store.workers()).items()):
        if occ is None:
            out.append(PageCheck(wid, -1, -1, -1, -1))
        else:
            out.append(PageCheck(wid, occ.num_total_pages, occ.num_free_pages, occ.num_running,
                                 occ.num_waiting))
    return out


async def wait_idle(store: RedisStore, timeout_s: float) -> list[PageCheck]:
    """Poll heartbeats until every worker shows all pages free and nothing running (a
    heartbeat written after the last request finished), or the timeout; the last view."""
    deadline = time.monotonic() + timeout_s
    while True:
        pages = await worker_pages(store)
        if (pages and all(p.idle for p in pages)) or time.monotonic() > deadline:
            return pages
        await _sleep(0.25)


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


# Keys that exist for the stack's lifetime (not per request).
_FIXED = {rs.QUEUE_MODELS_KEY, rs.WORKERS_KEY, rs.DRAINING_KEY, rs.SCHEDULERS_KEY, rs.PLAN_KEY,
          rs.MODELS_KEY, rs.EVENTS_KEY}


@dataclass
class KeyAudit:
    """Redis after the load: per-request keys must be finished and expiring."""

    num_keys: int = 0
    fixed: int = 0  # the stack's own keys (plan, registry, events, predictor, queues...)
    lingering: int = 0  # finished requests' records and token streams, expiring (FINISHED_TTL_S)
    leaked: list[str] = field(default_factory=list)  # anything else, with the reason

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_leaked"] = len(self.leaked)
        d["leaked"] = self.leaked[:50]
        return d


async def audit_keys(store: RedisStore) -> KeyAudit:
    """Every key under kvfleet's prefix, classified (needs a client allowed to SCAN)."""
    r = store.r
    audit = KeyAudit()
    async for key in r.scan_iter(match=rs.PREFIX + "*", count=1000):
        audit.num_keys += 1
        name = key[len(rs.PREFIX):]
        kind = name.split(":", 1)[0]
        ttl = await r.ttl(key)
        if key in _FIXED or kind == "predictor":
            audit.fixed += 1
        elif kind == "worker":
            if key.endswith(":hb"):
                audit.fixed += 1
            else:  # a worker's set of unfinished requests
                n = await r.scard(key)
                _leak_if(audit, n > 0, key, f"{n} requests still assigned")
        elif kind == "queue":
            n = await r.xlen(key)
            _leak_if(audit, n > 0, key, f"{n} queue entries left")
        elif kind == "queued":
            n = await r.zcard(key)
            _leak_if(audit, n > 0, key, f"{n} requests still counted as queued")
        elif kind == "queued-tokens":
            n = int(await r.get(key) or 0)
            _leak_if(audit, n != 0, key, f"{n} tokens still counted as queued")
        elif key == rs.FLEET_ACTIVITY_KEY:  # capped (approximately: whole radix nodes)
            n = await r.xlen(key)
            _leak_if(audit, n > 2 * rs.FLEET_ACTIVITY_MAXLEN, key, f"{n} samples, past its cap")
        elif kind == "load":  # per-model arrival counts, pruned by their writer
            n = await r.hlen(key)
            _leak_if(audit, n > rs.LOAD_MAX_FIELDS or not 0 < ttl <= rs.LOAD_TTL_S, key,
                     f"{n} fields (cap {rs.LOAD_MAX_FIELDS}), ttl {ttl}")
        elif key == rs.ACTIVE_KEY:
            n = await r.zcard(key)
            _leak_if(audit, n > 0, key, f"{n} requests still active")
        elif kind in ("request", "tokens"):
            state = await r.hget(rs.request_key(name.split(":", 1)[1]), "state")
            if 0 <= ttl <= rs.FINISHED_TTL_S and state in (rs.FINISHED, None):
                audit.lingering += 1
            else:
                audit.leaked.append(f"{key}: state {state}, ttl {ttl}")
        else:
            audit.leaked.append(f"{key}: unknown key")
    return audit


def _leak_if(audit: KeyAudit, leaked: bool, key: str, why: str) -> None:
    if leaked:
        audit.leaked.append(f"{key}: {why}")
    else:
        audit.fixed += 1


def growth(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Relative RSS growth per process that was there both times."""
    out = {}
    for name, b in before.items():
        if b > 0 and after.get(name, 0) > 0:
            out[name] = (after[name] - b) / b
    return out


@contextlib.asynccontextmanager
async def admin_store(stack: Any):  # type: ignore[no-untyped-def]
    store = RedisStore.from_url(stack.redis_admin_url)
    try:
        yield store
    finally:
        await store.close()
