"""Step-time and memory model of one worker: a roofline plus a fixed per-step overhead.

A step feeds some tokens through the model. Its time is the larger of its FLOPs over the
achievable FLOP/s and its bytes (weights once, plus every KV byte attention reads) over the
achievable HBM bandwidth, plus a fixed overhead and a small per-sequence overhead. A decode
step of a small batch is memory bound (weights dominate); a long prefill is compute bound.

Pure arithmetic on floats, so the simulator can sum many decode steps in closed form: in a
run of decode steps with a fixed batch, each step attends to ``batch`` more context tokens
than the one before, so both roofline terms grow linearly with the step index.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from kvfleet.services.worker.core.step_cost import ModelStepCost
from kvfleet.sim.presets import GpuSpec, ModelShape
from kvfleet.sim.step_model import FitReport, StepModel, StepShape

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Calibration:
    """Measured corrections: every roofline time is multiplied by ``time_scale``; the overhead
    replaces the preset's when given. A ``step_model`` (fitted to measured steps) replaces
    the roofline altogether."""

    time_scale: float = 1.0
    step_overhead_s: float | None = None
    source: str = ""
    step_model: StepModel | None = None
    #: the step model was fitted to CPU seconds (an idle machine's wall time), not wall time
    cpu_time: bool = False


@dataclass(frozen=True, slots=True)
class StepCost:
    """Roofline terms of one step, seconds (before overhead)."""

    compute_s: float
    memory_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.overhead_s


class CostModel:
    """Step times and memory of one model served on ``tp`` GPUs of one kind."""

    def __init__(
        self,
        gpu: GpuSpec,
        model: ModelShape,
        tp: int = 1,
        calibration: Calibration | None = None,
        gpu_memory_utilization: float = 0.9,
    ) -> None:
        if tp < 1:
            raise ValueError("tp must be >= 1")
        self.gpu = gpu
        self.model = model
        self.tp = tp
        self.calibration = calibration or Calibration()
        scale = self.calibration.time_scale
        self.flops_per_s = gpu.peak_flops * gpu.mfu * tp / scale
        self.bytes_per_s = gpu.hbm_bytes_per_s * gpu.mbu * tp / scale
        base_overhead = self.calibration.step_overhead_s
        self.step_overhead_s = gpu.step_overhead_s if base_overhead is None else base_overhead
        self.seq_overhead_s = gpu.seq_overhead_s
        self.memory_bytes = int(gpu.memory_bytes * tp * gpu_memory_utilization)
        self.kv_bytes_per_token = model.kv_bytes_per_token
        self._linear_flops_per_token = 2.0 * model.matmul_params
        self._attn = model.attn_flops_per_token_ctx
        self._weights = float(model.weight_bytes)
        self.step_model = self.calibration.step_model

    # ----- memory -----
    def kv_budget_bytes(self, activation_reserve_bytes: int = 0) -> int:
        """Bytes left for KV after weights (and a reserve for activations)."""
        return self.memory_bytes - self.model.weight_bytes - activation_reserve_bytes

    # ----- one step -----
    def step_cost(
        self, num_tokens: int, attn_pairs: float, kv_read_tokens: float, num_seqs: int,
        max_q: int | None = None, max_kv: int | None = None,
    ) -> StepCost:
        """A step feeding ``num_tokens`` tokens whose queries attend ``attn_pairs`` (query,
        context) pairs in all, reading ``kv_read_tokens`` tokens of KV. ``max_q`` and
        ``max_kv`` (the longest chunk and context; default: as if all were equal) matter only
        to a fitted step model. With one, its time is given as both roofline terms."""
        if self.step_model is not None:
            b = max(num_seqs, 1)
            t = self.step_model.step_s(StepShape(
                num_tokens, num_seqs, kv_read_tokens, attn_pairs,
                max_q if max_q is not None else -(-num_tokens // b),
                max_kv if max_kv is not None else math.ceil(kv_read_tokens / b),
            ))
            return StepCost(t, t, 0.0)
        flops = self._linear_flops_per_token * num_tokens + self._attn * attn_pairs
        nbytes = self._weights + self.kv_bytes_per_token * kv_read_tokens
        return StepCost(
            flops / self.flops_per_s,
            nbytes / self.bytes_per_s,
            self.step_overhead_s + self.seq_overhead_s * num_seqs,
        )

    def step_s(
        self, num_tokens: int, attn_pairs: float, kv_read_tokens: float, num_seqs: int,
        max_q: int = 0, max_kv: int = 0,
    ) -> float:
        """``step_cost(...).total_s`` without building the result (the simulator's hot path;
        a fitted step model needs ``max_q`` and ``max_kv``)."""
        if self.step_model is not None:
            return self.step_model.time_s(num_tokens, num_seqs, kv_read_tokens, attn_pairs,
                                          max_q, max_kv)
        compute = (self._linear_flops_per_token * num_tokens + self._attn * attn_pairs) / self.flops_per_s
        memory = (self._weights + self.kv_bytes_per_token * kv_read_tokens) / self.bytes_per_s
        top = compute if compute > memory else memory
        return top + self.step_overhead_s + self.seq_overhead_s * num_seqs

    def prefill_s(self, num_tokens: int, context_tokens: int = 0) -> float:
        """One step that prefills ``num_tokens`` tokens after ``context_tokens`` cached ones."""
        pairs = num_tokens * context_tokens + num_tokens * (num_tokens + 1) / 2
        return self.step_cost(num_tokens, pairs, context_tokens + num_tokens, 1).total_s

    def decode_s(self, batch: int, context_tokens: int) -> float:
        """One decode step of ``batch`` sequences holding ``context_tokens`` tokens in all."""
        return self.step_cost(batch, context_tokens, context_tokens, batch).total_s

    def coefficients(self) -> ModelStepCost:
        """This model's step time as plain coefficients (the same formula as ``step_s``), for
        the policy cores that estimate latencies (batch policy, placement)."""
        return ModelStepCost(
            s_per_token=self._linear_flops_per_token / self.flops_per_s,
            s_per_attn_pair=self._attn / self.flops_per_s,
            s_weights=self._weights / self.bytes_per_s,
            s_per_kv_token=self.kv_bytes_per_token / self.bytes_per_s,
            overhead_s=self.step_overhead_s,
            overhead_s_per_seq=self.seq_overhead_s,
        )

    def spare_prefill_tokens_per_s(self, batch: int, context_tokens: int) -> float:
        """Prefill tokens per second a worker decoding ``batch`` sequences (``context_tokens``
        in all) can add to its steps without making them longer: the compute its
        memory-bound steps leave idle. An idle worker prefills at its full compute rate."""
        per_token = self._linear_flops_per_token
        if batch <= 0:
            return self.flops_per_s / per_token
        cost = self.step_cost(batch, context_tokens, context_tokens, batch)
        spare = cost.memory_s - cost.compute_s
        if spare <= 0:
            return 0.0
        return spare * self.flops_per_s / per_token / cost.total_s

    # ----- runs of decode steps -----
    def decode_run(
        self, batch: int, context_tokens: int, max_context: int | None = None
    ) -> DecodeRun:
        """Coefficients of a run of decode steps starting at ``context_tokens`` total context
        (the longest sequence holding ``max_context``; default: all equal)."""
        if self.step_model is not None:
            longest = max_context if max_context is not None else -(-context_tokens // batch)
            a, s = self.step_model.decode_line(batch, context_tokens, longest)
            return DecodeRun(a, s, a, s, 0.0)
        c0 = (self._linear_flops_per_token * batch + self._attn * context_tokens) / self.flops_per_s
        c1 = self._attn * batch / self.flops_per_s
        m0 = (self._weights + self.kv_bytes_per_token * context_tokens) / self.bytes_per_s
        m1 = self.kv_bytes_per_token * batch / self.bytes_per_s
        return DecodeRun(c0, c1, m0, m1, self.step_overhead_s + self.seq_overhead_s * batch)


def _lin_sum(a: float, b: float, n: int) -> float:
    """sum_{i<n} (a + b i)."""
    return n * a + b * n * (n - 1) / 2.0


@dataclass(frozen=True, slots=True)
class DecodeRun:
    """Step ``i`` of the run takes ``max(c0 + c1 i, m0 + m1 i) + overhead`` seconds."""

    c0: float
    c1: float
    m0: float
    m1: float
    overhead: float

    def time_of(self, steps: int) -> float:
        """Seconds the first ``steps`` steps take."""
        if steps <= 0:
            return 0.0
        c0, c1, m0, m1 = self.c0, self.c1, self.m0, self.m1
        # A: the line on top at step 0; B: the other. A stays on top until they cross.
        if c0 > m0 or (c0 == m0 and c1 >= m1):
            a0, a1, b0, b1 = c0, c1, m0, m1
        else:
            a0, a1, b0, b1 = m0, m1, c0, c1
        if a1 >= b1:
            split = steps
        else:
            split = min(steps, math.ceil((a0 - b0) / (b1 - a1)))
        total = _lin_sum(a0, a1, split) + _lin_sum(b0 + b1 * split, b1, steps - split)
        return total + steps * self.overhead

    def steps_by(self, elapsed_s: float, max_steps: int) -> int:
        """Steps completed when the step running at ``elapsed_s`` ends (at least 1)."""
        if max_steps <= 1:
            return max(max_steps, 1)
        if self.time_of(max_steps) <= elapsed_s:
            return max_steps
        lo, hi = 1, max_steps  # invariant: time_of(hi) >= elapsed, answer in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if self.time_of(mid) >= elapsed_s:
                hi = mid
            else:
                lo = mid + 1
        return lo


def load_calibration(path: Path, cost: CostModel) -> Calibration:
    """Read a calibration file for ``cost``'s model and GPU.

    Two forms are accepted:

    - measured steps: ``{"steps": [{"num_tokens": .., "num_seqs": .., "kv_tokens": ..,
      "attn_pairs": .. (optional), "max_q": .., "max_kv": .. (optional), "time_s": ..},
      ...]}``: with ``"fit": "linear"`` (what ``kvfleet bench engine --sweep`` writes) a
      fitted :class:`~kvfleet.sim.step_model.StepModel` replaces the roofline; otherwise a
      least-squares fit of ``time = overhead + scale * roofline``;
    - a ``kvfleet bench engine`` result: ``{"kvfleet_tok_s": .., "workload":
      {"num_requests": .., "prompt_tokens": .., "output_tokens": ..}}`` (output tokens per
      second of one batch prefilled then decoded to the end; the batch and lengths may also
      be given at the top level as ``batch_size``, ``input_len``, ``output_len``; defaults
      1, 128, 128): one time scale so the predicted throughput matches.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read calibration {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"calibration {path}: expected a JSON object")
    if "steps" in data:
        fit = data.get("fit", "roofline")
        if fit == "linear":
            return _fit_linear(data["steps"], str(path))
        if fit != "roofline":
            raise ValueError(f"calibration {path}: unknown fit {fit!r} (linear or roofline)")
        return _fit_steps(data["steps"], cost, str(path))
    tok_s = data.get("kvfleet_tok_s")
    if not isinstance(tok_s, int | float) or tok_s <= 0:
        raise ValueError(f"calibration {path}: needs 'steps' or a positive 'kvfleet_tok_s'")
    raw_workload = data.get("workload")
    workload: dict[str, object] = raw_workload if isinstance(raw_workload, dict) else {}

    def pick(*keys: str, default: int) -> int:
        source: dict[str, object]
        for source in (workload, data):
            for k in keys:
                value = source.get(k)
                if isinstance(value, int | float) and value > 0:
                    return int(value)
        return default

    batch = pick("num_requests", "batch_size", default=1)
    prompt = pick("prompt_tokens", "input_len", default=128)
    output = pick("output_tokens", "output_len", default=128)
    # The benchmark prefills every prompt, then decodes the batch to the end; its figure is
    # output tokens over the whole time.
    measured_s = batch * output / float(tok_s)
    pre = cost.step_cost(batch * prompt, batch * prompt * (prompt + 1) / 2, batch * prompt, batch)
    run = cost.decode_run(batch, batch * (prompt + 1))
    decode_roof = run.time_of(output - 1) - (output - 1) * run.overhead
    roof = max(pre.compute_s, pre.memory_s) + decode_roof
    overhead = pre.overhead_s + (output - 1) * run.overhead
    scale = max(measured_s - overhead, 1e-6 * roof) / roof
    log.info("calibration %s: %.1f tok/s (batch %d, %d+%d tokens) -> time scale %.3f",
             path, tok_s, batch, prompt, output, scale)
    return Calibration(scale, None, str(path))


def _fit_steps(steps: object, cost: CostModel, source: str) -> Calibration:
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"calibration {source}: 'steps' must be a non-empty list")
    xs: list[float] = []
    ys: list[float] = []
    for i, s in enumerate(steps):
        try:
            n = int(s["num_tokens"])
            kv = float(s.get("kv_tokens", n))
            pairs = float(s.get("attn_pairs", kv))
            c = cost.step_cost(n, pairs, kv, int(s.get("num_seqs", 1)))
            xs.append(max(c.compute_s, c.memory_s))
            ys.append(float(s["time_s"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration {source}: step {i}: {exc}") from exc
    if len(xs) == 1 or max(xs) == min(xs):
        overhead = cost.step_overhead_s
        scale = max(sum(ys) / len(ys) - overhead, 1e-6) / (sum(xs) / len(xs))
        return Calibration(scale, overhead, source)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    scale = max(sxy / sxx, 1e-6)
    overhead = max(my - scale * mx, 0.0)
    return Calibration(scale, overhead, source)


def step_shapes(
    steps: object, source: str, key: str = "time_s"
) -> tuple[list[StepShape], list[float]]:
    """Shapes and times (``key``: ``time_s`` or ``cpu_s``) of measured steps (the ``steps``
    list of a calibration file). Steps of one ``scenario`` (repeats of one point) count once,
    at their mean time: a step's time has a long tail, and latencies add up means."""
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"calibration {source}: 'steps' must be a non-empty list")
    shapes: list[StepShape] = []
    times: list[float] = []
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(steps):
        try:
            n = int(s["num_tokens"])
            b = int(s.get("num_seqs", 1))
            kv = float(s.get("kv_tokens", n))
            pairs = float(s.get("attn_pairs", kv))
            if n < 1 or b < 1 or kv < n:
                raise ValueError("needs num_tokens >= 1, num_seqs >= 1, kv_tokens >= num_tokens")
            shapes.append(StepShape(n, b, kv, pairs, int(s.get("max_q", -(-n // b))),
                                    int(s.get("max_kv", math.ceil(kv / b)))))
            times.append(float(s[key]))
            if not math.isfinite(times[-1]) or times[-1] <= 0:
                raise ValueError(f"{key} must be > 0")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration {source}: step {i}: {exc}") from exc
        groups.setdefault(str(s.get("scenario", f"#{i}")), []).append(i)
    firsts = sorted(idx[0] for idx in groups.values())
    mean = {idx[0]: sum(times[i] for i in idx) / len(idx) for idx in groups.values()}
    return [shapes[i] for i in firsts], [mean[i] for i in firsts]


def fit_step_model(steps: object, source: str) -> tuple[StepModel, FitReport, bool]:
    """A step model fitted to the CPU time of the steps when every step has one (what the
    sweep records), else to their wall time; and whether it was CPU time."""
    cpu = isinstance(steps, list) and all(
        isinstance(s, dict) and isinstance(s.get("cpu_s"), int | float) and s["cpu_s"] > 0
        for s in steps)
    shapes, times = step_shapes(steps, source, "cpu_s" if cpu else "time_s")
    model, report = StepModel.fit(shapes, times)
    return model, report, cpu


def _fit_linear(steps: object, source: str) -> Calibration:
    model, report, cpu = fit_step_model(steps, source)
    log.info("calibration %s: step model fitted to %d steps' %s time, relative error rms "
             "%.1f%%, max %.1f%%", source, report.num_samples, "CPU" if cpu else "wall",
             100 * report.rms_relative_error, 100 * report.max_relative_error)
    return Calibration(source=source, step_model=model, cpu_time=cpu)
