"""The simulator's migrations: stop-and-copy, live (multi-stage) and re-prefill, during
decode and during prefill, over links that carry one transfer at a time; and what MELL's
runs report (active and idle GPUs over time, peak GPUs, migrations per second)."""

import pytest

from kvfleet.policies import PolicySet, policy_set
from kvfleet.services.planner.core.migration import MigrationOrder
from kvfleet.services.scheduler.core.policy import BestFitPolicy
from kvfleet.services.worker.core.batch_policy import FcfsBatchPolicy
from kvfleet.sim import SimConfig, Simulator
from kvfleet.sim.engine import FLEET_COLUMNS
from kvfleet.sim.migration import Links
from kvfleet.sim.presets import LinkSpec
from kvfleet.sim.report import summarize
from kvfleet.sim.workload import SimRequest, poisson_requests

pytestmark = pytest.mark.unit


class MoveOnce:
    """Orders one migration of ``rid`` to the other worker at the first tick after ``at_s``."""

    name = "scripted"

    def __init__(self, rid: str, mode: str, at_s: float) -> None:
        self.rid, self.mode, self.at_s, self.done = rid, mode, at_s, False

    def decide(self, workers, now_s):
        if self.done or now_s < self.at_s:
            return ()
        for w in workers:
            if any(c.request_id == self.rid for c in w.items):
                other = next(o for o in workers if o.worker_id != w.worker_id)
                self.done = True
                return (MigrationOrder(self.rid, w.worker_id, other.worker_id, self.mode),)
        return ()


def run_one(mode: str, at_s: float, prompt: int = 6000, output: int = 400):
    policies = PolicySet("scripted", "", BestFitPolicy, FcfsBatchPolicy,
                         lambda: MoveOnce("r0", mode, at_s))
    cfg = SimConfig(num_gpus=2, tp=1, gpu="A100-80G", models=["Llama-2-7B"], link="25gbe",
                    migration_interval_s=0.05, policy="best-fit")
    sim = Simulator(cfg, [SimRequest("r0", 0.0, "m", prompt, output)], policies,
                    check_invariants=True)
    result = sim.run()
    seq = result.seqs[0]
    assert seq.finish_s > 0 and seq.num_output == output and seq.num_migrations == 1
    for w in result.workers:
        w.check()
        assert w.free_pages == w.total_pages and w.reserved_pages == 0
    return result


@pytest.mark.parametrize("mode", ["stop", "live", "reprefill"])
def test_a_decoding_request_moves_in_every_mode(mode):
    result = run_one(mode, at_s=1.0)
    assert result.migration_stats.by_mode == {mode: 1}
    assert result.workers[result.seqs[0].worker_idx].worker_id == "w0001"


def test_live_migration_pauses_for_the_last_pages_only():
    stop = run_one("stop", at_s=1.0).migration_stats.pauses_s[0]
    live = run_one("live", at_s=1.0).migration_stats.pauses_s[0]
    # 6k tokens of Llama-2-7B KV (3 GB) take ~1 s over 25 GbE; the live pause is the few
    # tokens decoded during that copy.
    assert stop > 0.9 and live < 0.05 * stop


def test_a_request_in_the_middle_of_its_prefill_moves_and_finishes_its_prefill_there():
    result = run_one("live", at_s=0.0, prompt=60_000, output=20)
    assert result.seqs[0].first_token_s > 0


def test_links_carry_one_transfer_at_a_time():
    links = Links(3, LinkSpec("l", 1000.0, 0.0))
    assert links.transfer(0, 1, 1000, now=0.0) == 1.0
    assert links.transfer(0, 2, 1000, now=0.0) == 2.0  # waits for w0's link
    assert links.transfer(2, 1, 500, now=0.0) == 2.5  # waits for both ends


def test_mell_packs_and_reports_active_and_idle_gpus_over_time(tmp_path):
    reqs = poisson_requests(300, 6.0, input_mean=1500, output_mean=400, max_input=6000,
                            max_output=1500, seed=5)
    cfg = SimConfig(num_gpus=12, tp=1, gpu="RTX4090", models=["Llama-2-7B"], policy="mell")
    result = Simulator(cfg, reqs, check_invariants=True).run()
    assert all(s.finish_s > 0 for s in result.seqs)
    summary = summarize(result)["sim"]
    assert summary["num_migrations"] > 0
    assert summary["peak_active_gpus"] >= summary["mean_active_gpus"] > 0
    assert summary["migrations_per_s"] > 0
    assert 0 < summary["mean_kv_utilization"] <= summary["mean_kv_utilization_active"] <= 1
    idle = FLEET_COLUMNS.index("idle_gpus")
    active = FLEET_COLUMNS.index("active_gpus")
    assert all(r[idle] + r[active] == 12 for r in result.fleet_rows)
    # Under this load the fleet never needs every GPU at once.
    spread = summarize(Simulator(cfg.model_copy(update={"policy": "llumnix"}), reqs).run())
    assert summary["mean_active_gpus"] < spread["sim"]["mean_active_gpus"]


def test_mell_is_registered_with_its_parts():
    s = policy_set("mell")
    assert (s.dispatch().name, s.migration().name) == ("packing", "mell")
