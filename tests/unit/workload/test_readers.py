"""The trace readers on the shared traces reproduce the README's figures."""

import pytest

from kvfleet.workload import Shaping, TraceFormatError, load_trace, read_trace, shape
from kvfleet.workload.paths import traces_dir
from kvfleet.workload.readers import parse_azure_timestamp, spread_equal_times
from kvfleet.workload.stats import workload_stats

pytestmark = pytest.mark.unit

AZURE = "azure_llm_2023/AzureLLMInferenceTrace_conv.csv"
MOONCAKE_CONV = "mooncake_fast25/conversation_trace.jsonl"
MOONCAKE_SYN = "mooncake_fast25/synthetic_trace.jsonl"


def _need_traces():
    if not (traces_dir() / AZURE).exists():
        pytest.skip("shared traces not present (set KVFLEET_TRACES_DIR)")


@pytest.mark.parametrize(
    "name, count, span_s, rate, in_mean, in_p50, out_mean, out_p50, peak_mean, iat_cv",
    [
        (AZURE, 19_366, 3_502, 5.53, 1_155, 1_020, 211, 129, 1.54, 1.09),
        (MOONCAKE_CONV, 12_031, 3_537, 3.40, 12_035, 6_909, 343, 350, 1.21, 3.03),
        (MOONCAKE_SYN, 3_993, 1_022, 3.91, 15_325, 11_587, 149, 69, 1.23, 1.01),
    ],
)
def test_trace_figures_match_readme(
    name, count, span_s, rate, in_mean, in_p50, out_mean, out_p50, peak_mean, iat_cv
):
    _need_traces()
    specs = load_trace(name, model="m")
    st = workload_stats(specs)
    assert st.num_requests == count
    assert round(st.span_s) == span_s
    assert round(st.mean_rate, 2) == rate
    assert round(st.mean_input_tokens) == in_mean and st.p50_input_tokens == in_p50
    assert round(st.mean_output_tokens) == out_mean and st.p50_output_tokens == out_p50
    assert round(st.peak_to_mean_1min, 2) == peak_mean
    assert round(st.iat_cv, 2) == iat_cv
    assert specs[0].arrival_s == 0.0 and st.models == ("m",)
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(specs, specs[1:], strict=False))


def test_mooncake_keeps_prefix_hashes_and_spreads_ties():
    _need_traces()
    specs = load_trace(MOONCAKE_CONV)
    assert specs[0].hash_ids[:3] == (0, 1, 2)
    assert all(len(s.hash_ids) == -(-s.input_tokens // 512) for s in specs[:200])
    spread = load_trace(MOONCAKE_CONV, spread_ties=True)
    distinct = len({s.arrival_s for s in specs})
    assert distinct == 1_180
    assert len({s.arrival_s for s in spread}) > 10 * distinct
    assert [s.input_tokens for s in spread] == [s.input_tokens for s in specs]


def test_slice_speed_and_caps_are_applied_and_hash_ids_follow_the_cap():
    _need_traces()
    specs = load_trace(MOONCAKE_CONV)
    shaped = shape(
        specs,
        Shaping(start_s=600, duration_s=60, speed=2.0, max_input=1000, max_output=64, model="x"),
    )
    inside = [s for s in specs if 600 <= s.arrival_s < 660]
    assert len(shaped) == len(inside) > 0
    assert max(s.arrival_s for s in shaped) < 30.0
    assert shaped[0].arrival_s == pytest.approx((inside[0].arrival_s - 600) / 2)
    assert max(s.input_tokens for s in shaped) <= 1000
    assert max(s.output_tokens for s in shaped) <= 64
    assert all(len(s.hash_ids) <= 2 for s in shaped) and {s.model for s in shaped} == {"x"}
    assert len(shape(specs, Shaping(max_requests=7))) == 7


def test_azure_timestamp_keeps_100ns_ticks():
    a = parse_azure_timestamp("2023-11-16 18:15:46.6805900")
    b = parse_azure_timestamp("2023-11-16 18:15:50.9951690")
    assert b - a == pytest.approx(4.314579, abs=1e-6)


def test_spread_equal_times():
    assert spread_equal_times([0.0, 0.0, 0.0, 3.0, 3.0]) == [0.0, 1.0, 2.0, 3.0, 3.0]


def test_missing_trace_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="trace not found"):
        load_trace(str(tmp_path / "nope.csv"))


@pytest.mark.parametrize(
    "fname, text, match",
    [
        (
            "a.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,12,x\n",
            "a.csv:2",
        ),
        ("b.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nnot-a-date,12,3\n", "bad timestamp"),
        ("c.csv", "when,prompt\n1,2\n", "unknown CSV columns"),
        ("d.jsonl", '{"timestamp": 0, "input_length": 5}\n', "d.jsonl:1"),
        ("e.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 0}\n', "output_length"),
        ("f.txt", "hello\n", "unknown trace format"),
    ],
)
def test_malformed_traces_name_the_problem(tmp_path, fname, text, match):
    path = tmp_path / fname
    path.write_text(text)
    with pytest.raises(TraceFormatError, match=match):
        read_trace(path)


def test_kvfleet_csv_round_trip(tmp_path):
    path = tmp_path / "requests.csv"
    path.write_text(
        "request_id,arrival_s,model,input_tokens,output_tokens\na,5.5,m1,10,2\nb,5.0,m2,20,3\n"
    )
    specs = read_trace(path)
    assert [(s.arrival_s, s.model, s.input_tokens) for s in specs] == [
        (0.0, "m2", 20),
        (0.5, "m1", 10),
    ]
