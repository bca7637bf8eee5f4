"""SeaLLM's evaluation in the simulator: many models of 1B to 70B sharing a GPU fleet, with
per-model load from the ServeGen pools (each model a pool at its own hour of the pool's
diurnal pattern and its own scale), per-model SLOs, and the four policy sets compared on the
same requests: ``dedicated``, ``muxserve``, ``alpaserve`` and ``seallm``.

``kvfleet sim seallm-eval`` runs it; every figure comes from one seeded command.

SLOs. Each model's targets are ``slo_scale`` times what its mean request takes alone on the
fewest GPUs that hold it: the TTFT of its mean prompt and the time per output token (the
usual way multi-model papers set per-model SLOs, so a 70B model is not held to a 1B model's
speed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kvfleet.load.slo import Slo, SloSet
from kvfleet.sim.fleet import SimConfig, reference_costs
from kvfleet.workload.options import WorkloadOptions, build_workload
from kvfleet.workload.spec import RequestSpec

log = logging.getLogger(__name__)

# (model preset, ServeGen pool @ start offset in the pool's time * rate scale). Offsets put
# the pools at different hours, so the models' loads rise and fall at different times.
MODELS_12: tuple[tuple[str, str], ...] = (
    ("Llama-3.2-1B", "m-small@0*0.004"),
    ("Qwen2-1.5B", "m-small@43200*0.003"),
    ("Llama-3.2-3B", "m-mid@21600*0.0015"),
    ("Llama-2-7B", "m-small@64800*0.002"),
    ("Mistral-7B", "m-mid@0*0.0012"),
    ("Qwen2-7B", "mm-image@0*0.25"),
    ("Llama-3-8B", "m-large@0*0.012"),
    ("Llama-2-13B", "m-large@43200*0.008"),
    ("Qwen2.5-14B", "m-mid@64800*0.0006"),
    ("Qwen2.5-32B", "m-large@21600*0.004"),
    ("Yi-34B", "mm-image@43200*0.15"),
    ("Llama-3-70B", "deepseek-r1@0*0.06"),
)
MODELS_6 = tuple(MODELS_12[i] for i in (0, 4, 6, 7, 9, 11))
SCENARIOS = {"6": MODELS_6, "12": MODELS_12}
POLICIES = ("dedicated", "muxserve", "alpaserve", "seallm")


@dataclass(frozen=True, slots=True)
class Scenario:
    models: tuple[tuple[str, str], ...]
    start_s: float = 36000.0  # 10:00 in every pool's first day
    duration_s: float = 7200.0  # of pool time
    speed: float = 4.0  # replayed this much faster (rates x speed)
    rate_scale: float = 1.0
    max_input: int = 4096
    max_output: int = 2048
    slo_scale: float = 5.0
    seed: int = 0

    def workload(self) -> list[RequestSpec]:
        pools = ",".join(p for _, p in self.models)
        names = ",".join(m for m, _ in self.models)
        opts = WorkloadOptions(
            trace=f"servegen:{pools}", model=names, start_s=self.start_s,
            duration_s=self.duration_s, speed=self.speed, rate_scale=self.rate_scale,
            max_input=self.max_input, max_output=self.max_output, seed=self.seed,
        )
        return build_workload(opts, require_model=False)

    def slos(self, config: SimConfig, requests: list[RequestSpec]) -> SloSet:
        """Per-model SLOs: ``slo_scale`` x the mean request's isolated TTFT and TPOT."""
        names = [m for m, _ in self.models]
        ref = reference_costs(config, names)
        per: dict[str, Slo] = {}
        for m in names:
            mine = [r for r in requests if r.model == m]
            prompt = int(sum(r.input_tokens for r in mine) / len(mine)) if mine else 512
            ttft = ref[m].prefill_s(max(prompt, 1))
            tpot = ref[m].per_token_s(prompt)
            per[m] = Slo(ttft_s=self.slo_scale * ttft, tpot_s=self.slo_scale * tpot)
        return SloSet(None, per)


def config_for(policy: str, models: list[str], num_gpus: int, **extra: object) -> SimConfig:
    return SimConfig(policy=policy, gpu="H100", models=models, num_gpus=num_gpus,
                     predictor="online", **extra)  # type: ignore[arg-type]


HEADLINE = (  # (summary key, label, lower is better)
    ("mean_normalized_latency", "mean normalised latency", True),
    ("p99_normalized_latency", "p99 normalised latency", True),
    ("p99_e2el_ms", "p99 latency", True),
    ("slo_attainment", "SLO attainment", False),
)


def ratios(summaries: dict[str, dict[str, object]], policy: str = "seallm"
           ) -> dict[str, dict[str, object]]:
    """For each headline metric: the best baseline's value, ``policy``'s, and the factor by
    which ``policy`` is better (baseline/ours for latencies, ours/baseline for attainment)."""
    out: dict[str, dict[str, object]] = {}
    ours = summaries[policy]
    for key, label, lower in HEADLINE:
        base = {p: s.get(key) for p, s in summaries.items()
                if p != policy and isinstance(s.get(key), int | float)}
        mine = ours.get(key)
        if not base or not isinstance(mine, int | float):
            continue
        best = min(base, key=lambda p: base[p]) if lower else max(base, key=lambda p: base[p])
        b = float(base[best])  # type: ignore[arg-type]
        m = float(mine)
        factor = (b / m if m > 0 else None) if lower else (m / b if b > 0 else None)
        out[key] = {"label": label, "best_baseline": best, "baseline": b, policy: m,
                    "factor": factor}
    return out
