import dataclasses

import pytest

from kvfleet.common.convert import sampling_from_pb, sampling_to_pb
from kvfleet.common.ids import new_request_id, valid_request_id
from kvfleet.common.proto.common.v1 import common_pb2
from kvfleet.common.sampling import SamplingParams

pytestmark = pytest.mark.unit


def test_sampling_round_trips_through_protobuf():
    s = SamplingParams(
        max_tokens=9,
        temperature=0.5,
        top_k=3,
        top_p=0.9,
        seed=11,
        stop_token_ids=(2,),
        stop=("!",),
        ignore_eos=True,
    )
    back = sampling_from_pb(sampling_to_pb(s), default_max_tokens=1)
    assert back.top_p == pytest.approx(0.9)  # float32 on the wire
    assert dataclasses.replace(back, top_p=0.9) == s


def test_unset_proto_fields_take_defaults():
    s = sampling_from_pb(common_pb2.SamplingParams(), default_max_tokens=42)
    assert (s.max_tokens, s.top_p, s.seed, s.temperature) == (42, 1.0, None, 0.0)


def test_request_ids():
    assert valid_request_id(new_request_id())
    assert not valid_request_id("has space") and not valid_request_id("x" * 200)
    assert new_request_id() != new_request_id()
