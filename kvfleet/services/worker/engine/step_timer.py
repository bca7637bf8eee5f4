"""Measured step costs: how long each model's part of a step takes on this engine.

The engine times every model's forward pass (and sampling) and fits ``seconds = a + b *
tokens`` per model by exponentially weighted least squares, so the figures follow the machine
as it is now (a shared CPU slows down, a GPU warms up). Until a model has been measured its
figures come from a prior built from its weight bytes. Batch policies read the result as
``ModelStepCost`` values in their view (``EngineView.step_costs``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvfleet.services.worker.core.step_cost import ModelStepCost

# A rough prior for an unmeasured model: weights streamed at 20 GB/s once a step, and 2 FLOPs
# per parameter per token at 50 GFLOP/s (a CPU core or two), plus a millisecond of overhead.
_PRIOR_BYTES_PER_S = 20e9
_PRIOR_FLOPS = 50e9
_PRIOR_OVERHEAD_S = 1e-3


@dataclass
class _Fit:
    prior: ModelStepCost
    decay: float
    s0: float = 0.0
    sn: float = 0.0
    snn: float = 0.0
    st: float = 0.0
    snt: float = 0.0

    def observe(self, num_tokens: int, seconds: float) -> None:
        d = self.decay
        n = float(num_tokens)
        self.s0 = self.s0 * d + 1.0
        self.sn = self.sn * d + n
        self.snn = self.snn * d + n * n
        self.st = self.st * d + seconds
        self.snt = self.snt * d + n * seconds

    def cost(self) -> ModelStepCost:
        if self.s0 < 1.0:
            return self.prior
        det = self.s0 * self.snn - self.sn * self.sn
        if det > 1e-9 * max(self.s0 * self.snn, 1.0):
            b = (self.s0 * self.snt - self.sn * self.st) / det
        else:  # every step fed the same number of tokens: keep the prior's slope
            b = self.prior.s_per_token
        b = max(b, 0.0)
        a = max((self.st - b * self.sn) / self.s0, 0.0)
        return ModelStepCost(s_per_token=b, overhead_s=a)


class StepTimer:
    """Per-model fits of measured step times."""

    def __init__(self, decay: float = 0.98) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError("decay must be in (0, 1]")
        self.decay = decay
        self._fits: dict[str, _Fit] = {}
        self._costs: dict[str, ModelStepCost] = {}

    def add_model(self, model: str, weight_bytes: int) -> None:
        params = weight_bytes / 4.0
        prior = ModelStepCost(
            s_per_token=2.0 * params / _PRIOR_FLOPS,
            overhead_s=_PRIOR_OVERHEAD_S + weight_bytes / _PRIOR_BYTES_PER_S,
        )
        self._fits[model] = _Fit(prior, self.decay)
        self._costs[model] = prior

    def remove_model(self, model: str) -> None:
        self._fits.pop(model, None)
        self._costs.pop(model, None)

    def observe(self, model: str, num_tokens: int, seconds: float) -> None:
        fit = self._fits.get(model)
        if fit is None or seconds < 0:
            return
        fit.observe(num_tokens, seconds)
        self._costs[model] = fit.cost()

    def costs(self) -> dict[str, ModelStepCost]:
        """The current figures (a copy; the caller may keep it)."""
        return dict(self._costs)
