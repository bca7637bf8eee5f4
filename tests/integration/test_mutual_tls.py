"""The internal services over mutual TLS: a CA and one certificate per service are made here;
the planner loads the model on the worker, the scheduler assigns to it, and a request through
the gateway gets the plain engine's greedy output, every internal call over mutual TLS. A
client without a certificate, with one from another CA, or without TLS is refused, and
health checks need the fleet's CA too.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest

from kvfleet.common.config import (
    GatewaySettings,
    ModelConfig,
    PlannerSettings,
    SchedulerSettings,
    WorkerConfig,
    WorkerSettings,
)
from kvfleet.common.fleet_auth import FleetSecurity
from kvfleet.common.grpc_util import check_health, wait_healthy
from kvfleet.common.proto.worker.v1 import worker_pb2, worker_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TINY = "tiny-llama"


class Authority:
    """A certificate authority that issues certificates valid for 127.0.0.1 and localhost,
    for TLS servers and clients alike."""

    def __init__(self, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, _sha256())
        )

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return self.cert.public_bytes(Encoding.PEM)

    def issue(self, name: str) -> tuple[bytes, bytes]:
        """(certificate, private key) in PEM for service ``name``."""
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .sign(self.key, _sha256())
        )
        return cert.public_bytes(Encoding.PEM), key.private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _sha256():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _files(directory: Path, ca: Authority, name: str) -> dict[str, str]:
    """The TLS settings of service ``name``: its certificate and key files, and the CA's."""
    cert, key = ca.issue(name)
    (directory / f"{name}.crt").write_bytes(cert)
    (directory / f"{name}.key").write_bytes(key)
    (directory / "ca.crt").write_bytes(ca.pem())
    return {"tls_cert_file": str(directory / f"{name}.crt"),
            "tls_key_file": str(directory / f"{name}.key"),
            "tls_ca_file": str(directory / "ca.crt")}


@pytest.fixture
async def tls_fleet(redis_url, tmp_path):
    from kvfleet.services.gateway.server import start as gateway
    from kvfleet.services.planner.server import start as planner
    from kvfleet.services.scheduler.server import start as scheduler
    from kvfleet.services.worker.server import start as worker

    ca = Authority("kvfleet test fleet CA")
    started = []
    try:
        w = await worker(WorkerSettings(redis_url=redis_url, worker_id="w0",
                                        memory_bytes=300_000_000, **_files(tmp_path, ca, "w0")))
        started.append(w)
        p = await planner(PlannerSettings(
            redis_url=redis_url, models=[ModelConfig(name=TINY)],
            workers=[WorkerConfig(id="w0", memory_bytes=300_000_000, models=[TINY])],
            reconcile_s=0.2, **_files(tmp_path, ca, "planner")))
        started.append(p)
        s = await scheduler(SchedulerSettings(redis_url=redis_url,
                                              **_files(tmp_path, ca, "scheduler")))
        started.append(s)
        g = await gateway(GatewaySettings(redis_url=redis_url, port=0, http_port=0,
                                          **_files(tmp_path, ca, "gateway")))
        started.append(g)
        yield {"ca": ca, "dir": tmp_path, "worker": w.address, "scheduler": s.address,
               "planner": p.grpc.address, "gateway": g.address}
    finally:
        for running in reversed(started):
            await running.stop()


async def test_internal_services_serve_over_mutual_tls(tls_fleet):
    from kvfleet.common.client import GatewayClient, sampling
    from kvfleet.common.models import load_tokenizer
    from kvfleet.services.worker.engine import Engine, EngineConfig, EngineRequest
    from kvfleet.services.worker.engine import SamplingParams as EngineSampling

    fleet = FleetSecurity.from_settings(WorkerSettings(**_files(
        tls_fleet["dir"], tls_fleet["ca"], "admin")))
    # the planner loads the model on the worker over mutual TLS; health needs the CA too
    await wait_healthy(tls_fleet["worker"], timeout_s=300, security=fleet)
    assert not await check_health(tls_fleet["worker"])  # plaintext: no answer

    ids = list(load_tokenizer(TINY).encode("Trust, but verify"))
    engine = Engine(EngineConfig(memory_bytes=300_000_000, num_threads=1))
    engine.load_model(TINY)
    engine.add_request(EngineRequest("ref", TINY, tuple(ids), EngineSampling(max_tokens=12)))
    ref: list[int] = []
    while engine.has_unfinished():
        ref += [ev.token_id for ev in engine.step() if ev.token_id is not None]

    async with GatewayClient(tls_fleet["gateway"]) as c:  # the scheduler's Assign: mTLS
        result = await c.generate(TINY, prompt_token_ids=ids, params=sampling(12))
    assert list(result.token_ids) == ref

    # with the fleet's certificate an internal call goes through ...
    async with fleet.channel(tls_fleet["worker"]) as ch:
        reply = await worker_pb2_grpc.WorkerStub(ch).Cancel(
            worker_pb2.CancelRequest(request_id="none"), timeout=10)
        assert not reply.found


@pytest.mark.parametrize("client", ["plaintext", "no-certificate", "other-ca"])
async def test_clients_without_the_fleets_certificate_are_refused(tls_fleet, client):
    ca_pem = tls_fleet["ca"].pem()
    intruder = Authority("someone else").issue("intruder")

    def channel(address: str) -> grpc.aio.Channel:
        if client == "plaintext":
            return grpc.aio.insecure_channel(address)
        if client == "no-certificate":  # trusts the server, shows no certificate itself
            return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca_pem))
        cert, key = intruder  # a certificate from another CA
        return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca_pem, key, cert))

    for service in ("worker", "scheduler", "planner"):
        async with channel(tls_fleet[service]) as ch:
            call = ch.unary_unary("/kvfleet.worker.v1.Worker/Cancel",
                                  request_serializer=worker_pb2.CancelRequest.SerializeToString,
                                  response_deserializer=worker_pb2.CancelResponse.FromString)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(worker_pb2.CancelRequest(request_id="r"), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, (service, e.value)
