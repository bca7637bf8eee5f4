import os
import time

import pytest

from kvfleet.load.machine import MachineLoad, MachineSampler, background_weight, cpu_cores

pytestmark = pytest.mark.unit


def test_the_sampler_sees_our_cpu_time_and_the_machine():
    with MachineSampler({"me": os.getpid()}, interval_s=0.02) as s:
        # Busy for 0.3 s at least, and until the sampler thread has had its turns (on a busy
        # machine it may wait a while for the GIL); 10 s at most.
        start = time.perf_counter()
        x = 0
        while time.perf_counter() < start + 10.0 and (
            time.perf_counter() < start + 0.3 or len(s.load.samples) < 3
        ):
            x += 1
    load = s.load
    assert load.num_samples >= 3 and load.wall_s >= 0.3
    assert load.cpu_s["me"] > 0.0 and load.cores == cpu_cores() >= 1
    assert load.ours >= 1.0  # this thread was running at every sample
    assert load.background >= 0.0 and load.cores_used() > 0.0


def test_background_in_windows():
    load = MachineLoad(samples=[(100.0, 5, 1), (100.4, 3, 1), (101.2, 9, 2), (103.5, 2, 2)])
    assert load.background_series(t0=99.0) == [(1.0, 3.0), (2.0, 7.0), (4.0, 0.0)]


def test_how_hard_the_background_competes():
    # one busy thread got a quarter of 2 cores beside 10 runnable threads: fair sharing
    # among 1 + w x 10 gives 2 / 8 when w = 0.7
    busy = MachineLoad(wall_s=100.0, cpu_s={"sweep": 25.0}, runnable=11.0, ours=1.0, cores=2)
    assert background_weight(busy, "sweep") == pytest.approx(0.7)
    idle = MachineLoad(wall_s=100.0, cpu_s={"sweep": 99.0}, runnable=1.2, ours=1.0, cores=2)
    assert background_weight(idle, "sweep") == 1.0
    assert background_weight(MachineLoad(), "sweep") == 1.0
