"""One tokenizer per served model, loaded on first use and shared by all requests."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


class TokenizerCache:
    def __init__(self) -> None:
        self._tokenizers: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, model: str) -> Any:
        tok = self._tokenizers.get(model)
        if tok is not None:
            return tok
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            tok = self._tokenizers.get(model)
            if tok is None:
                from kvfleet.common.models import load_tokenizer

                log.info("loading tokenizer for %s", model)
                tok = await asyncio.get_running_loop().run_in_executor(None, load_tokenizer, model)
                self._tokenizers[model] = tok
        return tok
