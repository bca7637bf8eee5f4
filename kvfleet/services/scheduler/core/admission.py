"""Admission: the bound on a model's scheduler queue. Pure.

Requests no worker has room for wait in the scheduler's queue. Each model's queue holds at
most ``max_requests`` requests and ``max_tokens`` prompt tokens; past either, the gateway
answers 429 with ``Retry-After`` (the simulator records the request as refused). A request
already accepted is never refused later: one requeued after its worker died counts again
without being checked.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_QUEUED_REQUESTS = 1024
DEFAULT_MAX_QUEUED_TOKENS = 4_000_000
MAX_QUEUED_REQUESTS_LIMIT = 100_000
"""The largest per-model request bound a fleet may configure. The queue streams' MAXLEN
(``redis_schema.QUEUE_MAXLEN``) is at least ten times this, which is what makes trimming
unable to drop an accepted request (see there)."""


@dataclass(frozen=True, slots=True)
class QueueDepth:
    requests: int = 0
    tokens: int = 0

    def add(self, tokens: int) -> QueueDepth:
        return QueueDepth(self.requests + 1, self.tokens + tokens)

    def remove(self, tokens: int) -> QueueDepth:
        return QueueDepth(self.requests - 1, self.tokens - tokens)


@dataclass(frozen=True, slots=True)
class QueueBound:
    max_requests: int
    max_tokens: int

    def admits(self, depth: QueueDepth, tokens: int) -> bool:
        """Whether a request of ``tokens`` prompt tokens may join a queue at ``depth``. An
        empty queue takes any one request, however long (the worker judges its length)."""
        if depth.requests == 0:
            return self.max_requests > 0
        return depth.requests < self.max_requests and depth.tokens + tokens <= self.max_tokens
