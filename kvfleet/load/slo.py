"""Service-level objectives: parsing ``--slo`` specs and judging one request against them."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_KEYS = ("ttft", "tpot", "e2el")
_ALIASES = {"e2e": "e2el", "latency": "e2el", "itl": "tpot"}
_VALUE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?\s*$")


class SloSpecError(ValueError):
    """A malformed ``--slo`` value."""


@dataclass(frozen=True, slots=True)
class Slo:
    """Bounds a request must meet to count towards goodput (``None``: not bounded)."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2el_s: float | None = None

    def as_ms(self) -> dict[str, float]:
        return {
            k: round(v * 1000.0, 6)
            for k, v in (("ttft", self.ttft_s), ("tpot", self.tpot_s), ("e2el", self.e2el_s))
            if v is not None
        }

    def met(self, ttft_s: float, tpot_s: float, e2el_s: float) -> bool:
        """Whether a successful request met every bound (inclusive, as vLLM counts)."""
        return (
            (self.ttft_s is None or ttft_s <= self.ttft_s)
            and (self.tpot_s is None or tpot_s <= self.tpot_s)
            and (self.e2el_s is None or e2el_s <= self.e2el_s)
        )


@dataclass(frozen=True, slots=True)
class SloSet:
    """A default SLO plus per-model overrides."""

    default: Slo | None = None
    per_model: Mapping[str, Slo] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.default is None and not self.per_model

    def for_model(self, model: str) -> Slo | None:
        return self.per_model.get(model, self.default)

    def as_dict(self) -> dict[str, object]:
        return {
            "default": self.default.as_ms() if self.default else None,
            "per_model": {m: s.as_ms() for m, s in sorted(self.per_model.items())},
        }


def parse_duration_ms(text: str) -> float:
    """``500``, ``500ms`` or ``0.5s`` -> seconds (a bare number is milliseconds, like vLLM)."""
    m = _VALUE.match(text)
    if not m:
        raise SloSpecError(
            f"bad SLO value {text!r}: expected a number of ms, e.g. 500, 500ms, 0.5s"
        )
    value = float(m.group(1))
    seconds = value if m.group(2) == "s" else value / 1000.0
    if not math.isfinite(seconds) or seconds <= 0:
        raise SloSpecError(f"bad SLO value {text!r}: must be > 0")
    return seconds


def parse_slo(text: str) -> tuple[str | None, Slo]:
    """``[MODEL:]ttft=500ms,tpot=50,e2el=10s`` -> (model or None, Slo)."""
    spec = text.strip()
    first_eq = spec.find("=")
    model: str | None = None
    head = spec[:first_eq] if first_eq > 0 else ""
    if ":" in head:
        model_part, _, key_part = head.rpartition(":")
        model = model_part.strip() or None
        spec = key_part + spec[first_eq:]
    values: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        key, eq, value = part.partition("=")
        key = _ALIASES.get(key.strip().lower(), key.strip().lower())
        if not eq or key not in _KEYS:
            raise SloSpecError(
                f"bad SLO {text!r}: {part!r} is not one of ttft=, tpot=, e2el= "
                "(e.g. --slo ttft=500ms,tpot=50ms or --slo MODEL:ttft=1s)"
            )
        if key in values:
            raise SloSpecError(f"bad SLO {text!r}: {key} given twice")
        values[key] = parse_duration_ms(value)
    return model, Slo(
        ttft_s=values.get("ttft"), tpot_s=values.get("tpot"), e2el_s=values.get("e2el")
    )


def parse_slos(texts: Iterable[str]) -> SloSet:
    """Several ``--slo`` values: at most one without a model, at most one per model."""
    default: Slo | None = None
    per_model: dict[str, Slo] = {}
    for text in texts:
        model, slo = parse_slo(text)
        if model is None:
            if default is not None:
                raise SloSpecError("more than one --slo without a model")
            default = slo
        else:
            if model in per_model:
                raise SloSpecError(f"more than one --slo for model {model!r}")
            per_model[model] = slo
    return SloSet(default=default, per_model=per_model)
