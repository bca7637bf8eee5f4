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
| ``step_extra_s`` | a live worker's step costs more CPU than the engine's alone (token publishing and heartbeats on the same process), in seconds of a core of its own | added to every simulated step |
| ``relay_s`` | a token goes worker -> Redis -> gateway -> client | added to the client's first-token and finish times |

On a CPU the workers also share the machine's cores with each other, with the stack's other
processes and with whatever else runs there. With ``cpu_cores`` set, a step takes its
calibrated time divided by the share of a core each worker thread gets while it runs:

    share = min(1, cpu_cores / (busy workers x worker_threads + stack_cores + background_threads))

and multiplied by ``calibration_share``, the share the engine had while its step times were
measured (1 for a step model fitted to CPU time, as ``kvfleet bench engine --sweep``'s is; a
wall-time calibration taken on a busy machine has less); ``step_extra_s`` is divided by the
share alone. ``stack_cores`` is what the
gateway, scheduler, planner, Redis and the client use on average; ``background_threads`` the
other runnable threads on a shared machine (``kvfleet.load.machine`` measures both). A run of
decode steps in progress is cut at its next step when the number of busy workers changes.

Plain data; the simulator reads the fields.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
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
    cpu_cores: float = 0.0  # 0: workers do not share cores (a GPU fleet)
    worker_threads: float = 1.0
    stack_cores: float = 0.0
    background_threads: float = 0.0
    #: ``(time_s, threads)``: the background from each time on (before the first: the above)
    background_series: tuple[tuple[float, float], ...] = ()
    calibration_share: float = 1.0
    source: str = ""

    def __post_init__(self) -> None:
        series = tuple((float(t), float(b)) for t, b in self.background_series)
        object.__setattr__(self, "background_series", series)
        if any(not (math.isfinite(t) and math.isfinite(b) and b >= 0) for t, b in series) or \
                any(a[0] > b[0] for a, b in zip(series, series[1:], strict=False)):
            raise ValueError("overheads: background_series needs (time, threads >= 0) in order")
        for f in fields(self):
            if f.name in ("source", "background_series"):
                continue
            v = getattr(self, f.name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"overheads: {f.name} must be a number >= 0, got {v!r}")
        if self.tick_s <= 0 or self.heartbeat_s <= 0:
            raise ValueError("overheads: tick_s and heartbeat_s must be > 0")
        if not 0 < self.calibration_share <= 1 or self.worker_threads <= 0:
            raise ValueError("overheads: calibration_share must be in (0, 1], worker_threads > 0")

    def background_at(self, now_s: float) -> float:
        i = bisect_right(self.background_series, (now_s, math.inf))
        return self.background_series[i - 1][1] if i else self.background_threads

    def cpu_factor(self, busy_workers: int, now_s: float = 0.0) -> float:
        """How much longer than calibrated a step takes with ``busy_workers`` stepping."""
        if self.cpu_cores <= 0:
            return 1.0
        demand = (busy_workers * self.worker_threads + self.stack_cores
                  + (self.background_at(now_s) if self.background_series
                     else self.background_threads))
        share = min(1.0, self.cpu_cores / demand) if demand > 0 else 1.0
        return self.calibration_share / share

    def intake_s(self, num_prompt_tokens: int) -> float:
        """From the client's send to the scheduler's queue."""
        return self.front_s + self.front_per_token_s * num_prompt_tokens + self.queue_hop_s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["background_series"] = [list(p) for p in self.background_series]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> StackOverheads:
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = set(d) - known - {"source"}
        if unknown:
            raise ValueError(f"overheads {source}: unknown fields {', '.join(sorted(unknown))}")
        try:
            values: dict[str, Any] = {k: float(v) for k, v in d.items()
                                      if k in known and k != "background_series"}
            values["background_series"] = tuple(
                (float(t), float(b)) for t, b in d.get("background_series") or ())
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
