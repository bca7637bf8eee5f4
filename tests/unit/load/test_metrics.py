"""Metrics on synthetic streams with known timings (vLLM bench serve definitions)."""

import json

import pytest

from kvfleet.load.metrics import RequestRecord, max_concurrency, summarize
from kvfleet.load.report import read_summary, write_requests_csv, write_summary
from kvfleet.load.slo import Slo, SloSet, SloSpecError, parse_slo, parse_slos
from kvfleet.workload.readers import read_trace

pytestmark = pytest.mark.unit


def stream(rid, *, model="m", start=0.0, ttft=0.1, gaps=(), ok=True, input_tokens=10, err=""):
    """A request whose first chunk comes ``ttft`` after ``start``, then one token per gap."""
    n = 1 + len(gaps) if ok else 0
    return RequestRecord(
        request_id=rid,
        model=model,
        scheduled_s=start,
        start_s=start,
        input_tokens=input_tokens,
        max_tokens=max(n, 1),
        output_tokens=n,
        success=ok,
        ttft_s=ttft if ok else None,
        e2el_s=(ttft + sum(gaps)) if ok else None,
        itl_s=tuple(gaps),
        error=err,
    )


def test_known_timings_give_vllm_metrics():
    a = stream("a", start=0.0, ttft=0.1, gaps=(0.02, 0.02, 0.02, 0.02))  # 5 tokens, e2el 0.18
    b = stream("b", start=1.0, ttft=0.3, gaps=(0.05, 0.05))  # 3 tokens, e2el 0.4
    s = summarize([a, b], duration_s=2.0)
    assert s["completed"] == 2 and s["failed"] == 0
    assert s["total_input_tokens"] == 20 and s["total_output_tokens"] == 8
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["output_throughput"] == pytest.approx(4.0)
    assert s["total_token_throughput"] == pytest.approx(14.0)
    assert s["mean_ttft_ms"] == pytest.approx(200.0) and s["median_ttft_ms"] == pytest.approx(200.0)
    assert s["p99_ttft_ms"] == pytest.approx(100 + 200 * 0.99)
    # TPOT: (0.18 - 0.1) / 4 = 20 ms and (0.4 - 0.3) / 2 = 50 ms.
    assert s["mean_tpot_ms"] == pytest.approx(35.0)
    # ITL pools every gap: four of 20 ms and two of 50 ms.
    assert s["mean_itl_ms"] == pytest.approx((4 * 20 + 2 * 50) / 6)
    assert s["p50_itl_ms"] == pytest.approx(20.0)
    assert s["mean_e2el_ms"] == pytest.approx(290.0)
    assert s["request_goodput"] is None and s["slo_attainment"] is None
    assert s["max_concurrent_requests"] == 1


def test_goodput_counts_requests_within_every_bound():
    fast = stream("f", ttft=0.1, gaps=(0.01,) * 9)  # TPOT 10 ms
    slow_first = stream("s", ttft=0.9, gaps=(0.01,) * 9)
    slow_tokens = stream("t", ttft=0.1, gaps=(0.2,) * 3)  # TPOT 200 ms
    failed = stream("x", ok=False, err="boom")
    slos = parse_slos(["ttft=500ms,tpot=50"])
    s = summarize([fast, slow_first, slow_tokens, failed], duration_s=4.0, slos=slos)
    assert s["request_goodput"] == pytest.approx(0.25)
    assert s["slo_attainment"] == pytest.approx(0.25)  # failures count against attainment
    assert s["failed"] == 1 and s["errors"] == {"boom": 1}
    assert s["slo"] == {"default": {"ttft": 500.0, "tpot": 50.0}, "per_model": {}}


def test_bounds_are_inclusive():
    r = stream("a", ttft=0.5, gaps=(0.25,))  # exact in binary: TPOT is exactly 0.25
    assert r.good(SloSet(Slo(ttft_s=0.5, tpot_s=0.25, e2el_s=0.75)))
    assert not r.good(SloSet(Slo(ttft_s=0.4999)))


def test_one_token_outputs_have_no_tpot_but_count_as_good():
    one = stream("a", ttft=0.2)  # one token, no gaps
    s = summarize([one], duration_s=1.0, slos=parse_slos(["ttft=300,tpot=1"]))
    assert one.tpot_s is None
    assert s["mean_tpot_ms"] is None and s["p99_tpot_ms"] is None and s["mean_itl_ms"] is None
    assert s["mean_ttft_ms"] == pytest.approx(200.0) and s["mean_e2el_ms"] == pytest.approx(200.0)
    assert s["request_goodput"] == pytest.approx(1.0)


def test_no_successful_request():
    recs = [stream("a", ok=False, err="connection refused"), stream("b", ok=False, err="")]
    s = summarize(recs, duration_s=3.0, slos=parse_slos(["ttft=1s"]))
    assert s["completed"] == 0 and s["failed"] == 2
    assert s["request_throughput"] == 0.0 and s["request_goodput"] == 0.0
    assert s["slo_attainment"] == 0.0 and s["output_throughput"] == 0.0
    assert all(
        s[f"{k}_{m}_ms"] is None for k in ("mean", "p99") for m in ("ttft", "tpot", "itl", "e2el")
    )
    assert s["errors"] == {"connection refused": 1, "unknown error": 1}
    assert summarize([], duration_s=1.0)["completed"] == 0


def test_per_model_attainment_uses_each_models_slo():
    recs = [
        stream("a1", model="a", ttft=0.1),
        stream("a2", model="a", ttft=0.3),
        stream("b1", model="b", ttft=0.3),
        stream("b2", model="b", ok=False),
        stream("c1", model="c", ttft=5.0),
    ]
    slos = parse_slos(["ttft=200ms", "b:ttft=1s"])
    s = summarize(recs, duration_s=1.0, slos=slos)
    pm = s["per_model"]
    assert pm["a"]["slo_attainment"] == pytest.approx(0.5)
    assert pm["b"]["slo_attainment"] == pytest.approx(0.5) and pm["b"]["slo"] == {"ttft": 1000.0}
    assert pm["c"]["slo_attainment"] == 0.0
    assert s["request_goodput"] == pytest.approx(2.0)  # a1 and b1
    assert pm["a"]["p99_ttft_ms"] == pytest.approx(100 + 200 * 0.99)


def test_max_concurrency_counts_overlaps():
    recs = [
        stream("a", start=0.0, ttft=1.0),
        stream("b", start=0.5, ttft=1.0),
        stream("c", start=1.0, ttft=1.0),
        stream("d", start=3.0, ttft=0.1),
    ]
    assert max_concurrency(recs) == 2


@pytest.mark.parametrize(
    "text, match",
    [
        ("ttft", "not one of"),
        ("ttft=fast", "bad SLO value"),
        ("ttft=-5", "bad SLO value"),
        ("ttft=0", "must be > 0"),
        ("goodness=5", "not one of"),
        ("ttft=1,ttft=2", "given twice"),
    ],
)
def test_malformed_slo_specs(text, match):
    with pytest.raises(SloSpecError, match=match):
        parse_slo(text)


def test_slo_spec_forms():
    assert parse_slo("ttft=500,tpot=50ms,e2el=2.5s") == (None, Slo(0.5, 0.05, 2.5))
    assert parse_slo("repo:file.gguf:ttft=1s") == ("repo:file.gguf", Slo(ttft_s=1.0))
    with pytest.raises(SloSpecError, match="more than one --slo without"):
        parse_slos(["ttft=1", "tpot=2"])


def test_reports_round_trip(tmp_path):
    recs = [stream("a", ttft=0.1, gaps=(0.02,)), stream("b", start=0.5, ok=False, err="x\ny")]
    s = summarize(recs, duration_s=1.0, slos=parse_slos(["ttft=1s"]), options={"speed": 2.0})
    write_summary(s, tmp_path / "summary.json")
    back = read_summary(tmp_path)
    assert back["completed"] == 1 and back["options"] == {"speed": 2.0}
    assert back["mean_tpot_ms"] == pytest.approx(20.0)
    json.loads((tmp_path / "summary.json").read_text())  # strict JSON
    write_requests_csv(recs, tmp_path / "requests.csv", parse_slos(["ttft=1s"]))
    lines = (tmp_path / "requests.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].split(",")[8] == "1"  # a is good
    replay = read_trace(tmp_path / "requests.csv")
    assert [(r.model, r.arrival_s, r.output_tokens) for r in replay] == [
        ("m", 0.0, 2),
        ("m", 0.5, 1),
    ]
    with pytest.raises(ValueError, match="not a load summary"):
        (tmp_path / "bad.json").write_text("{}")
        read_summary(tmp_path / "bad.json")


def test_pure_modules_import_no_network_or_event_loop():
    import subprocess
    import sys

    code = (
        "import sys, kvfleet.workload, kvfleet.load.metrics, kvfleet.load.report;"
        "bad = {'grpc', 'httpx', 'asyncio', 'torch', 'redis'} & set(sys.modules);"
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
