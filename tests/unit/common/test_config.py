import pytest

from kvfleet.common.config import FleetConfig, GatewaySettings, WorkerSettings

pytestmark = pytest.mark.unit


def test_service_section_from_file_then_env_wins(tmp_path, monkeypatch):
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "worker:\n  worker_id: w7\n  port: 5005\n  engine:\n    max_num_seqs: 3\n"
        "gateway:\n  api_keys: [k1]\n"
    )
    monkeypatch.setenv("KVFLEET_WORKER_PORT", "6006")
    monkeypatch.setenv("KVFLEET_WORKER_ENGINE__MAX_NUM_BATCHED_TOKENS", "128")
    w = WorkerSettings.load(path)
    assert (w.worker_id, w.port) == ("w7", 6006)
    assert (w.engine.max_num_seqs, w.engine.max_num_batched_tokens) == (3, 128)
    g = GatewaySettings.load(path, redis_url="unix:///x")
    assert g.api_keys == ["k1"] and g.redis_url == "unix:///x"


def test_toml_file_without_sections(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text("http_port = 0\nmax_tokens_limit = 100\n")
    g = GatewaySettings.load(path)
    assert (g.http_port, g.max_tokens_limit) == (0, 100)


def test_bounds_are_enforced(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("worker:\n  heartbeat_ttl_s: -1\n")
    with pytest.raises(ValueError):
        WorkerSettings.load(path)


def test_fleet_defaults_and_file(tmp_path):
    d = FleetConfig()
    assert (d.http_port, d.grpc_port, len(d.workers)) == (8000, 50051, 2)
    path = tmp_path / "f.yaml"
    path.write_text(
        "models: [{name: tiny-llama}]\nworkers:\n  - {id: a, memory_bytes: 300000000}\n"
        "http_port: 0\n"
    )
    f = FleetConfig.load(path)
    assert [m.name for m in f.models] == ["tiny-llama"] and f.workers[0].id == "a"
