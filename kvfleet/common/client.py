"""A small client of the gateway's gRPC API (used by the CLI, tests and benchmarks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from kvfleet.common.proto.common.v1 import common_pb2
from kvfleet.common.proto.gateway.v1 import gateway_pb2, gateway_pb2_grpc


@dataclass(frozen=True, slots=True)
class Result:
    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    prompt_tokens: int
    predicted_output_tokens: int = 0  # the gateway's prediction (0: none given)


def sampling(max_tokens: int = 16, temperature: float = 0.0, **kw: object) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature, **kw)  # type: ignore[arg-type]


class GatewayClient:
    def __init__(self, address: str, api_key: str | None = None) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def stream(self, model: str, *, prompt: str | None = None,
               messages: list[dict[str, str]] | None = None,
               prompt_token_ids: list[int] | None = None,
               params: common_pb2.SamplingParams | None = None,
               request_id: str = "",
               service_level: common_pb2.ServiceLevel | None = None,
               ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        req = gateway_pb2.GenerateRequest(model=model, request_id=request_id,
                                          sampling=params or sampling(),
                                          service_level=service_level)
        if messages is not None:
            req.chat.messages.extend(gateway_pb2.ChatMessage(**m) for m in messages)
        elif prompt_token_ids is not None:
            req.prompt_token_ids.ids.extend(prompt_token_ids)
        else:
            req.prompt = prompt or ""
        return self.stub.Generate(req, metadata=self.metadata)  # type: ignore[no-any-return]

    async def generate(self, model: str, **kw: object) -> Result:
        text: list[str] = []
        ids: list[int] = []
        rid = finish = ""
        prompt_tokens = predicted = 0
        async for msg in self.stream(model, **kw):  # type: ignore[arg-type]
            rid = msg.request_id
            text.append(msg.text)
            ids.extend(msg.token_ids)
            if msg.finish_reason:
                finish = msg.finish_reason
                prompt_tokens = msg.usage.prompt_tokens
                predicted = msg.predicted_output_tokens
        return Result(rid, "".join(text), tuple(ids), finish, prompt_tokens, predicted)

    async def cancel(self, request_id: str) -> bool:
        reply = await self.stub.Cancel(gateway_pb2.CancelRequest(request_id=request_id),
                                       metadata=self.metadata)
        return bool(reply.found)

    async def models(self) -> list[str]:
        reply = await self.stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=self.metadata)
        return [m.name for m in reply.models]
