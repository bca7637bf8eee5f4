"""`kvfleet load` turns bad arguments into clear errors (exit code 2), before any network."""

import json

import pytest
from typer.testing import CliRunner

from kvfleet.cli.main import app
from kvfleet.load.bench import headline_table

pytestmark = pytest.mark.unit

runner = CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trace", "no/such/trace.csv"], "trace not found: no/such/trace.csv"),
        (["--arrivals", "poisson", "--model", "m", "--slo", "ttft=soon"], "bad SLO value 'soon'"),
        (["--arrivals", "poisson", "--model", "m", "--slo", "ttft=1,speed=2"], "not one of ttft="),
        (
            ["--arrivals", "poisson", "--model", "m", "--target", "http://8.8.8.8:80/v1"],
            "--allow-remote",
        ),
        (
            ["--arrivals", "poisson", "--model", "m", "--target", "tcp://127.0.0.1:1"],
            "expected grpc://",
        ),
        (["--arrivals", "weibull", "--model", "m"], "arrivals"),
        (["--model", "m"], "give a workload"),
        (["--arrivals", "poisson", "--model", "m", "--input-len", "x"], "bad length 'x'"),
        (["--arrivals", "poisson", "--model", "m", "--speed", "0"], "speed"),
    ],
)
def test_bad_arguments_are_clear_errors(args, message):
    result = runner.invoke(app, ["load", *args, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_dry_run_prints_the_workload(tmp_path):
    result = runner.invoke(
        app,
        [
            "load",
            "--arrivals",
            "gamma",
            "--cv",
            "2",
            "--rate",
            "3",
            "--model",
            "m",
            "--duration",
            "10",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "num_requests" in result.output


def test_compare_prints_ratios_and_rejects_non_summaries(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"completed": 4, "p99_ttft_ms": 100.0, "label": "one"}))
    b.write_text(json.dumps({"completed": 4, "p99_ttft_ms": 300.0, "label": "two"}))
    result = runner.invoke(app, ["load", "compare", str(a), str(b)])
    assert result.exit_code == 0 and "3.000x" in result.output and "two / one" in result.output
    (tmp_path / "c.json").write_text("[1]")
    bad = runner.invoke(app, ["load", "compare", str(a), str(tmp_path / "c.json")])
    assert bad.exit_code == 2 and "not a load summary" in bad.output


def test_bench_headline_table_shows_ratios():
    from rich.console import Console

    result = {
        "summaries": {
            "kvfleet-grpc": {"request_goodput": 2.0, "p99_ttft_ms": 50.0},
            "transformers-serve": {"request_goodput": 1.0, "p99_ttft_ms": 100.0},
        },
        "ratios_kvfleet_over_peer": {
            "kvfleet-grpc": {
                "request_goodput": 2.0,
                "p99_ttft_ms": 0.5,
                "p99_tpot_ms": None,
                "mean_e2el_ms": None,
                "p99_e2el_ms": None,
            }
        },
    }
    console = Console(width=200, record=True)
    console.print(headline_table(result))
    text = console.export_text()
    assert "2.000x" in text and "0.500x" in text and "n/a" in text
