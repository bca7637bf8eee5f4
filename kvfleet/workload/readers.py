"""Readers for per-request traces: the Azure 2023 CSV, Mooncake JSON Lines, and kvfleet's own
CSV (``arrival_s,model,input_tokens,output_tokens``, e.g. a previous run's ``requests.csv``).

The format is told by the file's extension and its columns. Arrival offsets start at 0 at
the first request in the file.
"""

from __future__ import annotations

import csv
import json
import logging
from datetime import datetime
from pathlib import Path

from kvfleet.workload.spec import RequestSpec

log = logging.getLogger(__name__)

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
KVFLEET_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")


class TraceFormatError(ValueError):
    """A trace file whose format or content cannot be read."""


def parse_azure_timestamp(text: str) -> float:
    """Seconds since the epoch (naive, as UTC) of ``2023-11-16 18:15:46.6805900``.

    The fraction can have any number of digits (Azure writes 7: 100 ns ticks).
    """
    base, _, frac = text.strip().partition(".")
    try:
        seconds = datetime.fromisoformat(base).timestamp()
    except ValueError as exc:
        raise TraceFormatError(f"bad timestamp {text!r}") from exc
    if frac:
        if not frac.isdigit():
            raise TraceFormatError(f"bad timestamp fraction {text!r}")
        seconds += int(frac) / 10 ** len(frac)
    return seconds


def _positive(value: int, what: str, where: str) -> int:
    if value < 1:
        raise TraceFormatError(f"{where}: {what} must be >= 1, got {value}")
    return value


def read_azure_csv(path: Path, model: str = "default") -> list[RequestSpec]:
    """The Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    times: list[float] = []
    lengths: list[tuple[int, int]] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[:3]) != AZURE_COLUMNS:
            raise TraceFormatError(f"{path}: expected header {','.join(AZURE_COLUMNS)}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            where = f"{path}:{lineno}"
            try:
                times.append(parse_azure_timestamp(row[0]))
                lengths.append(
                    (
                        _positive(int(row[1]), "ContextTokens", where),
                        _positive(int(row[2]), "GeneratedTokens", where),
                    )
                )
            except (IndexError, ValueError) as exc:
                raise TraceFormatError(f"{where}: {exc}") from exc
    return _build(times, lengths, model, hashes=None)


def read_mooncake_jsonl(
    path: Path, model: str = "default", spread_ties: bool = False
) -> list[RequestSpec]:
    """A Mooncake trace: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``.

    With ``spread_ties``, requests that share a (quantised) timestamp are spread evenly over the
    gap to the next distinct timestamp instead of arriving as one burst.
    """
    times: list[float] = []
    lengths: list[tuple[int, int]] = []
    hashes: list[tuple[int, ...]] = []
    with path.open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
                times.append(float(obj["timestamp"]) / 1000.0)
                lengths.append(
                    (
                        _positive(int(obj["input_length"]), "input_length", where),
                        _positive(int(obj["output_length"]), "output_length", where),
                    )
                )
                hashes.append(tuple(int(h) for h in obj.get("hash_ids", ())))
            except (KeyError, TypeError, ValueError) as exc:
                raise TraceFormatError(f"{where}: {exc!r}") from exc
    if spread_ties:
        times = spread_equal_times(times)
    return _build(times, lengths, model, hashes=hashes)


def read_kvfleet_csv(path: Path, model: str | None = None) -> list[RequestSpec]:
    """kvfleet's own CSV: ``arrival_s,input_tokens,output_tokens`` and optionally ``model``.

    ``model`` overrides the file's model column (or names the model when there is none).
    """
    times: list[float] = []
    lengths: list[tuple[int, int]] = []
    models: list[str] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not set(KVFLEET_COLUMNS) <= set(reader.fieldnames):
            raise TraceFormatError(
                f"{path}: unknown CSV columns {reader.fieldnames}; expected Azure "
                f"({','.join(AZURE_COLUMNS)}) or kvfleet ({','.join(KVFLEET_COLUMNS)}[,model])"
            )
        for lineno, row in enumerate(reader, start=2):
            where = f"{path}:{lineno}"
            try:
                times.append(float(row["arrival_s"]))
                lengths.append(
                    (
                        _positive(int(row["input_tokens"]), "input_tokens", where),
                        _positive(int(row["output_tokens"]), "output_tokens", where),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise TraceFormatError(f"{where}: {exc}") from exc
            models.append(model or row.get("model") or "default")
    order = sorted(range(len(times)), key=times.__getitem__)
    t0 = times[order[0]] if order else 0.0
    return [
        RequestSpec(
            request_id=f"r{n}",
            arrival_s=times[i] - t0,
            model=models[i],
            input_tokens=lengths[i][0],
            output_tokens=lengths[i][1],
        )
        for n, i in enumerate(order)
    ]


def read_trace(
    path: Path, model: str | None = None, spread_ties: bool = False
) -> list[RequestSpec]:
    """Read a per-request trace file, its format told by extension and columns."""
    if not path.is_file():
        raise FileNotFoundError(f"trace not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        specs = read_mooncake_jsonl(path, model or "default", spread_ties=spread_ties)
    elif suffix == ".csv":
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(h.strip() for h in header[:3]) == AZURE_COLUMNS:
            specs = read_azure_csv(path, model or "default")
        else:
            specs = read_kvfleet_csv(path, model)
    else:
        raise TraceFormatError(
            f"{path}: unknown trace format {suffix!r} (expected .csv, .jsonl, or a ServeGen "
            "pool .tar.gz / servegen:<pool>)"
        )
    log.info("read %d requests from %s", len(specs), path)
    return specs


def spread_equal_times(times: list[float]) -> list[float]:
    """Spread runs of equal (sorted) times evenly up to the next distinct time."""
    out = list(times)
    n = len(times)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and times[j + 1] == times[i]:
            j += 1
        if j > i and j + 1 < n:
            gap = (times[j + 1] - times[i]) / (j - i + 1)
            for k in range(i, j + 1):
                out[k] = times[i] + (k - i) * gap
        i = j + 1
    return out


def _build(
    times: list[float],
    lengths: list[tuple[int, int]],
    model: str,
    hashes: list[tuple[int, ...]] | None,
) -> list[RequestSpec]:
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        order = sorted(range(len(times)), key=times.__getitem__)
    else:
        order = list(range(len(times)))
    t0 = times[order[0]] if order else 0.0
    return [
        RequestSpec(
            request_id=f"r{n}",
            arrival_s=times[i] - t0,
            model=model,
            input_tokens=lengths[i][0],
            output_tokens=lengths[i][1],
            hash_ids=hashes[i] if hashes is not None else (),
        )
        for n, i in enumerate(order)
    ]
