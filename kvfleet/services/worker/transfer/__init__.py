"""KV transfer between workers over torch.distributed process groups, one per pair."""

from kvfleet.services.worker.transfer.channel import recv_payload, send_payload
from kvfleet.services.worker.transfer.pair_groups import PairGroups

__all__ = ["PairGroups", "recv_payload", "send_payload"]
