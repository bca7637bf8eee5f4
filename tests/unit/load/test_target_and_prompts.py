"""Targets (loopback safety) and prompts of exact token length with a real tokenizer."""

import pytest

from kvfleet.load.target import TargetError, parse_target
from kvfleet.load.tokens import PromptBuilder, load_tokenizer
from kvfleet.workload import RequestSpec

pytestmark = pytest.mark.unit


def test_targets_parse_and_default_to_loopback_only():
    t = parse_target("grpc://127.0.0.1:50051")
    assert (t.kind, t.address) == ("grpc", "127.0.0.1:50051")
    h = parse_target("http://localhost:8000")
    assert h.kind == "http" and h.base_url == "http://localhost:8000/v1"
    assert parse_target("http://[::1]:9/v1/").base_url == "http://[::1]:9/v1"
    with pytest.raises(TargetError, match="--allow-remote"):
        parse_target("http://192.168.1.5:8000/v1")
    with pytest.raises(TargetError, match="--allow-remote"):
        parse_target("grpc://example.com:443")
    assert parse_target("grpc://example.com:443", allow_remote=True).host == "example.com"
    for bad, match in [("ftp://127.0.0.1:1", "expected grpc"), ("grpc://127.0.0.1", "need a port"),
                       ("http://127.0.0.1:99999/v1", "bad target")]:
        with pytest.raises(TargetError, match=match):
            parse_target(bad)


@pytest.fixture(scope="module")
def builder():
    return PromptBuilder(load_tokenizer("smollm2-135m"), seed=7)


def test_prompts_have_the_exact_token_count(builder):
    for n in (1, 2, 17, 300, 1500):
        spec = RequestSpec(f"r{n}", 0.0, "m", n, 4)
        ids, text = builder.build(spec)
        assert len(ids) == n and builder.tok.encode(text) == ids


def test_shared_hash_ids_give_shared_prefixes(builder):
    a = RequestSpec("a", 0.0, "m", 1100, 4, hash_ids=(5, 6, 7))
    b = RequestSpec("b", 0.0, "m", 700, 4, hash_ids=(5, 9))
    ia, ib = builder.ids(a), builder.ids(b)
    assert ia[:512] == ib[:512] and ia[512:700] != ib[512:700]
    assert builder.ids(a) == ia  # deterministic
    c = RequestSpec("c", 0.0, "m", 100, 4)
    assert builder.ids(c) != builder.ids(c.with_(request_id="d"))
