import pytest

from kvfleet.common.proto.common.v1 import common_pb2
from kvfleet.services.worker.servicer import _sampling

pytestmark = pytest.mark.unit


def test_proto_sampling_becomes_engine_sampling():
    msg = common_pb2.SamplingParams(
        max_tokens=5, temperature=0.0, stop=["x"], ignore_eos=True, seed=4
    )
    s = _sampling(msg)
    assert (s.max_tokens, s.stop, s.ignore_eos, s.seed, s.top_p) == (5, ("x",), True, 4, 1.0)
    s.validate()
