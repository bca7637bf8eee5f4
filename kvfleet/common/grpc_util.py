"""gRPC/asyncio helpers shared by every server and client."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kvfleet.common.fleet_auth import FleetSecurity

log = logging.getLogger(__name__)

OVERALL = ""  # the health service name that stands for the whole server


@dataclass
class Running:
    """A started gRPC server: its bound port, its health service, and how to stop it."""

    server: grpc.aio.Server
    host: str
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in (OVERALL, *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace_s)


async def start_server(
    host: str,
    port: int,
    add: Callable[[grpc.aio.Server], None],
    service_names: Iterable[str],
    serving: bool = True,
    security: FleetSecurity | None = None,
    max_message_bytes: int = 64 << 20,
    public_credentials: grpc.ServerCredentials | None = None,
) -> Running:
    """Bind ``host:port`` (0 picks a free port, read back from the bind), register the
    servicers and the health service, start, and return. ``security`` (the fleet's token
    and/or mutual TLS) guards every call but health checks."""
    security = security or FleetSecurity()
    server = grpc.aio.server(
        interceptors=security.server_interceptors(),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.so_reuseport", 0)],
    )
    add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if public_credentials is not None:  # a public door: server TLS, no fleet credentials
        bound = server.add_secure_port(f"{host}:{port}", public_credentials)
    else:
        bound = security.add_port(server, f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind {host}:{port}")
    await server.start()
    running = Running(server, host, bound, health_servicer, tuple(service_names))
    await running.set_serving(serving)
    log.info("gRPC server on %s (%s)", running.address, ", ".join(running.service_names))
    return running


async def check_health(address: str, timeout_s: float = 1.0, service: str = OVERALL,
                       security: FleetSecurity | None = None) -> bool:
    """One health check; False on any error."""
    try:
        async with (security or FleetSecurity()).channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                     timeout=timeout_s)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


async def wait_healthy(address: str, timeout_s: float = 60.0, interval_s: float = 0.05,
                       security: FleetSecurity | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check_health(address, security=security):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{address} not SERVING after {timeout_s:.0f}s")
        await asyncio.sleep(interval_s)


class ChannelPool:
    """One channel per address (with the fleet's credentials), reused across calls; at most
    ``max_channels``, the least recently used closed beyond that."""

    def __init__(self, security: FleetSecurity | None = None, max_channels: int = 1024) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._security = security or FleetSecurity()
        self._max = max_channels
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.pop(address, None)
        if channel is None:
            channel = self._security.channel(
                address, options=[("grpc.max_receive_message_length", 64 << 20)]
            )
            while len(self._channels) >= self._max:
                old = self._channels.pop(next(iter(self._channels)))
                task = asyncio.get_running_loop().create_task(old.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self._channels[address] = channel  # most recently used last
        return channel

    async def drop(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
