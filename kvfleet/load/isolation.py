"""Each request's latency alone on an idle worker, for the normalised-latency metric.

Method (``--isolation-probe``): before the run, while the stack is idle, the load generator
sends each model's probes one at a time: a short and a long prompt (the workload's 10th and
90th percentile input lengths), each asking for ``PROBE_OUTPUT_TOKENS`` tokens, each twice
(the faster run kept, as the idle figure). From them it fits, per model, the time to the first
token as a line in the prompt length and the time per further token as a constant. A
request's isolated latency is then ``ttft(prompt) + (output - 1) * tpot``, measured through
the same path as the run (gateway, scheduler, worker), so the ratio only counts what the
other requests cost it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from kvfleet.load.client import LoadClient
from kvfleet.load.metrics import RequestRecord
from kvfleet.load.runner import prepare
from kvfleet.load.tokens import PromptBuilder
from kvfleet.workload.spec import RequestSpec

log = logging.getLogger(__name__)

PROBE_OUTPUT_TOKENS = 16
PROBE_REPEATS = 2


@dataclass(frozen=True, slots=True)
class IsolatedLatency:
    """``ttft(p) = ttft0_s + ttft_per_token_s * p``; then ``tpot_s`` per further token."""

    ttft0_s: float
    ttft_per_token_s: float
    tpot_s: float

    def estimate(self, prompt_tokens: int, output_tokens: int) -> float:
        ttft = self.ttft0_s + self.ttft_per_token_s * prompt_tokens
        return max(ttft, 1e-6) + max(output_tokens - 1, 0) * self.tpot_s

    def to_dict(self) -> dict[str, float]:
        return {"ttft0_s": self.ttft0_s, "ttft_per_token_s": self.ttft_per_token_s,
                "tpot_s": self.tpot_s}


async def probe(client: LoadClient, builders: Mapping[str, PromptBuilder],
                specs: Sequence[RequestSpec]) -> dict[str, IsolatedLatency]:
    """Probe every model of ``specs`` on the idle target (see the module doc)."""
    out: dict[str, IsolatedLatency] = {}
    for model in sorted({s.model for s in specs}):
        inputs = np.array([s.input_tokens for s in specs if s.model == model])
        lengths = sorted({max(int(np.percentile(inputs, q)), 1) for q in (10, 90)})
        points: list[tuple[int, float, float]] = []  # (prompt, ttft, tpot)
        for n in lengths:
            best: tuple[float, float] | None = None
            for k in range(PROBE_REPEATS):
                spec = RequestSpec(f"probe-{model}-{n}-{k}", 0.0, model, n, PROBE_OUTPUT_TOKENS)
                req = prepare([spec], dict(builders))[0]
                outcome = await client.send(req, model)
                t = outcome.timer
                if not outcome.success or t.ttft_s is None or t.e2el_s is None:
                    raise RuntimeError(f"isolation probe for {model} failed: {outcome.error}")
                tpot = (t.e2el_s - t.ttft_s) / max(outcome.output_tokens - 1, 1)
                if best is None or t.e2el_s < best[0] + best[1] * (PROBE_OUTPUT_TOKENS - 1):
                    best = (t.ttft_s, tpot)
            assert best is not None
            points.append((n, *best))
        if len(points) == 2 and points[1][0] > points[0][0]:
            slope = max((points[1][1] - points[0][1]) / (points[1][0] - points[0][0]), 0.0)
        else:
            slope = 0.0
        base = min(p[1] - slope * p[0] for p in points)
        out[model] = IsolatedLatency(max(base, 0.0), slope,
                                     float(np.mean([p[2] for p in points])))
        log.info("isolated latency of %s: %s", model, out[model])
    return out


def with_isolated(records: Sequence[RequestRecord], iso: Mapping[str, IsolatedLatency]
                  ) -> list[RequestRecord]:
    """The records with their isolated latency filled in (for the normalised latency)."""
    return [
        replace(r, isolated_s=iso[r.model].estimate(r.input_tokens, max(r.output_tokens, 1)))
        if r.model in iso else r
        for r in records
    ]
