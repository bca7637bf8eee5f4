"""Where load is sent: ``grpc://HOST:PORT`` (kvfleet's gateway) or ``http://HOST:PORT/v1``
(any OpenAI-compatible server). Only loopback targets are allowed unless the caller says
otherwise, so a run never reaches a machine it was not meant for."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Kind = Literal["grpc", "http"]


class TargetError(ValueError):
    """A target that is malformed, not allowed, or cannot be reached."""


@dataclass(frozen=True, slots=True)
class Target:
    kind: Kind
    host: str
    port: int
    base_url: str  # http: scheme://host:port/path (no trailing slash); grpc: host:port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        return f"grpc://{self.address}" if self.kind == "grpc" else self.base_url


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_target(text: str, allow_remote: bool = False) -> Target:
    """Parse ``grpc://HOST:PORT`` or ``http(s)://HOST:PORT[/v1]``."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("grpc", "http", "https"):
        raise TargetError(f"bad target {text!r}: expected grpc://HOST:PORT or http://HOST:PORT/v1")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise TargetError(f"bad target {text!r}: {exc}") from None
    if not host:
        raise TargetError(f"bad target {text!r}: no host")
    if port is None:
        if scheme == "grpc":
            raise TargetError(f"bad target {text!r}: grpc targets need a port")
        port = 443 if scheme == "https" else 80
    if not allow_remote and not is_loopback(host):
        raise TargetError(
            f"target {text!r} is not a loopback address; pass --allow-remote to send load to it"
        )
    if scheme == "grpc":
        return Target("grpc", host, port, f"{host}:{port}")
    path = parts.path.rstrip("/") or "/v1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Target("http", host, port, f"{scheme}://{netloc}{path}")
