"""Per-request records -> the summary of a run, with vLLM ``bench serve``'s definitions.

- TTFT: from sending the request to the first output chunk.
- TPOT (per request, only when it produced more than one token):
  ``(e2el - ttft) / (output_tokens - 1)``; for goodput a one-token request counts as TPOT 0.
- ITL: every gap between consecutive output chunks, pooled over all requests.
- E2EL: from sending the request to its last chunk.
- Normalised latency (SeaLLM, AlpaServe): a request's E2E latency divided by its latency alone
  on an idle worker (``isolated_s``, when the record has one: the simulator's cost model, or
  the load generator's probe of the idle stack); reported as its mean and p99.
- Throughputs and goodput divide by the run's duration; goodput counts the successful requests
  that met their SLO. SLO attainment (per model and overall) is the share of *all* requests
  sent, failed ones included, that succeeded and met their SLO.

Pure: no clock, no network; the load client and the simulator both feed it records.
Undefined statistics (no successful request, no multi-token output) are ``None`` (JSON null).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kvfleet.load.slo import SloSet

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What the client saw of one request. Times are seconds from the start of the run.

    ``scheduled_s`` is when the workload asked for it to be sent, ``start_s`` when it was.
    ``ttft_s``/``e2el_s`` are measured from ``start_s``. ``itl_s`` holds the gaps between
    consecutive output chunks. ``output_tokens`` is the number of tokens generated.
    """

    request_id: str
    model: str
    scheduled_s: float
    start_s: float
    input_tokens: int
    max_tokens: int
    output_tokens: int
    success: bool
    ttft_s: float | None = None
    e2el_s: float | None = None
    itl_s: tuple[float, ...] = ()
    error: str = ""
    ttft_slo_s: float | None = None  # the SLO the request was sent with
    tpot_slo_s: float | None = None
    predicted_output_tokens: int | None = None  # the server's prediction, when it gives one
    isolated_s: float | None = None  # its latency alone on an idle worker, when known

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (``None`` for <= 1 token or a failure)."""
        if (
            not self.success
            or self.output_tokens <= 1
            or self.ttft_s is None
            or self.e2el_s is None
        ):
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def normalized_latency(self) -> float | None:
        """E2E latency over the isolated latency (None when either is unknown)."""
        if not self.success or self.e2el_s is None or not self.isolated_s:
            return None
        return self.e2el_s / self.isolated_s

    @property
    def end_s(self) -> float:
        return self.start_s + (self.e2el_s or 0.0)

    def good(self, slos: SloSet) -> bool:
        """Succeeded and met its model's SLO (no SLO for its model: success is enough)."""
        if not self.success or self.ttft_s is None or self.e2el_s is None:
            return False
        slo = slos.for_model(self.model)
        return slo is None or slo.met(self.ttft_s, self.tpot_s or 0.0, self.e2el_s)


def percentile_key(p: float) -> str:
    return f"p{int(p) if float(p).is_integer() else p}"


def _stats(
    values: Sequence[float], name: str, percentiles: Sequence[float]
) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=float) * 1000.0
    empty = arr.size == 0
    out: dict[str, float | None] = {
        f"mean_{name}_ms": None if empty else float(arr.mean()),
        f"median_{name}_ms": None if empty else float(np.median(arr)),
        f"std_{name}_ms": None if empty else float(arr.std()),
    }
    for p in percentiles:
        out[f"{percentile_key(p)}_{name}_ms"] = None if empty else float(np.percentile(arr, p))
    return out


def max_concurrency(records: Sequence[RequestRecord]) -> int:
    """The most requests in flight at once (send to last chunk or failure)."""
    events = sorted(
        [(r.start_s, 1) for r in records] + [(r.end_s, -1) for r in records],
        key=lambda e: (e[0], e[1]),
    )
    peak = cur = 0
    for _, step in events:
        cur += step
        peak = max(peak, cur)
    return peak


def _latency_block(
    records: Sequence[RequestRecord], percentiles: Sequence[float]
) -> dict[str, float | None]:
    ok = [r for r in records if r.success]
    series = {
        "ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
        "tpot": [t for r in ok if (t := r.tpot_s) is not None],
        "itl": [g for r in ok for g in r.itl_s],
        "e2el": [r.e2el_s for r in ok if r.e2el_s is not None],
    }
    out: dict[str, float | None] = {}
    for name in LATENCY_METRICS:
        out.update(_stats(series[name], name, percentiles))  # type: ignore[arg-type]
    out.update(normalized_latency(records))
    return out


def normalized_latency(records: Sequence[RequestRecord]) -> dict[str, float | None]:
    """Mean and p99 normalised latency of the successful requests that have an isolated
    latency (absent keys when none has)."""
    values = [v for r in records if (v := r.normalized_latency) is not None]
    if not any(r.isolated_s for r in records):
        return {}
    arr = np.asarray(values, dtype=float)
    return {
        "mean_normalized_latency": float(arr.mean()) if arr.size else None,
        "p99_normalized_latency": float(np.percentile(arr, 99)) if arr.size else None,
    }


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    slos: SloSet | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    options: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The run's summary: vLLM's result keys, then per-model figures and the run's options."""
    if duration_s <= 0:
        raise ValueError(f"duration must be > 0, got {duration_s}")
    slos = slos or SloSet()
    ok = [r for r in records if r.success]
    total_in = sum(r.input_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    has_slo = not slos.empty
    good = sum(1 for r in ok if r.good(slos)) if has_slo else None
    summary: dict[str, object] = {
        "duration": duration_s,
        "num_prompts": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration_s,
        "request_goodput": None if good is None else good / duration_s,
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
        "max_concurrent_requests": max_concurrency(records),
        "slo_attainment": (good / len(records)) if good is not None and records else None,
        "slo": slos.as_dict() if has_slo else None,
        "percentiles": [float(p) for p in percentiles],
    }
    summary.update(_latency_block(records, percentiles))
    summary.update(prediction_error(records))
    summary["errors"] = dict(
        Counter(_short(r.error) for r in records if not r.success).most_common(10)
    )
    summary["per_model"] = {
        model: _model_summary(
            [r for r in records if r.model == model], duration_s, slos, percentiles
        )
        for model in sorted({r.model for r in records})
    }
    summary["options"] = dict(options or {})
    return summary


def _model_summary(
    records: Sequence[RequestRecord],
    duration_s: float,
    slos: SloSet,
    percentiles: Sequence[float],
) -> dict[str, object]:
    ok = [r for r in records if r.success]
    slo = slos.for_model(records[0].model) if records else None
    good = sum(1 for r in ok if r.good(slos))
    out: dict[str, object] = {
        "num_prompts": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "request_throughput": len(ok) / duration_s,
        "output_throughput": sum(r.output_tokens for r in ok) / duration_s,
        "request_goodput": good / duration_s if slo is not None else None,
        "slo_attainment": good / len(records) if slo is not None and records else None,
        "slo": slo.as_ms() if slo is not None else None,
    }
    out.update(_latency_block(records, percentiles))
    return out


def prediction_error(records: Sequence[RequestRecord]) -> dict[str, object]:
    """How far the server's output-length predictions were from the lengths generated, over
    the successful requests that carried one: mean absolute error, mean signed error (bias)
    and the share within 25% of the true length."""
    pairs = [
        (r.predicted_output_tokens, r.output_tokens)
        for r in records
        if r.success and r.predicted_output_tokens is not None and r.output_tokens > 0
    ]
    if not pairs:
        return {"prediction_count": 0, "prediction_mae_tokens": None,
                "prediction_bias_tokens": None, "prediction_within_25pct": None}
    errors = [p - a for p, a in pairs]
    return {
        "prediction_count": len(pairs),
        "prediction_mae_tokens": sum(abs(e) for e in errors) / len(pairs),
        "prediction_bias_tokens": sum(errors) / len(pairs),
        "prediction_within_25pct": sum(1 for p, a in pairs if abs(p - a) <= 0.25 * a) / len(pairs),
    }


def _short(error: str) -> str:
    line = (error or "unknown error").strip().splitlines()[0] if error else "unknown error"
    return line[:200]
