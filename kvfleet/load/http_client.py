"""Client for OpenAI-compatible servers: streaming ``/v1/completions`` over SSE.

Output length is forced to the workload's with ``max_tokens`` plus a way to ignore EOS. Servers
differ in that: vLLM and SGLang take ``ignore_eos``; ``transformers serve`` rejects it but takes
a ``generation_config`` JSON with ``min_new_tokens``. ``length_control="auto"`` probes the
server once (a one-token request, which also warms it up) and picks what it accepts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Literal

import httpx

from kvfleet.common.http_api import PREDICTED_OUTPUT_TOKENS_HEADER
from kvfleet.load.client import ChunkTimer, Outcome, Prepared
from kvfleet.load.target import Target, TargetError

log = logging.getLogger(__name__)

LengthControl = Literal["auto", "ignore_eos", "generation_config", "none"]


class HttpClient:
    name = "openai-http"

    def __init__(
        self,
        target: Target,
        length_control: LengthControl = "auto",
        api_key: str | None = None,
        request_timeout_s: float = 600.0,
        count_tokens: Callable[[str], int] | None = None,
        max_connections: int = 1024,
        send_slo: bool = False,
    ) -> None:
        """``send_slo``: put each request's SLO in the body as kvfleet's ``slo`` extension,
        where ``check`` finds the server is a kvfleet gateway (other servers may refuse it)."""
        self.target = target
        self.url = f"{target.base_url}/completions"
        self.length_control: LengthControl = length_control
        self.count_tokens = count_tokens
        self.send_slo = send_slo
        self.kvfleet_server = False  # set by check()
        #: how output tokens were counted: the server's ``usage``, our tokenizer, or chunks
        self.token_count_source: dict[str, int] = {"usage": 0, "tokenizer": 0, "chunks": 0}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(request_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64),
            trust_env=False,
        )

    def body(
        self, prompt: str, model: str, max_tokens: int, req: Prepared | None = None
    ) -> dict[str, object]:
        body: dict[str, object] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
        }
        if self.length_control == "ignore_eos":
            body["ignore_eos"] = True
            body["stream_options"] = {"include_usage": True}
        if self.send_slo and self.kvfleet_server and req is not None:
            slo = {"ttft_s": req.ttft_slo_s, "tpot_s": req.tpot_slo_s}
            if any(v is not None for v in slo.values()):
                body["slo"] = {k: v for k, v in slo.items() if v is not None}
        if self.length_control == "generation_config":
            body["generation_config"] = json.dumps(
                {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False}
            )
        return body

    async def check(self, timeout_s: float, model: str = "") -> None:
        """Reachable, and accepts a streaming completion; settles ``length_control``."""
        modes: list[LengthControl] = (
            ["ignore_eos", "generation_config"]
            if self.length_control == "auto"
            else [self.length_control]
        )
        last = ""
        for mode in modes:
            self.length_control = mode
            try:
                resp = await self._http.post(
                    self.url,
                    json={**self.body("Hello", model, 1), "stream": False},
                    timeout=timeout_s,
                )
            except httpx.HTTPError as exc:
                raise TargetError(f"cannot reach {self.target}: {_describe(exc)}") from None
            if resp.status_code < 300:
                log.info("%s accepts %s for exact output lengths", self.target, mode)
                self.kvfleet_server = PREDICTED_OUTPUT_TOKENS_HEADER in resp.headers
                return
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
            if resp.status_code not in (400, 422):
                break
        raise TargetError(f"{self.target} refused a completion request ({last})")

    async def send(self, req: Prepared, model: str) -> Outcome:
        timer = ChunkTimer()
        text_parts: list[str] = []
        usage_tokens: int | None = None
        finish = ""
        try:
            async with self._http.stream(
                "POST", self.url,
                json=self.body(req.prompt_text, model, req.spec.output_tokens, req),
            ) as resp:
                if resp.status_code >= 300:
                    detail = (await resp.aread()).decode(errors="replace")[:300]
                    return Outcome(timer, False, error=f"HTTP {resp.status_code}: {detail}")
                predicted = resp.headers.get(PREDICTED_OUTPUT_TOKENS_HEADER)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    obj = json.loads(data)
                    if "error" in obj:
                        return Outcome(timer, False, error=f"server error: {obj['error']}")
                    for choice in obj.get("choices") or ():
                        if choice.get("text"):
                            timer.chunk()
                            text_parts.append(choice["text"])
                        finish = choice.get("finish_reason") or finish
                    if obj.get("usage"):
                        usage_tokens = int(obj["usage"].get("completion_tokens") or 0)
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            return Outcome(timer, False, output_tokens=timer.tokens, error=_describe(exc))
        if timer.first is None:
            return Outcome(timer, False, error="no output before the stream ended")
        if usage_tokens is not None:
            n, source = usage_tokens, "usage"
        elif self.count_tokens is not None:
            n, source = self.count_tokens("".join(text_parts)), "tokenizer"
        else:
            n, source = timer.tokens, "chunks"
        self.token_count_source[source] += 1
        return Outcome(timer, True, output_tokens=n, finish_reason=finish,
                       predicted_output_tokens=int(predicted) if predicted else None)

    async def close(self) -> None:
        await self._http.aclose()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return f"{type(exc).__name__}: {text}"
