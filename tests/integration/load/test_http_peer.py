"""A short real run through OpenAI-compatible HTTP against `transformers serve` (a real
server and a real, tiny, random-weight Llama with SmolLM2's tokenizer), plus unreachable
targets giving clear errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from kvfleet.load.peers import free_port, start_transformers_serve, transformers_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _kvfleet(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvfleet", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    try:
        transformers_cli()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    from kvfleet.common.models.registry import tiny_llama_dir

    model_dir = tiny_llama_dir()
    log = tmp_path_factory.mktemp("peer") / "serve.log"
    server = start_transformers_serve(
        model_dir, log, continuous_batching=False, ready_timeout_s=180
    )
    yield server
    server.stop()


def test_http_run_writes_results_with_exact_lengths(peer, tmp_path):
    out = tmp_path / "run"
    proc = _kvfleet(
        "load",
        "--target",
        peer.base_url,
        "--arrivals",
        "poisson",
        "--rate",
        "4",
        "--duration",
        "1.5",
        "--num-requests",
        "4",
        "--model",
        peer.model,
        "--input-len",
        "24",
        "--output-len",
        "6",
        "--slo",
        "ttft=60s,tpot=10s",
        "--out",
        str(out),
        "--no-progress",
        "--seed",
        "3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] >= 1 and summary["failed"] == 0
    n = summary["completed"]
    assert summary["total_output_tokens"] == 6 * n  # max_tokens honoured, EOS ignored
    assert summary["total_input_tokens"] == 24 * n
    assert summary["mean_ttft_ms"] > 0 and summary["mean_tpot_ms"] > 0
    assert summary["p99_itl_ms"] >= summary["median_itl_ms"] > 0
    assert summary["request_goodput"] == pytest.approx(n / summary["duration"])
    assert summary["options"]["length_control"] == "generation_config"
    rows = list(csv.DictReader((out / "requests.csv").open()))
    assert len(rows) == n and all(r["generated_tokens"] == "6" for r in rows)
    for png in ("latency_cdf.png", "ttft_timeline.png", "per_model.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    cmp = _kvfleet("load", "compare", str(out), str(out / "summary.json"))
    assert cmp.returncode == 0 and "p99 TTFT" in cmp.stdout and "1.000x" in cmp.stdout


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_unreachable_target_is_a_clear_error(tmp_path, scheme):
    port = free_port()
    target = f"http://127.0.0.1:{port}/v1" if scheme == "http" else f"grpc://127.0.0.1:{port}"
    proc = _kvfleet(
        "load",
        "--target",
        target,
        "--arrivals",
        "poisson",
        "--model",
        "smollm2-135m",
        "--duration",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "x"),
    )
    assert proc.returncode == 2
    assert f"cannot reach {target}" in proc.stderr
    assert not (tmp_path / "x").exists()
