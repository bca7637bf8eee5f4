"""What both front doors (gRPC and OpenAI HTTP) share: validate, tokenize, enqueue,
relay the token stream, cancel.

The gateway keeps no state of its own beyond caches: a request lives in Redis, so any
replica can serve any client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from redis.exceptions import RedisError

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import GatewaySettings
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.grpc_util import ChannelPool
from kvfleet.common.ids import new_request_id, valid_request_id
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import (
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    SamplingError,
    SamplingParams,
)
from kvfleet.common.slo import ServiceLevel, SloError
from kvfleet.services.gateway.adapters.predictor_store import SharedLengthPredictor
from kvfleet.services.gateway.core.length_predictor import LengthQuery, OnlineLengthPredictor
from kvfleet.services.gateway.errors import (
    ApiError,
    bad_request,
    model_not_found,
    queue_full,
    timeout,
    too_many_requests,
    unavailable,
)
from kvfleet.services.gateway.tokenizers import TokenizerCache
from kvfleet.services.scheduler.core.admission import QueueBound

log = logging.getLogger(__name__)
READINESS_CACHE_S = 0.5
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))


@dataclass(frozen=True, slots=True)
class Prepared:
    request_id: str
    model: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    slo: ServiceLevel = ServiceLevel()
    predicted_output_tokens: int | None = None
    owner: str = ""  # the id of the API key that sent it ("" on an open gateway)
    expected_output_tokens: int | None = None  # the mean for requests like it (load figures)


@dataclass(frozen=True, slots=True)
class Readiness:
    """What /health reports: ready only when the fleet can serve every planned model."""

    plan_version: int | None
    schedulers: int
    models: dict[str, int]  # planned model -> live workers that hold it

    @property
    def ready(self) -> bool:
        return (self.plan_version is not None and self.schedulers > 0 and bool(self.models)
                and all(self.models.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"status": "ready" if self.ready else "not ready",
                "plan_version": self.plan_version, "schedulers": self.schedulers,
                "models": self.models}


class Slot:
    """One admitted request's place in the replica's in-flight limit."""

    def __init__(self, frontend: Frontend) -> None:
        self._frontend = frontend
        self._held = True
        self._handed_over = False

    def handover(self) -> Slot:
        """The response now releases the slot (a stream, once it is sent)."""
        self._handed_over = True
        return self

    def release(self) -> None:
        if self._held:
            self._held = False
            self._frontend.num_in_flight -= 1

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None or not self._handed_over:
            self.release()


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
        self._pool = ChannelPool(FleetSecurity.from_settings(settings))
        self._plan_models: tuple[str, ...] = ()
        self._plan_read_s = 0.0
        self._model_infos: dict[str, tuple[float, rs.ModelInfo]] = {}
        self._tokenize = concurrent.futures.ThreadPoolExecutor(
            settings.tokenizer_threads, thread_name_prefix="tokenize")
        self.num_in_flight = 0
        self._readiness: tuple[float, Readiness] | None = None
        self.predictor = SharedLengthPredictor(
            store,
            OnlineLengthPredictor(
                quantile=settings.predictor_quantile,
                min_samples=settings.predictor_min_samples,
                prior_tokens=settings.predictor_prior_tokens,
            ),
            settings.predictor_sync_s,
        )

    def admit(self) -> Slot:
        """A slot in this replica's in-flight limit, or 429 with Retry-After."""
        if self.num_in_flight >= self.settings.max_in_flight:
            raise too_many_requests(
                f"this gateway serves {self.settings.max_in_flight} requests at once; "
                "retry shortly", retry_after_s=1)
        self.num_in_flight += 1
        return Slot(self)

    async def readiness(self) -> Readiness:
        """A scheduler, a plan, and a live worker for each planned model (cached briefly)."""
        now = time.monotonic()
        if self._readiness is not None and now - self._readiness[0] < READINESS_CACHE_S:
            return self._readiness[1]
        try:
            plan = await self.store.get_plan()
            schedulers = await self.store.live_schedulers()
            workers = await self.store.workers()
        except (RedisError, rs.SchemaError, ValueError) as e:
            log.warning("readiness: %s", e)
            return Readiness(None, 0, {})
        models = {m: 0 for m in (plan.models() if plan else ())}
        for _info, occ in workers.values():
            if occ is None or occ.loading:
                continue
            for m in occ.models:
                if m in models:
                    models[m] += 1
        report = Readiness(plan.version if plan else None, len(schedulers), models)
        self._readiness = (now, report)
        return report

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
        owner: str = "",
    ) -> Prepared:
        """Validate, tokenize and predict the output length; raises :class:`ApiError` (4xx) on
        bad input. ``slo`` fields left unset take the model's defaults. A sampled request
        without a seed gets one, so that a resume on another worker continues its stream."""
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
        try:
            tok = await self.tokenizers.get(model)
        except Exception as e:  # planned, but its tokenizer cannot be loaded here
            log.warning("model %s: tokenizer unavailable: %s", model, e)
            raise unavailable(f"model '{model}' is not available on this gateway") from e
        vocab = getattr(tok, "vocab_size", None)
        if vocab is not None and any(t >= vocab for t in sampling.stop_token_ids):
            raise bad_request(f"stop_token_ids must be in [0, {vocab}).", param="stop_token_ids")
        loop = asyncio.get_running_loop()
        if messages is not None:
            if not messages:
                raise bad_request("'messages' must not be empty.", param="messages")
            try:
                ids = list(await loop.run_in_executor(
                    self._tokenize, tok.apply_chat_template, list(messages)))
            except Exception as e:  # a template error is the caller's input
                raise bad_request(f"cannot apply the chat template: {e}", param="messages") from e
        elif prompt_token_ids is not None:
            ids = list(prompt_token_ids)
            if any(t < 0 or (vocab is not None and t >= vocab) for t in ids):
                raise bad_request(f"prompt token ids must be in [0, {vocab}).", param="prompt")
        else:
            if prompt is None:
                raise bad_request("a prompt is required.", param="prompt")
            ids = list(await loop.run_in_executor(self._tokenize, tok.encode, prompt))
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
        query = LengthQuery(rid, model, len(ids), sampling.max_tokens)
        predicted = await self.predictor.predict(query)
        expected = await self.predictor.expect(query)
        default = (await self.model_info(model)).slo
        if sampling.temperature > 0 and sampling.seed is None:
            sampling = dataclasses.replace(sampling, seed=secrets.randbits(63))
        return Prepared(rid, model, tuple(ids), sampling, slo.resolved(default), predicted, owner,
                        expected)

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
        if (len(s.stop) > MAX_STOP_STRINGS or any(not x for x in s.stop)
                or any(len(x) > MAX_STOP_STRING_CHARS for x in s.stop)):
            raise bad_request(f"stop takes up to {MAX_STOP_STRINGS} non-empty strings of at "
                              f"most {MAX_STOP_STRING_CHARS} characters.", param="stop")
        if any(t < 0 for t in s.stop_token_ids):
            raise bad_request("stop_token_ids must be >= 0.", param="stop_token_ids")
        try:
            s.validate()  # what every service enforces (wire widths included)
        except SamplingError as e:
            field = str(e).split(" ", 1)[0]
            raise bad_request(str(e), param=field if field in SAMPLING_FIELDS else None) from e

    async def submit(self, p: Prepared) -> str:
        now = time.time()
        rec = rs.RequestRecord(p.request_id, p.model, p.prompt_token_ids, p.sampling, now,
                               slo=p.slo, predicted_output_tokens=p.predicted_output_tokens,
                               owner=p.owner, deadline_s=now + self.settings.request_timeout_s)
        if await self.store.r.exists(rs.request_key(p.request_id)):
            raise ApiError(409, f"request id {p.request_id!r} is already in use.",
                           param="request_id", code="duplicate_request_id")
        info = await self.model_info(p.model)
        if not await self.store.enqueue(
            rec, QueueBound(info.max_queued_requests, info.max_queued_tokens)
        ):
            raise queue_full(p.model, self.settings.retry_after_s)
        await self.store.record_load(
            p.model, rec.arrival_s, len(p.prompt_token_ids),
            p.expected_output_tokens or p.predicted_output_tokens or p.sampling.max_tokens)
        log.debug("request %s: queued for %s (%d prompt tokens)", p.request_id, p.model,
                  len(p.prompt_token_ids))
        return p.request_id

    async def stream(self, request_id: str) -> AsyncIterator[Chunk]:
        """Relay the request's token stream; each output index once, in order. Raises a 504
        :class:`ApiError` when a wait runs out (queue, first token, idle, whole request)."""
        st = self.settings
        last_id = "0"
        next_index = 0
        block_ms = 1000
        t0 = last_token = time.monotonic()
        while True:
            try:
                entries, last_id = await self.store.read_tokens(request_id, last_id, block_ms)
            except RedisError as e:  # Redis restarting: keep waiting within the timeouts
                log.warning("request %s: reading tokens failed: %s", request_id, e)
                entries = []
                await asyncio.sleep(0.2)
            now = time.monotonic()
            if not entries:
                if now - t0 > st.request_timeout_s:
                    raise timeout("the request ran out of time", "request_timeout")
                if next_index == 0:
                    if now - t0 > st.first_token_timeout_s:
                        raise timeout("no output in time", "first_token_timeout")
                    if now - t0 > st.queue_timeout_s and await self._queued(request_id):
                        raise timeout("no worker took the request in time", "queue_timeout")
                elif now - last_token > st.idle_timeout_s:
                    raise timeout("the stream stalled", "idle_timeout")
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
            if ids:
                last_token = now
            if ids or finish:
                yield Chunk("".join(text), tuple(ids), start, finish)
            if finish:
                return

    async def _queued(self, request_id: str) -> bool:
        try:
            return await self.store.r.hget(rs.request_key(request_id), "state") == rs.QUEUED
        except RedisError:
            return False

    async def cancel(self, request_id: str, owner: str | None = None) -> bool:
        """Cancel a request wherever it is; True if it existed. ``owner`` (a caller's key id)
        may cancel only its own requests; None is the gateway itself (a client went away)."""
        if owner is not None and owner != await self.store.request_owner(request_id):
            return False  # another key's request, or none: the same answer, no existence leak
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
        self._tokenize.shutdown(wait=False, cancel_futures=True)


_BACKGROUND: set[asyncio.Task[bool]] = set()
