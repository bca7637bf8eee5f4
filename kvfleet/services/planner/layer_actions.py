"""Carrying out a layer action on a live fleet (the planner's overload loop and
``kvfleet admin drop|restore`` both go through here).

A drop first marks the later stages as draining, so that the scheduler sends them nothing
while they become stages (a request already on its way is refused and stays queued); the
mark is lifted once the group has formed, when their heartbeats show they take no requests
for the model on their own.
"""

from __future__ import annotations

from kvfleet.common.proto.worker.v1 import worker_pb2
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.worker_client import WorkerClient
from kvfleet.services.planner.core.overload import LayerAction


async def run_drop(
    store: RedisStore, workers: WorkerClient, action: LayerAction, addresses: dict[str, str],
    timeout_s: float,
) -> worker_pb2.DropLayersResponse:
    followers = [s.worker_id for s in action.stages[1:]]
    already = await store.draining()
    marked = [w for w in followers if w not in already]
    for w in marked:
        await store.set_draining(w, True)
    try:
        return await workers.drop_layers(
            addresses[action.leader_id], action.group_id, action.model,
            [(s.worker_id, addresses[s.worker_id], s.first_layer, s.last_layer)
             for s in action.stages],
            action.tokens_per_page, timeout_s)
    finally:
        for w in marked:
            await store.set_draining(w, False)


async def run_restore(
    workers: WorkerClient, action: LayerAction, address: str, timeout_s: float
) -> worker_pb2.RestoreLayersResponse:
    return await workers.restore_layers(address, action.model, action.group_id, timeout_s)
