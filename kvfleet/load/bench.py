"""`kvfleet bench serve`: the same workload, in one run, against the kvfleet stack and against
`transformers serve` on the same model, one server at a time on the same machine.

Both get the same prompts (the same token ids: kvfleet's gRPC API takes ids, and the HTTP text
re-encodes to them) and the same output lengths (``ignore_eos`` for kvfleet,
``min_new_tokens`` through ``generation_config`` for transformers serve, which rejects
``ignore_eos``). Each server is stopped before the next starts, so they never share the CPU.
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
from kvfleet.load.options import LoadOptions
from kvfleet.load.report import write_summary
from kvfleet.load.session import execute

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
    workers: int = 1
    worker_memory_bytes: int = 2_000_000_000
    peer_continuous_batching: bool = True
    threads: int | None = None
    ready_timeout_s: float = 900.0


def _run(opts: LoadOptions) -> dict[str, object]:
    return asyncio.run(execute(opts, progress=True)).summary


def _ratios(kv: dict[str, object], peer: dict[str, object]) -> dict[str, float | None]:
    rows = {r.key: r for r in compare(peer, kv)}
    return {key: rows[key].ratio for key, _, _ in HEADLINE}


def run_bench(plan: BenchPlan, say: Callable[[str], None] = print) -> dict[str, object]:
    """Run kvfleet (each API in ``plan.kvfleet_apis``) then transformers serve; write and
    return ``bench.json``: every summary plus kvfleet/peer ratios."""
    from kvfleet.common.config import EngineSettings, FleetConfig, ModelConfig, WorkerConfig
    from kvfleet.common.launcher import launch
    from kvfleet.load.peer_model import hf_checkpoint_dir
    from kvfleet.load.peers import start_transformers_serve

    out = plan.out.resolve()  # the stack launcher needs an absolute run dir (redis chdirs)
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, object]] = {}
    setup: dict[str, object] = {}

    # 1. kvfleet, as `kvfleet up` would start it.
    fleet = FleetConfig(
        models=[ModelConfig(name=plan.model)],
        workers=[
            WorkerConfig(id=f"w{i}", memory_bytes=plan.worker_memory_bytes)
            for i in range(plan.workers)
        ],
        http_port=0,
        grpc_port=0,
        engine=EngineSettings(num_threads=plan.threads),
        open_gateway=True,  # a loopback stack for one measurement; the peer takes no key either
    )
    say(f"starting kvfleet ({plan.workers} worker(s), {plan.model}) ...")
    t = time.monotonic()
    stack = launch(fleet, out / "kvfleet-stack", timeout_s=plan.ready_timeout_s)
    setup["kvfleet_start_s"] = time.monotonic() - t
    try:
        for api in plan.kvfleet_apis:
            target = f"grpc://{stack.grpc_address}" if api == "grpc" else f"{stack.http_url}/v1"
            name = f"kvfleet-{api}"
            say(f"load against {name} at {target}")
            summaries[name] = _run(
                plan.load.model_copy(
                    update=dict(
                        target=target,
                        model=plan.model,
                        tokenizer=plan.model,
                        out=out / name,
                        label=name,
                    )
                )
            )
    finally:
        stack.stop()

    # 2. transformers serve on a plain checkpoint of the same weights.
    model_dir = _peer_checkpoint(plan.model, hf_checkpoint_dir)
    say(f"starting transformers serve on {model_dir} ...")
    t = time.monotonic()
    peer = start_transformers_serve(
        model_dir,
        out / "transformers-serve.log",
        continuous_batching=plan.peer_continuous_batching,
        threads=plan.threads,
        ready_timeout_s=plan.ready_timeout_s,
    )
    setup["peer_start_s"] = time.monotonic() - t
    setup["peer"] = peer.extra
    try:
        say(f"load against transformers-serve at {peer.base_url}")
        summaries["transformers-serve"] = _run(
            plan.load.model_copy(
                update=dict(
                    target=peer.base_url,
                    model=str(model_dir),
                    tokenizer=plan.model,
                    out=out / "transformers-serve",
                    label="transformers-serve",
                    send_slo=False,  # kvfleet's extension field; the peer has none
                )
            )
        )
    finally:
        peer.stop()

    peer_summary = summaries["transformers-serve"]
    ratios = {
        name: _ratios(s, peer_summary)
        for name, s in summaries.items()
        if name != "transformers-serve"
    }
    result: dict[str, object] = {
        "model": plan.model,
        "setup": setup,
        "ratios_kvfleet_over_peer": ratios,
        "summaries": summaries,
    }
    write_summary(result, out / "bench.json")
    return result


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
    return json.dumps(result["ratios_kvfleet_over_peer"], indent=2)
