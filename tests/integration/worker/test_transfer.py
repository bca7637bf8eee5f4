"""Pair process groups over a real TCPStore and gloo, the two ranks in two threads."""

import threading

import pytest
import torch

from kvfleet.services.worker.transfer import PairGroups, recv_payload, send_payload

pytestmark = pytest.mark.integration


def test_pair_group_carries_meta_and_tensors_and_is_reused():
    torch.manual_seed(0)
    a = PairGroups("a", "127.0.0.1", timeout_s=30)
    b = PairGroups("b", "127.0.0.1", timeout_s=30)
    got: list = []

    def receive(group_id: str) -> None:
        g = b.join_incoming(group_id, "a", "127.0.0.1", a.store_port)
        got.append(recv_payload(g.pg, 0))

    tensors = [
        torch.randn(4, 2, 5, 2, 8),
        torch.arange(6, dtype=torch.int64),
        torch.randn(3, 3).to(torch.bfloat16),
    ]
    for round_ in range(2):
        group, new = a.outgoing("b")
        assert new == (round_ == 0)  # formed once, then reused
        t = threading.Thread(target=receive, args=(group.group_id,))
        t.start()
        pg = a.form_outgoing(group)
        sent = send_payload(pg, 1, {"request_id": f"r{round_}", "tokens": [1, 2, 3]}, tensors)
        t.join(30)
        meta, out = got[-1]
        assert meta == {"request_id": f"r{round_}", "tokens": [1, 2, 3]}
        assert all(
            torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(out, tensors, strict=True)
        )
        assert sent > sum(x.numel() * x.element_size() for x in tensors)
    assert len(b._incoming) == 1
