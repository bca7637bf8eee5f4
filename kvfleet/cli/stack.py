"""Top-level stack commands: up, down, generate, chat."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

RUN_DIR_HELP = "Where the stack keeps configs, logs and stack.json (env KVFLEET_RUN_DIR)."


def _gateway_address(grpc_address: str | None, run_dir: Path | None) -> str:
    if grpc_address:
        return grpc_address
    from kvfleet.common.launcher import read_stack

    desc = read_stack(run_dir)
    if desc:
        for s in desc["services"]:
            if s["kind"] == "gateway":
                return str(s["grpc"])
    return "127.0.0.1:50051"


def _api_key(api_key: str | None, run_dir: Path | None) -> str | None:
    """The key given, else the one `kvfleet up` made for its stack."""
    if api_key:
        return api_key
    from kvfleet.common.launcher import read_secrets

    found = read_secrets(run_dir)
    return found.api_key if found and found.api_key else None


def _default_model(address: str, api_key: str | None) -> str:
    import asyncio

    from kvfleet.common.client import GatewayClient

    async def first() -> str:
        async with GatewayClient(address, api_key) as c:
            models = await c.models()
        if not models:
            raise typer.BadParameter("the gateway serves no model yet")
        return models[0]

    return asyncio.run(first())


def _print_endpoints(desc: dict, run_dir: Path) -> None:
    by_name = {s["name"]: s for s in desc["services"]}
    rows = [
        ("OpenAI HTTP", f"{by_name['gateway']['http']}/v1"),
        ("gateway gRPC", by_name["gateway"]["grpc"]),
        ("scheduler", by_name["scheduler"]["grpc"]),
        ("planner", by_name["planner"]["grpc"]),
        *((f"worker {s['name'].removeprefix('worker-')}", s["grpc"])
          for s in desc["services"] if s["kind"] == "worker"),
        ("redis", desc["redis_url"]),
        ("logs", str(run_dir / "logs")),
        ("secrets", f"{run_dir / 'secrets.json'} (API key, fleet token; owner only)"),
    ]
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        typer.echo(f"  {name:<{width}}{value}")


def register(app: typer.Typer) -> None:
    """Add the stack's top-level commands to ``app``."""

    @app.command()
    def up(
        config: Annotated[
            Path | None, typer.Option("--config", help="Fleet description (YAML/TOML).")
        ] = None,
        http_port: Annotated[
            int | None, typer.Option(help="OpenAI HTTP port (default 8000).")
        ] = None,
        grpc_port: Annotated[
            int | None, typer.Option(help="Gateway gRPC port (default 50051).")
        ] = None,
        model: Annotated[
            list[str] | None,
            typer.Option("--model", help="Serve these models (overrides the config)."),
        ] = None,
        api_key: Annotated[
            list[str] | None, typer.Option("--api-key", help="Require one of these keys.")
        ] = None,
        policy: Annotated[
            str | None,
            typer.Option(help="Policy set for every service (see `kvfleet policies`)."),
        ] = None,
        detach: Annotated[
            bool, typer.Option("--detach", "-d", help="Leave the stack running.")
        ] = False,
        run_dir: Annotated[Path | None, typer.Option(help=RUN_DIR_HELP)] = None,
        timeout_s: Annotated[float, typer.Option(help="Give up if not healthy by then.")] = 900.0,
    ) -> None:
        """Start Redis, planner, scheduler, workers and gateway; wait until all serve, then
        keep them running (a process that dies is restarted)."""
        import signal

        from kvfleet.common.config import FleetConfig, ModelConfig
        from kvfleet.common.launcher import default_run_dir, launch, mark_supervisor

        fleet = FleetConfig.load(config)
        if http_port is not None:
            fleet.http_port = http_port
        if grpc_port is not None:
            fleet.grpc_port = grpc_port
        if model:
            fleet.models = [ModelConfig(name=m) for m in model]
        if api_key:
            fleet.api_keys = list(api_key)
        if policy is not None:
            try:
                fleet = FleetConfig.model_validate({**fleet.model_dump(), "policy": policy})
            except ValueError as e:
                typer.echo(f"kvfleet up: {e}", err=True)
                raise typer.Exit(2) from None
        t0 = time.monotonic()
        typer.echo(
            f"starting kvfleet: {len(fleet.workers)} workers, models "
            f"{', '.join(m.name for m in fleet.models)}, policy {fleet.policy} ..."
        )
        run_dir = Path(run_dir or default_run_dir()).resolve()
        if detach:
            _up_detached(fleet, run_dir, timeout_s, t0)
            return
        try:
            stack = launch(fleet, run_dir, timeout_s, supervise=True)
            mark_supervisor(stack)
        except KeyboardInterrupt:
            typer.echo("interrupted; everything started was stopped", err=True)
            raise typer.Exit(130) from None
        except (RuntimeError, TimeoutError) as e:
            typer.echo(f"kvfleet up failed: {e}", err=True)
            raise typer.Exit(1) from None
        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        if not detach:  # from here on, Ctrl-C (or SIGTERM) stops what was started
            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
        try:
            typer.echo(f"kvfleet is up in {time.monotonic() - t0:.1f}s")
            _print_endpoints(stack.describe(), stack.run_dir)
            typer.echo("Ctrl-C stops the stack")
            seen: dict[str, int] = {}
            while not stopping:
                for name, n in list(stack.restarts.items()):
                    if seen.get(name) != n:
                        typer.echo(f"{name} exited and was restarted ({n}x)", err=True)
                        seen[name] = n
                time.sleep(0.2)
        except BaseException:
            detach = False  # a failure while printing: do not leave the stack behind
            raise
        finally:
            if not detach:
                typer.echo("stopping ...")
                stack.stop()
                typer.echo("stopped")

    def _up_detached(fleet, run_dir: Path, timeout_s: float, t0: float) -> None:  # type: ignore[no-untyped-def]
        """Leave a supervisor process behind that starts the stack and keeps it running."""
        import json
        import subprocess
        import sys

        from kvfleet.common.launcher import _child_env, read_stack, write_private

        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for marker in ("supervise.ready", "supervise.failed"):
            (run_dir / marker).unlink(missing_ok=True)
        fleet_file = run_dir / "fleet.json"
        write_private(fleet_file, json.dumps(fleet.model_dump(mode="json")))
        with open(run_dir / "supervise.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kvfleet.common.supervise", "--fleet", str(fleet_file),
                 "--run-dir", str(run_dir), "--timeout-s", str(timeout_s)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=_child_env(), start_new_session=True)
        while not (run_dir / "supervise.ready").exists():
            if proc.poll() is not None:
                failed = run_dir / "supervise.failed"
                why = failed.read_text() if failed.exists() else f"see {run_dir}/supervise.log"
                typer.echo(f"kvfleet up failed: {why}", err=True)
                raise typer.Exit(1)
            time.sleep(0.1)
        typer.echo(f"kvfleet is up in {time.monotonic() - t0:.1f}s")
        _print_endpoints(read_stack(run_dir) or {}, run_dir)
        typer.echo("detached (supervised); stop it with `kvfleet down`")

    @app.command()
    def down(run_dir: Annotated[Path | None, typer.Option(help=RUN_DIR_HELP)] = None) -> None:
        """Stop a stack started with `kvfleet up --detach`."""
        from kvfleet.common.launcher import down as stop

        n = stop(run_dir)
        typer.echo(f"stopped {n} processes" if n else "no stack running")

    @app.command()
    def generate(
        prompt: Annotated[str, typer.Argument(help="Prompt text.")],
        model: Annotated[
            str | None, typer.Option(help="Model (default: the first served).")
        ] = None,
        max_tokens: Annotated[int, typer.Option(min=1)] = 64,
        temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
        chat_template: Annotated[
            bool, typer.Option("--chat", help="Send as a user chat message.")
        ] = False,
        grpc_address: Annotated[
            str | None, typer.Option("--grpc", help="Gateway gRPC address.")
        ] = None,
        api_key: Annotated[str | None, typer.Option(envvar="KVFLEET_API_KEY")] = None,
        run_dir: Annotated[Path | None, typer.Option(help=RUN_DIR_HELP)] = None,
    ) -> None:
        """Generate from a prompt through the running stack, streaming to stdout."""
        import asyncio

        from kvfleet.common.client import GatewayClient, sampling

        address = _gateway_address(grpc_address, run_dir)
        api_key = _api_key(api_key, run_dir)
        name = model or _default_model(address, api_key)

        async def run() -> None:
            async with GatewayClient(address, api_key) as c:
                kw: dict = (
                    {"messages": [{"role": "user", "content": prompt}]}
                    if chat_template
                    else {"prompt": prompt}
                )
                async for msg in c.stream(name, params=sampling(max_tokens, temperature), **kw):
                    typer.echo(msg.text, nl=False)
            typer.echo()

        asyncio.run(run())

    @app.command()
    def chat(
        message: Annotated[
            str | None, typer.Option("--message", "-m", help="Ask once and exit.")
        ] = None,
        model: Annotated[
            str | None, typer.Option(help="Model (default: the first served).")
        ] = None,
        max_tokens: Annotated[int, typer.Option(min=1)] = 256,
        temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
        system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
        grpc_address: Annotated[
            str | None, typer.Option("--grpc", help="Gateway gRPC address.")
        ] = None,
        api_key: Annotated[str | None, typer.Option(envvar="KVFLEET_API_KEY")] = None,
        run_dir: Annotated[Path | None, typer.Option(help=RUN_DIR_HELP)] = None,
    ) -> None:
        """Chat with a model of the running stack (interactive, or once with --message)."""
        import asyncio

        from kvfleet.common.client import GatewayClient, sampling

        address = _gateway_address(grpc_address, run_dir)
        api_key = _api_key(api_key, run_dir)
        name = model or _default_model(address, api_key)
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

        async def turn(c: GatewayClient, text: str) -> None:
            history.append({"role": "user", "content": text})
            parts: list[str] = []
            async for msg in c.stream(
                name, messages=history, params=sampling(max_tokens, temperature)
            ):
                typer.echo(msg.text, nl=False)
                parts.append(msg.text)
            typer.echo()
            history.append({"role": "assistant", "content": "".join(parts)})

        async def run() -> None:
            async with GatewayClient(address, api_key) as c:
                if message is not None:
                    await turn(c, message)
                    return
                typer.echo(f"chatting with {name}; an empty line or Ctrl-D ends")
                while True:
                    try:
                        text = await asyncio.to_thread(input, "> ")
                    except EOFError:
                        break
                    if not text.strip():
                        break
                    await turn(c, text)

        asyncio.run(run())
