import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.services.scheduler.dispatcher import Dispatcher

pytestmark = pytest.mark.unit


def test_cluster_view_skips_dead_and_marks_draining():
    d = Dispatcher.__new__(Dispatcher)
    info = rs.WorkerInfo("x", "addr", "b", 0.0)
    workers = {
        "w0": (info, rs.Occupancy("w0", ("m",), 10, 5, tokens_per_page={"m": 16})),
        "w1": (info, None),
        "w2": (info, rs.Occupancy("w2", ("m",), 10, 9)),
    }
    view = d._view(workers, {"w2"})
    assert [w.worker_id for w in view.workers] == ["w0", "w2"]
    assert view.workers[1].draining and not view.workers[1].can_serve("m")
    assert view.workers[0].can_serve("m") and view.workers[0].tokens_per_page == {"m": 16}
