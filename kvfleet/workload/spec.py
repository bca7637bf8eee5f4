"""The unit of load: one request to send, as a frozen record."""

from __future__ import annotations

from dataclasses import dataclass, replace

#: Tokens per prefix block in Mooncake's ``hash_ids`` (the publisher's block size).
PREFIX_BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a workload.

    ``arrival_s`` is the send time relative to the start of the run. ``hash_ids`` are the
    prompt's prefix blocks (``PREFIX_BLOCK_TOKENS`` tokens each) when the trace records them:
    equal ids mean an equal prompt prefix, so prompt builders and simulators can reproduce
    prefix reuse. ``client`` names the tenant that sent it, when known.
    """

    request_id: str
    arrival_s: float
    model: str
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()
    client: str = ""

    def __post_init__(self) -> None:
        if self.input_tokens < 1:
            raise ValueError(f"request {self.request_id}: input_tokens must be >= 1")
        if self.output_tokens < 1:
            raise ValueError(f"request {self.request_id}: output_tokens must be >= 1")
        if self.arrival_s < 0:
            raise ValueError(f"request {self.request_id}: arrival_s must be >= 0")

    def with_(self, **changes: object) -> RequestSpec:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]
