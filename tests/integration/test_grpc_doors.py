"""Every RPC of every service, found from the protobuf descriptors (so RPCs added later are
covered without editing this file): internal ones refuse calls without the fleet token, and
random well-typed requests with it never get an internal error or hang, and the fleet serves a
normal request afterwards. Redis refuses clients without credentials, and a service's user
cannot administer it.

``KVFLEET_GRPC_FUZZ_CASES`` sets the total number of fuzzed calls (CI runs a few hundred;
the full campaign is ``KVFLEET_GRPC_FUZZ_CASES=5000 pytest -s tests/integration/test_grpc_doors.py``,
which prints the status codes per RPC).
"""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvfleet.common.config import (
    GatewaySettings,
    ModelConfig,
    PlannerSettings,
    SchedulerSettings,
    WorkerConfig,
    WorkerSettings,
)
from kvfleet.common.fleet_auth import TOKEN_HEADER, FleetSecurity
from kvfleet.common.grpc_util import wait_healthy
from kvfleet.common.proto.gateway.v1 import gateway_pb2
from kvfleet.common.proto.planner.v1 import planner_pb2
from kvfleet.common.proto.scheduler.v1 import scheduler_pb2
from kvfleet.common.proto.worker.v1 import worker_pb2
from kvfleet.common.redis_store import RedisStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKEN = "fleet-secret-for-tests"
TINY = "tiny-llama"
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
    # the planner loads the model on w0 (and again whenever it is missing)
    p = await planner(PlannerSettings(
        **common, models=[ModelConfig(name=TINY)], reconcile_s=0.2,
        workers=[WorkerConfig(id="w0", memory_bytes=200_000_000, models=[TINY])]))
    g = await gateway(GatewaySettings(**common, port=0, http_port=0, max_tokens_limit=4))
    await wait_healthy(w.address, timeout_s=300)
    addresses = {"worker": w.address, "scheduler": s.address, "planner": p.grpc.address,
                 "gateway": g.address}
    yield addresses
    for running in (g, s, p, w):
        await running.stop()


async def _serves_a_normal_request(fleet) -> None:
    """Undo what fuzzed admin calls may have done (a drain; the planner reloads an unloaded
    model by itself), then a request completes through the gateway."""
    from kvfleet.common.client import GatewayClient, sampling
    from kvfleet.common.proto.scheduler.v1 import scheduler_pb2_grpc

    async with FleetSecurity(TOKEN).channel(fleet["scheduler"]) as ch:
        await scheduler_pb2_grpc.SchedulerStub(ch).Drain(
            scheduler_pb2.DrainRequest(worker_id="w0", undrain=True), timeout=10)
    await wait_healthy(fleet["worker"], timeout_s=120)
    async with GatewayClient(fleet["gateway"]) as c:
        assert await c.models() == [TINY]
        result = await asyncio.wait_for(
            c.generate(TINY, prompt="a normal request", params=sampling(4, ignore_eos=True)),
            120)
    assert result.finish_reason == "length" and len(result.token_ids) == 4


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


@pytest.mark.timeout(600 + TOTAL_CASES)  # the full campaign runs past the 600 s default
async def test_fuzzed_requests_to_every_rpc_get_no_internal_error(fleet):
    methods = rpcs()
    # RPCs whose request has no field have one distinct request; the rest share the campaign
    varied = [m for _, m in methods if m.input_type.fields]
    per_rpc = max(5, -(-TOTAL_CASES // len(varied)))
    codes: dict[str, dict[str, int]] = {}
    for kind, m in methods:
        async with grpc.aio.insecure_channel(fleet[kind]) as ch:
            req_cls, stub = call(ch, m)
            seen = codes.setdefault(f"{kind}.{m.name}", {})
            md = ((TOKEN_HEADER, TOKEN),) if kind in INTERNAL else ()
            for req in _examples(m.input_type, per_rpc if m.input_type.fields else 1):
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
    total = sum(sum(v.values()) for v in codes.values())
    print(f"{total} fuzzed calls")
    assert total >= TOTAL_CASES
    await _serves_a_normal_request(fleet)


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
