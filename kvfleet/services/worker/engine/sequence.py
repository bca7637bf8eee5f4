"""A request's state inside the engine: tokens, KV pages, seed, detokenizer, stop checks."""

from __future__ import annotations

import secrets

from kvfleet.common.models.tokenizer import Tokenizer
from kvfleet.services.worker.engine.types import EngineRequest


class StopMatcher:
    """Finds stop strings in text that grows at the end, in time linear in the text.

    One Knuth-Morris-Pratt automaton per stop string: after each delta, ``match_start`` is
    where the earliest completed stop string begins, and ``held_back`` is the longest suffix
    of the text that could still grow into one (the output held back from the client).
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._fail = [_failure(s) for s in stops]
        self._state = [0] * len(stops)
        self._pos = 0  # characters fed so far

    def feed(self, delta: str) -> int | None:
        """Feed new text; the start of the earliest stop string completed, or None."""
        best: int | None = None
        for k, s in enumerate(self.stops):
            fail, state, n = self._fail[k], self._state[k], len(s)
            for j, ch in enumerate(delta):
                while state and s[state] != ch:
                    state = fail[state - 1]
                if s[state] == ch:
                    state += 1
                if state == n:
                    start = self._pos + j + 1 - n
                    best = start if best is None else min(best, start)
                    state = fail[state - 1]
                    break
            self._state[k] = state
        self._pos += len(delta)
        return best

    @property
    def held_back(self) -> int:
        return max(self._state, default=0)


def _failure(s: str) -> list[int]:
    """KMP failure function: f[i] = length of the longest proper border of s[: i + 1]."""
    f = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = f[k - 1]
        if s[i] == s[k]:
            k += 1
        f[i] = k
    return f


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
        # Sampled tokens are a pure function of (seed, output index); an unseeded request
        # gets a seed of its own here (the gateway gives every request one, so a resume
        # elsewhere continues the same stream).
        seed = self.sampling.seed
        self.seed: int = seed if seed is not None else secrets.randbits(63)
        self.tokenizer = tokenizer
        self.detok = tokenizer.detokenizer(req.prompt_token_ids) if tokenizer else None
        self.text = ""  # output text decoded so far
        self.num_emitted_chars = 0
        self._stops = StopMatcher(self.sampling.stop)
        if self.detok is not None:
            text = "".join(self.detok.push(t) for t in req.output_token_ids)
            self.restore_text(text, len(text))
        self.finish_reason: str | None = None

    def restore_text(self, text: str, num_emitted_chars: int) -> None:
        """Set the output text decoded so far (a resume or an imported sequence)."""
        self.text = text
        self.num_emitted_chars = num_emitted_chars
        self._stops = StopMatcher(self.sampling.stop)
        self._stops.feed(text)

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
            piece = self.detok.push(token_id)
            self.text += piece
            if sp.stop:
                hit = self._stops.feed(piece)
                if hit is not None:
                    self.text = self.text[:hit]
                    self.finish_reason = "stop"
        if is_eos:
            self.finish_reason = "stop"
        if self.finish_reason is None and (
            self.num_output_tokens >= sp.max_tokens or self.num_tokens >= self.max_context_tokens
        ):
            self.finish_reason = "length"
        safe = len(self.text)
        if self.finish_reason is None and sp.stop:
            safe -= self._stops.held_back
        delta = self.text[self.num_emitted_chars : max(safe, self.num_emitted_chars)]
        self.num_emitted_chars += len(delta)
        return delta
