"""`kvfleet admin` commands: show and steer a running fleet.

Reads come straight from Redis (the fleet's state lives there); steering goes through
the scheduler's gRPC API. Addresses default to those of the stack started by `kvfleet up`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True)

_state: dict[str, Any] = {}


@app.callback()
def _options(
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL (default: the stack's, or REDIS_URL).")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Scheduler gRPC address (default: the stack's).")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="The stack's run directory.")] = None,
) -> None:
    from kvfleet.common.launcher import read_secrets, read_stack

    desc = read_stack(run_dir) or {}
    found = read_secrets(run_dir)
    stack_url = found.redis_admin_url if found else desc.get("redis_url")
    _state["redis_url"] = redis_url or stack_url or os.environ.get("REDIS_URL")
    _state["fleet_token"] = os.environ.get("KVFLEET_FLEET_TOKEN") or (
        found.fleet_token if found else "")
    sched = scheduler
    for s in desc.get("services", []):
        if s["kind"] == "scheduler" and not sched:
            sched = s.get("grpc")
    _state["scheduler"] = sched


def _store():  # type: ignore[no-untyped-def]
    from kvfleet.common.redis_store import RedisStore

    url = _state.get("redis_url")
    if not url:
        raise typer.BadParameter("no stack found: pass --redis-url or start one with `kvfleet up`")
    return RedisStore.from_url(url)


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


async def _workers_table():  # type: ignore[no-untyped-def]
    from rich.table import Table

    store = _store()
    try:
        workers = await store.workers()
        draining = await store.draining()
        counts = {w: len(await store.worker_requests(w)) for w in workers}
    finally:
        await store.close()
    t = Table(title="workers")
    for col in (
        "worker",
        "address",
        "state",
        "models",
        "free/total pages",
        "reserved",
        "queued",
        "running",
        "waiting",
        "requests",
    ):
        t.add_column(col)
    for wid, (info, occ) in sorted(workers.items()):
        state = "dead" if occ is None else ("loading" if occ.loading else "live")
        if occ is not None and not occ.loading:
            busy = occ.num_running + occ.num_waiting > 0 or counts[wid] > 0
            state += ", active" if busy else ", idle"
        if wid in draining:
            state += ", draining"
        t.add_row(
            wid,
            info.address,
            state,
            ", ".join(_held(occ, m) for m in occ.models) if occ else "-",
            f"{occ.num_free_pages}/{occ.num_total_pages}" if occ else "-",
            str(occ.num_reserved_pages) if occ else "-",
            str(occ.num_queued_pages) if occ else "-",
            str(occ.num_running) if occ else "-",
            str(occ.num_waiting) if occ else "-",
            str(counts[wid]),
        )
    return t


def kv_usage_rows(occupancies: dict[str, Any]) -> list[tuple[str, str, int, int, int, int, int]]:
    """Per worker and model in its unified KV pool: (worker, model, pages held, pool pages,
    tokens per page, requests holding pages, requests waiting), from the heartbeats' request
    lists; then one ``*`` row per model over the fleet."""
    rows: list[tuple[str, str, int, int, int, int, int]] = []
    totals: dict[str, list[int]] = {}
    for wid, occ in sorted(occupancies.items()):
        if occ is None:
            continue
        per: dict[str, list[int]] = {m: [0, 0, 0] for m in occ.tokens_per_page}
        for seq in occ.seqs:
            acc = per.setdefault(seq.model, [0, 0, 0])
            acc[0] += seq.num_pages
            acc[1 if seq.num_pages else 2] += 1
        for m, (pages, holding, waiting) in sorted(per.items()):
            rows.append((wid, m, pages, occ.num_total_pages, occ.tokens_per_page.get(m, 0),
                         holding, waiting))
            t = totals.setdefault(m, [0, 0, 0, 0])
            t[0] += pages
            t[1] += occ.num_total_pages
            t[2] += holding
            t[3] += waiting
    for m, (pages, total, holding, waiting) in sorted(totals.items()):
        rows.append(("*", m, pages, total, 0, holding, waiting))
    return rows


def _kv_usage_table(workers: dict[str, Any]):  # type: ignore[no-untyped-def]
    from rich.table import Table

    t = Table(title="KV pool by model")
    for col in ("worker", "model", "pages held", "share of pool", "tokens/page", "holding",
                "waiting"):
        t.add_column(col)
    for wid, m, pages, total, tpp, holding, waiting in kv_usage_rows(
            {w: occ for w, (_info, occ) in workers.items()}):
        share = f"{100.0 * pages / total:.1f}%" if total else "-"
        t.add_row(wid, m, str(pages), share, str(tpp) if tpp else "", str(holding), str(waiting))
def _held(occ: Any, model: str) -> str:
    """A model as held: whole, or its layer range (and pipeline stage)."""
    rng = occ.layers.get(model)
    shape = occ.shapes.get(model)
    text = model
    if rng is not None and shape is not None and tuple(rng) != (0, shape.num_layers):
        text += f" [{rng[0]}, {rng[1]})"
    group = occ.groups.get(model)
    if group is not None:
        text += f" stage {group.rank}/{group.num_stages} of {group.group_id}"
    return text


async def _groups_table():  # type: ignore[no-untyped-def]
    from rich.table import Table

    store = _store()
    try:
        workers = await store.workers()
    finally:
        await store.close()
    t = Table(title="pipeline groups")
    for col in ("group", "model", "stages (worker: layers)", "tokens/page", "pages free/total"):
        t.add_column(col)
    for _wid, (_info, occ) in sorted(workers.items()):
        if occ is None:
            continue
        for model, g in sorted(occ.groups.items()):
            if g.rank != 0:
                continue
            stages = ", ".join(f"{w}: [{a}, {b})" for w, (a, b) in zip(g.members, g.ranges,
                                                                         strict=True))
            t.add_row(g.group_id, model, stages, str(occ.tokens_per_page.get(model, "-")),
                      f"{occ.num_free_pages}/{occ.num_total_pages}")
    return t


@app.command()
def workers() -> None:
    """Workers: liveness, models, KV pages, load."""
    _console().print(asyncio.run(_workers_table()))


@app.command()
def requests(limit: int = typer.Option(50, min=1)) -> None:
    """Unfinished requests: where they run and how far they are."""
    from rich.table import Table

    from kvfleet.common import redis_schema as rs

    async def run() -> Table:
        store = _store()
        t = Table(title="active requests")
        for col in ("request", "model", "state", "worker", "prompt", "output", "resumes", "age"):
            t.add_column(col)
        try:
            now = time.time()
            for rid in await store.active_requests(limit):
                rec = await store.get_request(rid)
                if rec is None:
                    continue
                n_out = await store.r.xlen(rs.tokens_key(rid))
                t.add_row(
                    rid,
                    rec.model,
                    rec.state + (" (cancelled)" if rec.cancelled else ""),
                    rec.worker_id or "-",
                    str(len(rec.prompt_token_ids)),
                    str(n_out),
                    str(rec.num_resumes),
                    f"{now - rec.arrival_s:.1f}s",
                )
        finally:
            await store.close()
        return t

    _console().print(asyncio.run(run()))


@app.command()
def plan() -> None:
    """The current placement plan."""
    from rich.table import Table

    async def run() -> Any:
        store = _store()
        try:
            return await store.get_plan()
        finally:
            await store.close()

    p = asyncio.run(run())
    if p is None:
        typer.echo("no plan published")
        raise typer.Exit(1)
    t = Table(title=f"plan v{p.version}")
    t.add_column("worker")
    t.add_column("models")
    by_worker: dict[str, list[str]] = {}
    for w, m in p.placements:
        by_worker.setdefault(w, []).append(m)
    for w, ms in sorted(by_worker.items()):
        t.add_row(w, ", ".join(ms))
    _console().print(t)


def _activity_table(samples: list[Any]):  # type: ignore[no-untyped-def]
    """Active and idle workers over time (the planner's samples), newest last."""
    from rich.table import Table

    t = Table(title="fleet activity (active workers hold or are assigned a request)")
    for col in ("time", "active", "idle", "active workers"):
        t.add_column(col)
    for x in samples:
        t.add_row(time.strftime("%H:%M:%S", time.localtime(x.ts)), str(len(x.active)),
                  str(len(x.idle)), ", ".join(x.active) or "-")
    return t


def _activity_line(samples: list[Any]) -> str:
    if not samples:
        return "fleet activity: no samples yet (the planner records them)"
    last = samples[-1]
    mean = sum(len(x.active) for x in samples) / len(samples)
    span = samples[-1].ts - samples[0].ts
    return (f"workers: {len(last.active)} active, {len(last.idle)} idle; "
            f"mean {mean:.2f} active over the last {span:.0f} s ({len(samples)} samples)")


@app.command()
def status(
    events: int = typer.Option(10, min=0, help="Recent events to show."),
    activity: int = typer.Option(10, min=0, help="Recent fleet-activity samples to show."),
) -> None:
    """Fleet summary: plan, workers (active or idle), KV pool use by model, queues, activity over time, events."""
    from rich.table import Table

    from kvfleet.common import redis_schema as rs

    async def run() -> tuple[Any, Table, Table, Table, list[Any]]:
        store = _store()
        try:
            samples = await store.fleet_samples(max(activity, 60))
            p = await store.get_plan()
            usage = _kv_usage_table(await store.workers())
            q = Table(title="queues")
            for col in ("model", "waiting for a worker", "waiting tokens", "bound",
                        "active requests"):
                q.add_column(col)
            active = await store.active_requests(100000)
            for m in sorted(await store.r.smembers(rs.QUEUE_MODELS_KEY)):
                n, tokens = await store.queue_depth(m)
                info = await store.model_info(m)
                bound = (f"{info.max_queued_requests} req / {info.max_queued_tokens} tok"
                         if info else "-")
                q.add_row(m, str(n), str(tokens), bound, "")
            q.add_row("all", "", "", "", str(len(active)))
            ev = Table(title="recent events")
            for col in ("time", "kind", "data"):
                ev.add_column(col)
            for e in (await store.events(events)) if events else ():
                ev.add_row(
                    time.strftime("%H:%M:%S", time.localtime(e.ts)),
                    e.kind,
                    ", ".join(f"{k}={v}" for k, v in e.data.items()),
                )
        finally:
            await store.close()
        return p, q, ev, usage, samples

    p, q, ev, usage, samples = asyncio.run(run())
    console = _console()
    console.print(f"plan: v{p.version}" if p else "plan: none")
    console.print(asyncio.run(_workers_table()))
    console.print(usage)
    groups = asyncio.run(_groups_table())
    if groups.row_count:
        console.print(groups)
    console.print(_activity_line(samples))
    if activity and samples:
        console.print(_activity_table(samples[-activity:]))
    console.print(q)
    if events:
        console.print(ev)


def _scheduler_stub():  # type: ignore[no-untyped-def]

    from kvfleet.common.fleet_auth import FleetSecurity
    from kvfleet.common.proto.scheduler.v1 import scheduler_pb2_grpc

    address = _state.get("scheduler")
    if not address:
        raise typer.BadParameter("no scheduler address: pass --scheduler")
    channel = FleetSecurity(_state.get("fleet_token") or "").channel(address)
    return channel, scheduler_pb2_grpc.SchedulerStub(channel)


@app.command()
def migrate(
    request_id: Annotated[str, typer.Argument(help="A running request.")],
    to: Annotated[str, typer.Option("--to", help="Target worker id.")],
    mode: Annotated[
        str,
        typer.Option(help="stop: stop it and copy its KV; live: copy while it keeps decoding, "
                     "stop only for the last pages; reprefill: send its tokens, the target "
                     "computes the KV again."),
    ] = "stop",
) -> None:
    """Move a running request to another worker (KV shipped over torch.distributed)."""
    import grpc

    from kvfleet.common.proto.scheduler.v1 import scheduler_pb2

    async def run() -> Any:
        channel, stub = _scheduler_stub()
        try:
            return await stub.Migrate(
                scheduler_pb2.MigrateRequest(request_id=request_id, target_worker_id=to,
                                             mode=mode),
                timeout=180,
            )
        finally:
            await channel.close()

    try:
        r = asyncio.run(run())
    except grpc.aio.AioRpcError as e:
        typer.echo(f"migration failed: {e.code().name}: {e.details()}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"migrated {request_id}: {r.source_worker_id} -> {r.target_worker_id} ({r.mode}), "
        f"{r.num_tokens} tokens, {r.num_bytes} bytes in {r.duration_s * 1000:.1f} ms, "
        f"paused {r.pause_s * 1000:.1f} ms"
    )


@app.command()
def drain(
    worker_id: Annotated[str, typer.Argument()],
    undo: Annotated[bool, typer.Option("--undo", help="Dispatch to the worker again.")] = False,
) -> None:
    """Stop dispatching new requests to a worker (its running requests finish there)."""
    import grpc

    from kvfleet.common.proto.scheduler.v1 import scheduler_pb2

    async def run() -> Any:
        channel, stub = _scheduler_stub()
        try:
            return await stub.Drain(
                scheduler_pb2.DrainRequest(worker_id=worker_id, undrain=undo), timeout=10
            )
        finally:
            await channel.close()

    try:
        r = asyncio.run(run())
    except grpc.aio.AioRpcError as e:
        typer.echo(f"drain failed: {e.code().name}: {e.details()}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{worker_id}: {'undrained' if undo else 'draining'}, {r.num_running} running")


async def _live_workers() -> dict[str, Any]:
    store = _store()
    try:
        return {w: (info, occ) for w, (info, occ) in (await store.workers()).items()
                if occ is not None}
    finally:
        await store.close()


@app.command()
def drop(
    model: Annotated[str, typer.Argument(help="The model whose replicas form the group.")],
    workers: Annotated[str, typer.Option(
        "--workers", help="Comma list of workers holding the whole model, first stage first.")],
    ranges: Annotated[str | None, typer.Option(
        help="Layer ranges per worker, e.g. 0:15,15:30 (default: balanced).")] = None,
    timeout_s: Annotated[float, typer.Option(help="Deadline of the drop.")] = 600.0,
) -> None:
    """Form a pipeline group by hand: each worker keeps a layer range of MODEL (the freed
    weights become KV pages) and the group serves it as a pipeline."""
    import grpc

    from kvfleet.common.fleet_auth import FleetSecurity
    from kvfleet.common.worker_client import WorkerClient
    from kvfleet.services.planner.core.drop_plan import balanced_ranges
    from kvfleet.services.planner.core.overload import LayerAction, StagePlan
    from kvfleet.services.planner.layer_actions import run_drop

    ids = [w.strip() for w in workers.split(",") if w.strip()]
    live = asyncio.run(_live_workers())
    missing = [w for w in ids if w not in live]
    if missing or len(ids) < 2:
        typer.echo(f"error: need two or more live workers; unknown or dead: {missing}", err=True)
        raise typer.Exit(2)
    occ = live[ids[0]][1]
    shape = occ.shapes.get(model)
    if shape is None:
        typer.echo(f"error: {ids[0]} does not hold {model!r}", err=True)
        raise typer.Exit(2)
    if ranges:
        try:
            rs_ = [tuple(int(x) for x in r.split(":")) for r in ranges.split(",")]
        except ValueError:
            typer.echo("error: --ranges looks like 0:15,15:30", err=True)
            raise typer.Exit(2) from None
    else:
        rs_ = list(balanced_ranges(shape.num_layers, len(ids)))
    if len(rs_) != len(ids) or any(len(r) != 2 for r in rs_):
        typer.echo("error: give one range per worker", err=True)
        raise typer.Exit(2)
    widest = max(b - a for a, b in rs_)
    tpp = shape.tokens_per_page(occ.page_size_bytes, widest)
    group_id = f"{model}/manual-{int(time.time())}"

    action = LayerAction("drop", model, group_id,
                         tuple(StagePlan(w, a, b) for w, (a, b) in zip(ids, rs_, strict=True)),
                         tpp, "by hand")

    async def run() -> Any:
        client = WorkerClient(timeout_s, FleetSecurity(_state.get("fleet_token") or ""))
        store = _store()
        try:
            return await run_drop(store, client, action, {w: live[w][0].address for w in ids},
                                  timeout_s)
        finally:
            await client.close()
            await store.close()

    try:
        r = asyncio.run(run())
    except grpc.aio.AioRpcError as e:
        typer.echo(f"drop failed: {e.code().name}: {e.details()}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"group {group_id} formed in {r.duration_s:.2f}s: " + ", ".join(
        f"{w} [{a}, {b})" for w, (a, b) in zip(ids, rs_, strict=True)))
    for s in r.stages:
        typer.echo(f"  {s.worker_id}: sent {s.num_sent} requests' KV ({s.bytes_sent} bytes) "
                   f"in {s.exchange_s:.3f}s, recomputed {s.num_recomputed}, relayout "
                   f"{s.relayout_s:.3f}s")


@app.command()
def restore(
    model: Annotated[str, typer.Argument(help="The model to restore.")],
    group: Annotated[str | None, typer.Option(help="The group (default: every group of it).")]
    = None,
    worker: Annotated[str | None, typer.Option(
        help="A worker outside any group whose dropped layers to reload.")] = None,
    timeout_s: Annotated[float, typer.Option(help="Deadline of each restore.")] = 600.0,
) -> None:
    """Reload a model's dropped layers: its pipeline groups dissolve and their requests
    continue on the members."""
    import grpc

    from kvfleet.common.fleet_auth import FleetSecurity
    from kvfleet.common.worker_client import WorkerClient

    live = asyncio.run(_live_workers())
    targets: list[tuple[str, str]] = []  # (worker, group id)
    if worker:
        if worker not in live:
            typer.echo(f"error: {worker} is not live", err=True)
            raise typer.Exit(2)
        targets.append((worker, ""))
    for wid, (_info, occ) in sorted(live.items()):
        g = occ.groups.get(model)
        if g is not None and g.rank == 0 and (group is None or g.group_id == group):
            targets.append((wid, g.group_id))
    if not targets:
        typer.echo(f"nothing to restore for {model!r}")
        raise typer.Exit(1)

    async def run(address: str, gid: str) -> Any:
        client = WorkerClient(timeout_s, FleetSecurity(_state.get("fleet_token") or ""))
        try:
            return await client.restore_layers(address, model, gid, timeout_s)
        finally:
            await client.close()

    for wid, gid in targets:
        try:
            r = asyncio.run(run(live[wid][0].address, gid))
        except grpc.aio.AioRpcError as e:
            typer.echo(f"restore failed on {wid}: {e.code().name}: {e.details()}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"{gid or wid}: restored in {r.duration_s:.2f}s (reload {r.reload_s:.2f}s)")
        for s in r.stages:
            typer.echo(f"  {s.worker_id}: sent {s.num_sent} requests' KV ({s.bytes_sent} "
                       f"bytes) in {s.exchange_s:.3f}s, recomputed {s.num_recomputed}, "
                       f"{s.num_moved} moved")
