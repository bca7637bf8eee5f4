"""Who may call the fleet's internal gRPC services (scheduler, planner, workers).

Every internal call carries the fleet's shared token in the ``x-kvfleet-fleet-token``
metadata; servers refuse calls without it (UNAUTHENTICATED) except the standard health
service, which probes (Kubernetes, the launcher) call without credentials. Optionally the
channels are mutual TLS: servers present a certificate and require one from clients, both
signed by the fleet's CA.

A service with neither a token nor TLS runs open, and then only on a loopback address:
binding another address that way needs ``allow_unauthenticated`` (never in a deployment).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-kvfleet-fleet-token"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
TOKEN_ENV = "KVFLEET_FLEET_TOKEN"


class InsecureBindError(RuntimeError):
    """An unauthenticated server asked to listen beyond loopback."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read(path: str) -> bytes:
    return Path(path).expanduser().read_bytes()


@dataclass(frozen=True)
class FleetSecurity:
    """The fleet's credentials as one service holds them."""

    token: str = ""
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    tls_ca: bytes | None = None
    tls_server_name: str = ""

    @classmethod
    def from_settings(cls, settings: Any) -> FleetSecurity:
        token = settings.fleet_token.get_secret_value() if settings.fleet_token else ""
        if not token and settings.fleet_token_file:
            token = _read(settings.fleet_token_file).decode().strip()
        tls = (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        if any(tls) and not all(tls):
            raise ValueError("mutual TLS needs tls_cert_file, tls_key_file and tls_ca_file")
        cert, key, ca = (_read(p) for p in tls) if all(tls) else (None, None, None)
        return cls(token, cert, key, ca, settings.tls_server_name)

    @classmethod
    def from_env(cls) -> FleetSecurity:
        """For command-line clients: the token from ``KVFLEET_FLEET_TOKEN``."""
        return cls(os.environ.get(TOKEN_ENV, ""))

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def authenticated(self) -> bool:
        return bool(self.token) or self.tls

    def check_bind(self, host: str, allow_unauthenticated: bool, what: str) -> None:
        if self.authenticated or is_loopback(host):
            return
        if not allow_unauthenticated:
            raise InsecureBindError(
                f"{what}: refusing to listen on {host} without a fleet token or mutual TLS "
                "(set fleet_token / fleet_token_file, or allow_unauthenticated for a test)"
            )
        log.warning("%s listens on %s without authentication", what, host)

    # ---- server side
    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [TokenInterceptor(self.token)] if self.token else []

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        if not self.tls:
            return int(server.add_insecure_port(address))
        creds = grpc.ssl_server_credentials(
            [(self.tls_key, self.tls_cert)], root_certificates=self.tls_ca,
            require_client_auth=True)
        return int(server.add_secure_port(address, creds))

    # ---- client side
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((TOKEN_HEADER, self.token),) if self.token else ()

    def channel(self, address: str, options: list[tuple[str, Any]] | None = None
                ) -> grpc.aio.Channel:
        options = list(options or [])
        interceptors = [_AddToken(self.token)] if self.token else None
        if not self.tls:
            return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        creds = grpc.ssl_channel_credentials(self.tls_ca, self.tls_key, self.tls_cert)
        return grpc.aio.secure_channel(address, creds, options=options,
                                       interceptors=interceptors)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health checks that lacks the fleet token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        presented = next((v for k, v in details.invocation_metadata or ()
                          if k == TOKEN_HEADER), "")
        raw = presented.encode() if isinstance(presented, str) else bytes(presented)
        if hmac.compare_digest(raw, self._token):
            return handler
        log.warning("refused an unauthenticated call to %s", details.method)
        return _deny(handler)


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message = "missing or wrong fleet token"

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover  (makes this an async generator)

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)


class _AddToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = (TOKEN_HEADER, token)

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = grpc.aio.Metadata(*(tuple(d.metadata or ())), self._md)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, md, d.credentials,
                                          d.wait_for_ready)

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request)
