"""The public gRPC API (kvfleet.gateway.v1.Gateway): converts and delegates."""

from __future__ import annotations

import logging

import grpc
from redis.exceptions import RedisError

from kvfleet.common.convert import sampling_from_pb, service_level_from_pb
from kvfleet.common.ids import valid_request_id
from kvfleet.common.proto.common.v1 import common_pb2
from kvfleet.common.proto.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from kvfleet.common.slo import SloError
from kvfleet.services.gateway.api_keys import ApiKeys
from kvfleet.services.gateway.errors import ApiError, bad_request, unauthorized, unavailable
from kvfleet.services.gateway.frontend import Frontend
from kvfleet.services.gateway.metrics import GatewayMetrics
from kvfleet.services.gateway.relay import relay

log = logging.getLogger(__name__)


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, frontend: Frontend, metrics: GatewayMetrics, keys: ApiKeys) -> None:
        self.frontend = frontend
        self.metrics = metrics
        self.keys = keys

    def _check_key(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's key id ("" on an open gateway), or 401."""
        md = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        auth = str(md.get("authorization", ""))
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else str(md.get("x-api-key", ""))
        owner = self.keys.check(key)
        if owner is None:
            raise unauthorized()
        return owner

    async def _abort(self, context: grpc.aio.ServicerContext, e: ApiError) -> None:
        self.metrics.requests.labels("grpc", "", str(e.status)).inc()
        trailing = (("retry-after", str(e.retry_after_s)),) if e.retry_after_s else ()
        await context.abort(e.grpc_code(), e.message, trailing_metadata=trailing)

    async def Generate(self, request, context):  # noqa: N802
        try:
            owner = self._check_key(context)
            slot = self.frontend.admit()
        except ApiError as e:
            await self._abort(context, e)
            return
        with slot:
            async for msg in self._generate(request, context, owner):
                yield msg

    async def _generate(self, request, context, owner: str):  # type: ignore[no-untyped-def]
        try:
            sampling = sampling_from_pb(request.sampling,
                                        self.frontend.settings.default_max_tokens)
            which = request.WhichOneof("input")
            kwargs: dict = {}
            if which == "prompt":
                kwargs["prompt"] = request.prompt
            elif which == "chat":
                kwargs["messages"] = [{"role": m.role, "content": m.content}
                                      for m in request.chat.messages]
                if any(m["role"] not in ("system", "user", "assistant") for m in kwargs["messages"]):
                    raise bad_request("chat roles must be system, user or assistant.")
            elif which == "prompt_token_ids":
                kwargs["prompt_token_ids"] = list(request.prompt_token_ids.ids)
            else:
                raise bad_request("one of prompt, chat or prompt_token_ids is required.")
            try:
                slo = service_level_from_pb(request.service_level)
            except SloError as e:
                raise bad_request(str(e), param="service_level") from e
            p = await self.frontend.prepare(request.model, sampling=sampling,
                                            request_id=request.request_id, slo=slo, owner=owner,
                                            **kwargs)
        except RedisError as e:
            log.warning("Redis unavailable: %s", e)
            await self._abort(context, unavailable("the request store is unavailable"))
            return
        except ApiError as e:
            await self._abort(context, e)
            return
        n = 0
        try:
            async for c in relay(self.frontend, self.metrics, p, "grpc"):
                n += len(c.token_ids)
                msg = gateway_pb2.GenerateResponse(request_id=p.request_id, text=c.text,
                                                   token_ids=list(c.token_ids), index=c.index)
                if c.finish_reason:
                    msg.finish_reason = c.finish_reason
                    msg.usage.CopyFrom(common_pb2.Usage(
                        prompt_tokens=len(p.prompt_token_ids), completion_tokens=n))
                    msg.predicted_output_tokens = p.predicted_output_tokens or 0
                yield msg
        except RedisError as e:
            log.warning("Redis unavailable: %s", e)
            await self._abort(context, unavailable("the request store is unavailable"))
        except ApiError as e:
            await self._abort(context, e)

    async def Cancel(self, request, context):  # noqa: N802
        try:
            owner = self._check_key(context)
            if request.request_id and not valid_request_id(request.request_id):
                raise bad_request("request_id must be 1-128 characters of [A-Za-z0-9._:-].",
                                  param="request_id")
            found = bool(request.request_id) and await self.frontend.cancel(request.request_id,
                                                                            owner)
        except RedisError as e:
            log.warning("Redis unavailable: %s", e)
            await self._abort(context, unavailable("the request store is unavailable"))
        except ApiError as e:
            await self._abort(context, e)
        return gateway_pb2.CancelResponse(found=found)

    async def ListModels(self, request, context):  # noqa: N802
        try:
            self._check_key(context)
            models = await self.frontend.models()
        except RedisError as e:
            log.warning("Redis unavailable: %s", e)
            await self._abort(context, unavailable("the request store is unavailable"))
        except ApiError as e:
            await self._abort(context, e)
        out = []
        for model, workers in models.items():
            info = gateway_pb2.ModelInfo(name=model, workers=list(workers))
            try:
                tok = await self.frontend.tokenizers.get(model)
                info.max_context_tokens = int(getattr(tok, "max_context_tokens", 0) or 0)
            except Exception:  # the listing must not fail on one model's tokenizer
                log.warning("model %s: tokenizer unavailable", model)
            out.append(info)
        return gateway_pb2.ListModelsResponse(models=out)
