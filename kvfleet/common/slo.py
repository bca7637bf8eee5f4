"""A request's service level: its latency targets and priority class.

Per-model defaults come from the fleet config; a request may override them at either door
(gRPC ``service_level``, or the OpenAI body's ``slo`` and ``priority`` extension fields). The
resolved service level travels with the request to the worker's batch policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

PRIORITIES = ("high", "normal", "low")
"""Priority classes, most urgent first; a class's index is its rank (lower runs earlier)."""
NORMAL = PRIORITIES.index("normal")
MAX_TTFT_SLO_S = 3600.0
MAX_TPOT_SLO_S = 600.0


class SloError(ValueError):
    """A service-level value is out of range."""


def priority_rank(name: str) -> int:
    try:
        return PRIORITIES.index(name)
    except ValueError:
        raise SloError(
            f"priority must be one of {', '.join(PRIORITIES)}, got {name!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class ServiceLevel:
    """Targets for one request. ``None`` means "no target" (or, before :meth:`resolved`,
    "take the model's default")."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    priority: int | None = None

    def validate(self) -> None:
        for name, value, limit in (
            ("ttft_s", self.ttft_s, MAX_TTFT_SLO_S),
            ("tpot_s", self.tpot_s, MAX_TPOT_SLO_S),
        ):
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0.0 < value <= limit
            ):
                raise SloError(f"slo {name} must be in (0, {limit:g}] seconds, got {value!r}")
        if self.priority is not None and (
            isinstance(self.priority, bool)
            or not isinstance(self.priority, int)
            or not 0 <= self.priority < len(PRIORITIES)
        ):
            raise SloError(f"priority must be a rank in [0, {len(PRIORITIES)}), got {self.priority!r}")

    def resolved(self, default: ServiceLevel | None) -> ServiceLevel:
        """Unset fields taken from ``default``; the priority is always set afterwards."""
        d = default or ServiceLevel()
        priority = self.priority if self.priority is not None else d.priority
        return ServiceLevel(
            self.ttft_s if self.ttft_s is not None else d.ttft_s,
            self.tpot_s if self.tpot_s is not None else d.tpot_s,
            NORMAL if priority is None else priority,
        )

    @property
    def rank(self) -> int:
        """The priority rank, normal when unset."""
        return NORMAL if self.priority is None else self.priority

    @property
    def priority_name(self) -> str:
        return PRIORITIES[self.rank]

    def to_dict(self) -> dict[str, Any]:
        return {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "priority": self.priority}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ServiceLevel:
        d = d or {}
        return cls(d.get("ttft_s"), d.get("tpot_s"), d.get("priority"))
