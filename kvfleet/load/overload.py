"""``kvfleet bench overload``: a stack under more than it can take.

* A burst: ``burst`` chat requests sent at once; each must be answered 200 or 429 (with
  ``Retry-After``), never 5xx or a dropped connection. Reports the split and latencies.
* Large prompts: a few multi-megabyte prompts sent together (tokenized off the event loop,
  then refused as too long for the model) while ``/health`` is polled; reports its latency
  during them next to its latency at rest.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class OverloadOptions:
    model: str = "smollm2-135m"
    num_workers: int = 2
    worker_memory_bytes: int = 1 << 30
    burst: int = 300
    max_tokens: int = 16
    num_big_prompts: int = 3
    big_prompt_bytes: int = 3_000_000
    health_interval_s: float = 0.05


async def _chat(http: httpx.AsyncClient, o: OverloadOptions, i: int, headers: dict[str, str]
                ) -> tuple[int, float, bool]:
    body = {"model": o.model, "max_tokens": o.max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"Question {i}: what is a GPU fleet?"}]}
    t0 = time.monotonic()
    try:
        r = await http.post("/v1/chat/completions", json=body, headers=headers)
    except httpx.HTTPError:
        return 0, time.monotonic() - t0, False
    return r.status_code, time.monotonic() - t0, "retry-after" in r.headers


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


async def burst(url: str, key: str, o: OverloadOptions) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=o.burst + 16, max_keepalive_connections=o.burst)
    async with httpx.AsyncClient(base_url=url, limits=limits, trust_env=False,
                                 timeout=httpx.Timeout(900.0, connect=60.0)) as http:
        t0 = time.monotonic()
        results = await asyncio.gather(*(_chat(http, o, i, headers) for i in range(o.burst)))
        wall = time.monotonic() - t0
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = [s for st, s, _ in results if st == 200]
    refused = [s for st, s, _ in results if st == 429]
    return {
        "requests": o.burst,
        "statuses": statuses,
        "num_200": len(ok),
        "num_429": len(refused),
        "num_5xx_or_dropped": sum(1 for st, _, _ in results if st >= 500 or st == 0),
        "all_429_have_retry_after": all(ra for st, _, ra in results if st == 429),
        "wall_s": wall,
        "p50_200_s": _pct(ok, 0.5),
        "p99_200_s": _pct(ok, 0.99),
        "max_429_s": max(refused, default=0.0),
    }


async def _health_latencies(http: httpx.AsyncClient, stop: asyncio.Event,
                            interval_s: float) -> list[float]:
    out = []
    while not stop.is_set():
        t0 = time.monotonic()
        await http.get("/health")
        out.append(time.monotonic() - t0)
        await asyncio.sleep(interval_s)
    return out


async def big_prompts(url: str, key: str, o: OverloadOptions) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    words = "the quick brown fox jumps over a lazy dog while fleets of GPUs serve models "
    text = (words * (o.big_prompt_bytes // len(words) + 1))[: o.big_prompt_bytes]
    async with httpx.AsyncClient(base_url=url, trust_env=False,
                                 timeout=httpx.Timeout(900.0, connect=60.0)) as http:
        stop = asyncio.Event()
        rest = asyncio.create_task(_health_latencies(http, stop, o.health_interval_s))
        await asyncio.sleep(2.0)
        stop.set()
        at_rest = await rest
        stop = asyncio.Event()
        during = asyncio.create_task(_health_latencies(http, stop, o.health_interval_s))
        t0 = time.monotonic()
        replies = await asyncio.gather(*(
            http.post("/v1/completions", headers=headers, json={
                "model": o.model, "prompt": text, "max_tokens": 4})
            for _ in range(o.num_big_prompts)))
        busy_s = time.monotonic() - t0
        stop.set()
        under = await during
    statuses: dict[str, int] = {}
    for r in replies:
        statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
    return {
        "prompts": o.num_big_prompts,
        "prompt_bytes": o.big_prompt_bytes,
        "statuses": statuses,
        "busy_s": busy_s,
        "health_checks_during": len(under),
        "health_p50_at_rest_ms": 1000 * statistics.median(at_rest) if at_rest else 0.0,
        "health_p50_during_ms": 1000 * statistics.median(under) if under else 0.0,
        "health_max_during_ms": 1000 * max(under, default=0.0),
    }


async def run(stack: Any, o: OverloadOptions) -> dict[str, Any]:
    key = stack.secrets.api_key if stack.secrets else ""
    out = {"burst": await burst(stack.http_url, key, o)}
    out["big_prompts"] = await big_prompts(stack.http_url, key, o)
    b = out["burst"]
    out["passed"] = (b["num_5xx_or_dropped"] == 0 and b["num_200"] + b["num_429"] == o.burst
                     and b["all_429_have_retry_after"]
                     and not any(k.startswith("5") for k in out["big_prompts"]["statuses"]))
    return out
