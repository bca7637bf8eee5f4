"""A short real run against the kvfleet stack (Redis, planner, scheduler, a worker and the
gateway as processes, serving tiny-llama), through gRPC and through OpenAI HTTP."""

from __future__ import annotations

import asyncio
import csv
import json

import pytest

from kvfleet.common.config import EngineSettings, FleetConfig, ModelConfig, WorkerConfig
from kvfleet.common.launcher import launch
from kvfleet.load.options import LoadOptions
from kvfleet.load.session import execute
from kvfleet.load.target import TargetError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    fleet = FleetConfig(
        models=[ModelConfig(name=MODEL)],
        workers=[WorkerConfig(id="w0", memory_bytes=400_000_000)],
        http_port=0,
        grpc_port=0,
        engine=EngineSettings(num_threads=1),
        open_gateway=True,
    )
    s = launch(fleet, tmp_path_factory.mktemp("stack"), timeout_s=600)
    yield s
    s.stop()


def _opts(target: str, out, **kw) -> LoadOptions:
    base = dict(
        target=target,
        arrivals="gamma",
        rate=5.0,
        cv=2.0,
        duration_s=2.0,
        model=MODEL,
        input_len="16-40",
        output_len="2-8",
        slo=["ttft=30s,tpot=5s"],
        out=out,
        seed=11,
        num_requests=8,
    )
    base.update(kw)
    return LoadOptions(**base)


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_short_run_against_the_stack(stack, tmp_path, kind):
    target = f"grpc://{stack.grpc_address}" if kind == "grpc" else f"{stack.http_url}/v1"
    out = tmp_path / kind
    result = asyncio.run(execute(_opts(target, out), progress=False))
    s = json.loads((out / "summary.json").read_text())
    assert s["completed"] == s["num_prompts"] >= 3 and s["failed"] == 0
    rows = list(csv.DictReader((out / "requests.csv").open()))
    # Output length is exactly what the workload asked for (max_tokens + ignore_eos).
    assert all(r["generated_tokens"] == r["output_tokens"] for r in rows)
    assert s["total_output_tokens"] == sum(int(r["output_tokens"]) for r in rows)
    assert s["total_input_tokens"] == sum(int(r["input_tokens"]) for r in rows)
    assert s["request_goodput"] == pytest.approx(s["completed"] / s["duration"])
    assert s["slo_attainment"] == 1.0 and s["per_model"][MODEL]["slo_attainment"] == 1.0
    assert 0 < s["median_ttft_ms"] <= s["p99_ttft_ms"] < s["p99_e2el_ms"] + 1e-9
    assert s["mean_tpot_ms"] > 0 and s["options"]["target_kind"] == kind
    for r in result.result.records:
        assert r.start_s >= r.scheduled_s - 0.01  # never sent early
    # each request carried the SLO to the server and came back with the server's prediction
    assert all((r["ttft_slo_ms"], r["tpot_slo_ms"]) == ("30000.000", "5000.000") for r in rows)
    assert all(1 <= int(r["predicted_output_tokens"]) <= int(r["output_tokens"]) for r in rows)
    assert s["prediction_count"] == s["completed"]
    assert s["prediction_mae_tokens"] >= 0 and 0 <= s["prediction_within_25pct"] <= 1
    assert (out / "ttft_timeline.png").stat().st_size > 1000


def test_a_model_the_stack_does_not_serve_is_refused(stack, tmp_path):
    opts = _opts(f"grpc://{stack.grpc_address}", None, model="no-such-model", tokenizer=MODEL)
    with pytest.raises(TargetError, match="does not serve model 'no-such-model'.*tiny-llama"):
        asyncio.run(execute(opts, progress=False))
