"""``python -m kvfleet.common.supervise``: what ``kvfleet up --detach`` leaves running.

It starts the stack described by a fleet file, restarts whatever dies (Redis included) for as
long as it runs, and stops everything on SIGTERM/SIGINT (``kvfleet down``). The foreground
``kvfleet up`` supervises the same way in its own process.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from kvfleet.common.config import FleetConfig
from kvfleet.common.launcher import launch, mark_supervisor


def main() -> None:
    parser = argparse.ArgumentParser(prog="kvfleet-supervise")
    parser.add_argument("--fleet", required=True, help="fleet description (JSON)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fleet = FleetConfig.model_validate(json.loads(Path(args.fleet).read_text()))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stack = launch(fleet, Path(args.run_dir), args.timeout_s, supervise=True)
    except Exception as e:
        (Path(args.run_dir) / "supervise.failed").write_text(str(e))
        sys.exit(1)
    mark_supervisor(stack)
    (Path(args.run_dir) / "supervise.ready").touch()
    try:
        stop.wait()
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
