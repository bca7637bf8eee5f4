"""Discrete-event cluster simulator over kvfleet's own policy cores (virtual clock).

Entry points: ``simulate(SimConfig(...), requests)`` -> ``SimResult``;
``write_outputs(result, out_dir)`` for requests.csv / summary.json / fleet.csv; and
``replay_dispatch(requests, workers, policy)`` for the dual-path test against the live stack.
"""

from kvfleet.sim.engine import SimResult, Simulator, simulate
from kvfleet.sim.fleet import SimConfig
from kvfleet.sim.replay import replay_dispatch

__all__ = ["SimConfig", "SimResult", "Simulator", "replay_dispatch", "simulate"]
