"""The options of one load run (validated); the workload part is shared with the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from kvfleet.workload.options import WorkloadOptions, build_workload

__all__ = ["LoadOptions", "build_workload"]


class LoadOptions(WorkloadOptions):
    """Everything that defines a run; recorded in its ``summary.json``."""

    target: str = Field(
        "grpc://127.0.0.1:50051", description="grpc://HOST:PORT or http://HOST:PORT/v1"
    )
    allow_remote: bool = Field(False, description="allow a non-loopback target")
    max_concurrency: int | None = Field(None, ge=1, description="cap on requests in flight")
    drain_timeout_s: float = Field(
        120.0, gt=0, description="wait for stragglers after the last arrival"
    )
    request_timeout_s: float = Field(600.0, gt=0, description="per-request timeout")
    slo: list[str] = Field(default_factory=list, description="[MODEL:]ttft=..,tpot=..,e2el=..")
    send_slo: bool = Field(
        True, description="send each request's TTFT/TPOT SLO to the server (kvfleet's extension)"
    )
    tokenizer: str | None = Field(None, description="tokenizer name/path (default: from the model)")
    length_control: Literal["auto", "ignore_eos", "generation_config", "none"] = "auto"
    isolation_probe: bool = Field(
        False, description="probe each model alone on the idle target first, for the "
        "normalised latency (kvfleet.load.isolation)"
    )
    out: Path | None = Field(None, description="results folder")
    plots: bool = True
    label: str = Field("", description="a name for this run in comparisons")

