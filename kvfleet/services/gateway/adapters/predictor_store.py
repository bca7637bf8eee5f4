"""The online length predictor with its counts shared through Redis by every gateway.

Each gateway predicts from its local copy of the counts, adds what it observes both locally
and to Redis (``HINCRBY``), and re-reads a model's counts from Redis when they are older
than ``sync_s``, so every replica learns from every completed request within seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from kvfleet.common import redis_schema as rs
from kvfleet.common.redis_store import RedisStore
from kvfleet.services.gateway.core.length_predictor import (
    LengthQuery,
    OnlineLengthPredictor,
    length_bin,
    prompt_bucket,
)

log = logging.getLogger(__name__)


class SharedLengthPredictor:
    def __init__(self, store: RedisStore, predictor: OnlineLengthPredictor, sync_s: float) -> None:
        self.store = store
        self.core = predictor
        self.sync_s = sync_s
        self._synced_at: dict[str, float] = {}

    @property
    def name(self) -> str:
        return self.core.name

    async def predict(self, q: LengthQuery) -> int:
        await self._fresh(q.model)
        return self.core.predict(q)

    async def expect(self, q: LengthQuery) -> int:
        await self._fresh(q.model)
        return self.core.expect(q)

    async def _fresh(self, model: str) -> None:
        """Re-read ``model``'s counts from Redis when the local copy is older than sync_s."""
        if time.monotonic() - self._synced_at.get(model, -1e9) > self.sync_s:
            await self.sync(model)

    async def sync(self, model: str) -> None:
        raw = await self.store.r.hgetall(rs.predictor_key(model))
        cells = {}
        for name, count in raw.items():
            try:
                cells[rs.parse_predictor_field(name)] = int(count)
            except ValueError:
                log.warning("predictor %s: unreadable field %r", model, name)
        self.core.replace(model, cells)
        self._synced_at[model] = time.monotonic()

    async def observe(self, model: str, num_prompt_tokens: int, num_output_tokens: int) -> None:
        if num_output_tokens < 1:
            return
        self.core.observe(model, num_prompt_tokens, num_output_tokens)
        field = rs.predictor_field(prompt_bucket(num_prompt_tokens), length_bin(num_output_tokens))
        await self.store.r.hincrby(rs.predictor_key(model), field, 1)

    async def warm_start(self, model: str, samples: Iterable[tuple[int, int]]) -> int:
        """Add ``(prompt tokens, output tokens)`` samples once per fleet: the first gateway to
        claim the model's warm-start marker writes them; the others do nothing. Returns how
        many samples this call wrote."""
        if not await self.store.r.set(rs.predictor_warm_key(model), "1", nx=True):
            return 0
        cells: dict[str, int] = {}
        for prompt, output in samples:
            if output >= 1:
                f = rs.predictor_field(prompt_bucket(prompt), length_bin(output))
                cells[f] = cells.get(f, 0) + 1
        async with self.store.r.pipeline(transaction=False) as p:
            for f, n in cells.items():
                p.hincrby(rs.predictor_key(model), f, n)
            await p.execute()
        await self.sync(model)
        return sum(cells.values())
