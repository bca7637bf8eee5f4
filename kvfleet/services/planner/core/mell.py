"""MELL's migration policy: epochs of the packing rules over the fleet's requests, with
adaptive migration modes. Pure.

Every decision is one epoch. The policy rebuilds its picture of the fleet from the workers'
reports (each request's size in tokens, each worker's pages) and compares it with the last
epoch's:

1. **departures**: requests gone since the last epoch leave holes; their bins are restored
   (refilled from the newest bin of their type);
2. **updates**: requests whose size class changed are re-allocated when their bin's rules
   no longer hold;
3. **allocations**: requests new since the last epoch (already placed by the dispatcher) are
   allocated, staying where they are when the rules allow;

then one repair pass catches anything left broken (a bin that overflows, a move that did not
happen). Each operation moves at most ``max_moves`` requests (``packing.MellRules``). The
epoch's moves form one plan, from which redundant migrations are dropped: a request moved
twice moves once from where it is to where it ends, and a request that ends where it started
does not move. The plan's moves are then given modes within the epoch's budgets
(``migration_modes``): KV over the links, or tokens and a re-prefill at the destination;
moves that fit neither wait.

Requests whose migration is in flight are placed at their destination until a report shows
them there (or ``stuck_s`` passes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvfleet.services.planner.core.migration import (
    MigrationCandidate,
    MigrationOrder,
    MigrationWorkerView,
)
from kvfleet.services.planner.core.migration_modes import (
    KV_MODE,
    MoveCost,
    WorkerBudget,
    choose_modes,
)
from kvfleet.services.planner.core.packing import (
    Bin,
    Item,
    MellRules,
    Move,
    Packing,
    SizeClass,
)

SIZE_BASES = ("current", "predicted")


@dataclass
class MellStats:
    """Running counts of what the epochs did (diagnostics for reports)."""

    epochs: int = 0
    operations: int = 0
    planned_moves: int = 0  # moves the rules made, before de-duplication
    redundant_moves: int = 0  # dropped: moved twice, or back where it started
    deferred_moves: int = 0  # no budget this epoch
    orders: int = 0
    reprefill_orders: int = 0


def dedupe(moves: Sequence[Move]) -> list[Move]:
    """One plan's moves without redundancy: a request moved several times moves once, from
    where it was to where it ends (in the order of its first move); one that ends where it
    started does not move."""
    first: dict[str, Move] = {}
    last: dict[str, str] = {}
    for m in moves:
        first.setdefault(m.request_id, m)
        last[m.request_id] = m.dst
    return [Move(rid, m.src, last[rid]) for rid, m in first.items() if last[rid] != m.src]


class MellPolicy:
    """``max_moves``: migrations per operation; ``max_orders``: per epoch; ``size_basis``:
    ``current`` sizes a request by the tokens it holds, ``predicted`` by the larger of that
    and its prompt plus predicted output; ``fill``: the share of each worker's pages the
    packing uses (the rest is room to grow between epochs); ``kv_mode``: how KV moves
    (``live`` or ``stop``)."""

    name = "mell"

    def __init__(
        self,
        max_moves: int = 10,
        max_orders: int = 64,
        size_basis: str = "current",
        fill: float = 1.0,
        kv_mode: str = KV_MODE,
        stuck_s: float = 30.0,
        default_epoch_s: float = 0.5,
    ) -> None:
        if size_basis not in SIZE_BASES:
            raise ValueError(f"size_basis must be one of {SIZE_BASES}")
        if not 0.0 < fill <= 1.0:
            raise ValueError("fill must be in (0, 1]")
        self.rules = MellRules(max_moves)
        self.max_orders = max_orders
        self.size_basis = size_basis
        self.fill = fill
        self.kv_mode = kv_mode
        self.stuck_s = stuck_s
        self.default_epoch_s = default_epoch_s
        self.stats = MellStats()
        self._prev: dict[str, tuple[str, SizeClass]] = {}
        self._moving: dict[str, tuple[str, str, float, Item]] = {}
        self._stamps: dict[str, tuple[SizeClass | None, int]] = {}
        self._last_s: float | None = None
        self._deferred: set[str] = set()

    # ----- sizing -----
    def tokens(self, c: MigrationCandidate, tpp: int) -> int:
        n = c.num_tokens if c.num_tokens > 0 else c.num_pages * max(tpp, 1)
        if self.size_basis == "predicted" and c.predicted_output_tokens is not None:
            prompt = max(n - c.num_output_tokens, 0)
            n = max(n, prompt + c.predicted_output_tokens)
        return max(n, 1)

    # ----- one epoch -----
    def decide(
        self, workers: Sequence[MigrationWorkerView], now_s: float
    ) -> tuple[MigrationOrder, ...]:
        epoch_s = self.default_epoch_s if self._last_s is None else max(now_s - self._last_s, 1e-3)
        self._last_s = now_s
        self.stats.epochs += 1
        p, origin, cands = self._picture(workers, now_s)
        rules = self.rules
        ops = 0
        for rid, (wid, _) in self._prev.items():  # 1. departures
            if rid not in p.where and wid in p.bins:
                rules.departed(p, wid)
                ops += 1
        arrivals = []
        for rid in list(p.where):
            prev = self._prev.get(rid)
            if prev is None:
                arrivals.append(rid)
            elif p.bin_of(rid).klass(p.item(rid)) != prev[1] and rid in p.where:  # 2. updates
                rules.reconsider(p, rid)
                ops += 1
        arrivals.sort(key=lambda r: (cands[r].arrival_s if r in cands else 0.0, r))
        for rid in arrivals:  # 3. allocations
            if rid in p.where:
                rules.admit(p, rid)
                ops += 1
        rules.repair(p)
        self.stats.operations += ops + 1
        self.stats.planned_moves += len(p.moves)

        orders = self._plan(p, origin, cands, workers, epoch_s, now_s)
        self._remember(p, origin, orders)
        return orders

    def _picture(
        self, workers: Sequence[MigrationWorkerView], now_s: float
    ) -> tuple[Packing, dict[str, str], dict[str, MigrationCandidate]]:
        """The fleet as bins and items, with moves in flight placed at their destination;
        also where each item is now and its report."""
        views = sorted(workers, key=lambda w: w.worker_id)
        bins = [
            Bin(w.worker_id, max(int(w.num_total_pages * self.fill), 1), rank=i,
                tokens_per_page=w.tokens_per_page, models=w.models, draining=w.draining)
            for i, w in enumerate(views)
        ]
        p = Packing(bins)
        seen: dict[str, tuple[str, MigrationCandidate]] = {}
        for w in views:
            for c in w.items:
                seen.setdefault(c.request_id, (w.worker_id, c))
        for rid, (_src, dst, since, item) in list(self._moving.items()):
            here = seen.get(rid)
            if (here is not None and here[0] == dst) or now_s - since > self.stuck_s \
                    or dst not in p.bins:
                del self._moving[rid]
            elif here is None:
                p.put(item, dst)  # in transit: it holds pages at the destination
        origin: dict[str, str] = {}
        cands: dict[str, MigrationCandidate] = {}
        for rid, (wid, c) in seen.items():
            b = p.bins[wid]
            item = Item(rid, c.model, self.tokens(c, b.tokens_per_page.get(c.model, 1)))
            moving = self._moving.get(rid)
            at = moving[1] if moving is not None else wid
            p.put(item, at)
            origin[rid] = at
            cands[rid] = c
        for rid, (_, dst, _, _) in self._moving.items():
            origin.setdefault(rid, dst)
        clock = 0
        for b in p.bins.values():
            kept = self._stamps.get(b.worker_id)
            if kept is not None and kept[0] == b.kind and b.kind is not None:
                b.stamp = kept[1]
            clock = max(clock, b.stamp)
        for b in p.bins.values():  # bins that changed type get stamps after every kept one
            kept = self._stamps.get(b.worker_id)
            if b.kind is not None and (kept is None or kept[0] != b.kind):
                clock += 1
                b.stamp = clock
        p.set_clock(clock)
        return p, origin, cands

    def _plan(
        self, p: Packing, origin: dict[str, str], cands: dict[str, MigrationCandidate],
        workers: Sequence[MigrationWorkerView], epoch_s: float, now_s: float,
    ) -> tuple[MigrationOrder, ...]:
        """The epoch's net moves, de-duplicated, with modes that fit the budgets."""
        kept = dedupe(p.moves)
        self.stats.redundant_moves += len(p.moves) - len(kept)
        net: list[MoveCost] = []
        for m in kept:
            c = cands.get(m.request_id)
            if c is None or m.request_id in self._moving or origin.get(m.request_id) != m.src:
                continue  # in flight: it is not where the plan found it
            net.append(MoveCost(m.request_id, m.src, m.dst, c.kv_bytes, c.num_tokens or 1,
                                c.num_pages > 0))
        budgets = {w.worker_id: WorkerBudget(w.link_bytes_per_s, w.reprefill_tokens_per_s)
                   for w in workers}
        chosen, deferred = choose_modes(net[: self.max_orders], budgets, epoch_s, self.kv_mode)
        self.stats.deferred_moves += len(deferred) + max(len(net) - self.max_orders, 0)
        orders = tuple(MigrationOrder(c.request_id, c.src, c.dst, c.mode) for c in chosen)
        for o in orders:
            self._moving[o.request_id] = (o.src_worker_id, o.dst_worker_id, now_s,
                                          p.item(o.request_id))
            self.stats.orders += 1
            if o.mode == "reprefill":
                self.stats.reprefill_orders += 1
        self._deferred = {m.request_id for m in deferred} | {m.request_id for m in net[
            self.max_orders:]}
        return orders

    def _remember(self, p: Packing, origin: dict[str, str], orders: tuple[MigrationOrder, ...]) -> None:
        """What the next epoch compares with: each request where it will be (moves that
        wait stay where they are) and its class there; each bin's type and stamp."""
        prev: dict[str, tuple[str, SizeClass]] = {}
        for rid, wid in p.where.items():
            at = origin.get(rid, wid) if rid in self._deferred else wid
            prev[rid] = (at, p.bins[at].klass(p.item(rid)))
        self._prev = prev
        self._stamps = {w: (b.kind, b.stamp) for w, b in p.bins.items()}

    def moving(self) -> dict[str, str]:
        """Requests whose migration this policy ordered and has not seen land: id -> dst."""
        return {rid: v[1] for rid, v in self._moving.items()}
