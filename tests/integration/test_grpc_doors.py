"""Every RPC of every service, found from the protobuf descriptors (so RPCs added later are
covered without editing this file): internal ones refuse calls without the fleet token, and
random well-typed requests with it never get an internal error or hang. Redis refuses clients
without credentials, and a service's user cannot administer it.

``KVFLEET_GRPC_FUZZ_CASES`` sets the total number of fuzzed calls (CI runs a few hundred;
the full campaign is ``KVFLEET_GRPC_FUZZ_CASES=5000 pytest tests/integration/test_grpc_doors.py``).
"""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvfleet.common import redis_schema as rs
from kvfleet.common.config import (
    GatewaySettings,
    PlannerSettings,
    SchedulerSettings,
    WorkerSettings,
)
from kvfleet.common.fleet_auth import TOKEN_HEADER
from kvfleet.common.proto.gateway.v1 import gateway_pb2
from kvfleet.common.proto.planner.v1 import planner_pb2
from kvfleet.common.proto.scheduler.v1 import scheduler_pb2
from kvfleet.common.proto.worker.v1 import worker_pb2
from kvfleet.common.redis_store import RedisStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKEN = "fleet-secret-for-tests"
MODULES = {"gateway": gateway_pb2, "scheduler": scheduler_pb2, "planner": planner_pb2,
           "worker": worker_pb2}
INTERNAL = ("scheduler", "planner", "worker")
SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS,
                 grpc.StatusCode.DEADLINE_EXCEEDED}
TOTAL_CASES = int(os.environ.get("KVFLEET_GRPC_FUZZ_CASES", "300"))


def rpcs() -> list[tuple[str, d.MethodDescriptor]]:
    return [(kind, m) for kind, mod in MODULES.items()
            for svc in mod.DESCRIPTOR.services_by_name.values() for m in svc.methods]


def call(channel: grpc.aio.Channel, m: d.MethodDescriptor):  # type: ignore[no-untyped-def]
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    path = f"/{m.containing_service.full_name}/{m.name}"
    make = channel.unary_stream if m.server_streaming else channel.unary_unary
    return req_cls, make(path, request_serializer=req_cls.SerializeToString,
                         response_deserializer=resp_cls.FromString)


_INTS = {d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
         d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
         d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1)}


def _scalar(f: d.FieldDescriptor) -> st.SearchStrategy:
    t = f.type
    if t in _INTS:
        lo, hi = _INTS[t]
        return st.one_of(st.sampled_from([lo, hi, 0, 1, 16]), st.integers(lo, hi))
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (d.FieldDescriptor.TYPE_FLOAT, d.FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False,
                         width=32 if t == d.FieldDescriptor.TYPE_FLOAT else 64)
    if t == d.FieldDescriptor.TYPE_STRING:
        return st.one_of(st.text(max_size=40), st.sampled_from(
            ["", "tiny-llama", "w0", "../../etc/passwd", "/tmp", "x" * 300, "high"]))
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == d.FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in f.enum_type.values])
    raise NotImplementedError(f.type)


def message(desc: d.Descriptor, depth: int = 0) -> st.SearchStrategy:
    cls = message_factory.GetMessageClass(desc)

    def field(f: d.FieldDescriptor) -> st.SearchStrategy:
        if f.type == d.FieldDescriptor.TYPE_MESSAGE:
            inner = message(f.message_type, depth + 1) if depth < 3 else st.just(None)
            return st.lists(inner, max_size=3) if f.is_repeated else inner
        return st.lists(_scalar(f), max_size=6) if f.is_repeated else _scalar(f)

    @st.composite
    def build(draw) -> object:  # type: ignore[no-untyped-def]
        msg = cls()
        for f in desc.fields:
            if not draw(st.booleans()):
                continue
            value = draw(field(f))
            if value is None:
                continue
            if f.type == d.FieldDescriptor.TYPE_MESSAGE:
                if f.is_repeated:
                    getattr(msg, f.name).extend(v for v in value if v is not None)
                else:
                    getattr(msg, f.name).CopyFrom(value)
            elif f.is_repeated:
                getattr(msg, f.name).extend(value)
            else:
                setattr(msg, f.name, value)
        return msg

    return build()


@pytest.fixture
async def fleet(redis_url):
    from kvfleet.services.gateway.server import start as gateway
    from kvfleet.services.planner.server import start as planner
    from kvfleet.services.scheduler.server import start as scheduler
    from kvfleet.services.worker.server import start as worker

    common = {"redis_url": redis_url, "fleet_token": TOKEN}
    w = await worker(WorkerSettings(**common, worker_id="w0", memory_bytes=200_000_000))
    s = await scheduler(SchedulerSettings(**common))
    p = await planner(PlannerSettings(**common))
    g = await gateway(GatewaySettings(**common, port=0, http_port=0, max_tokens_limit=4))
    store = RedisStore.from_url(redis_url)
    await store.set_plan(rs.PlanRecord(9, (("w0", "tiny-llama"),), time.time()))
    await store.close()
    addresses = {"worker": w.address, "scheduler": s.address, "planner": p.grpc.address,
                 "gateway": g.address}
    yield addresses
    for running in (g, s, p, w):
        await running.stop()


def _examples(desc: d.Descriptor, n: int) -> list[object]:
    out: list[object] = []

    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(message(desc))
    def collect(req: object) -> None:
        out.append(req)

    collect()
    return out


async def test_internal_rpcs_refuse_calls_without_the_fleet_token(fleet):
    methods = [(k, m) for k, m in rpcs() if k in INTERNAL]
    assert len(methods) >= 10
    for kind, m in methods:
        async with grpc.aio.insecure_channel(fleet[kind]) as ch:
            req_cls, stub = call(ch, m)
            for md in ((), ((TOKEN_HEADER, "wrong"),)):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    reply = stub(req_cls(), metadata=md, timeout=10)
                    if m.server_streaming:
                        async for _ in reply:
                            pass
                    else:
                        await reply
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (kind, m.name)


async def test_fuzzed_requests_to_every_rpc_get_no_internal_error(fleet):
    methods = rpcs()
    per_rpc = max(5, TOTAL_CASES // len(methods))
    codes: dict[str, dict[str, int]] = {}
    for kind, m in methods:
        async with grpc.aio.insecure_channel(fleet[kind]) as ch:
            req_cls, stub = call(ch, m)
            seen = codes.setdefault(f"{kind}.{m.name}", {})
            md = ((TOKEN_HEADER, TOKEN),) if kind in INTERNAL else ()
            for req in _examples(m.input_type, per_rpc):
                code = "OK"
                try:
                    reply = stub(req, metadata=md, timeout=15)
                    if m.server_streaming:
                        async for _ in reply:
                            pass
                    else:
                        await reply
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                    assert e.code() not in SERVER_FAULTS, (kind, m.name, req, e.details())
                seen[code] = seen.get(code, 0) + 1
    print({k: v for k, v in codes.items()})
    assert sum(sum(v.values()) for v in codes.values()) >= min(TOTAL_CASES, 5 * len(methods))
    # the fleet still serves a normal request afterwards
    async with grpc.aio.insecure_channel(fleet["gateway"]) as ch:
        from kvfleet.common.proto.gateway.v1 import gateway_pb2_grpc

        models = await gateway_pb2_grpc.GatewayStub(ch).ListModels(
            gateway_pb2.ListModelsRequest(), timeout=10)
        assert [x.name for x in models.models] == ["tiny-llama"]
    await asyncio.sleep(0)


async def test_redis_refuses_clients_without_credentials(tmp_path):
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoPermissionError

    from kvfleet.common.redis_server import new_passwords, start_redis

    server = start_redis(tmp_path / "redis", passwords=new_passwords())
    try:
        anon = RedisStore.from_url(server.url, pool_timeout_s=2)
        with pytest.raises(RedisConnectionError):
            await anon.r.get("kvfleet:v1:x")
        await anon.close()
        worker = RedisStore.from_url(server.url_for("worker"))
        await worker.r.set("kvfleet:v1:x", "1")
        for cmd in (("FLUSHALL",), ("CONFIG", "GET", "dir"), ("KEYS", "*"), ("SET", "y", "1"),
                    ("ACL", "LIST"), ("SHUTDOWN",)):
            with pytest.raises(NoPermissionError):
                await worker.r.execute_command(*cmd)
        await worker.close()
    finally:
        server.stop()
