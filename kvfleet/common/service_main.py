"""The ``python -m kvfleet.services.<svc>`` entry point every service shares."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kvfleet.common.aio import run_service, setup_logging

log = logging.getLogger(__name__)

#: Set by the launcher to its own pid: a service it started stops when that process is gone
#: (a killed test run or supervisor must not leave its stack running). A service started any
#: other way (a container, a shell) runs on regardless of its parent.
PARENT_PID_ENV = "KVFLEET_PARENT_PID"


async def _parent_gone(parent_pid: int, interval_s: float = 1.0) -> None:
    """Return once this process's parent is no longer ``parent_pid`` (it died, and the
    process was re-parented)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(interval_s)


def service_main(prog: str, settings_cls: Any, start: Callable[[Any], Awaitable[Any]]) -> None:
    """Parse ``--config`` and ``--address-file``, start the service on uvloop, write its
    bound addresses (JSON) to the address file, and stop cleanly on SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", help="YAML/TOML/JSON settings file")
    parser.add_argument("--address-file", help="write the bound addresses here as JSON")
    args = parser.parse_args()
    settings = settings_cls.load(args.config)
    setup_logging(settings.log_level)

    async def serve(stop: asyncio.Event) -> None:
        running = await start(settings)
        addresses: dict[str, str] = running.addresses()
        log.info("%s up: %s", prog, addresses)
        if args.address_file:
            tmp = Path(args.address_file + ".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), **addresses}))
            tmp.replace(args.address_file)
        stopper = asyncio.ensure_future(stop.wait())
        done = getattr(running, "done", None)
        waits: list[asyncio.Future[Any]] = [stopper]
        if done is not None:
            waits.append(asyncio.ensure_future(done()))
        parent = os.environ.get(PARENT_PID_ENV, "")
        orphaned = asyncio.ensure_future(_parent_gone(int(parent))) if parent.isdigit() else None
        if orphaned is not None:
            waits.append(orphaned)
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if orphaned is not None and orphaned.done() and not stopper.done():
            log.warning("%s: the process that started it is gone; stopping", prog)
        for w in waits:
            w.cancel()
        await running.stop()

    run_service(serve)
