"""Each request's path through a kvfleet stack, read back from the stack's Redis: when the
gateway queued it, when the scheduler assigned it, when its worker made its first and last
tokens. Every timestamp is the wall clock of the process that wrote it (on one machine, one
clock), so the hops can be told apart and set beside the simulator's."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kvfleet.common import redis_schema as rs
from kvfleet.common.redis_store import RedisStore


@dataclass(frozen=True, slots=True)
class ServerTimeline:
    request_id: str
    model: str
    num_prompt_tokens: int
    queued_s: float  # the gateway put it in the queue
    decided_s: float | None  # the scheduler's first decision to assign it
    assigned_s: float | None  # ... and when that Assign call had returned
    worker_id: str
    first_token_s: float | None  # the worker's step that made its first token ended
    last_token_s: float | None
    num_output_tokens: int

    @property
    def queue_wait_s(self) -> float | None:
        """Queued -> the scheduler's decision."""
        return None if self.decided_s is None else self.decided_s - self.queued_s

    @property
    def to_first_token_s(self) -> float | None:
        """Decided -> first token: the Assign call, waiting on the worker, the prefill."""
        if self.decided_s is None or self.first_token_s is None:
            return None
        return self.first_token_s - self.decided_s

    @property
    def decode_per_token_s(self) -> float | None:
        if self.first_token_s is None or self.last_token_s is None or self.num_output_tokens < 2:
            return None
        return (self.last_token_s - self.first_token_s) / (self.num_output_tokens - 1)


async def request_ids(store: RedisStore) -> list[str]:
    """Every request the stack's Redis still holds."""
    prefix = rs.request_key("")
    out = []
    async for key in store.r.scan_iter(match=prefix + "*", count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        out.append(name[len(prefix):])
    return sorted(out)


async def assignments(store: RedisStore) -> dict[str, tuple[float | None, float]]:
    """request id -> (decided, assigned) of its first assignment (from the event log)."""
    out: dict[str, tuple[float | None, float]] = {}
    for _id, fields in await store.r.xrange(rs.EVENTS_KEY):
        ev = rs.Event.from_fields(fields)
        rid = ev.data.get("request_id")
        if ev.kind == "assign" and isinstance(rid, str) and rid not in out:
            decided = ev.data.get("decided_s")
            out[rid] = (float(decided) if decided else None, ev.ts)
    return out


async def read_timelines(
    store: RedisStore, ids: Iterable[str] | None = None
) -> list[ServerTimeline]:
    """The timelines of ``ids`` (default: every request in Redis), in queueing order."""
    wanted = list(ids) if ids is not None else await request_ids(store)
    assigned = await assignments(store)
    out = []
    for rid in wanted:
        rec = await store.get_request(rid)
        if rec is None:
            continue
        tokens = [e for e in await store.all_tokens(rid) if e.token_id is not None]
        decided, at = assigned.get(rid, (None, None))
        out.append(ServerTimeline(
            rid, rec.model, len(rec.prompt_token_ids), rec.arrival_s, decided, at, rec.worker_id, tokens[0].ts if tokens else None, tokens[-1].ts if tokens else None,
            len(tokens),
        ))
    out.sort(key=lambda t: t.queued_s)
    return out


def describe(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean, median and p99 in milliseconds of the values that are there."""
    xs = np.array([v for v in values if v is not None], dtype=float) * 1000.0
    if xs.size == 0:
        return {"mean_ms": None, "median_ms": None, "p99_ms": None, "count": 0}
    return {"mean_ms": float(xs.mean()), "median_ms": float(np.median(xs)),
            "p99_ms": float(np.percentile(xs, 99)), "count": int(xs.size)}


def phases(timelines: Sequence[ServerTimeline]) -> dict[str, dict[str, float | None]]:
    """Where the time went, per phase, over the requests."""
    return {
        "queue_wait": describe([t.queue_wait_s for t in timelines]),
        "to_first_token": describe([t.to_first_token_s for t in timelines]),
        "decode_per_token": describe([t.decode_per_token_s for t in timelines]),
    }


def dumps(timelines: Sequence[ServerTimeline]) -> str:
    """JSON lines, one timeline each."""
    from dataclasses import asdict

    return "".join(json.dumps(asdict(t)) + "\n" for t in timelines)


@dataclass(frozen=True, slots=True)
class LiveStep:
    """One engine step of a live worker, rebuilt from its tokens' timestamps: the steps it
    ran back to back (some sequence got a token in this step and in the one before) took
    ``duration_s``; ``chunks`` are ``(cached, new)`` tokens per sequence that got a token
    (a prompt counts as prefilled in one chunk)."""

    worker_id: str
    end_s: float
    duration_s: float
    chunks: tuple[tuple[int, int], ...]


async def worker_steps(store: RedisStore, timelines: Sequence[ServerTimeline]) -> list[LiveStep]:
    """The back-to-back steps of every worker that served ``timelines``."""
    prompt = {t.request_id: t.num_prompt_tokens for t in timelines}
    made: dict[str, dict[float, list[tuple[str, int]]]] = {}  # worker -> step end -> tokens
    when: dict[tuple[str, int], float] = {}
    for rid in prompt:
        for e in await store.all_tokens(rid):
            if e.token_id is None:
                continue
            made.setdefault(e.worker_id, {}).setdefault(e.ts, []).append((rid, e.index))
            when[(rid, e.index)] = e.ts
    out = []
    for wid, steps in made.items():
        ends = sorted(steps)
        for prev, end in zip(ends, ends[1:], strict=False):
            got = steps[end]
            if not any(i > 0 and when.get((rid, i - 1)) == prev for rid, i in got):
                continue  # the worker may have idled in between
            chunks = tuple((0, prompt[rid]) if i == 0 else (prompt[rid] + i - 1, 1)
                           for rid, i in got)
            out.append(LiveStep(wid, end, end - prev, chunks))
    out.sort(key=lambda s: s.end_s)
    return out
