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
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        await running.stop()

    run_service(serve)
