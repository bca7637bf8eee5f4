"""Measured engine steps over a grid of batch shapes, for the simulator's step-time model.

Each point sets up sequences in an engine configured like a worker's and times whole engine
steps (``step()`` then ``occupancy()``, what a worker's loop runs per step): decode batches
of several sizes and context lengths, prefill chunks of several sizes after some cached
context, several prompts prefilled together, a prefill chunk beside a decode batch, and a
decode batch with one long sequence among short ones. Sequences that need KV already
written come in through the engine's own import path (the migration format) with zeroed KV,
so no prefill has to run first: step times do not depend on KV values.

Every step records its shape as the batch policy planned it (wrapped to watch), its wall
time and the CPU time the engine spent on it (the stepping thread's, with one torch thread;
the process's otherwise): on a busy machine the wall time says as much about the other work
there as about the engine, the CPU time does not. ``kvfleet.sim.cost_model.load_calibration``
fits the simulator's step model to them.
Step times change whenever the engine does, so they are measured when needed, never kept.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from kvfleet.services.worker.core.batch_policy import BatchPolicy, EngineView, StepPlan
from kvfleet.services.worker.engine.config import EngineConfig
from kvfleet.services.worker.engine.engine import Engine
from kvfleet.services.worker.engine.types import EngineRequest, SamplingParams, SequenceExport

log = logging.getLogger(__name__)

SWEEP_KIND = "kvfleet-step-sweep"


@dataclass(frozen=True, slots=True)
class SweepGrid:
    """Which steps to measure. Points that do not fit the pool, the token budget or the
    model's context are left out."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    contexts: tuple[int, ...] = (32, 256, 1024)
    prefill_chunks: tuple[int, ...] = (16, 64, 256, 1024, 2048)
    prefill_contexts: tuple[int, ...] = (0, 1024)
    prefill_batch_chunks: tuple[int, ...] = (16, 128)  # prompts prefilled together, each
    repeats: int = 3
    max_kv_tokens: int = 32768  # most tokens of KV one point sets up
    #: Largest batch x longest chunk x longest context of a point: an engine that pads
    #: attention spends long on such steps (they are measured up to here, then extrapolated).
    max_padded_pairs: int = 1 << 22
    seed: int = 0

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError("repeats must be >= 1")
        for name in ("batch_sizes", "contexts", "prefill_chunks"):
            values = getattr(self, name)
            if not values or any(v < 1 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive numbers")
        if any(c < 0 for c in self.prefill_contexts):
            raise ValueError("prefill_contexts must be >= 0")


@dataclass(frozen=True, slots=True)
class StepSample:
    """One measured step of one model: its chunks' counts and its time."""

    scenario: str
    num_tokens: int
    num_seqs: int
    kv_tokens: int
    attn_pairs: float
    max_q: int
    max_kv: int
    time_s: float
    cpu_s: float = 0.0


@dataclass
class SweepResult:
    model: str
    engine: dict[str, Any]
    threads: int
    steps: list[StepSample] = field(default_factory=list)
    wall_s: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The calibration file ``load_calibration`` reads (``fit: linear``)."""
        return {
            "kind": SWEEP_KIND,
            "fit": "linear",
            "model": self.model,
            "engine": self.engine,
            "threads": self.threads,
            "wall_s": self.wall_s,
            "skipped": self.skipped,
            "steps": [asdict(s) for s in self.steps],
        }


class _Watch:
    """A batch policy that records the last view and plan of the policy it wraps."""

    def __init__(self, inner: BatchPolicy) -> None:
        self.inner = inner
        self.name = inner.name
        self.last: tuple[EngineView, StepPlan] | None = None

    def plan(self, view: EngineView, now_s: float) -> StepPlan:
        plan = self.inner.plan(view, now_s)
        self.last = (view, plan)
        return plan


class _Bench:
    def __init__(self, engine: Engine, model: str, seed: int) -> None:
        self.eng = engine
        self.model = model
        m = engine.model(model)
        self.spec = m.spec
        self.tpp = m.layout.tokens_per_page
        self.watch = _Watch(engine.policy)
        engine.policy = self.watch
        self.rng = random.Random(seed)
        self.n = 0
        shape = (m.stage.num_layers, 2, 0, self.spec.num_kv_heads, self.spec.head_dim)
        self._kv_shape = shape
        self._zeros = torch.zeros((*shape[:2], 1, *shape[3:]), dtype=engine.dtype)
        self._meta = self._template()

    def _template(self) -> dict[str, Any]:
        """The meta of a real export (whatever fields the format has), to copy from."""
        rid = "sweep-template"
        self.eng.add_request(EngineRequest(rid, self.model, tuple(self._ids(2)),
                                           SamplingParams(max_tokens=2, ignore_eos=True)))
        self.eng.step()
        meta = dict(self.eng.export_sequence(rid, 0, stop=True).meta)
        self.drain()
        return meta

    # ----- setting up sequences -----
    def _ids(self, n: int) -> list[int]:
        top = self.spec.vocab_size
        return [self.rng.randrange(min(100, top - 1), top) for _ in range(n)]

    def _kv(self, n: int) -> torch.Tensor:
        return self._zeros.expand(*self._kv_shape[:2], n, *self._kv_shape[3:])

    def put(self, cached: int, new: int, more: int) -> str:
        """A sequence with ``cached`` tokens of KV written and ``new`` tokens to feed: a
        decode (``new`` 1: its last token was sampled) or a prefill chunk after a cached
        prefix. It finishes after ``more`` sampled tokens."""
        self.n += 1
        rid = f"sweep-{self.n}"
        if cached == 0:
            self.eng.add_request(EngineRequest(
                rid, self.model, tuple(self._ids(new)),
                SamplingParams(max_tokens=more, ignore_eos=True)))
            return rid
        decoding = new == 1
        prompt = self._ids(cached + (0 if decoding else new))
        output = self._ids(1) if decoding else []
        kv = self._kv(cached)
        meta = {
            **self._meta, "request_id": rid, "arrival_s": 0.0,
            "prompt_token_ids": prompt, "output_token_ids": output,
            "sampling": SamplingParams(max_tokens=len(output) + more, ignore_eos=True).to_dict(),
            "text": "", "num_emitted_chars": 0, "token_range": [0, cached],
            "shape": list(kv.shape),
        }
        self.eng.import_sequence(SequenceExport(meta, [kv]))
        return rid

    def fits(self, tokens: int) -> bool:
        return -(-tokens // self.tpp) + 8 <= self.eng.pool.num_free_pages

    # ----- timing -----
    def step(self, scenario: str, out: list[StepSample]) -> None:
        clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
        t0, c0 = time.perf_counter(), clock()
        self.eng.step()
        self.eng.occupancy()
        dt, cpu = time.perf_counter() - t0, clock() - c0
        assert self.watch.last is not None
        view, plan = self.watch.last
        self.watch.last = None
        seqs = {s.seq_id: s for s in (*view.running, *view.waiting)}
        chunks = [(seqs[c.seq_id].num_computed_tokens, c.num_tokens) for c in plan.chunks]
        if not chunks:
            return
        out.append(StepSample(
            scenario, sum(n for _, n in chunks), len(chunks), sum(c + n for c, n in chunks),
            sum(n * c + n * (n + 1) / 2 for c, n in chunks), max(n for _, n in chunks),
            max(c + n for c, n in chunks), dt, cpu,
        ))

    def drain(self) -> None:
        while self.eng.has_unfinished():
            self.eng.step()


def _points(grid: SweepGrid, budget: int, max_seqs: int, context: int) -> Iterable[
        tuple[str, list[tuple[int, int]], int]]:
    """(scenario, [(cached, new)] per sequence, steps to time) for every point."""
    ok_batches = [b for b in grid.batch_sizes if b <= max_seqs]
    for b in ok_batches:
        for ctx in grid.contexts:
            if b * ctx <= grid.max_kv_tokens and ctx + grid.repeats < context:
                yield f"decode b={b} ctx={ctx}", [(ctx, 1)] * b, grid.repeats
    for n in grid.prefill_chunks:
        for c in grid.prefill_contexts:
            if n <= budget and c + n < context and c + n <= grid.max_kv_tokens:
                for _ in range(grid.repeats):
                    yield f"prefill n={n} ctx={c}", [(c, n)], 1
    for b in ok_batches[1::2]:
        n = budget // b
        for size in sorted({min(n, k) for k in grid.prefill_batch_chunks}):
            if size >= 1 and b * size * size <= grid.max_padded_pairs:
                for _ in range(grid.repeats):
                    yield f"prefill {b}x{size}", [(0, size)] * b, 1
    ctx = grid.contexts[len(grid.contexts) // 2]
    for b in ok_batches[1:]:
        for n in grid.prefill_chunks:
            if (b - 1 + n <= budget and b * ctx + n <= grid.max_kv_tokens
                    and b * n * max(n, ctx + 1) <= grid.max_padded_pairs):
                for _ in range(grid.repeats):
                    yield f"mixed b={b} ctx={ctx} n={n}", [(ctx, 1)] * (b - 1) + [(0, n)], 1
    long, short = max(grid.contexts), min(grid.contexts)
    for b in ok_batches[2::2]:
        if long + (b - 1) * short <= grid.max_kv_tokens and long + grid.repeats < context:
            yield f"uneven b={b} {long}+{short}", [(long, 1)] + [(short, 1)] * (b - 1), grid.repeats


def sweep_steps(
    model: str,
    engine_config: EngineConfig,
    grid: SweepGrid = SweepGrid(),
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Load ``model`` in an engine configured as given and measure the grid's steps."""
    eng = Engine(engine_config)
    eng.load_model(model)
    return sweep_on(eng, model, grid, progress)


def sweep_on(
    eng: Engine,
    model: str,
    grid: SweepGrid = SweepGrid(),
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Measure the grid's steps on an idle engine that holds ``model`` (its batch policy is
    watched during the sweep and given back afterwards)."""
    if eng.has_unfinished():
        raise ValueError("the engine must be idle to be measured")
    started = time.perf_counter()
    bench = _Bench(eng, model, grid.seed)
    try:
        result = _measure(eng, bench, grid, progress)
    finally:
        eng.policy = bench.watch.inner
    result.wall_s = time.perf_counter() - started
    return result


def _measure(
    eng: Engine, bench: _Bench, grid: SweepGrid, progress: Callable[[str], None] | None
) -> SweepResult:
    config = eng.config
    budget = config.max_num_batched_tokens
    result = SweepResult(bench.model, config.model_dump(), torch.get_num_threads())
    context = bench.spec.max_context_tokens
    # warm-up: a prefill and a few decode steps
    bench.put(0, min(64, budget), 3)
    bench.put(32, 1, 3)
    bench.drain()
    for scenario, seqs, steps in _points(grid, budget, config.max_num_seqs, context):
        if not bench.fits(sum(c + n + steps for c, n in seqs)):
            if scenario not in result.skipped:
                result.skipped.append(scenario)
            continue
        for c, n in seqs:
            bench.put(c, n, steps)
        for _ in range(steps):
            bench.step(scenario, result.steps)
        bench.drain()
        if progress is not None:
            last = [s.time_s for s in result.steps if s.scenario == scenario]
            progress(f"{scenario}: {1000 * statistics.median(last):.1f} ms" if last else scenario)
    return result
