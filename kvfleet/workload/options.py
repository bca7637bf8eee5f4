"""The workload options shared by ``kvfleet load`` and ``kvfleet sim`` (validated), and
turning them into requests."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from kvfleet.workload.arrivals import ArrivalSpec
from kvfleet.workload.lengths import LengthDist
from kvfleet.workload.sources import is_servegen, load_servegen, load_trace
from kvfleet.workload.spec import RequestSpec
from kvfleet.workload.synthetic import ModelLoad, generate_mix, parse_model_load
from kvfleet.workload.transform import Shaping, shape


class WorkloadOptions(BaseModel):
    """What requests a run makes: a trace or a synthetic load, and how it is shaped."""

    trace: str | None = Field(
        None, description="trace file, or servegen:<pool>[@offset_s][*scale][,<pool>...]"
    )
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
    length_scale: float = Field(1.0, gt=0, description="input and output length multiplier")
    max_input: int | None = Field(None, ge=1, description="input length cap (tokens)")
    max_output: int | None = Field(None, ge=1, description="output length cap (tokens)")
    num_requests: int | None = Field(None, ge=1, description="stop after this many requests")
    spread_ties: bool = Field(False, description="spread Mooncake's quantised timestamps")

    @model_validator(mode="after")
    def _source(self) -> WorkloadOptions:
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
            length_scale=self.length_scale,
            max_input=self.max_input,
            max_output=self.max_output,
            max_requests=self.num_requests,
            model=single,
        )



def build_workload(opts: WorkloadOptions, require_model: bool = True) -> list[RequestSpec]:
    """The requests, shaped; raises ValueError/FileNotFoundError with a clear message.

    A synthetic load without ``model`` (or ``mix``) is refused when ``require_model``, as a
    load run must name the model it sends to; otherwise its requests are for "default"."""
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
    if require_model and not opts.model and not opts.mix:
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
