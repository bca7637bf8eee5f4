"""Synthetic multi-model load: each model with its own arrivals and length mix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from kvfleet.workload.arrivals import ArrivalSpec, generate_arrivals
from kvfleet.workload.lengths import LengthDist
from kvfleet.workload.spec import RequestSpec


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """The load sent to one model."""

    model: str
    arrivals: ArrivalSpec
    input_len: LengthDist
    output_len: LengthDist


_ARRIVAL_KEYS = {f.name for f in fields(ArrivalSpec)} | {"arrivals"}


def parse_model_load(text: str, defaults: ModelLoad | None = None) -> ModelLoad:
    """``MODEL:rate=2,arrivals=gamma,cv=3,input=128,output=32-64,spike_rate=8,...``.

    Keys not given come from ``defaults`` (the command line's global options). ``arrivals``
    picks the process; the other arrival keys are the fields of :class:`ArrivalSpec`.
    """
    model, sep, rest = text.partition(":")
    model = model.strip()
    if not model:
        raise ValueError(f"bad model load {text!r}: expected MODEL[:key=value,...]")
    arr: dict[str, object] = {}
    input_len = defaults.input_len if defaults else None
    output_len = defaults.output_len if defaults else None
    for part in filter(None, (p.strip() for p in rest.split(","))) if sep else ():
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise ValueError(f"bad model load {text!r}: {part!r} is not key=value")
        if key == "input":
            input_len = LengthDist.parse(value)
        elif key == "output":
            output_len = LengthDist.parse(value)
        elif key in _ARRIVAL_KEYS:
            if key == "arrivals":
                arr["process"] = value.strip()
            else:
                try:
                    arr[key] = value.strip() if key == "process" else float(value)
                except ValueError:
                    raise ValueError(f"bad model load {text!r}: {key} needs a number") from None
        else:
            known = ", ".join(sorted(_ARRIVAL_KEYS | {"input", "output"}))
            raise ValueError(f"bad model load {text!r}: unknown key {key!r} (known: {known})")
    if input_len is None or output_len is None:
        raise ValueError(f"model load {text!r} needs input= and output= lengths")
    base = defaults.arrivals if defaults else ArrivalSpec(rate=1.0)
    values = {f.name: getattr(base, f.name) for f in fields(ArrivalSpec)}
    values.update(arr)
    return ModelLoad(model, ArrivalSpec(**values), input_len, output_len)  # type: ignore[arg-type]


def generate_mix(loads: Sequence[ModelLoad], duration_s: float, seed: int = 0) -> list[RequestSpec]:
    """Requests of all ``loads`` over ``[0, duration_s)``, merged in arrival order.

    Each model draws from its own generator (seeded from ``seed`` and its position), so adding
    a model leaves the others' requests unchanged.
    """
    rows: list[tuple[float, int, str, int, int]] = []
    for k, load in enumerate(loads):
        rng = np.random.default_rng([seed, k])
        times = generate_arrivals(load.arrivals, duration_s, rng)
        ins = load.input_len.sample(rng, len(times))
        outs = load.output_len.sample(rng, len(times))
        rows.extend(
            (float(t), k, load.model, int(i), int(o))
            for t, i, o in zip(times, ins, outs, strict=True)
        )
    rows.sort(key=lambda r: (r[0], r[1]))
    return [
        RequestSpec(request_id=f"r{n}", arrival_s=t, model=model, input_tokens=i, output_tokens=o)
        for n, (t, _, model, i, o) in enumerate(rows)
    ]
