import pytest

from kvfleet.common.config import ModelConfig, PlannerSettings, WorkerConfig
from kvfleet.services.planner.core.policy import PlacementError, static_plan
from kvfleet.services.planner.reconciler import fleet_spec

pytestmark = pytest.mark.unit


def test_settings_become_the_static_plan():
    settings = PlannerSettings(
        models=[ModelConfig(name="a", weight_bytes=10), ModelConfig(name="b", weight_bytes=20)],
        workers=[
            WorkerConfig(id="w0", memory_bytes=1 << 20, models=["a"]),
            WorkerConfig(id="w1", memory_bytes=1 << 20),
        ],
    )
    plan = static_plan(fleet_spec(settings))
    assert plan.models_of("w0") == ("a",) and plan.models_of("w1") == ("a", "b")


def test_unknown_model_in_config_is_refused():
    settings = PlannerSettings(
        models=[ModelConfig(name="a")], workers=[WorkerConfig(id="w0", models=["zzz"])]
    )
    with pytest.raises(PlacementError):
        static_plan(fleet_spec(settings))
