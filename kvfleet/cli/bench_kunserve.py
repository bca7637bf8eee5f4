"""`kvfleet bench kunserve`: KunServe against the vLLM baseline on the live CPU stack.

Each policy gets a fresh stack (Redis, planner, scheduler, two workers holding the model, the
gateway, as processes) with the same memory budgets: the weights, the workspace and KV for
``--kv-tokens`` tokens per worker, which a burst of ``--requests`` requests overflows. The
burst is sent through the gateway's gRPC door (all requests within ``--burst-s``); TTFT,
TPOT and end-to-end latency are measured at the client, as vLLM's bench serve does. Under
``kunserve`` the planner drops layers into a pipeline group when the KV overload lasts, and
restores them after the burst; the drop and restore (KV exchanged, reload in the background)
are read back from the fleet's event log. Every request's greedy output must be the same
under both policies.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer


def _memory_for(model: str, kv_tokens: int, page_size_bytes: int, max_seqs: int) -> int:
    from kvfleet.services.worker.engine import Engine, EngineConfig

    eng = Engine(EngineConfig(memory_bytes=8 << 30, page_size_bytes=page_size_bytes,
                              num_threads=1, max_num_seqs=max_seqs))
    eng.load_model(model)
    acc = eng.accounting()
    tpp = acc.tokens_per_page[model]
    pages = -(-kv_tokens // tpp)
    return acc.weights_bytes + acc.workspace_bytes + pages * page_size_bytes


def _prompt(i: int, n: int) -> list[int]:
    return [(97 * i + 31 * k) % 20000 + 200 for k in range(n)]


async def _one(client: Any, model: str, rid: str, ids: list[int], max_tokens: int,
               delay_s: float) -> dict[str, Any]:
    from kvfleet.common.client import sampling

    await asyncio.sleep(delay_s)
    t0 = time.perf_counter()
    first = last = 0.0
    out: list[int] = []
    async for msg in client.stream(model, request_id=rid, prompt_token_ids=ids,
                                   params=sampling(max_tokens, ignore_eos=True)):
        if msg.token_ids:
            now = time.perf_counter()
            first = first or now
            last = now
            out.extend(msg.token_ids)
    n = len(out)
    return {"request_id": rid, "ttft_s": first - t0, "e2el_s": last - t0,
            "tpot_s": (last - first) / (n - 1) if n > 1 else 0.0, "token_ids": out}


def _stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    ttft = np.array([r["ttft_s"] for r in rows])
    tpot = np.array([r["tpot_s"] for r in rows if r["tpot_s"] > 0])
    e2e = np.array([r["e2el_s"] for r in rows])
    return {"mean_ttft_s": float(ttft.mean()), "p50_ttft_s": float(np.percentile(ttft, 50)),
            "p99_ttft_s": float(np.percentile(ttft, 99)),
            "mean_tpot_s": float(tpot.mean()) if tpot.size else 0.0,
            "p99_tpot_s": float(np.percentile(tpot, 99)) if tpot.size else 0.0,
            "p99_e2el_s": float(np.percentile(e2e, 99))}


def run_policy(policy: str, model: str, requests: int, prompt_tokens: int, output_tokens: int,
               kv_tokens: int, page_size_bytes: int, burst_s: float, threads: int,
               run_dir: Path, overload: dict[str, Any]) -> dict[str, Any]:
    from kvfleet.common.client import GatewayClient
    from kvfleet.common.config import EngineSettings, FleetConfig, ModelConfig, WorkerConfig
    from kvfleet.common.launcher import launch
    from kvfleet.common.redis_store import RedisStore

    max_seqs = 64
    memory = _memory_for(model, kv_tokens, page_size_bytes, max_seqs)
    fleet = FleetConfig(
        policy=policy, models=[ModelConfig(name=model)],
        workers=[WorkerConfig(id="w0", memory_bytes=memory),
                 WorkerConfig(id="w1", memory_bytes=memory)],
        http_port=0, grpc_port=0,
        engine=EngineSettings(num_threads=threads, max_num_seqs=max_seqs,
                              page_size_bytes=page_size_bytes),
        planner={"overload": overload},
    )
    stack = launch(fleet, run_dir / policy, timeout_s=600)
    try:
        async def go() -> tuple[list[dict[str, Any]], list[Any]]:
            async with GatewayClient(stack.grpc_address, stack.secrets.api_key) as client:
                await _one(client, model, f"warm-{policy}", _prompt(999, 8), 2, 0.0)
                rows = await asyncio.gather(*(
                    _one(client, model, f"{policy}-{i}", _prompt(i, prompt_tokens),
                         output_tokens, burst_s * i / max(requests - 1, 1))
                    for i in range(requests)))
            store = RedisStore.from_url(stack.redis_admin_url)
            try:
                events: list[Any] = []
                if policy != "vllm":  # wait for the group (if any) to be restored
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        events = await store.events(10000)
                        drops = sum(e.kind == "drop" for e in events)
                        restores = sum(e.kind == "restore" for e in events)
                        if drops == restores:
                            break
                        await asyncio.sleep(0.5)
                events = await store.events(10000)
            finally:
                await store.close()
            return list(rows), events

        rows, events = asyncio.run(go())
    finally:
        stack.stop()
    actions = [{"kind": e.kind, "ts": e.ts, **e.data} for e in events
               if e.kind in ("drop", "restore")]
    return {"policy": policy, "memory_bytes": memory, "stats": _stats(rows), "rows": rows,
            "layer_actions": actions}


def register(app: typer.Typer) -> None:
    @app.command("kunserve")
    def kunserve(
        model: Annotated[str, typer.Option(help="Model both workers hold.")] = "smollm2-135m",
        requests: Annotated[int, typer.Option(help="Requests in the burst.")] = 32,
        prompt_tokens: Annotated[int, typer.Option(help="Prompt length.")] = 64,
        output_tokens: Annotated[int, typer.Option(help="Output length (greedy).")] = 192,
        kv_tokens: Annotated[int, typer.Option(
            help="KV each worker holds with the whole model (the burst needs more).")] = 1024,
        page_size_bytes: Annotated[int, typer.Option(help="KV page size.")] = 1 << 20,
        burst_s: Annotated[float, typer.Option(help="The burst's requests arrive over this.")] = 1.0,
        threads: Annotated[int, typer.Option(help="torch threads per worker.")] = 1,
        policies: Annotated[str, typer.Option(help="Comma list.")] = "vllm,kunserve",
        overload_hold_s: Annotated[float, typer.Option(
            help="The planner's overload_hold_s.")] = 0.5,
        restore_hold_s: Annotated[float, typer.Option(
            help="The planner's restore_hold_s.")] = 2.0,
        out: Annotated[Path, typer.Option(help="Folder for stacks and results.")] = Path(
            "runs/kunserve-live"),
    ) -> None:
        """KunServe vs vLLM on the live stack: p99 TTFT under a burst, outputs identical."""
        out.mkdir(parents=True, exist_ok=True)
        overload = {"overload_hold_s": overload_hold_s, "restore_hold_s": restore_hold_s,
                    "cooldown_s": 1.0, "interval_s": 0.1}
        results = []
        for policy in [p.strip() for p in policies.split(",") if p.strip()]:
            typer.echo(f"{policy}: starting a stack and sending the burst ...")
            results.append(run_policy(policy, model, requests, prompt_tokens, output_tokens,
                                      kv_tokens, page_size_bytes, burst_s, threads, out,
                                      overload))
        outputs = [[r["token_ids"] for r in res["rows"]] for res in results]
        identical = all(o == outputs[0] for o in outputs)
        base = results[0]["stats"]
        summary = {
            "model": model, "requests": requests, "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens, "kv_tokens_per_worker": kv_tokens,
            "outputs_identical": identical,
            "policies": {r["policy"]: {"stats": r["stats"], "layer_actions": r["layer_actions"],
                                       "memory_bytes": r["memory_bytes"]} for r in results},
            "ratios_vs_first": {
                r["policy"]: {k: (base[k] / r["stats"][k] if r["stats"][k] else None)
                              for k in ("p99_ttft_s", "mean_ttft_s")}
                | {"p99_tpot_x": (r["stats"]["p99_tpot_s"] / base["p99_tpot_s"]
                                  if base["p99_tpot_s"] else None)}
                for r in results},
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        for r in results:
            s = r["stats"]
            typer.echo(f"{r['policy']:>10}: TTFT mean {s['mean_ttft_s']:.2f}s p99 "
                       f"{s['p99_ttft_s']:.2f}s | TPOT mean {s['mean_tpot_s'] * 1000:.0f}ms p99 "
                       f"{s['p99_tpot_s'] * 1000:.0f}ms | p99 E2E {s['p99_e2el_s']:.2f}s")
            for a in r["layer_actions"]:
                typer.echo(f"            {a['kind']} {a.get('group_id')}: {a.get('duration_s')}s"
                           + (f" (reload {a.get('reload_s')}s)" if a["kind"] == "restore" else "")
                           + f", stages {a.get('stages')}")
        for name, ratio in summary["ratios_vs_first"].items():
            typer.echo(f"{name}: p99 TTFT {ratio['p99_ttft_s']:.2f}x lower, mean TTFT "
                       f"{ratio['mean_ttft_s']:.2f}x lower, p99 TPOT {ratio['p99_tpot_x']:.2f}x")
        typer.echo(f"outputs identical across policies: {identical}; results in {out}")
        if not identical:
            raise typer.Exit(1)
