"""The workload options of ``kvfleet sim`` (the same ones as ``kvfleet load``) and turning
them into requests with ``kvfleet.workload``."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from kvfleet.workload import (
    ArrivalSpec,
    LengthDist,
    ModelLoad,
    RequestSpec,
    Shaping,
    generate_mix,
    load_servegen,
    load_trace,
    parse_model_load,
    shape,
)
from kvfleet.workload.sources import is_servegen


class WorkloadOptions(BaseModel):
    trace: str | None = Field(default=None, description="trace file, or servegen:<pool>[,<pool>...]")
    request_model: str | None = Field(default=None, description="model name(s) given to the requests")
    arrivals: Literal["poisson", "gamma"] | None = None
    rate: float = Field(default=1.0, ge=0)
    cv: float = Field(default=1.0, gt=0)
    ramp_s: float = Field(default=0.0, ge=0)
    ramp_from_rate: float = Field(default=0.0, ge=0)
    spike_rate: float = Field(default=0.0, ge=0)
    spike_s: float = Field(default=0.0, ge=0)
    spike_period_s: float = Field(default=0.0, ge=0)
    spike_start_s: float = Field(default=0.0, ge=0)
    input_len: str = "256"
    output_len: str = "64"
    mix: list[str] = Field(default_factory=list)
    rate_scale: float = Field(default=1.0, gt=0)
    seed: int = 0
    start_s: float = Field(default=0.0, ge=0)
    duration_s: float | None = Field(default=None, gt=0)
    speed: float = Field(default=1.0, gt=0)
    max_input: int | None = Field(default=None, ge=1)
    max_output: int | None = Field(default=None, ge=1)
    num_requests: int | None = Field(default=None, ge=1)
    spread_ties: bool = False

    @model_validator(mode="after")
    def _source(self) -> WorkloadOptions:
        if self.trace is None and self.arrivals is None and not self.mix:
            raise ValueError("give a workload: --trace PATH, or --arrivals poisson|gamma, or --mix")
        if self.trace is not None and (self.arrivals is not None or self.mix):
            raise ValueError("--trace cannot be combined with --arrivals or --mix")
        return self

    def _shaping(self, sliced: bool) -> Shaping:
        single = self.request_model if self.request_model and "," not in self.request_model else None
        return Shaping(
            start_s=0.0 if sliced else self.start_s,
            duration_s=None if sliced else self.duration_s,
            speed=self.speed,
            max_input=self.max_input,
            max_output=self.max_output,
            max_requests=self.num_requests,
            model=single,
        )


def build_workload(opts: WorkloadOptions) -> list[RequestSpec]:
    """The requests, shaped; ValueError or FileNotFoundError with a clear message."""
    if opts.trace is not None and is_servegen(opts.trace):
        pools = [p for p in opts.trace.removeprefix("servegen:").split(",") if p]
        models = opts.request_model.split(",") if opts.request_model else None
        specs = load_servegen(
            pools, models, opts.start_s, opts.duration_s or 600.0, opts.rate_scale, opts.seed
        )
        shaping = replace(opts._shaping(sliced=True), model=None)
        return shape(specs, shaping)
    if opts.trace is not None:
        return shape(load_trace(opts.trace, opts.request_model, opts.spread_ties), opts._shaping(False))
    base = ModelLoad(
        opts.request_model or "default",
        ArrivalSpec(
            rate=opts.rate, process=opts.arrivals or "poisson", cv=opts.cv, ramp_s=opts.ramp_s,
            ramp_from_rate=opts.ramp_from_rate, spike_rate=opts.spike_rate,
            spike_s=opts.spike_s, spike_period_s=opts.spike_period_s,
            spike_start_s=opts.spike_start_s,
        ),
        LengthDist.parse(opts.input_len),
        LengthDist.parse(opts.output_len),
    )
    loads = [parse_model_load(m, base) for m in opts.mix] if opts.mix else [base]
    specs = generate_mix(loads, opts.duration_s or 60.0, seed=opts.seed)
    shaping = opts._shaping(sliced=True)
    if opts.mix:
        shaping = replace(shaping, model=None)
    return shape(specs, shaping)
