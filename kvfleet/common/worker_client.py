"""Calls to workers from the scheduler (assign, migrate) and the planner (load, unload,
migrate, drop and restore layers)."""

from __future__ import annotations

from kvfleet.common import redis_schema as rs
from kvfleet.common.convert import sampling_to_pb, service_level_to_pb
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.grpc_util import ChannelPool
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc


class WorkerClient:
    def __init__(self, timeout_s: float, security: FleetSecurity | None = None) -> None:
        self._pool = ChannelPool(security)
        self._timeout_s = timeout_s

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        return worker_pb2_grpc.WorkerStub(self._pool.get(address))

    async def assign(
        self, address: str, rec: rs.RequestRecord, output: list[int], lease: int = 0
    ) -> worker_pb2.AssignResponse:
        return await self._stub(address).Assign(
            worker_pb2.AssignRequest(
                request_id=rec.request_id, model=rec.model,
                prompt_token_ids=list(rec.prompt_token_ids), output_token_ids=output,
                sampling=sampling_to_pb(rec.sampling), arrival_s=rec.arrival_s,
                service_level=service_level_to_pb(rec.slo),
                predicted_output_tokens=rec.predicted_output_tokens, lease=lease,
            ),
            timeout=self._timeout_s,
        )

    async def migrate(
        self, address: str, request_id: str, target_id: str, target_address: str, timeout_s: float,
        mode: str = "",
    ) -> worker_pb2.MigrateResponse:
        """Move a request; ``mode``: stop (the default), live or reprefill."""
        return await self._stub(address).Migrate(
            worker_pb2.MigrateRequest(request_id=request_id, target_worker_id=target_id,
                                      target_address=target_address, mode=mode),
            timeout=timeout_s,
        )

    async def load(self, address: str, model: str, timeout_s: float) -> worker_pb2.LoadResponse:
        return await self._stub(address).Load(worker_pb2.LoadRequest(model=model),
                                              timeout=timeout_s)

    async def unload(
        self, address: str, model: str, timeout_s: float, drain: bool = False
    ) -> worker_pb2.UnloadResponse:
        return await self._stub(address).Unload(
            worker_pb2.UnloadRequest(model=model, drain=drain), timeout=timeout_s)

    async def drop_layers(
        self, address: str, group_id: str, model: str,
        stages: list[tuple[str, str, int, int]], tokens_per_page: int, timeout_s: float,
    ) -> worker_pb2.DropLayersResponse:
        """Form a pipeline group on its first stage (``address``); ``stages`` are
        (worker id, address, first layer, last layer) in pipeline order."""
        return await self._stub(address).DropLayers(
            worker_pb2.DropLayersRequest(
                group_id=group_id, model=model, tokens_per_page=tokens_per_page,
                stages=[worker_pb2.PipelineStage(worker_id=w, address=a, first_layer=f,
                                                 last_layer=last)
                        for w, a, f, last in stages]),
            timeout=timeout_s,
        )

    async def restore_layers(
        self, address: str, model: str, group_id: str, timeout_s: float
    ) -> worker_pb2.RestoreLayersResponse:
        return await self._stub(address).RestoreLayers(
            worker_pb2.RestoreLayersRequest(model=model, group_id=group_id), timeout=timeout_s)

    async def forget(self, address: str) -> None:
        """Drop the channel to a worker that failed (the next call reconnects)."""
        await self._pool.drop(address)

    async def close(self) -> None:
        await self._pool.close()
