"""One entry point per kind of workload source, taking names as written on a command line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvfleet.workload.paths import resolve_trace
from kvfleet.workload.readers import read_trace
from kvfleet.workload.servegen import generate_pool, load_pool
from kvfleet.workload.spec import RequestSpec


def is_servegen(name: str) -> bool:
    return name.startswith("servegen:") or name.endswith(".tar.gz")


def load_trace(name: str, model: str | None = None, spread_ties: bool = False) -> list[RequestSpec]:
    """A per-request trace by path, or by path relative to the traces folder
    (``azure_llm_2023/AzureLLMInferenceTrace_conv.csv``)."""
    return read_trace(resolve_trace(name), model=model, spread_ties=spread_ties)


def parse_pool(text: str) -> tuple[str, float, float]:
    """``POOL[@OFFSET_S][*SCALE]`` -> (pool, offset seconds, rate scale)."""
    name, scale = text, 1.0
    if "*" in name:
        name, _, raw = name.partition("*")
        try:
            scale = float(raw)
        except ValueError:
            raise ValueError(f"ServeGen pool {text!r}: bad rate scale {raw!r}") from None
        if scale <= 0:
            raise ValueError(f"ServeGen pool {text!r}: the rate scale must be > 0")
    offset = 0.0
    if "@" in name:
        name, _, raw = name.partition("@")
        try:
            offset = float(raw)
        except ValueError:
            raise ValueError(f"ServeGen pool {text!r}: bad start offset {raw!r}") from None
        if offset < 0:
            raise ValueError(f"ServeGen pool {text!r}: the start offset must be >= 0")
    return name.strip(), offset, scale


def load_servegen(
    pools: Sequence[str],
    models: Sequence[str] | None,
    start_s: float,
    duration_s: float,
    rate_scale: float = 1.0,
    seed: int = 0,
) -> list[RequestSpec]:
    """Requests from one or more ServeGen pools, pool ``k`` sent to ``models[k]``.

    Each pool is one model of a multi-model workload; ``rate_scale`` scales every pool's rate
    (the published rates are far beyond a small test fleet). A pool may be written
    ``POOL@OFFSET*SCALE`` (both optional): its slice starts ``OFFSET`` seconds later in the
    pool's own time (another hour or day of its diurnal pattern) and its rate is further
    scaled by ``SCALE``, so one pool can stand for several models of different loads.
    """
    if models is not None and len(models) != len(pools):
        raise ValueError(f"{len(pools)} ServeGen pools but {len(models)} model names")
    merged: list[RequestSpec] = []
    for k, text in enumerate(pools):
        name, offset_s, scale = parse_pool(text)
        rng = np.random.default_rng([seed, k])
        pool = load_pool(name)
        merged.extend(
            generate_pool(
                pool,
                start_s + offset_s,
                duration_s,
                rng,
                rate_scale=rate_scale * scale,
                model=models[k] if models else None,
            )
        )
    merged.sort(key=lambda s: s.arrival_s)
    return [s.with_(request_id=f"r{n}") for n, s in enumerate(merged)]
