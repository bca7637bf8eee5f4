"""What the service stack adds around the engines, as the simulator applies it.

A live request does not reach an engine the moment the client sends it, nor the client the
moment a token is sampled. ``kvfleet bench gateway`` measures each hop on a running stack
(``--json`` writes them under ``"overheads"``), and the simulator applies them when given
(``kvfleet sim --overheads FILE``; off by default, so GPU-scale runs pay nothing):

| hop | live | simulated |
| --- | --- | --- |
| ``front_s`` (+ ``front_per_token_s`` x prompt tokens) | the gateway parses, tokenizes, predicts the length, enqueues | the request joins the scheduler's queue this much after its arrival |
| ``queue_hop_s`` | the idle scheduler's blocking read returns the new entry | added to the above |
| ``tick_s`` | while requests wait, the scheduler polls on this period (no wake-up on a finish) | a dispatch runs at once when the scheduler is idle, else at its next poll |
| ``assign_s`` | the Assign call until the worker's engine holds the request | the request reaches the worker this much after the decision; the scheduler waits for it |
| ``heartbeat_min_s``, ``heartbeat_s`` | a worker writes its occupancy after a step at most every ``heartbeat_min_s``, and every ``heartbeat_s`` regardless | a worker's report is published at a step boundary only when ``heartbeat_min_s`` has passed, else at its next heartbeat |
| ``step_extra_s`` | a live worker's step costs more than the engine's alone (token publishing and heartbeats on the same process) | added to every simulated step |
| ``relay_s`` | a token goes worker -> Redis -> gateway -> client | added to the client's first-token and finish times |

Plain data; the simulator reads the fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class StackOverheads:
    """Seconds each hop of the live stack adds (see the module docstring)."""

    front_s: float = 0.0
    front_per_token_s: float = 0.0
    queue_hop_s: float = 0.0
    tick_s: float = 0.02
    assign_s: float = 0.0
    heartbeat_min_s: float = 0.0
    heartbeat_s: float = 0.25
    step_extra_s: float = 0.0
    relay_s: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "source":
                continue
            v = getattr(self, f.name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"overheads: {f.name} must be a number >= 0, got {v!r}")
        if self.tick_s <= 0 or self.heartbeat_s <= 0:
            raise ValueError("overheads: tick_s and heartbeat_s must be > 0")

    def intake_s(self, num_prompt_tokens: int) -> float:
        """From the client's send to the scheduler's queue."""
        return self.front_s + self.front_per_token_s * num_prompt_tokens + self.queue_hop_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> StackOverheads:
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = set(d) - known - {"source"}
        if unknown:
            raise ValueError(f"overheads {source}: unknown fields {', '.join(sorted(unknown))}")
        try:
            values = {k: float(v) for k, v in d.items() if k in known}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"overheads {source}: {exc}") from exc
        return cls(**values, source=source)


def load_overheads(path: Path | str) -> StackOverheads:
    """Read a ``kvfleet bench gateway --json`` file (its ``overheads``) or a bare mapping."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read overheads {path}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("overheads"), dict):
        data = data["overheads"]
    if not isinstance(data, dict):
        raise ValueError(f"overheads {path}: expected a JSON object")
    return StackOverheads.from_dict(data, str(path))
