import pytest

from kvfleet.common.bounded import RecentSet

pytestmark = pytest.mark.unit


def test_recent_set_forgets_by_age_and_by_count():
    now = [0.0]
    s = RecentSet(max_items=3, ttl_s=10.0, clock=lambda: now[0])
    for i in range(5):
        s.add(i)
        now[0] += 1
    assert len(s) == 3 and 0 not in s and 4 in s
    s.add(2)  # refreshed: now the newest
    now[0] = 14.5
    assert list(s) == [2]
    s.discard(2)
    assert len(s) == 0
    with pytest.raises(ValueError):
        RecentSet(0, 1.0)
