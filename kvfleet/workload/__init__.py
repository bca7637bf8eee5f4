"""Workloads: trace readers, synthetic arrivals and lengths, ServeGen pools, shaping.

Pure code (files and numpy only, no network); the load generator and the simulator both
build their request lists here.
"""

from __future__ import annotations

from kvfleet.workload.arrivals import ArrivalSpec, generate_arrivals
from kvfleet.workload.lengths import LengthDist
from kvfleet.workload.readers import TraceFormatError, read_trace
from kvfleet.workload.sources import load_servegen, load_trace
from kvfleet.workload.spec import PREFIX_BLOCK_TOKENS, RequestSpec
from kvfleet.workload.stats import WorkloadStats, workload_stats
from kvfleet.workload.synthetic import ModelLoad, generate_mix, parse_model_load
from kvfleet.workload.transform import Shaping, shape

__all__ = [
    "PREFIX_BLOCK_TOKENS",
    "ArrivalSpec",
    "LengthDist",
    "ModelLoad",
    "RequestSpec",
    "Shaping",
    "TraceFormatError",
    "WorkloadStats",
    "generate_arrivals",
    "generate_mix",
    "load_servegen",
    "load_trace",
    "parse_model_load",
    "read_trace",
    "shape",
    "workload_stats",
]
