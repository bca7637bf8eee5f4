"""Start the gateway: the gRPC server and the OpenAI HTTP server (uvicorn) in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn

from kvfleet.common.config import GatewaySettings
from kvfleet.common.fleet_auth import InsecureBindError, is_loopback
from kvfleet.common.grpc_util import Running, start_server
from kvfleet.common.proto.gateway.v1 import gateway_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.services.gateway.api_keys import ApiKeys
from kvfleet.services.gateway.frontend import Frontend
from kvfleet.services.gateway.metrics import GatewayMetrics
from kvfleet.services.gateway.openai_api import create_app
from kvfleet.services.gateway.servicer import GatewayServicer

log = logging.getLogger(__name__)
SERVICE = "kvfleet.gateway.v1.Gateway"


@dataclass
class RunningGateway:
    grpc: Running
    http: uvicorn.Server
    http_task: asyncio.Task[None]
    http_host: str
    http_port: int
    frontend: Frontend
    warm_task: asyncio.Task[None]
    tls: bool = False

    @property
    def address(self) -> str:
        return self.grpc.address

    @property
    def http_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.http_host}:{self.http_port}"

    def addresses(self) -> dict[str, str]:
        return {"grpc": self.grpc.address, "http": self.http_url}

    async def stop(self) -> None:
        self.warm_task.cancel()
        self.http.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.http_task, 10)
        await self.grpc.stop()
        await self.frontend.close()
        await self.frontend.store.close()


async def _warm_tokenizers(frontend: Frontend) -> None:
    """Load the planned models' tokenizers in the background, so the first request of
    each model does not wait for them."""
    while True:
        models = await frontend.models()
        if models:
            break
        await asyncio.sleep(0.2)
    for model in models:
        try:
            await frontend.tokenizers.get(model)
        except Exception as e:  # the request path reports the error to its client
            log.warning("model %s: tokenizer not loaded: %s", model, e)


async def warm_start_predictor(frontend: Frontend, traces: dict[str, str]) -> None:
    """Seed each model's output-length counts from a trace's (input, output) lengths, once per
    fleet (the first gateway to start does it). A bad trace file stops the start."""
    from kvfleet.workload.readers import read_trace

    for model, path in traces.items():
        specs = await asyncio.to_thread(read_trace, Path(path), model)
        n = await frontend.predictor.warm_start(
            model, [(s.input_tokens, s.output_tokens) for s in specs]
        )
        log.info("predictor %s: %s", model,
                 f"warm-started from {len(specs)} requests of {path}" if n else "already warm")


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def start(settings: GatewaySettings) -> RunningGateway:
    if not settings.redis_url:
        raise ValueError("gateway: redis_url is required")
    store = RedisStore.for_service(settings)
    await store.r.ping()
    frontend = Frontend(store, settings)
    try:
        await warm_start_predictor(frontend, settings.predictor_warm_start)
    except BaseException:
        await store.close()
        raise
    metrics = GatewayMetrics()
    keys = ApiKeys(settings.api_keys, settings.api_key_hashes)
    if keys.open:
        if not is_loopback(settings.host) and not settings.allow_unauthenticated:
            await store.close()
            raise InsecureBindError(
                f"gateway: refusing to serve {settings.host} without API keys "
                "(set api_key_hashes, or allow_unauthenticated)")
        log.warning("gateway: no API keys configured; every client is accepted")
    tls = (settings.public_tls_cert_file, settings.public_tls_key_file)
    if any(tls) and not all(tls):
        raise ValueError("gateway TLS needs public_tls_cert_file and public_tls_key_file")
    public_creds = None
    if all(tls):
        public_creds = grpc.ssl_server_credentials(
            [(Path(tls[1]).read_bytes(), Path(tls[0]).read_bytes())])
    running = await start_server(
        settings.host, settings.port,
        lambda s: gateway_pb2_grpc.add_GatewayServicer_to_server(
            GatewayServicer(frontend, metrics, keys), s),
        [SERVICE], public_credentials=public_creds,
    )
    sock = _bind(settings.host, settings.http_port)
    port = sock.getsockname()[1]
    app = create_app(frontend, metrics, keys)
    ssl = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]} if all(tls) else {}
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5, lifespan="off", **ssl))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-http")
    while not server.started:
        if task.done():
            await running.stop()
            task.result()
            raise RuntimeError("HTTP server exited at start")
        await asyncio.sleep(0.01)
    log.info("gateway: gRPC %s, HTTP http://%s:%d", running.address, settings.host, port)
    warm = asyncio.create_task(_warm_tokenizers(frontend), name="warm-tokenizers")
    return RunningGateway(running, server, task, settings.host, port, frontend, warm,
                          public_creds is not None)
