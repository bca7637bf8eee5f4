"""Summary figures of a workload, defined as in the traces README."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kvfleet.workload.spec import RequestSpec


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    num_requests: int
    span_s: float
    mean_rate: float
    mean_input_tokens: float
    p50_input_tokens: float
    p99_input_tokens: float
    mean_output_tokens: float
    p50_output_tokens: float
    p99_output_tokens: float
    peak_to_mean_1min: float
    iat_cv: float
    models: tuple[str, ...]


def workload_stats(specs: Sequence[RequestSpec]) -> WorkloadStats:
    """Counts, span, rate (requests / (last - first arrival)), lengths, burstiness."""
    if not specs:
        raise ValueError("empty workload")
    t = np.asarray([s.arrival_s for s in specs], dtype=float)
    ins = np.asarray([s.input_tokens for s in specs], dtype=float)
    outs = np.asarray([s.output_tokens for s in specs], dtype=float)
    span = float(t.max() - t.min())
    iat = np.diff(np.sort(t))
    counts = np.bincount(((t - t.min()) // 60.0).astype(int))
    return WorkloadStats(
        num_requests=len(specs),
        span_s=span,
        mean_rate=len(specs) / span if span > 0 else float("inf"),
        mean_input_tokens=float(ins.mean()),
        p50_input_tokens=float(np.percentile(ins, 50)),
        p99_input_tokens=float(np.percentile(ins, 99)),
        mean_output_tokens=float(outs.mean()),
        p50_output_tokens=float(np.percentile(outs, 50)),
        p99_output_tokens=float(np.percentile(outs, 99)),
        peak_to_mean_1min=float(counts.max() / counts.mean()),
        iat_cv=float(iat.std() / iat.mean()) if len(iat) and iat.mean() > 0 else 0.0,
        models=tuple(sorted({s.model for s in specs})),
    )
