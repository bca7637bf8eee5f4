"""KunServe in the simulator: a burst that overflows KV forms pipeline groups (memory grows
during the run, requests keep their progress), the burst passes and the groups are restored;
page accounting holds after every event. The overload policy decides the same from a live
heartbeat (JSON through Redis's schema) as from the simulated worker's state. The pipeline
step-time model charges the stages, hops and bubbles."""

from __future__ import annotations

import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.policies import policy_set
from kvfleet.services.planner.core.overload import FleetLoad, overload_views
from kvfleet.sim import SimConfig, Simulator
from kvfleet.sim.cost_model import CostModel
from kvfleet.sim.groups import PipelineCost
from kvfleet.sim.presets import gpu_preset, link_preset, model_preset
from kvfleet.sim.workload import SimRequest

pytestmark = pytest.mark.unit


def _config(policy: str) -> SimConfig:
    # A 7B model on one 24 GB GPU: its weights are as large as its KV, so dropping half the
    # layers nearly doubles a pair's KV.
    return SimConfig(num_gpus=4, tp=1, policy=policy, gpu="RTX4090", models=["Llama-2-7B"],
                     gpus_per_node=2,
                     overload={"overload_hold_s": 0.5, "restore_hold_s": 2.0,
                               "cooldown_s": 1.0, "interval_s": 0.25})


def _burst() -> list[SimRequest]:
    calm = [SimRequest(f"c{i}", 0.5 * i, "m", 400, 100) for i in range(10)]
    burst = [SimRequest(f"b{i}", 6.0 + 0.05 * i, "m", 1500 + 37 * (i % 5), 400)
             for i in range(60)]
    after = [SimRequest(f"a{i}", 80.0 + 0.5 * i, "m", 300, 50) for i in range(10)]
    return calm + burst + after


class _Twin:
    """Runs a second copy of the policy on views built as the live planner builds them."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.twin = policy_set("kunserve").overload()
        self.twin.configure(sim.config.overload.thresholds())
        self.decisions: list[tuple[float, tuple]] = []
        self.original = sim.overload.decide
        sim.overload.decide = self.decide  # type: ignore[method-assign]

    def decide(self, fleet: FleetLoad, now_s: float):  # type: ignore[no-untyped-def]
        ours = self.original(fleet, now_s)
        beats = []
        for w in self.sim.workers:
            snap = w._snapshot()
            occ = rs.Occupancy(w.worker_id, snap.models, snap.num_total_pages,
                               snap.num_free_pages, snap.num_reserved_pages,
                               snap.tokens_per_page, snap.num_running, snap.num_waiting,
                               False, now_s, snap.num_queued_pages, "b", 0, (),
                               snap.page_size_bytes, snap.layers, snap.shapes, snap.groups,
                               snap.node)
            beats.append(rs.Occupancy.from_json(occ.to_json()).report())
        assert self.sim.keeper is not None
        live = FleetLoad(tuple(overload_views(beats, self.sim.keeper.busy())),
                         fleet.queued_tokens)
        theirs = self.twin.decide(live, now_s)
        assert theirs == ours
        if ours:
            self.decisions.append((now_s, ours))
        return ours


def test_burst_forms_groups_that_are_restored_with_accounting_and_same_decisions_live():
    reqs = _burst()
    sim = Simulator(_config("kunserve"), reqs, check_invariants=True)
    twin = _Twin(sim)
    result = sim.run()
    assert all(s.finish_s > 0 and not s.drop_reason for s in result.seqs)
    kinds = [a["kind"] for a in result.layer_actions]
    assert "drop" in kinds and "restore" in kinds
    assert kinds.index("drop") < kinds.index("restore")
    drop = next(a for a in result.layer_actions if a["kind"] == "drop")
    assert drop["ranges"] == [[0, 16], [16, 32]] and drop["time_to_drop_s"] > 0
    assert len(set(drop["members"])) == 2
    assert twin.decisions
    for w in result.workers:  # every group dissolved and every page is back
        assert not w.groups and w.free_pages == w.total_pages
    # a burst the baseline queues is served sooner once the pair's weights became KV
    base = Simulator(_config("vllm"), reqs).run()
    ttft = {s.request_id: s.first_token_s - s.arrival_s for s in result.seqs}
    base_ttft = {s.request_id: s.first_token_s - s.arrival_s for s in base.seqs}
    late = sorted(base_ttft[f"b{i}"] for i in range(60))[-6:]
    ours = sorted(ttft[f"b{i}"] for i in range(60))[-6:]
    assert sum(ours) < sum(late)


def test_pipeline_step_time_charges_stages_hops_and_bubbles():
    gpu, model = gpu_preset("H100"), model_preset("Llama-3-8B")
    base = CostModel(gpu, model)
    two = PipelineCost(base, ((0, 16), (16, 32)), link_preset("nvlink"))
    # one request: a single lane crosses both stages in turn (the other stage idles)
    assert two.lanes(1) == 1
    one = base.decode_s(1, 2000)
    assert one < two.step_s(1, 2000, 2000, 1) < 1.2 * one
    # a pair's requests together: two lanes overlap, a round costs about one replica's step
    # over half of them, plus hops
    assert two.lanes(64) == 2
    half = base.decode_s(32, 32 * 1000)
    both = two.step_s(64, 64 * 1000, 64 * 1000, 64)
    assert half < both < 1.25 * half
    # a run of decode steps is summed in closed form as the single worker's is
    run = two.decode_run(64, 64 * 1000)
    assert run.time_of(1) == pytest.approx(both, rel=1e-6)
    # the worker's step call carries the longest query and context (for fitted step models)
    assert two.step_s(64, 64 * 1000, 64 * 1000, 64, 1, 1000) == pytest.approx(both, rel=1e-9)
    assert two.decode_run(64, 64 * 1000, 1000).time_of(1) == pytest.approx(both, rel=1e-6)
