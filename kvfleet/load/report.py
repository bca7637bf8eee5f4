"""Writing and reading a run's results: ``requests.csv`` (one row per request) and
``summary.json``. File I/O only, no network: the simulator writes the same files."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from kvfleet.load.metrics import RequestRecord
from kvfleet.load.slo import SloSet

REQUEST_COLUMNS = (
    "request_id",
    "model",
    "arrival_s",
    "start_s",
    "input_tokens",
    "output_tokens",
    "generated_tokens",
    "success",
    "good",
    "ttft_ms",
    "tpot_ms",
    "e2el_ms",
    "mean_itl_ms",
    "num_chunks",
    "error",
    "ttft_slo_ms",
    "tpot_slo_ms",
    "predicted_output_tokens",
)


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value * 1000.0:.3f}"


def write_requests_csv(
    records: Sequence[RequestRecord], path: Path, slos: SloSet | None = None
) -> None:
    """One row per request. ``arrival_s`` is the scheduled send time and ``output_tokens`` the
    requested length (``generated_tokens`` what came back), so the file replays as a trace."""
    slos = slos or SloSet()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUEST_COLUMNS)
        for r in records:
            itl = sum(r.itl_s) / len(r.itl_s) if r.itl_s else None
            w.writerow(
                [
                    r.request_id,
                    r.model,
                    f"{r.scheduled_s:.6f}",
                    f"{r.start_s:.6f}",
                    r.input_tokens,
                    r.max_tokens,
                    r.output_tokens,
                    int(r.success),
                    int(r.good(slos)),
                    _ms(r.ttft_s),
                    _ms(r.tpot_s),
                    _ms(r.e2el_s),
                    _ms(itl),
                    len(r.itl_s) + (1 if r.ttft_s is not None else 0),
                    r.error.replace("\n", " ")[:300],
                    _ms(r.ttft_slo_s),
                    _ms(r.tpot_slo_s),
                    "" if r.predicted_output_tokens is None else r.predicted_output_tokens,
                ]
            )


def _clean(obj: object) -> object:
    """JSON-safe: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_summary(summary: Mapping[str, object], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(summary), indent=2, sort_keys=False) + "\n")


def read_summary(path: Path) -> dict[str, object]:
    """A ``summary.json`` (or a run folder holding one)."""
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"summary not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "completed" not in data:
        raise ValueError(f"{path}: not a load summary (no 'completed' key)")
    return data
