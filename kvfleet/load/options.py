"""The options of one load run (validated), and turning them into a workload."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
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


class LoadOptions(BaseModel):
    """Everything that defines a run; recorded in its ``summary.json``."""

    target: str = Field(
        "grpc://127.0.0.1:50051", description="grpc://HOST:PORT or http://HOST:PORT/v1"
    )
    allow_remote: bool = Field(False, description="allow a non-loopback target")
    trace: str | None = Field(None, description="trace file, or servegen:<pool>[,<pool>...]")
    model: str | None = Field(
        None, description="model name(s) for the requests; comma list for ServeGen pools"
    )
    arrivals: Literal["poisson", "gamma"] | None = Field(None, description="synthetic arrivals")
    rate: float = Field(1.0, ge=0, description="synthetic request rate (req/s)")
    cv: float = Field(1.0, gt=0, description="gamma inter-arrival CV (burstiness)")
    ramp_s: float = Field(0.0, ge=0, description="linear ramp-up length (s)")
    ramp_from_rate: float = Field(0.0, ge=0, description="rate at the start of the ramp")
    spike_rate: float = Field(0.0, ge=0, description="rate during spikes (req/s)")
    spike_s: float = Field(0.0, ge=0, description="spike length (s)")
    spike_period_s: float = Field(0.0, ge=0, description="time between spike starts (s)")
    spike_start_s: float = Field(0.0, ge=0, description="first spike start (s)")
    input_len: str = Field("256", description="synthetic input lengths: N or LO-HI")
    output_len: str = Field("64", description="synthetic output lengths: N or LO-HI")
    mix: list[str] = Field(default_factory=list, description="MODEL:key=value,... per model")
    rate_scale: float = Field(1.0, gt=0, description="scale of ServeGen pools' rates")
    seed: int = Field(0, description="seed of every random choice")
    start_s: float = Field(0.0, ge=0, description="slice start in trace time (s)")
    duration_s: float | None = Field(None, gt=0, description="slice / run length in trace time (s)")
    speed: float = Field(1.0, gt=0, description="replay speed-up")
    max_input: int | None = Field(None, ge=1, description="input length cap (tokens)")
    max_output: int | None = Field(None, ge=1, description="output length cap (tokens)")
    num_requests: int | None = Field(None, ge=1, description="stop after this many requests")
    spread_ties: bool = Field(False, description="spread Mooncake's quantised timestamps")
    max_concurrency: int | None = Field(None, ge=1, description="cap on requests in flight")
    drain_timeout_s: float = Field(
        120.0, gt=0, description="wait for stragglers after the last arrival"
    )
    request_timeout_s: float = Field(600.0, gt=0, description="per-request timeout")
    slo: list[str] = Field(default_factory=list, description="[MODEL:]ttft=..,tpot=..,e2el=..")
    tokenizer: str | None = Field(None, description="tokenizer name/path (default: from the model)")
    length_control: Literal["auto", "ignore_eos", "generation_config", "none"] = "auto"
    out: Path | None = Field(None, description="results folder")
    plots: bool = True
    label: str = Field("", description="a name for this run in comparisons")

    @model_validator(mode="after")
    def _source(self) -> LoadOptions:
        if self.trace is None and self.arrivals is None and not self.mix:
            raise ValueError("give a workload: --trace PATH, or --arrivals poisson|gamma, or --mix")
        if self.trace is not None and (self.arrivals is not None or self.mix):
            raise ValueError("--trace cannot be combined with --arrivals or --mix")
        return self

    def shaping(self, sliced: bool) -> Shaping:
        single = self.model if self.model and "," not in self.model else None
        return Shaping(
            start_s=0.0 if sliced else self.start_s,
            duration_s=None if sliced else self.duration_s,
            speed=self.speed,
            max_input=self.max_input,
            max_output=self.max_output,
            max_requests=self.num_requests,
            model=single,
        )


def build_workload(opts: LoadOptions) -> list[RequestSpec]:
    """The run's requests, shaped; raises ValueError/FileNotFoundError with a clear message."""
    if opts.trace is not None and is_servegen(opts.trace):
        pools = [p for p in opts.trace.removeprefix("servegen:").split(",") if p]
        models = opts.model.split(",") if opts.model else None
        specs = load_servegen(
            pools, models, opts.start_s, opts.duration_s or 600.0, opts.rate_scale, opts.seed
        )
        shaping = opts.shaping(sliced=True)
        if models is not None:
            shaping = replace(shaping, model=None)  # the pools already carry their models
        return shape(specs, shaping)
    if opts.trace is not None:
        return shape(load_trace(opts.trace, opts.model, opts.spread_ties), opts.shaping(False))
    if not opts.model and not opts.mix:
        raise ValueError("synthetic load needs --model (or --mix MODEL:...)")
    base = ModelLoad(
        opts.model or "default",
        ArrivalSpec(
            rate=opts.rate,
            process=opts.arrivals or "poisson",
            cv=opts.cv,
            ramp_s=opts.ramp_s,
            ramp_from_rate=opts.ramp_from_rate,
            spike_rate=opts.spike_rate,
            spike_s=opts.spike_s,
            spike_period_s=opts.spike_period_s,
            spike_start_s=opts.spike_start_s,
        ),
        LengthDist.parse(opts.input_len),
        LengthDist.parse(opts.output_len),
    )
    loads = [parse_model_load(m, base) for m in opts.mix] if opts.mix else [base]
    specs = generate_mix(loads, opts.duration_s or 60.0, seed=opts.seed)
    shaping = opts.shaping(sliced=True)
    if opts.mix:
        shaping = replace(shaping, model=None)
    return shape(specs, shaping)
