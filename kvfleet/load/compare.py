"""Two summaries side by side with their ratios (B / A)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: (key, label, higher is better)
COMPARED: tuple[tuple[str, str, bool], ...] = (
    ("completed", "completed", True),
    ("failed", "failed", False),
    ("duration", "duration (s)", False),
    ("request_throughput", "request throughput (req/s)", True),
    ("request_goodput", "request goodput (req/s)", True),
    ("slo_attainment", "SLO attainment", True),
    ("output_throughput", "output throughput (tok/s)", True),
    ("mean_ttft_ms", "mean TTFT (ms)", False),
    ("median_ttft_ms", "median TTFT (ms)", False),
    ("p99_ttft_ms", "p99 TTFT (ms)", False),
    ("mean_tpot_ms", "mean TPOT (ms)", False),
    ("median_tpot_ms", "median TPOT (ms)", False),
    ("p99_tpot_ms", "p99 TPOT (ms)", False),
    ("mean_itl_ms", "mean ITL (ms)", False),
    ("p99_itl_ms", "p99 ITL (ms)", False),
    ("mean_e2el_ms", "mean E2E (ms)", False),
    ("median_e2el_ms", "median E2E (ms)", False),
    ("p99_e2el_ms", "p99 E2E (ms)", False),
)


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    label: str
    a: float | None
    b: float | None
    higher_is_better: bool

    @property
    def ratio(self) -> float | None:
        """B / A, or ``None`` when either is missing or A is 0."""
        if self.a is None or self.b is None or self.a == 0:
            return None
        return self.b / self.a


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def compare(a: Mapping[str, object], b: Mapping[str, object]) -> list[Row]:
    return [Row(k, label, _num(a.get(k)), _num(b.get(k)), hib) for k, label, hib in COMPARED]


def render(rows: list[Row], name_a: str, name_b: str) -> object:
    """A rich Table of the rows."""
    from rich.table import Table

    table = Table(title=f"{name_b} vs {name_a}")
    table.add_column("metric")
    table.add_column(name_a, justify="right")
    table.add_column(name_b, justify="right")
    table.add_column(f"{name_b} / {name_a}", justify="right")
    for row in rows:
        ratio = row.ratio
        if ratio is None:
            cell = "n/a"
        else:
            better = (ratio > 1) == row.higher_is_better and ratio != 1
            cell = f"[{'green' if better else 'red'}]{ratio:.3f}x[/]"
        table.add_row(row.label, _fmt(row.a), _fmt(row.b), cell)
    return table


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.3f}"
