"""Which workers are active and which idle, recorded over time.

A live worker is active while it holds a request or has one assigned (its heartbeat counts
running or waiting requests, or the request registry lists one for it) and idle otherwise.
The planner records both lists on a tick in the ``fleet-activity`` stream; ``kvfleet admin
status`` shows them, and a cluster autoscaler can give idle workers' GPUs back (a packing
policy such as MELL keeps new work off idle workers while busy ones have room).
"""

from __future__ import annotations

import time

from kvfleet.common import redis_schema as rs
from kvfleet.common.redis_store import RedisStore


async def fleet_activity(store: RedisStore, now_s: float) -> rs.FleetSample:
    active: list[str] = []
    idle: list[str] = []
    for wid, (_, occ) in sorted((await store.workers()).items()):
        if occ is None or occ.loading:
            continue
        busy = occ.num_running + occ.num_waiting > 0 or bool(await store.worker_requests(wid))
        (active if busy else idle).append(wid)
    return rs.FleetSample(now_s, tuple(active), tuple(idle))


async def record_activity(store: RedisStore) -> rs.FleetSample:
    sample = await fleet_activity(store, time.time())
    await store.add_fleet_sample(sample)
    return sample
