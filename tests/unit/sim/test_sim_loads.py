"""A simulated worker loads a model the way a live one does: the weights take their pages all
at once when they fit (a live Load is refused otherwise), so a load never starves the requests
the worker already has; once the drained model has gone, the load goes through."""

from __future__ import annotations

import pytest

from kvfleet.policies import policy_set
from kvfleet.sim.cost_model import CostModel
from kvfleet.sim.presets import gpu_preset, model_preset
from kvfleet.sim.seq import SimSeq
from kvfleet.sim.worker import SimWorker, WorkerConfig

pytestmark = pytest.mark.unit

H100 = gpu_preset("H100")


def make_worker(pages: int = 100) -> SimWorker:
    costs = {m: CostModel(H100, model_preset(m), 1) for m in ("Llama-3.2-1B", "Qwen2-1.5B")}
    cfg = WorkerConfig("w", ("Llama-3.2-1B",), pages, {"Llama-3.2-1B": 16}, token_budget=256)
    worker = SimWorker(0, cfg, {"Llama-3.2-1B": costs["Llama-3.2-1B"]},
                       policy_set("vllm").batch())
    # Page size 1 byte: each model's weight bytes are its pages. The resident model's weights
    # free 60 pages when it leaves; the new model needs 150, more than the 100 free now.
    worker.catalog(costs, {"Llama-3.2-1B": 16, "Qwen2-1.5B": 16},
                   {"Llama-3.2-1B": 60, "Qwen2-1.5B": 150}, 1)
    return worker


def run_until_idle(worker: SimWorker, wake: float | None, done: list[SimSeq]) -> float:
    now = 0.0
    while wake is not None:
        now = wake
        wake = worker.on_boundary(now, done, [], None)
        worker.check()
    return now


def test_a_load_that_does_not_fit_waits_without_starving_the_running_requests():
    worker = make_worker()
    seq = SimSeq(0, "r0", "Llama-3.2-1B", 0.0, 320, 40)  # 20 pages of prompt, then grows
    wake = worker.enqueue(seq, 0.0)
    worker.begin_load("Qwen2-1.5B", 2.0, 0.0)
    assert worker.load_refused  # 150 pages do not fit in the 100 free
    assert worker.free_pages == 100  # and it holds none of them
    worker.begin_unload("Llama-3.2-1B", 0.0)  # the reconciler's answer to a refused load
    done: list[SimSeq] = []
    run_until_idle(worker, wake, done)
    assert done == [seq] and seq.finish_s > 0  # the drained model's request ran
    # ... then the model left, its 60 pages came back, and the load took its 150 at once.
    assert worker.models == ()
    assert not worker.load_refused
    assert worker.started_loads == [("Qwen2-1.5B", 2.0)]
    worker.started_loads.clear()
    worker.finish_load("Qwen2-1.5B", 5.0)
    assert worker.models == ("Qwen2-1.5B",)
    assert worker.total_pages == 100 + 60 - 150 and worker.free_pages == worker.total_pages


def test_a_load_that_fits_takes_its_pages_at_once():
    worker = make_worker(pages=400)
    worker.begin_load("Qwen2-1.5B", 2.0, 0.0)
    assert not worker.load_refused
    assert worker.free_pages == 250 and worker.started_loads == [("Qwen2-1.5B", 2.0)]
