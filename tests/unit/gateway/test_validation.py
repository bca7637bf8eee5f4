import pytest

from kvfleet.common.config import GatewaySettings
from kvfleet.common.sampling import SamplingParams
from kvfleet.services.gateway.errors import ApiError
from kvfleet.services.gateway.frontend import Frontend
from kvfleet.services.gateway.openai_api import ChatBody, CompletionBody

pytestmark = pytest.mark.unit


def _frontend() -> Frontend:
    return Frontend(store=None, settings=GatewaySettings(max_tokens_limit=64))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sampling,param",
    [
        (SamplingParams(max_tokens=0), "max_tokens"),
        (SamplingParams(max_tokens=65), "max_tokens"),
        (SamplingParams(temperature=-0.1), "temperature"),
        (SamplingParams(temperature=2.5), "temperature"),
        (SamplingParams(top_p=0.0), "top_p"),
        (SamplingParams(top_p=1.5), "top_p"),
        (SamplingParams(top_k=-1), "top_k"),
        (SamplingParams(seed=-3), "seed"),
        (SamplingParams(stop=("",)), "stop"),
        (SamplingParams(stop_token_ids=(-1,)), "stop_token_ids"),
    ],
)
def test_out_of_range_sampling_is_a_400_naming_the_parameter(sampling, param):
    with pytest.raises(ApiError) as e:
        _frontend().check_sampling(sampling)
    assert e.value.status == 400 and e.value.param == param
    assert e.value.body()["error"]["type"] == "invalid_request_error"


def test_valid_sampling_passes():
    _frontend().check_sampling(
        SamplingParams(max_tokens=64, temperature=2.0, top_p=1.0, top_k=5, seed=1, stop=("x",))
    )


def test_openai_bodies_map_to_sampling():
    b = CompletionBody.model_validate(
        {
            "model": "m",
            "prompt": "hi",
            "stop": "\n",
            "seed": 3,
            "max_tokens": 7,
            "temperature": 0,
            "unknown": 1,
        }
    )
    s = b.sampling(default_max_tokens=16)
    assert (s.max_tokens, s.stop, s.seed, s.temperature) == (7, ("\n",), 3, 0.0)
    assert (
        CompletionBody.model_validate({"model": "m", "prompt": "x"}).sampling(16).max_tokens == 16
    )
    c = ChatBody.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "developer",
                    "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
                }
            ],
        }
    )
    assert c.messages[0].plain() == {"role": "system", "content": "be brief"}
    with pytest.raises(ApiError):
        CompletionBody.model_validate({"model": "m", "prompt": "x", "n": 2}).sampling(16)
