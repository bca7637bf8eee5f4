"""Request timelines and live engine steps read back from a stack's Redis."""

import pytest

from kvfleet.common import redis_schema as rs
from kvfleet.common.redis_store import RedisStore
from kvfleet.common.sampling import SamplingParams
from kvfleet.load.timeline import phases, read_timelines, worker_steps

pytestmark = pytest.mark.integration


async def _request(store, rid, prompt, queued, decided, assigned, tokens, worker="w0"):
    await store.enqueue(rs.RequestRecord(rid, "m", tuple(range(prompt)),
                                         SamplingParams(max_tokens=len(tokens)), queued))
    await store.set_assigned(rid, worker)
    await store.event("assign", assigned, request_id=rid, worker_id=worker, decided_s=decided)
    await store.append_tokens(rid, [rs.TokenEntry(i, 7, "x", None, worker, ts)
                                    for i, ts in enumerate(tokens)])


async def test_timelines_and_back_to_back_steps(redis_url):
    store = RedisStore.from_url(redis_url)
    try:
        # a: prefilled alone in the step ending at 10.1, then decodes with b
        await _request(store, "a", 5, 10.0, 10.01, 10.02, [10.1, 10.2, 10.3, 10.4])
        # b joins: its prefill (step ending at 10.2) runs beside a's decode
        await _request(store, "b", 3, 10.05, 10.06, 10.07, [10.2, 10.3])
        timelines = await read_timelines(store)
        assert [t.request_id for t in timelines] == ["a", "b"]
        a = timelines[0]
        assert (a.worker_id, a.num_prompt_tokens, a.num_output_tokens) == ("w0", 5, 4)
        assert a.queue_wait_s == pytest.approx(0.01)
        assert a.to_first_token_s == pytest.approx(0.09)
        assert a.decode_per_token_s == pytest.approx(0.1)
        assert phases(timelines)["queue_wait"]["count"] == 2
        steps = await worker_steps(store, timelines)
        # the step ending at 10.1 may follow idle time: it is left out
        assert [(s.end_s, round(s.duration_s, 6)) for s in steps] == [
            (10.2, 0.1), (10.3, 0.1), (10.4, 0.1)]
        assert sorted(steps[0].chunks) == [(0, 3), (5, 1)]  # b's prefill, a's decode
        assert sorted(steps[1].chunks) == [(3, 1), (6, 1)]
    finally:
        await store.close()
