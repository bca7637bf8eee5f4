"""What both front doors (gRPC and OpenAI HTTP) share: validate, tokenize, enqueue,
relay the token stream, cancel.

The gateway keeps no state of its own beyond caches: a request lives in Redis, so any
replica can serve any client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import GatewaySettings
from kvfleet.common.grpc_util import ChannelPool
from kvfleet.common.ids import new_request_id, valid_request_id
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.common.slo import ServiceLevel, SloError
from kvfleet.services.gateway.adapters.predictor_store import SharedLengthPredictor
from kvfleet.services.gateway.core.length_predictor import LengthQuery, OnlineLengthPredictor
from kvfleet.services.gateway.errors import ApiError, bad_request, model_not_found, queue_full
from kvfleet.services.gateway.tokenizers import TokenizerCache
from kvfleet.services.scheduler.core.admission import QueueBound

log = logging.getLogger(__name__)

MAX_STOP_STRINGS = 16


@dataclass(frozen=True, slots=True)
class Prepared:
    request_id: str
    model: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    slo: ServiceLevel = ServiceLevel()
    predicted_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of output: tokens from ``index`` on, with their text, or the finish."""

    text: str
    token_ids: tuple[int, ...]
    index: int
    finish_reason: str | None = None


class Frontend:
    def __init__(self, store: RedisStore, settings: GatewaySettings) -> None:
        self.store = store
        self.settings = settings
        self.tokenizers = TokenizerCache()
        self._pool = ChannelPool()
        self._plan_models: tuple[str, ...] = ()
        self._plan_read_s = 0.0
        self._model_infos: dict[str, tuple[float, rs.ModelInfo]] = {}
        self.predictor = SharedLengthPredictor(
            store,
            OnlineLengthPredictor(
                quantile=settings.predictor_quantile,
                min_samples=settings.predictor_min_samples,
                prior_tokens=settings.predictor_prior_tokens,
            ),
            settings.predictor_sync_s,
        )

    async def models(self) -> dict[str, tuple[str, ...]]:
        """Served models -> workers that hold them in the current plan."""
        plan = await self.store.get_plan()
        if plan is None:
            return {}
        out: dict[str, list[str]] = {}
        for w, m in plan.placements:
            out.setdefault(m, []).append(w)
        return {m: tuple(ws) for m, ws in sorted(out.items())}

    async def _known(self, model: str) -> bool:
        if model in self._plan_models and time.monotonic() - self._plan_read_s < 2.0:
            return True
        plan = await self.store.get_plan()
        self._plan_models = plan.models() if plan else ()
        self._plan_read_s = time.monotonic()
        return model in self._plan_models

    async def model_info(self, model: str) -> rs.ModelInfo:
        """The model's per-model settings from the fleet config (cached for 2 s)."""
        hit = self._model_infos.get(model)
        if hit is not None and time.monotonic() - hit[0] < 2.0:
            return hit[1]
        info = await self.store.model_info(model) or rs.ModelInfo(model)
        self._model_infos[model] = (time.monotonic(), info)
        return info

    async def prepare(
        self,
        model: str,
        *,
        prompt: str | None = None,
        messages: Sequence[dict[str, str]] | None = None,
        prompt_token_ids: Sequence[int] | None = None,
        sampling: SamplingParams,
        request_id: str = "",
        slo: ServiceLevel | None = None,
    ) -> Prepared:
        """Validate, tokenize and predict the output length; raises :class:`ApiError` (4xx) on
        bad input. ``slo`` fields left unset take the model's defaults."""
        if not model:
            raise bad_request("'model' is required.", param="model")
        if not await self._known(model):
            raise model_not_found(model)
        if request_id and not valid_request_id(request_id):
            raise bad_request("request_id must be 1-128 characters of [A-Za-z0-9._:-].",
                              param="request_id")
        self.check_sampling(sampling)
        slo = slo or ServiceLevel()
        try:
            slo.validate()
        except SloError as e:
            raise bad_request(str(e), param="slo") from e
        tok = await self.tokenizers.get(model)
        if messages is not None:
            if not messages:
                raise bad_request("'messages' must not be empty.", param="messages")
            try:
                ids = list(tok.apply_chat_template(list(messages)))
            except Exception as e:  # a template error is the caller's input
                raise bad_request(f"cannot apply the chat template: {e}", param="messages") from e
        elif prompt_token_ids is not None:
            ids = list(prompt_token_ids)
            vocab = getattr(tok, "vocab_size", None)
            if any(t < 0 or (vocab is not None and t >= vocab) for t in ids):
                raise bad_request(f"prompt token ids must be in [0, {vocab}).", param="prompt")
        else:
            if prompt is None:
                raise bad_request("a prompt is required.", param="prompt")
            ids = list(tok.encode(prompt))
        if not ids:
            raise bad_request("the prompt is empty.", param="prompt")
        limit = int(getattr(tok, "max_context_tokens", 0) or 0)
        if limit and len(ids) + sampling.max_tokens > limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {len(ids) + sampling.max_tokens} tokens ({len(ids)} in the prompt, "
                f"{sampling.max_tokens} for the completion).",
                param="messages" if messages is not None else "prompt",
                code="context_length_exceeded",
            )
        rid = request_id or new_request_id()
        predicted = await self.predictor.predict(
            LengthQuery(rid, model, len(ids), sampling.max_tokens)
        )
        default = (await self.model_info(model)).slo
        return Prepared(rid, model, tuple(ids), sampling, slo.resolved(default), predicted)

    def check_sampling(self, s: SamplingParams) -> None:
        if not 1 <= s.max_tokens <= self.settings.max_tokens_limit:
            raise bad_request(f"max_tokens must be in [1, {self.settings.max_tokens_limit}].",
                              param="max_tokens")
        if not 0.0 <= s.temperature <= 2.0:
            raise bad_request("temperature must be in [0, 2].", param="temperature")
        if not 0.0 < s.top_p <= 1.0:
            raise bad_request("top_p must be in (0, 1].", param="top_p")
        if s.top_k < 0:
            raise bad_request("top_k must be >= 0.", param="top_k")
        if s.seed is not None and not 0 <= s.seed < 2**63:
            raise bad_request("seed must be in [0, 2^63).", param="seed")
        if len(s.stop) > MAX_STOP_STRINGS or any(not x for x in s.stop):
            raise bad_request(f"stop takes up to {MAX_STOP_STRINGS} non-empty strings.",
                              param="stop")
        if any(t < 0 for t in s.stop_token_ids):
            raise bad_request("stop_token_ids must be >= 0.", param="stop_token_ids")

    async def submit(self, p: Prepared) -> str:
        rec = rs.RequestRecord(p.request_id, p.model, p.prompt_token_ids, p.sampling, time.time(),
                               slo=p.slo, predicted_output_tokens=p.predicted_output_tokens)
        if await self.store.r.exists(rs.request_key(p.request_id)):
            raise ApiError(409, f"request id {p.request_id!r} is already in use.",
                           param="request_id", code="duplicate_request_id")
        info = await self.model_info(p.model)
        if not await self.store.enqueue(
            rec, QueueBound(info.max_queued_requests, info.max_queued_tokens)
        ):
            raise queue_full(p.model, self.settings.retry_after_s)
        log.debug("request %s: queued for %s (%d prompt tokens)", p.request_id, p.model,
                  len(p.prompt_token_ids))
        return p.request_id

    async def stream(self, request_id: str) -> AsyncIterator[Chunk]:
        """Relay the request's token stream; each output index once, in order."""
        last_id = "0"
        next_index = 0
        block_ms = 1000
        waited_s = 0.0
        while True:
            entries, last_id = await self.store.read_tokens(request_id, last_id, block_ms)
            if not entries:
                waited_s += block_ms / 1000
                if next_index == 0 and waited_s > self.settings.first_token_timeout_s:
                    raise ApiError(504, "no output in time", type="timeout")
                continue
            text: list[str] = []
            ids: list[int] = []
            start = next_index
            finish: str | None = None
            for e in entries:
                if e.token_id is not None:
                    if e.index < next_index:
                        continue  # written again by a resumed or migrated run
                    if e.index > next_index:
                        log.warning("request %s: token index %d after %d", request_id,
                                    e.index, next_index)
                    ids.append(e.token_id)
                    text.append(e.text)
                    next_index = e.index + 1
                if e.finish_reason:
                    finish = e.finish_reason
                    break
            if ids or finish:
                yield Chunk("".join(text), tuple(ids), start, finish)
            if finish:
                return

    async def cancel(self, request_id: str) -> bool:
        """Cancel a request wherever it is; True if it existed."""
        worker_id = await self.store.mark_cancelled(request_id)
        if worker_id is None:
            return False
        if not worker_id:
            # not on a worker: end its stream here; a scheduler that picks it up drops it
            await self.store.append_tokens(request_id, [rs.TokenEntry(0, None, "", "abort")])
            await self.store.finish(request_id, "abort")
        else:
            address = await self.store.worker_address(worker_id)
            if address:
                try:
                    stub = worker_pb2_grpc.WorkerStub(self._pool.get(address))
                    await stub.Cancel(worker_pb2.CancelRequest(request_id=request_id), timeout=5)
                except grpc.aio.AioRpcError as e:
                    log.warning("request %s: cancel on %s failed: %s", request_id, worker_id,
                                e.code())
        log.info("request %s: cancelled", request_id)
        return True

    def cancel_soon(self, request_id: str) -> None:
        """Cancel from a finally block of a task that is itself being cancelled."""
        task = asyncio.get_running_loop().create_task(self.cancel(request_id))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def close(self) -> None:
        await self._pool.close()


_BACKGROUND: set[asyncio.Task[bool]] = set()
