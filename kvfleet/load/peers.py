"""Starting and stopping peer servers for comparisons: ``transformers serve`` on a local
checkpoint directory, bound to loopback, offline (no model hub)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


class PeerError(RuntimeError):
    """A peer server that could not be started."""


def free_port() -> int:
    """A currently free loopback port (an external server binds it next; retried on clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transformers_cli() -> list[str]:
    exe = Path(sys.executable).with_name("transformers")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("transformers")
    if found:
        return [found]
    raise PeerError("the `transformers` command is not installed next to this Python")


@dataclass
class PeerServer:
    """A running peer process; ``base_url`` is its OpenAI ``/v1`` root."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    model: str
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout_s)

    def __enter__(self) -> PeerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class PeerCache:
    """The continuous-batching cache given to ``transformers serve`` (its ``--cb-*`` flags):
    without them it sizes its cache from the machine's memory, not from a budget."""

    block_size: int  # tokens per block
    num_blocks: int
    max_batch_tokens: int

    @property
    def num_tokens(self) -> int:
        return self.block_size * self.num_blocks

    def flags(self) -> list[str]:
        return [
            "--cb-block-size",
            str(self.block_size),
            "--cb-num-blocks",
            str(self.num_blocks),
            "--cb-max-batch-tokens",
            str(self.max_batch_tokens),
        ]


def start_transformers_serve(
    model_dir: Path,
    log_path: Path,
    continuous_batching: bool = True,
    device: str = "cpu",
    ready_timeout_s: float = 300.0,
    threads: int | None = None,
    cache: PeerCache | None = None,
) -> PeerServer:
    """``transformers serve MODEL_DIR`` on a free loopback port; returns once /health is up.
    ``cache`` sizes its continuous-batching KV cache (default: transformers' own sizing)."""
    port = free_port()
    cmd = transformers_cli() + [
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        device,
        "--log-level",
        "warning",
        "--continuous-batching" if continuous_batching else "--no-continuous-batching",
    ]
    if continuous_batching and cache is not None:
        cmd += cache.flags()
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1"
    )
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logf = log_path.open("wb")
    proc = subprocess.Popen(
        cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    logf.close()
    server = PeerServer(
        "transformers-serve",
        proc,
        port,
        log_path,
        str(model_dir),
        {
            "continuous_batching": continuous_batching,
            "device": device,
            "command": " ".join(cmd[1:]),
            "cache_tokens": cache.num_tokens if cache is not None else None,
        },
    )
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise PeerError(f"transformers serve exited with code {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise PeerError(
        f"transformers serve did not become healthy in {ready_timeout_s:.0f} s (log: {log_path})"
    )
