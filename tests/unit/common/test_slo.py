import math

import pytest

from kvfleet.common.config import FleetConfig
from kvfleet.common.convert import service_level_from_pb, service_level_to_pb
from kvfleet.common.proto.common.v1 import common_pb2
from kvfleet.common.slo import NORMAL, ServiceLevel, SloError, priority_rank

pytestmark = pytest.mark.unit


def test_unset_fields_take_the_defaults_and_priority_is_always_set():
    default = ServiceLevel(2.0, 0.1, 0)
    assert ServiceLevel(0.5).resolved(default) == ServiceLevel(0.5, 0.1, 0)
    assert ServiceLevel(priority=2).resolved(default) == ServiceLevel(2.0, 0.1, 2)
    assert ServiceLevel().resolved(None) == ServiceLevel(None, None, NORMAL)


@pytest.mark.parametrize(
    "slo",
    [ServiceLevel(0.0), ServiceLevel(-1.0), ServiceLevel(3601.0), ServiceLevel(math.nan),
     ServiceLevel(math.inf), ServiceLevel(None, 0.0), ServiceLevel(None, 601.0),
     ServiceLevel(priority=3), ServiceLevel(priority=-1), ServiceLevel(True)],  # type: ignore[arg-type]
)
def test_out_of_range_values_are_refused(slo):
    with pytest.raises(SloError):
        slo.validate()


def test_priority_names():
    assert [priority_rank(n) for n in ("high", "normal", "low")] == [0, 1, 2]
    with pytest.raises(SloError, match="priority"):
        priority_rank("urgent")


def test_service_level_round_trips_through_protobuf():
    for slo in (ServiceLevel(0.25, 0.05, 0), ServiceLevel(None, 0.5, None), ServiceLevel()):
        assert service_level_from_pb(service_level_to_pb(slo)) == slo
    with pytest.raises(SloError):
        service_level_from_pb(common_pb2.ServiceLevel(priority="urgent"))


def test_fleet_config_gives_per_model_defaults_and_refuses_bad_ones():
    fleet = FleetConfig.model_validate(
        {"models": [{"name": "m", "slo": {"ttft_s": 1.5, "tpot_s": 0.2, "priority": "high"}}]}
    )
    assert fleet.models[0].slo.service_level() == ServiceLevel(1.5, 0.2, 0)
    with pytest.raises(ValueError):
        FleetConfig.model_validate({"models": [{"name": "m", "slo": {"ttft_s": -1}}]})
    with pytest.raises(ValueError):
        FleetConfig.model_validate({"models": [{"name": "m", "slo": {"ttfts": 1}}]})
