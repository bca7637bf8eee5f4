"""Process groups per pair of workers, formed on demand from a TCPStore.

Each worker hosts one TCPStore (port 0, read back). The worker that starts a migration to a
peer is rank 0 of the pair's group and names it ``<self>-><peer>/<n>``; the peer joins as
rank 1 through the initiator's store (a PrefixStore per group keeps groups apart). Groups
are kept and reused for later migrations between the same pair, in that direction; one
that fails is dropped and the next migration forms a fresh one. gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import secrets
import socket
import threading
from dataclasses import dataclass

import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class PairGroup:
    group_id: str
    peer_id: str
    rank: int
    pg: dist.ProcessGroup | None = None


class PairGroups:
    def __init__(self, worker_id: str, host: str, timeout_s: float, backend: str = "gloo") -> None:
        self.worker_id = worker_id
        self.host = host
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.backend = backend
        # The store listens on ``host`` only (TCPStore alone would listen on every interface).
        family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(128)
        self.store_port = int(self._listener.getsockname()[1])
        self._store = dist.TCPStore(host, self.store_port, is_master=True, wait_for_workers=False,
                                    timeout=self.timeout,
                                    master_listen_fd=self._listener.fileno())
        self._outgoing: dict[str, PairGroup] = {}  # peer id -> group where we are rank 0
        self._incoming: dict[str, PairGroup] = {}  # group id -> group where we are rank 1
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def store(self) -> dist.TCPStore:
        """This worker's store (pipeline groups it leads form through it too)."""
        return self._store

    def outgoing(self, peer_id: str) -> tuple[PairGroup, bool]:
        """The group to send to ``peer_id`` on, and whether it still has to be formed."""
        with self._lock:
            group = self._outgoing.get(peer_id)
            if group is None:
                # unguessable: nobody else can pre-register ranks of a group to come
                name = f"{self.worker_id}->{peer_id}/{next(self._counter)}-{secrets.token_hex(8)}"
                group = PairGroup(name, peer_id, 0)
                self._outgoing[peer_id] = group
            return group, group.pg is None

    def incoming(self, group_id: str) -> PairGroup | None:
        with self._lock:
            return self._incoming.get(group_id)

    def _make(self, store: dist.Store, group_id: str, rank: int) -> dist.ProcessGroup:
        prefixed = dist.PrefixStore(group_id, store)
        if self.backend == "nccl":
            return dist.ProcessGroupNCCL(prefixed, rank, 2)
        return dist.ProcessGroupGloo(prefixed, rank, 2, self.timeout)

    def form_outgoing(self, group: PairGroup) -> dist.ProcessGroup:
        """Blocking: rank 0 side of the rendezvous (the peer joins meanwhile)."""
        if group.pg is None:
            group.pg = self._make(self._store, group.group_id, 0)
            log.info("process group %s formed (%s)", group.group_id, self.backend)
        return group.pg

    def join_incoming(self, group_id: str, peer_id: str, store_host: str,
                      store_port: int) -> PairGroup:
        """Blocking: rank 1 side; reuses the group if we joined it before."""
        group = self.incoming(group_id)
        if group is not None and group.pg is not None:
            return group
        store = dist.TCPStore(store_host, store_port, is_master=False, timeout=self.timeout)
        group = PairGroup(group_id, peer_id, 1, self._make(store, group_id, 1))
        with self._lock:
            self._incoming[group_id] = group
        log.info("joined process group %s", group_id)
        return group

    def drop(self, group: PairGroup) -> None:
        with self._lock:
            if group.rank == 0 and self._outgoing.get(group.peer_id) is group:
                del self._outgoing[group.peer_id]
            if group.rank == 1:
                self._incoming.pop(group.group_id, None)
