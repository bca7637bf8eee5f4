"""PNG plots of a run (matplotlib, Agg backend, no display needed).

- ``latency_cdf.png``: CDFs of TTFT, TPOT, ITL and E2E latency.
- ``ttft_timeline.png``: each request's TTFT at its send time, over the arrival rate.
- ``per_model.png``: per-model p99 TTFT, p99 TPOT and SLO attainment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kvfleet.load.metrics import RequestRecord


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_run(
    records: Sequence[RequestRecord], summary: Mapping[str, object], out_dir: Path
) -> list[Path]:
    """Write the three plots into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        _latency_cdf(records, out_dir / "latency_cdf.png"),
        _ttft_timeline(records, out_dir / "ttft_timeline.png"),
        _per_model(summary, out_dir / "per_model.png"),
    ]


def _latency_cdf(records: Sequence[RequestRecord], path: Path) -> Path:
    plt = _plt()
    ok = [r for r in records if r.success]
    series = {
        "TTFT": [r.ttft_s for r in ok if r.ttft_s is not None],
        "TPOT": [t for r in ok if (t := r.tpot_s) is not None],
        "ITL": [g for r in ok for g in r.itl_s],
        "E2E latency": [r.e2el_s for r in ok if r.e2el_s is not None],
    }
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (name, values) in zip(axes.flat, series.items(), strict=True):
        v = np.sort(np.asarray(values, dtype=float) * 1000.0)
        if v.size:
            ax.plot(v, np.arange(1, v.size + 1) / v.size, drawstyle="steps-post")
            ax.axvline(np.percentile(v, 99), color="grey", linestyle=":", label="p99")
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        ax.set_title(f"{name} (n={v.size})")
        ax.set_xlabel("ms")
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ttft_timeline(records: Sequence[RequestRecord], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    starts = np.asarray([r.start_s for r in records], dtype=float)
    if starts.size:
        span = max(float(starts.max()), 1e-3)
        bin_s = max(span / 60.0, 0.5)
        edges = np.arange(0.0, span + bin_s, bin_s)
        counts, _ = np.histogram(starts, bins=edges)
        rate_ax = ax.twinx()
        rate_ax.bar(
            edges[:-1],
            counts / bin_s,
            width=bin_s,
            align="edge",
            color="tab:grey",
            alpha=0.25,
            label="arrival rate",
        )
        rate_ax.set_ylabel("arrivals (req/s)")
        for model in sorted({r.model for r in records}):
            pts = [
                (r.start_s, r.ttft_s * 1000.0)
                for r in records
                if r.model == model and r.success and r.ttft_s is not None
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(xs, ys, s=6, label=f"TTFT {model}", zorder=3)
        failed = [r.start_s for r in records if not r.success]
        if failed:
            ax.scatter(
                failed, [0.0] * len(failed), marker="x", color="red", s=12, label="failed", zorder=3
            )
        ax.set_zorder(rate_ax.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("TTFT over time, over the arrival rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _per_model(summary: Mapping[str, object], path: Path) -> Path:
    plt = _plt()
    per_model = summary.get("per_model") or {}
    assert isinstance(per_model, Mapping)
    models = sorted(per_model)
    panels = [
        ("p99_ttft_ms", "p99 TTFT (ms)"),
        ("p99_tpot_ms", "p99 TPOT (ms)"),
        ("slo_attainment", "SLO attainment"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [per_model[m].get(key) for m in models]
        heights = [v if isinstance(v, int | float) else 0.0 for v in values]
        ax.bar(range(len(models)), heights, color="tab:blue")
        for i, v in enumerate(values):
            ax.text(
                i,
                heights[i],
                "n/a" if v is None else f"{v:.3g}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        if key == "slo_attainment":
            ax.set_ylim(0, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
