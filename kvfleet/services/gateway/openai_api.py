"""The OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions (stream or not),
/v1/models, /health and /metrics. Errors are 4xx with OpenAI's error body."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from kvfleet.common.http_api import PREDICTED_OUTPUT_TOKENS_HEADER, REQUEST_ID_HEADER
from kvfleet.common.sampling import SamplingParams
from kvfleet.common.slo import ServiceLevel, SloError, priority_rank
from kvfleet.services.gateway.errors import ApiError, bad_request, unauthorized, unavailable
from kvfleet.services.gateway.frontend import Chunk, Frontend, Prepared, Slot
from kvfleet.services.gateway.metrics import GatewayMetrics
from kvfleet.services.gateway.openapi_schema import body_schema, openapi_document
from kvfleet.services.gateway.relay import relay

log = logging.getLogger(__name__)


class SloBody(BaseModel):
    """kvfleet's extension: a request's latency targets (seconds). Unset: the model's default."""

    model_config = ConfigDict(extra="forbid")

    ttft_s: float | None = None
    tpot_s: float | None = None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = 1
    slo: SloBody | None = None  # kvfleet extension
    priority: str | None = None  # kvfleet extension: "high", "normal" or "low"
    # OpenAI parameters kvfleet does not implement: refused when they ask for something,
    # rather than silently ignored.
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    best_of: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def refuse_unsupported(self) -> None:
        asked = {
            "tools": bool(self.tools), "tool_choice": self.tool_choice not in (None, "none"),
            "functions": bool(self.functions), "function_call": self.function_call is not None,
            "response_format": (self.response_format or {}).get("type", "text") != "text",
            "logprobs": self.logprobs not in (None, False, 0), "top_logprobs": bool(self.top_logprobs),
            "logit_bias": bool(self.logit_bias), "best_of": self.best_of not in (None, 1),
            "echo": bool(self.echo), "suffix": bool(self.suffix),
            "presence_penalty": bool(self.presence_penalty),
            "frequency_penalty": bool(self.frequency_penalty),
        }
        for name, used in asked.items():
            if used:
                raise bad_request(f"'{name}' is not supported by this server.", param=name,
                                  code="unsupported_parameter")

    def service_level(self) -> ServiceLevel:
        try:
            rank = priority_rank(self.priority) if self.priority is not None else None
        except SloError as e:
            raise bad_request(str(e), param="priority") from e
        slo = self.slo or SloBody()
        return ServiceLevel(slo.ttft_s, slo.tpot_s, rank)

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        if self.n != 1:
            raise bad_request("only n=1 is supported.", param="n")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.max_tokens if self.max_tokens is not None else default_max_tokens,
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed,
            stop_token_ids=tuple(self.stop_token_ids), stop=stop, ignore_eos=self.ignore_eos,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionBody(_Body):
    prompt: str | list[str] | list[int]


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart]

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": text}


class ChatBody(_Body):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None


def _error(e: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(e.retry_after_s)} if e.retry_after_s is not None else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


JSON_TYPES = ("application/json",)
MAX_JSON_DEPTH = 64


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed ``max_bytes``: from its
    Content-Length before reading anything, else while it streams in."""
    ctype = request.headers.get("content-type")
    if ctype is not None and ctype.split(";")[0].strip().lower() not in JSON_TYPES:
        raise ApiError(415, f"Content-Type must be application/json, not {ctype[:64]!r}",
                       code="unsupported_media_type")
    too_big = ApiError(413, f"request body over {max_bytes} bytes", code="body_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_big
        parts.append(chunk)
    return b"".join(parts)


def _check_strings(value: Any, depth: int = 0) -> None:
    """Refuse what JSON allows but text cannot hold: lone surrogates (from \\ud800-style
    escapes), and nesting deeper than any request needs."""
    if depth > MAX_JSON_DEPTH:
        raise bad_request(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise bad_request("strings must be valid Unicode (no lone surrogates)") from e
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k, depth + 1)
            _check_strings(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v, depth + 1)


async def _parse(request: Request, cls: type[_Body], max_bytes: int) -> Any:
    body = await _read_body(request, max_bytes)
    try:
        data = json.loads(body)
    except RecursionError as e:
        raise bad_request(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels") from e
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, or an int too long
        raise bad_request(f"malformed JSON body: {str(e)[:200]}") from e
    if not isinstance(data, dict):
        raise bad_request("the JSON body must be an object")
    _check_strings(data)
    try:
        parsed = cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise bad_request(f"{where}: {first.get('msg')}", param=where or None) from e
    parsed.refuse_unsupported()
    return parsed


class _SlotStream(StreamingResponse):
    """A streaming response that holds its admission slot until it has been sent (or the
    client went away)."""

    def __init__(self, slot: Slot, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slot = slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()


def _usage(p: Prepared, n: int) -> dict[str, int]:
    return {"prompt_tokens": len(p.prompt_token_ids), "completion_tokens": n,
            "total_tokens": len(p.prompt_token_ids) + n}


def _headers(p: Prepared) -> dict[str, str]:
    out = {REQUEST_ID_HEADER: p.request_id}
    if p.predicted_output_tokens is not None:
        out[PREDICTED_OUTPUT_TOKENS_HEADER] = str(p.predicted_output_tokens)
    return out


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def create_app(frontend: Frontend, metrics: GatewayMetrics, keys: Any) -> FastAPI:
    """``keys``: an :class:`ApiKeys` (or anything with ``.check(presented) -> owner``)."""
    app = FastAPI(title="kvfleet", docs_url=None, redoc_url=None, openapi_url=None)
    settings = frontend.settings

    def check_key(request: Request) -> str:
        """The caller's identity (the key's id; "" on an open gateway), or 401."""
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        owner = keys.check(key)
        if owner is None:
            raise unauthorized()
        return str(owner)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        metrics.requests.labels("http", "", str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers())

    @app.exception_handler(RedisError)
    async def _redis_error(request: Request, e: RedisError) -> JSONResponse:
        log.warning("Redis unavailable: %s", e)
        return await _api_error(request, unavailable("the request store is unavailable"))

    @app.get("/livez")
    async def livez() -> dict[str, Any]:
        """Liveness: the process answers (restart it if this fails)."""
        return {"status": "alive"}

    @app.get("/health")
    async def health() -> Response:
        """Readiness: a scheduler, a plan, and a live worker for every planned model."""
        report = await frontend.readiness()
        return JSONResponse(report.to_dict(), status_code=200 if report.ready else 503)

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(openapi_document(app, (CompletionBody, ChatBody),
                                              settings.max_tokens_limit))

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_key(request)
        models = await frontend.models()
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "kvfleet",
             "workers": list(ws)} for m, ws in models.items()]}

    @app.post("/v1/completions", openapi_extra={"requestBody": body_schema(CompletionBody)})
    async def completions(request: Request) -> Response:
        owner = check_key(request)
        with frontend.admit() as slot:
            body: CompletionBody = await _parse(request, CompletionBody, settings.max_body_bytes)
            return await _completions(request, body, owner, slot)

    async def _completions(request: Request, body: CompletionBody, owner: str,
                           slot: Slot) -> Response:
        kwargs: dict[str, Any]
        if isinstance(body.prompt, str):
            kwargs = {"prompt": body.prompt}
        elif body.prompt and all(isinstance(x, str) for x in body.prompt):
            if len(body.prompt) != 1:
                raise bad_request("only one prompt per request is supported.", param="prompt")
            kwargs = {"prompt": body.prompt[0]}
        else:
            kwargs = {"prompt_token_ids": [int(x) for x in body.prompt]}
        p = await frontend.prepare(body.model, sampling=body.sampling(settings.default_max_tokens),
                                   slo=body.service_level(), owner=owner, **kwargs)
        return await _respond(request, p, body, False, slot)

    @app.post("/v1/chat/completions", openapi_extra={"requestBody": body_schema(ChatBody)})
    async def chat_completions(request: Request) -> Response:
        owner = check_key(request)
        with frontend.admit() as slot:
            body: ChatBody = await _parse(request, ChatBody, settings.max_body_bytes)
            return await _chat(request, body, owner, slot)

    async def _chat(request: Request, body: ChatBody, owner: str, slot: Slot) -> Response:
        if body.max_completion_tokens is not None and body.max_tokens is None:
            body.max_tokens = body.max_completion_tokens
        p = await frontend.prepare(body.model, messages=[m.plain() for m in body.messages],
                                   sampling=body.sampling(settings.default_max_tokens),
                                   slo=body.service_level(), owner=owner)
        return await _respond(request, p, body, True, slot)

    async def _respond(request: Request, p: Prepared, body: _Body, chat: bool,
                       slot: Slot) -> Response:
        created = int(time.time())
        rid = ("chatcmpl-" if chat else "cmpl-") + p.request_id
        obj = "chat.completion" if chat else "text_completion"
        api = "chat" if chat else "completions"
        if body.stream:
            return _SlotStream(
                slot.handover(), _stream(p, body, chat, rid, created, api),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", **_headers(p)})
        text, n, finish = await _collect(request, p, api)
        if finish == "error":
            raise bad_request("the worker rejected the request")
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return JSONResponse({"id": rid, "object": obj, "created": created, "model": p.model,
                             "choices": [choice], "usage": _usage(p, n)},
                            headers=_headers(p))

    async def _collect(request: Request, p: Prepared, api: str) -> tuple[str, int, str | None]:
        async def run() -> tuple[str, int, str | None]:
            parts: list[str] = []
            n = 0
            finish = None
            async for c in relay(frontend, metrics, p, api):
                parts.append(c.text)
                n += len(c.token_ids)
                finish = c.finish_reason or finish
            return "".join(parts), n, finish

        task = asyncio.ensure_future(run())
        while not task.done():
            await asyncio.wait([task], timeout=0.25)
            if not task.done() and await request.is_disconnected():
                task.cancel()  # relay's finally cancels the request and frees its KV
                raise ApiError(499, "client closed the request")
        return task.result()

    async def _stream(p: Prepared, body: _Body, chat: bool, rid: str, created: int,
                      api: str) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        n = 0

        def chunk(delta: dict[str, Any] | str, finish: str | None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                choice["delta"] = delta
            else:
                choice["text"] = delta
            out = {"id": rid, "object": obj, "created": created, "model": p.model,
                   "choices": [choice]}
            if body.include_usage:
                out["usage"] = None
            return out

        if chat:
            yield _sse(chunk({"role": "assistant", "content": ""}, None))
        try:
            c: Chunk
            async for c in relay(frontend, metrics, p, api):
                n += len(c.token_ids)
                if c.text or c.finish_reason:
                    delta: dict[str, Any] | str = ({"content": c.text} if c.text else {}) \
                        if chat else c.text
                    yield _sse(chunk(delta, c.finish_reason))
        except ApiError as e:
            yield _sse(e.body())
        if body.include_usage:
            yield _sse({"id": rid, "object": obj, "created": created, "model": p.model,
                        "choices": [], "usage": _usage(p, n)})
        yield b"data: [DONE]\n\n"

    return app
