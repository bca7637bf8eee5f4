"""``kvfleet bench soak``: a long run at a 2-worker stack's measured capacity, then a check
that nothing leaked.

1. Start a stack (two CPU workers by default) on the chosen model.
2. Capacity: closed loops of 1, 2, 4, ... clients sending the soak's requests, each level for
   ``level_s`` or longer (see ``measure_capacity``); the capacity is the best
   completed-requests rate, and the search stops when two levels in a row no longer improve
   on it by 5%.
3. Soak: Poisson arrivals at ``load`` x capacity for ``warmup_s + duration_s``; a share of
   the clients (``disconnect_fraction``) hang up after the first tokens of their stream. The
   first ``warmup_s`` fill the fleet from empty (its queue and batches grow to their steady
   size) and are checked for errors but left out of the latency windows: stability compares
   the soak's first and last minutes at steady load, not a ramp from idle with the end.
4. After: every worker's KV pool back to all free, no Redis key left but the stack's own and
   finished requests' expiring records, each service process's RSS within ``max_rss_growth``
   of its value at the end of the warm-up (Redis's is reported, not checked: it keeps
   finished records for ``FINISHED_TTL_S`` by design), and p99 end-to-end latency of the last
   minute within ``p99_tolerance`` of the first minute's. Each process's RSS and CPU time are
   sampled through the run (``process_series``), to tell a leak from a high-water mark and
   to show where the CPU went.

Figures go to ``summary.json`` and ``requests.csv`` in the output directory.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kvfleet.load import stack_probe
from kvfleet.load.machine import cpu_seconds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SoakOptions:
    model: str = "smollm2-135m"
    num_workers: int = 2
    worker_memory_bytes: int = 1 << 30
    duration_s: float = 600.0
    warmup_s: float = 60.0  # arrivals before the measured soak, continuous with it
    # share of the measured (closed-loop) capacity offered: 0.9 of it overloads a 2-worker CPU
    # stack in open loop (it served 1.99 of 2.75 req/s offered and shed the rest with 429s)
    load: float = 0.65
    prompt_tokens: int = 64
    max_tokens: int = 32
    disconnect_fraction: float = 0.1
    level_s: float = 20.0
    max_concurrency: int = 64
    window_s: float = 60.0  # first and last windows compared for p99
    sample_s: float = 30.0  # how often each process's RSS and CPU time are sampled
    max_rss_growth: float = 0.05
    p99_tolerance: float = 1.25
    seed: int = 0


@dataclass
class Sample:
    start_s: float  # since the phase began
    status: int  # HTTP status; 0: connection error; -1: hung up on purpose
    ttft_s: float
    e2e_s: float
    num_tokens: int
    disconnect: bool


@dataclass
class SoakResult:
    options: dict[str, Any]
    capacity_rps: float = 0.0
    capacity_levels: list[dict[str, float]] = field(default_factory=list)
    offered_rps: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


class _Requests:
    """The soak's request mix: random token-id prompts, forced output length."""

    def __init__(self, options: SoakOptions, vocab: int, key: str) -> None:
        self.o = options
        self.vocab = vocab
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def body(self, rng: random.Random) -> dict[str, Any]:
        n = max(1, int(rng.uniform(0.5, 1.5) * self.o.prompt_tokens))
        return {"model": self.o.model, "prompt": [rng.randrange(10, self.vocab) for _ in range(n)],
                "max_tokens": self.o.max_tokens, "ignore_eos": True, "temperature": 0,
                "stream": True}

    async def send(self, http: httpx.AsyncClient, rng: random.Random, t0: float,
                   disconnect: bool) -> Sample:
        start = time.monotonic()
        ttft = 0.0
        tokens = 0
        status = 0
        try:
            async with http.stream("POST", "/v1/completions", json=self.body(rng),
                                   headers=self.headers) as r:
                status = r.status_code
                if status == 200:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        if not ttft:
                            ttft = time.monotonic() - start
                        tokens += 1
                        if disconnect and tokens >= 2:
                            status = -1
                            break  # leaving the block closes the connection mid-stream
                else:
                    await r.aread()
        except httpx.HTTPError as e:
            log.warning("request failed: %s", e)
        return Sample(start - t0, status, ttft, time.monotonic() - start, tokens, disconnect)


async def _closed_loop(req: _Requests, http: httpx.AsyncClient, clients: int,
                       seconds: float, seed: int) -> tuple[float, float]:
    """``clients`` closed loops that start requests for ``seconds``: (completed requests per
    second of the whole level, its in-flight requests' wait to finish included, and the
    slowest request's latency). Counting the drain keeps every started request in the
    figure, rather than a count of those that happened to end inside the window, which
    with requests of several seconds and few clients swings by a whole request per client."""
    t0 = time.monotonic()
    done = 0
    slowest = 0.0

    async def client(i: int) -> None:
        nonlocal done, slowest
        rng = random.Random(seed * 1000 + i)
        while time.monotonic() - t0 < seconds:
            s = await req.send(http, rng, t0, False)
            if s.status == 200:
                done += 1
                slowest = max(slowest, s.e2e_s)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / (time.monotonic() - t0), slowest


async def measure_capacity(
    level: Callable[[int, float], Awaitable[tuple[float, float]]], o: SoakOptions,
) -> tuple[float, list[dict[str, float]]]:
    """Double the clients until two levels in a row fail to beat the best rate by 5% (one
    noisy level must not end the search); each level lasts ``level_s``, or four times the
    slowest request of the level before, whichever is longer. ``level(clients, seconds)``
    runs one level: (requests per second, slowest request's seconds)."""
    levels: list[dict[str, float]] = []
    best = 0.0
    misses = 0
    clients = 1
    seconds = o.level_s
    while clients <= o.max_concurrency and misses < 2:
        rps, slowest = await level(clients, seconds)
        levels.append({"clients": clients, "rps": rps, "seconds": seconds,
                       "slowest_s": slowest})
        log.info("capacity: %d clients -> %.2f req/s (%.0f s level, slowest %.1f s)",
                 clients, rps, seconds, slowest)
        misses = misses + 1 if rps < best * 1.05 else 0
        best = max(best, rps)
        clients *= 2
        seconds = max(o.level_s, 4 * slowest)
    return best, levels


async def _open_loop(req: _Requests, http: httpx.AsyncClient, rate: float, o: SoakOptions
                     ) -> list[Sample]:
    rng = random.Random(o.seed)
    t0 = time.monotonic()
    tasks: list[asyncio.Task[Sample]] = []
    next_s = 0.0
    i = 0
    while next_s < o.warmup_s + o.duration_s:
        delay = t0 + next_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        disconnect = rng.random() < o.disconnect_fraction
        tasks.append(asyncio.create_task(
            req.send(http, random.Random(o.seed * 7919 + i), t0, disconnect)))
        i += 1
        next_s += rng.expovariate(rate)
    return list(await asyncio.gather(*tasks))


def _p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(0.99 * len(v)))]


def summarize(samples: list[Sample], o: SoakOptions) -> dict[str, Any]:
    """Statuses over every request, warm-up included; served rate and latency windows over
    the measured soak (times from its start, after ``warmup_s``)."""
    statuses: dict[str, int] = {}
    for s in samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    served = [(s.start_s - o.warmup_s, s) for s in samples
              if s.status == 200 and s.start_s >= o.warmup_s]
    windows = max(1, math.ceil(o.duration_s / o.window_s))
    by_window = [[s.e2e_s for t, s in served if k * o.window_s <= t < (k + 1) * o.window_s]
                 for k in range(windows)]
    first = by_window[0]
    last = [s.e2e_s for t, s in served if t >= o.duration_s - o.window_s]
    p99_first, p99_last = _p99(first), _p99(last)
    ttfts = sorted(s.ttft_s for _, s in served)
    return {
        "num_requests": len(samples),
        "num_warmup_requests": sum(1 for s in samples if s.start_s < o.warmup_s),
        "statuses": statuses,  # -1: hung up on purpose, 0: connection error
        "num_served": len(served),
        "num_disconnected": sum(1 for s in samples if s.status == -1),
        "served_rps": len(served) / max(1e-9, o.duration_s),
        "p99_e2e_first_window_s": p99_first,
        "p99_e2e_last_window_s": p99_last,
        "p99_ratio_last_to_first": p99_last / p99_first if first and last else float("nan"),
        # the whole soak window by window: a trend (a leak, a growing queue) or noise
        "p99_e2e_by_window_s": [round(_p99(w), 3) for w in by_window],
        "p50_ttft_s": ttfts[len(ttfts) // 2] if ttfts else 0.0,
    }


async def _sample_processes(pids: dict[str, int], every_s: float,
                            out: list[dict[str, Any]]) -> None:
    """Every ``every_s`` from now: each process's RSS and CPU seconds, appended to ``out``."""
    t0 = time.monotonic()
    while True:
        out.append({"t": round(time.monotonic() - t0, 1),
                    "rss": {n: stack_probe.rss_bytes(p) for n, p in pids.items()},
                    "cpu_s": {n: cpu_seconds(p) for n, p in pids.items()}})
        await asyncio.sleep(every_s)


def _cpu_cores_used(series: list[dict[str, Any]], from_s: float) -> dict[str, float]:
    """Each process's mean CPU use (cores) between the first sample at ``from_s`` or later
    and the last sample."""
    xs = [x for x in series if x["t"] >= from_s]
    if len(xs) < 2 or xs[-1]["t"] <= xs[0]["t"]:
        return {}
    span = xs[-1]["t"] - xs[0]["t"]
    return {n: round((xs[-1]["cpu_s"][n] - c) / span, 3) for n, c in xs[0]["cpu_s"].items()}


async def soak(stack: Any, o: SoakOptions) -> SoakResult:
    """Capacity, soak and checks against a running stack."""
    from kvfleet.common.models import load_tokenizer

    key = stack.secrets.api_key if stack.secrets else ""
    vocab = min(int(load_tokenizer(o.model).vocab_size), 32_000)
    req = _Requests(o, vocab, key)
    result = SoakResult(asdict(o))
    series: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=2048, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=stack.http_url, limits=limits, trust_env=False,
                                 timeout=httpx.Timeout(900.0, connect=30.0)) as http:
        result.capacity_rps, result.capacity_levels = await measure_capacity(
            lambda clients, seconds: _closed_loop(req, http, clients, seconds,
                                                  o.seed + clients), o)
        async with stack_probe.admin_store(stack) as store:
            await stack_probe.wait_idle(store, 120)
            pids_before = stack_probe.stack_pids(stack)
            rss_idle = {n: stack_probe.rss_bytes(p) for n, p in pids_before.items()}
            result.offered_rps = o.load * result.capacity_rps
            log.info("soak: %.2f req/s for %.0f s after a %.0f s warm-up", result.offered_rps,
                     o.duration_s, o.warmup_s)
            sampler = asyncio.create_task(_sample_processes(pids_before, o.sample_s, series))
            try:
                result.samples = await _open_loop(req, http, max(0.01, result.offered_rps), o)
            finally:
                sampler.cancel()
            pages = await stack_probe.wait_idle(store, 120)
            audit = await stack_probe.audit_keys(store)
            pids_after = stack_probe.stack_pids(stack)
            rss_after = {n: stack_probe.rss_bytes(p) for n, p in pids_after.items()}
    summary = summarize(result.samples, o)
    # the baseline is the end of the warm-up: by then the workers have run the soak's step
    # shapes, and an allocator's high-water mark is not a leak; a leak keeps growing after it
    warm = next((x for x in series if x["t"] >= o.warmup_s), None)
    rss_before = warm["rss"] if warm else rss_idle
    rss_growth = stack_probe.growth(rss_before, rss_after)
    restarted = sorted(n for n in pids_before if pids_after.get(n) != pids_before[n])
    summary.update({
        "capacity_rps": result.capacity_rps,
        "offered_rps": result.offered_rps,
        "workers": [asdict(p) for p in pages],
        "leaked_pages": sum(max(0, p.num_total_pages - p.num_free_pages) for p in pages),
        "redis": audit.to_dict(),
        "rss_idle_before_bytes": rss_idle,
        "rss_before_bytes": rss_before,
        "process_series": series,
        "cpu_cores_used": _cpu_cores_used(series, o.warmup_s),
        "rss_after_bytes": rss_after,
        "rss_growth": rss_growth,
        "restarted": restarted,
    })
    checks = {
        "no_leaked_pages": bool(pages) and all(p.idle for p in pages),
        "no_leaked_keys": not audit.leaked,
        # Redis is left out: it holds every finished request's record for FINISHED_TTL_S by
        # design (see redis.lingering), so its memory grows with the requests served
        "rss_growth_ok": all(g < o.max_rss_growth for n, g in rss_growth.items()
                             if n != "redis"),
        "p99_stable": summary["p99_ratio_last_to_first"] <= o.p99_tolerance,
        "no_server_errors": not any(k.startswith("5") or k == "0" for k in summary["statuses"]),
        "no_restarts": not restarted,
    }
    summary["checks"] = checks
    summary["passed"] = all(checks.values())
    result.summary = summary
    return result


def write(result: SoakResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(
        {"options": result.options, "capacity_levels": result.capacity_levels,
         **result.summary}, indent=2, default=str))
    with open(out / "requests.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["start_s", "status", "ttft_s", "e2e_s", "num_tokens", "disconnect"])
        for s in result.samples:
            w.writerow([f"{s.start_s:.3f}", s.status, f"{s.ttft_s:.4f}", f"{s.e2e_s:.4f}",
                        s.num_tokens, int(s.disconnect)])
