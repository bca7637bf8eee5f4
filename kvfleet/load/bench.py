"""`kvfleet bench serve`: the same workload, in one run, against the kvfleet stack and against
`transformers serve` on the same model, one server at a time on the same machine.

Both get the same prompts (the same token ids: kvfleet's gRPC API takes ids, and the HTTP text
re-encodes to them) and the same output lengths (``ignore_eos`` for kvfleet,
``min_new_tokens`` through ``generation_config`` for transformers serve, which rejects
``ignore_eos``). Output tokens are counted the same way on both sides: from the ``usage`` of
the last streamed chunk (both servers send it), else with the same tokenizer. Each server is
stopped before the next starts, so they never share the CPU.

The peer is given a continuous-batching cache of the same KV bytes as kvfleet's pool (the
largest kvfleet fleet in the run) and the same per-step token budget; without ``--cb-*``
flags it would size its cache from the machine's memory.

With ``rates``, each server replays the slice at each mean rate (``sweep.py``) and the result
holds goodput, p99 TTFT and TPOT per rate, the highest rate each server sustains within the
SLO, and ``sweep.png``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvfleet.load.compare import compare
from kvfleet.load.options import LoadOptions, build_workload
from kvfleet.load.report import write_summary
from kvfleet.load.session import execute
from kvfleet.load.sweep import (
    RatePoint,
    plot_sweep,
    should_stop,
    slice_rate,
    speed_for_rate,
    sustained_rate,
)

log = logging.getLogger(__name__)

#: (summary key, label, higher is better) of the headline ratios.
HEADLINE = (
    ("request_goodput", "goodput", True),
    ("p99_ttft_ms", "p99 TTFT", False),
    ("p99_tpot_ms", "p99 TPOT", False),
    ("mean_e2el_ms", "mean E2E", False),
    ("p99_e2el_ms", "p99 E2E", False),
)


@dataclass(frozen=True, slots=True)
class BenchPlan:
    load: LoadOptions  # workload, SLOs and run settings; target/out/label are set per run
    model: str = "smollm2-135m"
    out: Path = Path("runs/bench-serve")
    kvfleet_apis: tuple[str, ...] = ("http", "grpc")
    workers: tuple[int, ...] = (1,)  # one kvfleet fleet per entry, each against the same peer
    worker_memory_bytes: int = 2_000_000_000
    peer_continuous_batching: bool = True
    peer_block_size: int = 32
    threads: int | None = None
    ready_timeout_s: float = 900.0
    rates: tuple[float, ...] = ()  # a rate sweep (req/s); empty: one run at the slice's rate
    min_attainment: float = 0.9  # SLO attainment that counts as sustaining a rate
    engine: dict[str, object] | None = None  # kvfleet EngineSettings fields (dtype, compile...)


def _run(opts: LoadOptions) -> dict[str, object]:
    return asyncio.run(execute(opts, progress=True)).summary


def _ratios(kv: dict[str, object], peer: dict[str, object]) -> dict[str, float | None]:
    rows = {r.key: r for r in compare(peer, kv)}
    return {key: rows[key].ratio for key, _, _ in HEADLINE}


def kvfleet_kv_bytes(model: str, memory_bytes: int, engine: object) -> tuple[int, int]:
    """(KV pool bytes, KV bytes per token) of one kvfleet worker serving ``model`` alone with
    ``memory_bytes`` and these engine settings: the engine's own memory arithmetic."""
    import torch

    from kvfleet.common.models import read_spec, resolve_model
    from kvfleet.services.worker.engine.loaded_model import weights_bytes, workspace_bytes

    spec = read_spec(resolve_model(model))
    dtypes = getattr(engine, "model_dtypes", {}) or {}
    dtype = getattr(torch, dtypes.get(model, getattr(engine, "dtype", "float32")))
    page = int(getattr(engine, "page_size_bytes", 1 << 20))
    free = memory_bytes - weights_bytes(spec, 0, spec.num_layers, dtype)
    free -= workspace_bytes(
        spec,
        int(getattr(engine, "max_num_batched_tokens", 2048)),
        int(getattr(engine, "max_num_seqs", 64)),
        dtype,
    )
    token = spec.kv_bytes_per_token(spec.num_layers, dtype.itemsize)
    pages = max(0, free // page)
    return pages * (page // token) * token, token


def peer_cache_for(plan: BenchPlan, engine: object) -> object:
    """The peer's cache: as many KV bytes as the largest kvfleet fleet's pools together
    (the peer keeps KV in float32, as kvfleet does by default), the same step token budget."""
    from kvfleet.load.peers import PeerCache

    pool, token = kvfleet_kv_bytes(plan.model, plan.worker_memory_bytes, engine)
    peer_token = token * 4 // max(1, _dtype_bytes(engine, plan.model))
    tokens = pool * max(plan.workers) // peer_token
    return PeerCache(
        block_size=plan.peer_block_size,
        num_blocks=max(1, tokens // plan.peer_block_size),
        max_batch_tokens=int(getattr(engine, "max_num_batched_tokens", 2048)),
    )


def _dtype_bytes(engine: object, model: str) -> int:
    dtypes = getattr(engine, "model_dtypes", {}) or {}
    name = dtypes.get(model, getattr(engine, "dtype", "float32"))
    return 4 if name == "float32" else 2


def _sweep(
    name: str,
    base: LoadOptions,
    base_rate: float,
    plan: BenchPlan,
    out: Path,
    say: Callable[[str], None],
) -> tuple[list[RatePoint], dict[str, dict[str, object]]]:
    """One server at each rate, lowest first, until two rates in a row miss the SLO."""
    points: list[RatePoint] = []
    summaries: dict[str, dict[str, object]] = {}
    for rate in sorted(plan.rates):
        label = f"{name}@{rate:g}"
        say(f"load against {label} req/s")
        summary = _run(
            base.model_copy(
                update=dict(
                    speed=speed_for_rate(base_rate, rate),
                    out=out / name / f"rate-{rate:g}",
                    label=label,
                )
            )
        )
        summaries[label] = summary
        points.append(RatePoint.from_summary(name, rate, summary))
        if should_stop(points, plan.min_attainment):
            say(f"{name}: two rates in a row below the SLO attainment; stopping the sweep")
            break
    return points, summaries


def run_bench(plan: BenchPlan, say: Callable[[str], None] = print) -> dict[str, object]:
    """Run kvfleet (each fleet size in ``plan.workers``, each API in ``plan.kvfleet_apis``)
    then transformers serve; write and return ``bench.json``: every summary plus
    kvfleet/peer ratios, and with ``plan.rates`` the sweep and the sustained rates."""
    from kvfleet.common.config import EngineSettings, FleetConfig, ModelConfig, WorkerConfig
    from kvfleet.common.launcher import launch
    from kvfleet.load.peer_model import hf_checkpoint_dir
    from kvfleet.load.peers import start_transformers_serve

    out = plan.out.resolve()  # the stack launcher needs an absolute run dir (redis chdirs)
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, object]] = {}
    points: list[RatePoint] = []
    setup: dict[str, object] = {}
    engine = EngineSettings(num_threads=plan.threads, **(plan.engine or {}))
    base_rate = 0.0
    if plan.rates:
        base_rate = slice_rate(build_workload(plan.load.model_copy(update=dict(speed=1.0))))
        setup["slice_rate_at_speed_1"] = base_rate

    def measure(name: str, opts: LoadOptions) -> None:
        nonlocal points
        if plan.rates:
            pts, sums = _sweep(name, opts, base_rate, plan, out, say)
            points += pts
            summaries.update(sums)
        else:
            say(f"load against {name} at {opts.target}")
            summaries[name] = _run(opts.model_copy(update=dict(out=out / name, label=name)))

    # 1. kvfleet, as `kvfleet up` would start it, once per fleet size.
    kv_names: list[str] = []
    for n_workers in plan.workers:
        fleet = FleetConfig(
            models=[ModelConfig(name=plan.model)],
            workers=[
                WorkerConfig(id=f"w{i}", memory_bytes=plan.worker_memory_bytes)
                for i in range(n_workers)
            ],
            http_port=0,
            grpc_port=0,
            engine=engine,
            open_gateway=True,  # a loopback stack for one measurement; the peer takes no key either
        )
        say(f"starting kvfleet ({n_workers} worker(s), {plan.model}) ...")
        t = time.monotonic()
        stack = launch(fleet, out / f"kvfleet-stack-{n_workers}w", timeout_s=plan.ready_timeout_s)
        setup[f"kvfleet_{n_workers}w_start_s"] = time.monotonic() - t
        try:
            for api in plan.kvfleet_apis:
                target = f"grpc://{stack.grpc_address}" if api == "grpc" else f"{stack.http_url}/v1"
                name = f"kvfleet-{api}" if len(plan.workers) == 1 else f"kvfleet-{api}-{n_workers}w"
                kv_names.append(name)
                measure(
                    name,
                    plan.load.model_copy(
                        update=dict(target=target, model=plan.model, tokenizer=plan.model)
                    ),
                )
        finally:
            stack.stop()

    # 2. transformers serve on a plain checkpoint of the same weights, same KV memory.
    model_dir = _peer_checkpoint(plan.model, hf_checkpoint_dir)
    cache = peer_cache_for(plan, engine) if plan.peer_continuous_batching else None
    say(f"starting transformers serve on {model_dir} ({cache}) ...")
    t = time.monotonic()
    peer = start_transformers_serve(
        model_dir,
        out / "transformers-serve.log",
        continuous_batching=plan.peer_continuous_batching,
        threads=plan.threads,
        ready_timeout_s=plan.ready_timeout_s,
        cache=cache,  # type: ignore[arg-type]
    )
    setup["peer_start_s"] = time.monotonic() - t
    setup["peer"] = peer.extra
    try:
        measure(
            "transformers-serve",
            plan.load.model_copy(
                update=dict(
                    target=peer.base_url,
                    model=str(model_dir),
                    tokenizer=plan.model,
                    send_slo=False,  # kvfleet's extension field; the peer has none
                )
            ),
        )
    finally:
        peer.stop()

    result: dict[str, object] = {"model": plan.model, "setup": setup}
    if plan.rates:
        result["sweep"] = _sweep_result(points, kv_names, plan, out)
    else:
        peer_summary = summaries["transformers-serve"]
        result["ratios_kvfleet_over_peer"] = {
            name: _ratios(summaries[name], peer_summary) for name in kv_names
        }
    result["summaries"] = summaries
    write_summary(result, out / "bench.json")
    return result


def _sweep_result(
    points: list[RatePoint], kv_names: list[str], plan: BenchPlan, out: Path
) -> dict[str, object]:
    servers = [*kv_names, "transformers-serve"]
    sustained = {
        s: sustained_rate([p for p in points if p.server == s], plan.min_attainment)
        for s in servers
    }
    peer = sustained["transformers-serve"]
    ratios: dict[str, dict[str, float | None]] = {}
    for name in kv_names:
        mine = sustained[name]
        ratios[name] = {
            "tested": _ratio(mine.tested_rate, peer.tested_rate),
            "interpolated": _ratio(mine.interpolated_rate, peer.interpolated_rate),
        }
    plot = plot_sweep(points, plan.min_attainment, out / "sweep.png")
    return {
        "rates": list(plan.rates),
        "min_attainment": plan.min_attainment,
        "points": [p.to_dict() for p in points],
        "sustained": {s: v.to_dict() for s, v in sustained.items()},
        "sustained_rate_kvfleet_over_peer": ratios,
        "plot": str(plot),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _peer_checkpoint(model: str, make: Callable[..., Path]) -> Path:
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if model == "smollm2-135m":
        return make()
    if path.is_file() and path.suffix == ".gguf":
        return make(path)
    raise ValueError(f"no plain checkpoint for {model!r} to give transformers serve")


def headline_table(result: dict[str, object]) -> object:
    from rich.table import Table

    ratios = result["ratios_kvfleet_over_peer"]
    summaries = result["summaries"]
    assert isinstance(ratios, dict) and isinstance(summaries, dict)
    table = Table(title="kvfleet / transformers serve (same workload, same machine)")
    table.add_column("metric")
    names = list(summaries)
    for name in names:
        table.add_column(name, justify="right")
    for name in ratios:
        table.add_column(f"{name} / peer", justify="right")
    for key, label, hib in HEADLINE:
        cells = []
        for name in names:
            v = summaries[name].get(key)
            cells.append("n/a" if v is None else f"{v:.3f}")
        for name in ratios:
            r = ratios[name][key]
            if r is None:
                cells.append("n/a")
            else:
                good = (r > 1) == hib and r != 1
                cells.append(f"[{'green' if good else 'red'}]{r:.3f}x[/]")
        unit = " (req/s)" if key == "request_goodput" else " (ms)"
        table.add_row(label + unit, *cells)
    return table


def dump(result: dict[str, object]) -> str:
    if "sweep" in result:
        sweep = result["sweep"]
        assert isinstance(sweep, dict)
        return json.dumps(sweep["sustained_rate_kvfleet_over_peer"], indent=2)
    return json.dumps(result["ratios_kvfleet_over_peer"], indent=2)


def sweep_tables(result: dict[str, object]) -> list[object]:
    """Per rate: each server's SLO attainment, goodput, p99 TTFT and TPOT; then the highest
    rate each sustains and kvfleet's over the peer's."""
    from rich.table import Table

    sweep = result["sweep"]
    assert isinstance(sweep, dict)
    points = [RatePoint(**p) for p in sweep["points"]]
    per_rate = Table(title=f"rate sweep (sustained: SLO attainment >= {sweep['min_attainment']})")
    for col in (
        "server",
        "rate (req/s)",
        "attainment",
        "goodput (req/s)",
        "p99 TTFT (ms)",
        "p99 TPOT (ms)",
    ):
        per_rate.add_column(col, justify="left" if col == "server" else "right")
    for p in points:
        per_rate.add_row(
            p.server,
            f"{p.rate:g}",
            f"{p.attainment:.2f}",
            f"{p.goodput:.3f}",
            "n/a" if p.p99_ttft_ms is None else f"{p.p99_ttft_ms:.0f}",
            "n/a" if p.p99_tpot_ms is None else f"{p.p99_tpot_ms:.0f}",
        )
    sustained = Table(title="highest rate sustained within the SLO")
    for col in (
        "server",
        "tested (req/s)",
        "interpolated (req/s)",
        "first miss (req/s)",
        "kvfleet / peer (tested, interpolated)",
    ):
        sustained.add_column(col, justify="left" if col == "server" else "right")
    ratios = sweep["sustained_rate_kvfleet_over_peer"]
    assert isinstance(ratios, dict)

    def fmt(v: object) -> str:
        return "n/a" if not isinstance(v, int | float) else f"{v:.3g}"

    for server, s in sweep["sustained"].items():
        r = ratios.get(server)
        cell = "" if r is None else f"{fmt(r['tested'])}x, {fmt(r['interpolated'])}x"
        sustained.add_row(
            server,
            fmt(s["tested_rate"]),
            fmt(s["interpolated_rate"]),
            fmt(s["stopped_at"]),
            cell,
        )
    return [per_rate, sustained]
