"""Shaping a workload for a run: slice, speed up, cap lengths, cap the count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kvfleet.workload.spec import PREFIX_BLOCK_TOKENS, RequestSpec


@dataclass(frozen=True, slots=True)
class Shaping:
    """How a trace is cut and scaled; recorded in the results of a run.

    start_s / duration_s: the slice ``[start_s, start_s + duration_s)`` in trace time.
    speed: arrivals are replayed ``speed`` times faster (2.0 halves every gap).
    length_scale: every input and output length is multiplied by it (rounded, at least 1)
    before the caps, to study longer requests than a trace has (MELL scales chat lengths by
    10).
    max_input / max_output: token caps to fit small models (``None``: no cap).
    max_requests: keep at most this many requests (``None``: all).
    model: renames every request's model (``None``: keep the trace's names).
    """

    start_s: float = 0.0
    duration_s: float | None = None
    speed: float = 1.0
    length_scale: float = 1.0
    max_input: int | None = None
    max_output: int | None = None
    max_requests: int | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if self.start_s < 0:
            raise ValueError(f"start must be >= 0, got {self.start_s}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration must be > 0, got {self.duration_s}")
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")
        if not self.length_scale > 0:
            raise ValueError(f"length_scale must be > 0, got {self.length_scale}")
        for name in ("max_input", "max_output", "max_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def shape(specs: Sequence[RequestSpec], shaping: Shaping) -> list[RequestSpec]:
    """Apply ``shaping``; arrival times restart at 0 at ``start_s`` (gaps kept, then scaled)."""
    end = None if shaping.duration_s is None else shaping.start_s + shaping.duration_s
    out: list[RequestSpec] = []
    for spec in specs:
        if spec.arrival_s < shaping.start_s or (end is not None and spec.arrival_s >= end):
            continue
        input_tokens = spec.input_tokens
        output_tokens = spec.output_tokens
        if shaping.length_scale != 1.0:
            input_tokens = max(1, round(input_tokens * shaping.length_scale))
            output_tokens = max(1, round(output_tokens * shaping.length_scale))
        if shaping.max_input is not None:
            input_tokens = min(input_tokens, shaping.max_input)
        if shaping.max_output is not None:
            output_tokens = min(output_tokens, shaping.max_output)
        hash_ids = spec.hash_ids
        if hash_ids and input_tokens != spec.input_tokens:
            hash_ids = hash_ids[: -(-input_tokens // PREFIX_BLOCK_TOKENS)]
        out.append(
            spec.with_(
                request_id=f"r{len(out)}",
                arrival_s=(spec.arrival_s - shaping.start_s) / shaping.speed,
                model=shaping.model or spec.model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                hash_ids=hash_ids,
            )
        )
        if shaping.max_requests is not None and len(out) >= shaping.max_requests:
            break
    return out
