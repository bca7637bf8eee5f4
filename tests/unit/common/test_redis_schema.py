import json

import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.sampling import SamplingParams
from kvfleet.common.slo import ServiceLevel

pytestmark = pytest.mark.unit


def test_request_record_round_trips_through_hash_fields():
    rec = rs.RequestRecord(
        "req-1",
        "tiny-llama",
        (1, 2, 3),
        SamplingParams(max_tokens=5, seed=7, stop=("\n",)),
        12.5,
        state=rs.ASSIGNED,
        worker_id="w0",
        num_resumes=2,
        slo=ServiceLevel(0.5, 0.05, 0),
        predicted_output_tokens=42,
    )
    fields = rec.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert rs.RequestRecord.from_fields("req-1", fields) == rec


def test_reader_refuses_another_schema_version():
    occ = rs.Occupancy("w0", ("m",), 10, 4, tokens_per_page={"m": 16})
    data = json.loads(occ.to_json())
    assert rs.Occupancy.from_json(json.dumps(data)) == occ
    data["v"] = rs.SCHEMA_VERSION + 1
    with pytest.raises(rs.SchemaError):
        rs.Occupancy.from_json(json.dumps(data))
    fields = rs.RequestRecord("r", "m", (1,), SamplingParams(), 0.0).to_fields()
    fields["v"] = "0"
    with pytest.raises(rs.SchemaError):
        rs.RequestRecord.from_fields("r", fields)


def test_output_tokens_keeps_each_index_once_and_stops_at_a_gap():
    entries = [
        rs.TokenEntry(0, 10, "a"),
        rs.TokenEntry(1, 11, "b"),
        rs.TokenEntry(1, 99, "dup"),  # written again after a resume: first wins
        rs.TokenEntry(2, 12, "c"),
        rs.TokenEntry(4, 14, "gap"),
        rs.TokenEntry(3, None, "", "abort"),
    ]
    assert rs.output_tokens(entries) == [10, 11, 12]


def test_token_entry_round_trip_with_and_without_token():
    for e in (rs.TokenEntry(3, 42, "x", None, "w1"), rs.TokenEntry(4, None, "", "abort", "w1")):
        assert rs.TokenEntry.from_fields(e.to_fields()) == e


def test_plan_record_round_trip_and_views():
    plan = rs.PlanRecord(3, (("w0", "a"), ("w1", "a"), ("w1", "b")), 1.0)
    assert rs.PlanRecord.from_json(plan.to_json()) == plan
    assert plan.models() == ("a", "b")
    assert plan.models_of("w1") == ("a", "b")


def test_keys_share_the_versioned_prefix():
    keys = [
        rs.queue_key("m"),
        rs.request_key("r"),
        rs.tokens_key("r"),
        rs.heartbeat_key("w"),
        rs.worker_requests_key("w"),
        rs.PLAN_KEY,
        rs.EVENTS_KEY,
        rs.WORKERS_KEY,
    ]
    assert all(k.startswith(f"kvfleet:v{rs.SCHEMA_VERSION}:") for k in keys)
    assert len(set(keys)) == len(keys)


def test_token_entries_and_model_infos_round_trip():
    e = rs.TokenEntry(3, 17, "x", "stop", "w1", 1_700_000_000.25)
    assert rs.TokenEntry.from_fields(e.to_fields()) == e
    info = rs.ModelInfo("m", ServiceLevel(1.0, None, 2))
    assert rs.ModelInfo.from_json(info.to_json()) == info


def test_queue_streams_cannot_be_trimmed_down_to_an_accepted_request():
    """A stream holds only requests waiting for a worker (entries leave once assigned), which
    admission bounds per model; the stream's MAXLEN must stay far above that bound."""
    import pydantic

    from kvfleet.common.config import ModelConfig
    from kvfleet.services.scheduler.core.admission import MAX_QUEUED_REQUESTS_LIMIT

    assert rs.QUEUE_MAXLEN >= 10 * MAX_QUEUED_REQUESTS_LIMIT
    ModelConfig(name="m", max_queued_requests=MAX_QUEUED_REQUESTS_LIMIT)
    with pytest.raises(pydantic.ValidationError):
        ModelConfig(name="m", max_queued_requests=MAX_QUEUED_REQUESTS_LIMIT + 1)


def test_worker_info_reads_records_with_fields_it_no_longer_has():
    raw = json.dumps({"v": rs.SCHEMA_VERSION, "worker_id": "w0", "address": "a:1",
                      "boot_id": "b", "started_s": 1.0, "epoch": 3})
    assert rs.WorkerInfo.from_json(raw) == rs.WorkerInfo("w0", "a:1", "b", 1.0)


def test_a_fleet_sample_round_trips_and_an_empty_list_stays_empty():
    s = rs.FleetSample(12.5, ("w0", "w2"), ("w1",))
    assert rs.FleetSample.from_fields(s.to_fields()) == s
    none = rs.FleetSample(1.0, (), ("w0", "w1"))
    assert rs.FleetSample.from_fields(none.to_fields()) == none


def test_admin_status_summarises_active_and_idle_workers_over_time():
    from kvfleet.cli.admin import _activity_line

    samples = [rs.FleetSample(10.0, ("w0",), ("w1", "w2")),
               rs.FleetSample(11.0, ("w0", "w1"), ("w2",))]
    assert _activity_line(samples) == ("workers: 2 active, 1 idle; mean 1.50 active over the "
                                       "last 1 s (2 samples)")
    assert "no samples" in _activity_line([])
