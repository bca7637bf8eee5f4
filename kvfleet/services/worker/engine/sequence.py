"""A request's state inside the engine: tokens, KV pages, RNG, detokenizer, stop checks."""

from __future__ import annotations

import torch

from kvfleet.common.models.tokenizer import Tokenizer
from kvfleet.services.worker.engine.types import EngineRequest


class Sequence:
    def __init__(
        self, req: EngineRequest, order: int, tokenizer: Tokenizer | None, max_context_tokens: int
    ) -> None:
        self.req = req
        self.seq_id = req.request_id
        self.model = req.model
        self.order = order
        self.sampling = req.sampling
        self.num_prompt_tokens = len(req.prompt_token_ids)
        self.tokens: list[int] = list(req.prompt_token_ids) + list(req.output_token_ids)
        self.num_computed = 0
        self.pages: list[int] = []
        self.max_context_tokens = max_context_tokens
        self.generator: torch.Generator | None = None
        if self.sampling.temperature > 0:
            self.generator = torch.Generator()
            if self.sampling.seed is not None:
                self.generator.manual_seed(self.sampling.seed)
            else:
                self.generator.seed()
        self.tokenizer = tokenizer
        self.detok = tokenizer.detokenizer(req.prompt_token_ids) if tokenizer else None
        self.text = ""  # output text decoded so far
        self.num_emitted_chars = 0
        if self.detok is not None:
            for t in req.output_token_ids:
                self.text += self.detok.push(t)
            self.num_emitted_chars = len(self.text)
        self.finish_reason: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_output_tokens(self) -> int:
        return len(self.tokens) - self.num_prompt_tokens

    def append(self, token_id: int, eos_ids: tuple[int, ...]) -> str:
        """Add a generated token; set ``finish_reason`` when it ends the request; return the
        text delta to emit."""
        self.tokens.append(token_id)
        sp = self.sampling
        is_eos = (token_id in sp.stop_token_ids) or (not sp.ignore_eos and token_id in eos_ids)
        if self.detok is not None and not is_eos:
            self.text += self.detok.push(token_id)
        if is_eos:
            self.finish_reason = "stop"
        if sp.stop and self.finish_reason is None:
            start = max(0, self.num_emitted_chars - max(len(s) for s in sp.stop))
            hits = [i for i in (self.text.find(s, start) for s in sp.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish_reason = "stop"
        if self.finish_reason is None and (
            self.num_output_tokens >= sp.max_tokens or self.num_tokens >= self.max_context_tokens
        ):
            self.finish_reason = "length"
        safe = len(self.text)
        if self.finish_reason is None and sp.stop:
            safe -= _held_back(self.text, sp.stop)
        delta = self.text[self.num_emitted_chars : max(safe, self.num_emitted_chars)]
        self.num_emitted_chars += len(delta)
        return delta


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that starts a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-n:]):
                best = n
                break
    return best
