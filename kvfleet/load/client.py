"""What every load client shares: the request it sends, and the timing of its output chunks,
measured at the client with a monotonic clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from kvfleet.workload.spec import RequestSpec


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request ready to send: its spec plus the prompt as ids and as text."""

    spec: RequestSpec
    prompt_ids: tuple[int, ...]
    prompt_text: str
    ttft_slo_s: float | None = None  # sent to servers that take an SLO (kvfleet)
    tpot_slo_s: float | None = None


@dataclass(slots=True)
class ChunkTimer:
    """Records when output chunks arrive. Only chunks that carry output count (a final chunk
    with just a finish reason or usage does not), so TTFT/ITL follow the tokens themselves."""

    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0

    def chunk(self, num_tokens: int = 1, now: float | None = None) -> None:
        t = time.perf_counter() if now is None else now
        if self.first is None:
            self.first = t
        else:
            assert self.last is not None
            self.gaps.append(t - self.last)
        self.last = t
        self.tokens += num_tokens

    @property
    def ttft_s(self) -> float | None:
        return None if self.first is None else self.first - self.start

    @property
    def e2el_s(self) -> float | None:
        return None if self.last is None else self.last - self.start


@dataclass(slots=True)
class Outcome:
    """What a client reports about one request."""

    timer: ChunkTimer
    success: bool
    output_tokens: int = 0
    error: str = ""
    finish_reason: str = ""
    predicted_output_tokens: int | None = None


class LoadClient(Protocol):
    """Sends requests to one target. ``check`` fails with a clear message if it is down."""

    name: str

    async def check(self, timeout_s: float, model: str = "") -> None: ...

    async def send(self, req: Prepared, model: str) -> Outcome: ...

    async def close(self) -> None: ...
