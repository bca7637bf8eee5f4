"""Start the whole stack as processes (``kvfleet up``) and stop it (``kvfleet down``).

Order: Redis (``REDIS_URL`` or a private one), workers, planner, scheduler, gateway. Each
service writes its bound addresses to a file in the run directory; the launcher polls
for them and then polls gRPC health (and the gateway's ``/health``) until everything
serves, workers only once their models are loaded. ``stack.json`` in the run directory
records the processes for ``kvfleet down``.

Every door is locked by default: a fleet token (new per stack) guards the internal gRPC
services, Redis requires AUTH with one ACL user per service, and the gateway takes an API key
(generated when the fleet config names none; only its digest reaches the gateway's config).
The secrets live in ``secrets.json``; the run directory is private to its owner (0700, files
0600). Redis keeps an append-only file, and a supervisor restarts whatever dies (Redis too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from kvfleet.common.config import FleetConfig
from kvfleet.common.grpc_util import check_health
from kvfleet.common.redis_server import ADMIN_USER, RedisServer, redis_url_or_start
from kvfleet.common.service_main import PARENT_PID_ENV

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_run_dir() -> Path:
    env = os.environ.get("KVFLEET_RUN_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("KVFLEET_CACHE_DIR", Path.home() / ".cache" / "kvfleet")) / "stack"


@dataclass
class ServiceProcess:
    name: str
    kind: str
    popen: subprocess.Popen[bytes]
    address_file: Path
    log_file: Path
    addresses: dict[str, str] = field(default_factory=dict)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (configs hold secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


@dataclass
class StackSecrets:
    """What a stack's clients need: kept in ``secrets.json`` (0600) in the run directory."""

    fleet_token: str
    api_key: str  # "" when the fleet config gave its own keys or the gateway is open
    redis_admin_url: str

    @classmethod
    def new(cls, redis: RedisServer, api_key: str) -> StackSecrets:
        return cls(secrets.token_urlsafe(32), api_key, redis.admin_url)

    def write(self, run_dir: Path) -> None:
        write_private(run_dir / "secrets.json", json.dumps(self.__dict__, indent=2))


def read_secrets(run_dir: Path | None = None) -> StackSecrets | None:
    path = Path(run_dir or default_run_dir()) / "secrets.json"
    try:
        return StackSecrets(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


@dataclass
class Stack:
    run_dir: Path
    redis: RedisServer
    services: list[ServiceProcess]
    configs: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    secrets: StackSecrets | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    supervisor_pid: int | None = None  # the process `kvfleet down` signals (CLI stacks)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _paused: set[str] = field(default_factory=set, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _supervisor: threading.Thread | None = field(default=None, repr=False)

    def endpoint(self, name: str, key: str = "grpc") -> str:
        return next(s.addresses[key] for s in self.services if s.name == name)

    @property
    def http_url(self) -> str:
        return self.endpoint("gateway", "http")

    @property
    def grpc_address(self) -> str:
        return self.endpoint("gateway")

    def workers(self) -> dict[str, ServiceProcess]:
        return {s.name.removeprefix("worker-"): s for s in self.services if s.kind == "worker"}

    def describe(self) -> dict[str, Any]:
        return {
            "redis_url": self.redis.url,
            "redis_pid": self.redis.process.pid if self.redis.process else None,
            "supervisor_pid": self.supervisor_pid,
            "services": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "pid": s.popen.pid,
                    "log": str(s.log_file),
                    **s.addresses,
                }
                for s in self.services
            ],
        }

    @property
    def redis_admin_url(self) -> str:
        return self.redis.url_for(ADMIN_USER) if self.redis.passwords else self.redis.url

    def dead(self) -> list[str]:
        return [s.name for s in self.services if s.popen.poll() is not None]

    def service(self, name: str) -> ServiceProcess:
        return next(s for s in self.services if s.name == name)

    def restart(self, name: str, timeout_s: float = 300.0) -> ServiceProcess:
        """Start a stopped (or killed) service again with its config (on the ports it had);
        wait until healthy. A service the supervisor already brought back is only waited for."""
        with self._lock:
            old = self.service(name)
            if old.popen.poll() is None and name in self._paused:
                old.popen.terminate()
                old.popen.wait(timeout=15)
            if old.popen.poll() is None:
                new = old  # running (the supervisor restarted it): just wait for it below
            else:
                new = self._respawn(old)
        asyncio.run(_wait_ready(Stack(self.run_dir, self.redis, [new]), timeout_s))
        with self._lock:
            self._write_description()
        return new

    def _respawn(self, old: ServiceProcess) -> ServiceProcess:
        kind, config = self.configs[old.name]
        config = {**config, **_bound_ports(kind, old.addresses)}
        self.configs[old.name] = (kind, config)
        new = _spawn(self.run_dir, old.name, kind, config)
        new.addresses = {}
        self.services[self.services.index(old)] = new
        self.restarts[old.name] = self.restarts.get(old.name, 0) + 1
        self._write_description()
        return new

    def _write_description(self) -> None:
        write_private(self.run_dir / "stack.json", json.dumps(self.describe(), indent=2))

    # ---- supervision
    def supervise(self, interval_s: float = 0.25) -> None:
        """Restart, from a background thread, every process that dies (Redis included)
        until :meth:`stop`."""
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._watch, args=(interval_s,),
                                                name="kvfleet-supervisor", daemon=True)
            self._supervisor.start()

    @contextlib.contextmanager
    def unsupervised(self, name: str) -> Iterator[None]:
        """Leave ``name`` (a service, or "redis") dead while the block runs."""
        with self._lock:
            self._paused.add(name)
        try:
            yield
        finally:
            with self._lock:
                self._paused.discard(name)

    def _watch(self, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._revive()
                except Exception:  # keep supervising; the next round tries again
                    log.exception("supervisor: restart failed")

    def _revive(self) -> None:
        proc = self.redis.process
        if proc is not None and proc.poll() is not None and "redis" not in self._paused:
            log.warning("redis-server exited (%s); restarting it", proc.returncode)
            self.redis.restart()
            self.restarts["redis"] = self.restarts.get("redis", 0) + 1
            self._write_description()
        for s in list(self.services):
            if s.popen.poll() is not None and s.name not in self._paused:
                log.warning("%s exited (%s); restarting it", s.name, s.popen.returncode)
                self._respawn(s)
            elif not s.addresses and _read_addresses(s):
                self._write_description()  # a restarted service is up: record its addresses

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every service (gateway first, workers last), wait, then SIGKILL."""
        self._stopping.set()
        with self._lock:
            self._stop(timeout_s)
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=5)

    def _stop(self, timeout_s: float) -> None:
        order = {"gateway": 0, "scheduler": 1, "planner": 2, "worker": 3}
        for s in sorted(self.services, key=lambda s: order.get(s.kind, 9)):
            if s.popen.poll() is None:
                s.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for s in self.services:
            try:
                s.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", s.name, timeout_s)
                s.popen.kill()
                s.popen.wait()
        self.redis.stop()
        (self.run_dir / "stack.json").unlink(missing_ok=True)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _bound_ports(kind: str, addresses: dict[str, str]) -> dict[str, int]:
    """The ports a service had, so that a restarted one keeps its addresses (port 0 in the
    config means "any", and clients already know the one it got)."""
    out: dict[str, int] = {}
    if "grpc" in addresses and kind != "worker":  # workers re-register their address
        out["port"] = int(addresses["grpc"].rsplit(":", 1)[1])
    if "http" in addresses:
        out["http_port"] = int(addresses["http"].rsplit(":", 1)[1])
    return out


def _spawn(run_dir: Path, name: str, kind: str, config: dict[str, Any]) -> ServiceProcess:
    cfg = run_dir / f"{name}.yaml"
    write_private(cfg, yaml.safe_dump(config, sort_keys=False))
    addr = run_dir / f"{name}.addr.json"
    addr.unlink(missing_ok=True)
    logf = run_dir / "logs" / f"{name}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    with open(logf, "ab") as out:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                f"kvfleet.services.{kind}",
                "--config",
                str(cfg),
                "--address-file",
                str(addr),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**_child_env(), PARENT_PID_ENV: str(os.getpid())},
            start_new_session=True,
        )
    return ServiceProcess(name, kind, popen, addr, logf)


def service_configs(
    fleet: FleetConfig, redis: RedisServer | str, stack_secrets: StackSecrets | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, kind, settings) for every process of the fleet: each with its own Redis user,
    the fleet token, and (the gateway) the API keys' digests."""
    from kvfleet.services.gateway.api_keys import hash_key

    if isinstance(redis, str):
        redis = RedisServer(redis)
    token = {"fleet_token": stack_secrets.fleet_token} if stack_secrets else {}
    keys = list(fleet.api_keys) + ([stack_secrets.api_key] if stack_secrets and
                                   stack_secrets.api_key else [])
    host = fleet.host
    engine = fleet.engine.model_dump()
    if engine.get("num_threads") is None:
        engine["num_threads"] = max(1, (os.cpu_count() or 1) // max(1, len(fleet.workers)))
    out: list[tuple[str, str, dict[str, Any]]] = []
    for w in fleet.workers:
        out.append(
            (
                f"worker-{w.id}",
                "worker",
                {
                    **fleet.worker,
                    **token,
                    "redis_url": redis.url_for("worker"),
                    "models": [{"name": m.name} for m in fleet.models],
                    "host": host,
                    "port": w.port,
                    "worker_id": w.id,
                    "policy": fleet.policy,
                    # a GPU worker without a budget uses its device's free memory
                    "memory_bytes": w.memory_bytes
                    if "memory_bytes" in w.model_fields_set or not w.device.startswith("cuda")
                    else None,
                    "engine": {**engine, "device": w.device},
                    "transfer_host": host,
                },
            )
        )
    out.append(
        (
            "planner",
            "planner",
            {
                **fleet.planner,
                **token,
                "redis_url": redis.url_for("planner"),
                "host": host,
                "port": fleet.planner_port,
                "policy": fleet.policy,
                "models": [m.model_dump() for m in fleet.models],
                "workers": [w.model_dump() for w in fleet.workers],
            },
        )
    )
    out.append(
        (
            "scheduler",
            "scheduler",
            {
                **fleet.scheduler,
                **token,
                "redis_url": redis.url_for("scheduler"),
                "host": host,
                "port": fleet.scheduler_port,
                "policy": fleet.policy,
            },
        )
    )
    out.append(
        (
            "gateway",
            "gateway",
            {
                **fleet.gateway,
                **token,
                "redis_url": redis.url_for("gateway"),
                "host": host,
                "port": fleet.grpc_port,
                "http_port": fleet.http_port,
                "api_key_hashes": sorted({hash_key(k) for k in keys}),
            },
        )
    )
    return out


def _read_addresses(s: ServiceProcess) -> bool:
    """Fill ``s.addresses`` from its address file once the service wrote it."""
    if not s.addresses and s.address_file.exists():
        try:
            s.addresses = {k: v for k, v in json.loads(s.address_file.read_text()).items()
                           if k != "pid"}
        except (OSError, ValueError):
            return False
    return bool(s.addresses)


async def _wait_ready(stack: Stack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(stack.services)
    async with httpx.AsyncClient(timeout=2.0) as http:
        while pending:
            dead = stack.dead()
            if dead:
                logs = "; ".join(f"{n}: see {stack.run_dir / 'logs' / (n + '.log')}" for n in dead)
                raise RuntimeError(f"service exited during start: {logs}")
            if time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise TimeoutError(f"not healthy after {timeout_s:.0f}s: {names}")
            still = []
            for s in pending:
                _read_addresses(s)
                ok = bool(s.addresses) and await check_health(s.addresses["grpc"])
                if ok and "http" in s.addresses:
                    try:
                        ok = (await http.get(s.addresses["http"] + "/health")).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                if not ok:
                    still.append(s)
            pending = still
            if pending:
                await asyncio.sleep(0.1)


def launch(fleet: FleetConfig, run_dir: Path | None = None, timeout_s: float = 600.0,
           supervise: bool = True) -> Stack:
    """Start everything and return once every service is healthy (or raise, stopping all).
    With ``supervise`` a background thread restarts whatever dies until ``stop()``."""
    from kvfleet.services.gateway.api_keys import new_key

    # Absolute: redis-server changes into its own directory before opening its files.
    run_dir = Path(run_dir or default_run_dir()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(run_dir, 0o700)
    existing = run_dir / "stack.json"
    if existing.exists() and _any_alive(json.loads(existing.read_text())):
        raise RuntimeError(f"a stack is already running from {run_dir}; `kvfleet down` first")
    redis = redis_url_or_start(run_dir / "redis", secure=True,
                               appendonly=fleet.redis_appendonly,
                               appendfsync=fleet.redis_appendfsync)
    api_key = "" if fleet.api_keys or fleet.open_gateway else new_key()
    stack_secrets = StackSecrets.new(redis, api_key)
    stack_secrets.write(run_dir)
    stack = Stack(run_dir, redis, [], secrets=stack_secrets)
    try:
        for name, kind, config in service_configs(fleet, redis, stack_secrets):
            stack.configs[name] = (kind, config)
            stack.services.append(_spawn(run_dir, name, kind, config))
        asyncio.run(_wait_ready(stack, timeout_s))
    except BaseException:
        stack.stop()
        raise
    if supervise:
        stack.supervise()
    stack._write_description()
    return stack


def mark_supervisor(stack: Stack) -> None:
    """Record this process as the one `kvfleet down` stops (it stops the rest)."""
    stack.supervisor_pid = os.getpid()
    stack._write_description()


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # An exited process nobody has reaped yet (a zombie) is gone for our purposes.
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2 :].startswith("Z"):
            return False
        # A reaped-and-reused pid must not be signalled: check it is one of ours.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return b"kvfleet" in cmdline or b"redis-server" in cmdline
    except (OSError, ValueError):
        return True


def _any_alive(desc: dict[str, Any]) -> bool:
    return any(_alive(s.get("pid")) for s in desc.get("services", []))


def read_stack(run_dir: Path | None = None) -> dict[str, Any] | None:
    path = Path(run_dir or default_run_dir()) / "stack.json"
    return json.loads(path.read_text()) if path.exists() else None


def down(run_dir: Path | None = None, timeout_s: float = 15.0) -> int:
    """Stop a detached stack; returns how many processes were signalled."""
    run_dir = Path(run_dir or default_run_dir())
    desc = read_stack(run_dir)
    if desc is None:
        return 0
    supervisor = desc.get("supervisor_pid")
    stopped = 0
    if supervisor and supervisor != os.getpid() and _alive(supervisor):
        pids = [s.get("pid") for s in desc.get("services", [])] + [desc.get("redis_pid")]
        stopped = 1 + sum(1 for p in pids if _alive(p))
        _terminate([supervisor], timeout_s + 15)  # it stops everything it started
        desc = read_stack(run_dir) or desc
    services = [s["pid"] for s in desc.get("services", []) if _alive(s.get("pid"))]
    _terminate(services, timeout_s)  # services first: they may still talk to Redis
    redis_pid = desc.get("redis_pid")
    redis = [redis_pid] if redis_pid and _alive(redis_pid) else []
    _terminate(redis, timeout_s)
    (run_dir / "stack.json").unlink(missing_ok=True)
    return max(stopped, len(services) + len(redis))


def _terminate(pids: list[int], timeout_s: float) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; return once all have exited."""
    _signal(pids, signal.SIGTERM)
    if not _wait_gone(pids, timeout_s):
        _signal([p for p in pids if _alive(p)], signal.SIGKILL)
        _wait_gone(pids, 10.0)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
