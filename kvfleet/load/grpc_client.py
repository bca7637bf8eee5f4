"""Client for kvfleet's gateway: ``kvfleet.gateway.v1.Gateway/Generate`` (server streaming).

Prompts go as token ids, so the gateway sees exactly the workload's input length; output
length is forced with ``max_tokens`` and ``ignore_eos``. Messages carry token ids, so TTFT is
the first message with ids and ITL the gaps between such messages.
"""

from __future__ import annotations

import logging

import grpc
import grpc.aio

from kvfleet.load.client import ChunkTimer, Outcome, Prepared
from kvfleet.load.target import Target, TargetError

log = logging.getLogger(__name__)


def _proto():  # type: ignore[no-untyped-def]
    try:
        from kvfleet.common.proto.common.v1 import common_pb2
        from kvfleet.common.proto.gateway.v1 import gateway_pb2, gateway_pb2_grpc
    except ImportError as exc:  # pragma: no cover - only without the generated code
        raise TargetError(f"kvfleet's generated gRPC code is missing ({exc})") from None
    return common_pb2, gateway_pb2, gateway_pb2_grpc


class GrpcClient:
    name = "kvfleet-grpc"

    def __init__(
        self, target: Target, api_key: str | None = None, request_timeout_s: float = 600.0
    ) -> None:
        self.target = target
        self.common_pb2, self.gateway_pb2, grpc_mod = _proto()
        self._channel = grpc.aio.insecure_channel(
            target.address,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        self._stub = grpc_mod.GatewayStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout_s = request_timeout_s

    async def check(self, timeout_s: float, model: str = "") -> None:
        """Reachable, and serves ``model``."""
        try:
            resp = await self._stub.ListModels(
                self.gateway_pb2.ListModelsRequest(),
                timeout=timeout_s,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise TargetError(
                f"cannot reach {self.target}: {exc.code().name}: {exc.details()}"
            ) from None
        names = [m.name for m in resp.models]
        if model and model not in names:
            raise TargetError(
                f"{self.target} does not serve model {model!r} (it serves: {', '.join(names) or 'none'})"
            )

    def request(self, req: Prepared, model: str):  # type: ignore[no-untyped-def]
        sampling = self.common_pb2.SamplingParams(
            max_tokens=req.spec.output_tokens, temperature=0.0, ignore_eos=True
        )
        slo = self.common_pb2.ServiceLevel()
        if req.ttft_slo_s is not None:
            slo.ttft_s = req.ttft_slo_s
        if req.tpot_slo_s is not None:
            slo.tpot_s = req.tpot_slo_s
        return self.gateway_pb2.GenerateRequest(
            model=model,
            prompt_token_ids=self.gateway_pb2.TokenIds(ids=list(req.prompt_ids)),
            sampling=sampling,
            service_level=slo,
        )

    async def send(self, req: Prepared, model: str) -> Outcome:
        timer = ChunkTimer()
        finish = ""
        usage_tokens: int | None = None
        predicted: int | None = None
        call = self._stub.Generate(
            self.request(req, model), timeout=self._timeout_s, metadata=self._metadata
        )
        try:
            async for msg in call:
                if msg.token_ids:
                    timer.chunk(len(msg.token_ids))
                if msg.finish_reason:
                    finish = msg.finish_reason
                if msg.HasField("usage"):
                    usage_tokens = int(msg.usage.completion_tokens)
                if msg.predicted_output_tokens:
                    predicted = int(msg.predicted_output_tokens)
        except grpc.aio.AioRpcError as exc:
            return Outcome(
                timer,
                False,
                output_tokens=timer.tokens,
                error=f"{exc.code().name}: {exc.details()}",
            )
        finally:
            if not call.done():
                call.cancel()
        if timer.first is None:
            return Outcome(timer, False, error=f"no output (finish reason {finish or 'none'})")
        if finish == "abort":
            return Outcome(timer, False, output_tokens=timer.tokens, error="aborted by the server")
        n = usage_tokens if usage_tokens else timer.tokens
        return Outcome(timer, True, output_tokens=n, finish_reason=finish,
                       predicted_output_tokens=predicted)

    async def close(self) -> None:
        await self._channel.close()
