"""Migrations in the simulator: three modes, and links that carry one transfer at a time.

- ``stop`` (stop-and-copy): the request leaves its source at a step boundary, all of its KV
  crosses, and it resumes at the destination. It pauses for the whole copy.
- ``live`` (multi-stage, as Llumnix): the destination holds pages for the KV the request has
  now, that KV crosses while the request keeps running at its source, then the request stops
  at the next step boundary and only the KV written meanwhile crosses. It pauses for that
  last part.
- ``reprefill``: the request stops, its tokens cross (a few bytes), and it joins the
  destination's queue to be prefilled again; it costs the destination that prefill.

A request that has not started (no KV) moves as tokens whatever the mode; one in the middle
of its prefill ships the KV computed so far and finishes its prefill at the destination.

Each worker has one link (the preset: NVLink, PCIe or Ethernet). A transfer occupies the
source's and the destination's links from its start to its end; transfers that share a link
wait their turn (first come, first served), so concurrent migrations contend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kvfleet.services.planner.core.migration import MigrationOrder
from kvfleet.sim.presets import LinkSpec
from kvfleet.sim.seq import SimSeq
from kvfleet.sim.worker import SimWorker

TOKEN_BYTES = 4  # a token id on the wire


class Links:
    """Each worker's link; a transfer holds both ends' links for its duration."""

    def __init__(self, num_workers: int, spec: LinkSpec) -> None:
        self.spec = spec
        self.free_at = [0.0] * num_workers
        self.bytes_sent = 0

    def transfer(self, src: int, dst: int, num_bytes: int, now: float) -> float:
        """Queue a transfer of ``num_bytes``; returns when it ends."""
        start = max(now, self.free_at[src], self.free_at[dst])
        end = start + self.spec.transfer_s(num_bytes)
        self.free_at[src] = self.free_at[dst] = end
        self.bytes_sent += num_bytes
        return end


@dataclass
class Flight:
    """A migration in progress."""

    dst_idx: int
    mode: str
    started_s: float
    pages_held: int = 0  # pages reserved at the destination
    copied_tokens: int = 0  # KV tokens already at the destination (live pre-copy)
    detach_s: float = -1.0


@dataclass
class MigrationStats:
    by_mode: dict[str, int] = field(default_factory=dict)
    pauses_s: list[float] = field(default_factory=list)  # KV modes: stop to resume
    aborted: int = 0


class SimMigrations:
    """The simulator's migration mechanism. ``push(t, kind, a, b)`` schedules an event;
    ``wake(worker, t)`` reschedules a worker."""

    def __init__(
        self, workers: list[SimWorker], link: LinkSpec,
        push: Callable[[float, str, object, object], None],
        wake: Callable[[SimWorker, float | None], None],
    ) -> None:
        self.workers = workers
        self.index = {w.worker_id: w for w in workers}
        self.links = Links(len(workers), link)
        self.push = push
        self.wake = wake
        self.flights: dict[str, Flight] = {}
        self.stats = MigrationStats()
        self.num_migrations = 0
        self.in_window = 0

    # ----- orders -----
    def order(self, order: MigrationOrder, now: float) -> None:
        src = self.index.get(order.src_worker_id)
        dst = self.index.get(order.dst_worker_id)
        rid = order.request_id
        if src is None or dst is None or src is dst or rid not in src.by_id or rid in self.flights:
            return
        seq = src.by_id[rid]
        if order.mode == "live" and seq.num_pages > 0:
            if not dst.reserve(seq.num_pages):
                return
            flight = Flight(dst.idx, "live", now, seq.num_pages, seq.num_computed)
            self.flights[rid] = flight
            kv = seq.num_computed * self._kv_bytes_per_token(dst, seq)
            self.push(self.links.transfer(src.idx, dst.idx, kv, now), "precopied", rid, src.idx)
            return
        mode = order.mode if order.mode in ("stop", "reprefill") else "stop"
        self.flights[rid] = Flight(dst.idx, mode, now)
        self.wake(src, src.request_detach(rid, now))

    def precopied(self, rid: str, src_idx: int, now: float) -> None:
        """The live pre-copy ended: the request stops at its source's next boundary."""
        flight = self.flights.get(rid)
        src = self.workers[src_idx]
        if flight is None:
            return
        if rid not in src.by_id:  # finished (or gone) meanwhile
            self._release(rid)
            return
        self.wake(src, src.request_detach(rid, now))

    def accept(self, seq: SimSeq) -> bool:
        """At its source's boundary: may ``seq`` leave now (the destination has room)?"""
        flight = self.flights.get(seq.request_id)
        if flight is None:
            return False
        dst = self.workers[flight.dst_idx]
        if flight.mode == "reprefill" or seq.num_pages == 0:  # it moves as tokens
            if flight.pages_held:
                dst.unreserve(flight.pages_held)
                flight.pages_held = 0
            return True
        extra = seq.num_pages - flight.pages_held
        if extra <= 0 or dst.reserve(extra):
            flight.pages_held += max(extra, 0)
            return True
        self._release(seq.request_id)
        self.stats.aborted += 1
        return False

    def depart(self, departed: list[SimSeq], now: float) -> None:
        """Requests that left their source at ``now``: their last transfer starts."""
        for seq in departed:
            flight = self.flights[seq.request_id]
            flight.detach_s = now
            src_idx = seq.worker_idx
            dst = self.workers[flight.dst_idx]
            if flight.pages_held == 0:
                nbytes = seq.num_tokens * TOKEN_BYTES
                flight.mode = "reprefill"
            else:
                nbytes = (seq.num_computed - flight.copied_tokens) * self._kv_bytes_per_token(
                    dst, seq)
            end = self.links.transfer(src_idx, dst.idx, max(nbytes, 0), now)
            self.push(end, "arrive", seq, dst.idx)
            seq.num_migrations += 1
            self.num_migrations += 1
            self.in_window += 1
            self.stats.by_mode[flight.mode] = self.stats.by_mode.get(flight.mode, 0) + 1

    def arrive(self, seq: SimSeq, dst_idx: int, now: float) -> None:
        flight = self.flights.pop(seq.request_id)
        dst = self.workers[dst_idx]
        if flight.pages_held > 0:
            self.stats.pauses_s.append(now - flight.detach_s)
            self.wake(dst, dst.attach(seq, now))
        else:
            self.wake(dst, dst.attach_waiting(seq, now))

    # ----- bookkeeping -----
    def finished(self, seq: SimSeq) -> None:
        """A request finished where it was: a live pre-copy for it is dropped."""
        if seq.request_id in self.flights:
            self._release(seq.request_id)

    def unhonoured(self, asked: tuple[str, ...]) -> None:
        """Detaches a source was asked for but did not do (the request was gone)."""
        for rid in asked:
            flight = self.flights.get(rid)
            if flight is not None and flight.detach_s < 0:
                src_has = any(rid in w.by_id for w in self.workers)
                if not src_has:
                    self._release(rid)

    def _release(self, rid: str) -> None:
        flight = self.flights.pop(rid, None)
        if flight is not None and flight.pages_held > 0 and flight.detach_s < 0:
            self.workers[flight.dst_idx].unreserve(flight.pages_held)

    @staticmethod
    def _kv_bytes_per_token(dst: SimWorker, seq: SimSeq) -> int:
        return dst.costs[seq.model].kv_bytes_per_token
