import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.services.scheduler.core.dispatch import DispatchInput, cluster_view
from kvfleet.services.scheduler.core.occupancy import SeqReport

pytestmark = pytest.mark.unit


def test_heartbeats_become_the_views_dispatch_decides_on():
    seq = SeqReport("r1", "m", 3, 40, 39, 8, 12.5, 30)
    occ = rs.Occupancy("w0", ("m",), 10, 5, 1, {"m": 16}, 2, 1, num_queued_pages=2,
                       boot_id="b", intake_seq=7, seqs=(seq,))
    back = rs.Occupancy.from_json(occ.to_json())
    assert back == occ and back.report().seqs[0].decoding
    view = cluster_view(DispatchInput(
        0.0, (), (back.report(), rs.Occupancy("w2", ("m",), 10, 9).report()),
        draining=frozenset({"w2"}), queue_fraction=0.5))
    w0, w2 = view.workers
    assert w0.num_free_pages == 5 - 1 - 2 and w0.queue_allowance_pages == 5
    assert w0.can_serve("m") and w0.tokens_per_page == {"m": 16}
    assert w2.draining and not w2.can_serve("m")
