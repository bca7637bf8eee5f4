"""MELL's packing (Liu et al., INFOCOM 2025): running requests are items that grow, workers
are bins of KV capacity ``C`` pages, and the fleet is packed online onto as few bins as the
rules allow with a bounded number of migrations per operation. Pure.

Size classes, relative to the capacity ``C`` of the bin (a request's pages there):

| class | size | a bin of this type (its largest item's class) holds |
| --- | --- | --- |
| L | (C/2, C] | one L, and whatever else fits |
| M | (C/3, C/2] | at most 2 M and at most 1 T (no S) |
| S | (C/4, C/3] | at most 3 S (no T) |
| T | (C/8, C/4] | T items; every T-bin but the newest is at least 3/4 full |
| tiny | (0, C/8] | tiny items only |

Tiny items are grouped: they fill the room left in bins of any type (first fit, oldest bins
first) and only open a bin of their own when nothing has room.

The rules (one *operation* each, at most ``max_moves`` migrations of other requests):

- **Allocate** an item: an L opens a bin and pulls the largest S or M that fits from the
  newest S/M-bin; an M or S goes into an L-bin where it fits, else into the newest bin of its
  class with room, else opens a bin; a T into an L-bin with room, else the newest T-bin; a
  tiny item first-fit. A bin is opened at the lowest-ranked idle worker.
- **Depart**: the bin an item left is restored by refilling it from the newest bin of its
  type (a hole in an M-bin takes an M from the newest M-bin, a T-bin below 3/4 takes items
  from the newest T-bin); what no longer fits its bin's type is re-allocated.
- **Update**: an item whose class changed (or whose growth broke its bin's rules) departs
  and is re-allocated, staying where it is when that is allowed.

Invariants kept (``violations`` lists breaks): every bin fits; the per-type contents above;
and per type, only the newest bin may be incomplete (an M-bin with fewer than 2 M, an S-bin
with fewer than 3 S, a T-bin under 3/4 full). "Newest" is the bin that most recently became
of its type (a stamp given when its type changes). A bin's pages for an item follow its own
tokens per page for the item's model, so workers of different page sizes mix.

The planner runs these rules on its picture of the fleet (``kvfleet.services.planner.core.
mell``); the moves they make are the migrations it orders.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class SizeClass(IntEnum):
    TINY = 0
    T = 1
    S = 2
    M = 3
    L = 4


def size_class(pages: int, capacity: int) -> SizeClass:
    """The class of an item of ``pages`` in a bin of ``capacity`` pages."""
    if capacity <= 0 or 2 * pages > capacity:
        return SizeClass.L
    if 3 * pages > capacity:
        return SizeClass.M
    if 4 * pages > capacity:
        return SizeClass.S
    if 8 * pages > capacity:
        return SizeClass.T
    return SizeClass.TINY


#: how many items of its own class a complete bin of that type holds
COMPLETE = {SizeClass.M: 2, SizeClass.S: 3}
T_FILL = 0.75  # every T-bin but the newest is at least this full


@dataclass(frozen=True, slots=True)
class Item:
    """A request as the packing sees it: its KV size in tokens."""

    request_id: str
    model: str
    num_tokens: int


@dataclass(frozen=True, slots=True)
class Move:
    request_id: str
    src: str
    dst: str


class Bin:
    """One worker: capacity in pages, tokens per page per model, the items it holds (with
    their pages and classes here, and a count per class, kept as items come and go)."""

    __slots__ = ("worker_id", "rank", "capacity", "tokens_per_page", "models", "draining",
                 "items", "sizes", "classes", "counts", "used", "stamp", "kind")

    def __init__(
        self, worker_id: str, capacity: int, *, rank: int = 0,
        tokens_per_page: dict[str, int] | None = None, models: Iterable[str] | None = None,
        draining: bool = False,
    ) -> None:
        self.worker_id = worker_id
        self.rank = rank
        self.capacity = capacity
        self.tokens_per_page = dict(tokens_per_page or {})
        self.models = frozenset(models) if models is not None else None  # None: any model
        self.draining = draining
        self.items: dict[str, Item] = {}
        self.sizes: dict[str, int] = {}
        self.classes: dict[str, SizeClass] = {}
        self.counts = [0] * len(SizeClass)
        self.used = 0
        self.stamp = 0  # when the bin became of its current type
        self.kind: SizeClass | None = None  # its type; None while empty

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    def pages(self, item: Item) -> int:
        if self.items.get(item.request_id) is item:
            return self.sizes[item.request_id]
        tpp = self.tokens_per_page.get(item.model, 1)
        return -(-item.num_tokens // max(tpp, 1))

    def klass(self, item: Item) -> SizeClass:
        if self.items.get(item.request_id) is item:
            return self.classes[item.request_id]
        return size_class(self.pages(item), self.capacity)

    def add(self, item: Item) -> None:
        pages = self.pages(item)
        cls = size_class(pages, self.capacity)
        self.items[item.request_id] = item
        self.sizes[item.request_id] = pages
        self.classes[item.request_id] = cls
        self.counts[cls] += 1
        self.used += pages

    def remove(self, request_id: str) -> Item:
        item = self.items.pop(request_id)
        self.used -= self.sizes.pop(request_id)
        self.counts[self.classes.pop(request_id)] -= 1
        return item

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def fits(self, item: Item) -> bool:
        return self.pages(item) <= self.free

    def count(self, cls: SizeClass) -> int:
        return self.counts[cls]

    def type_now(self) -> SizeClass | None:
        for cls in (SizeClass.L, SizeClass.M, SizeClass.S, SizeClass.T, SizeClass.TINY):
            if self.counts[cls]:
                return cls
        return None

    def incomplete(self) -> bool:
        """Short of what a non-newest bin of its type must hold."""
        if self.kind in COMPLETE:
            return self.count(self.kind) < COMPLETE[self.kind]  # type: ignore[index]
        if self.kind in (SizeClass.T, SizeClass.TINY):
            return self.used < T_FILL * self.capacity
        return False

    def group(self) -> frozenset[str] | None:
        return self.models

    def __repr__(self) -> str:
        return (f"Bin({self.worker_id}, {self.kind.name if self.kind is not None else '-'}, "
                f"{self.used}/{self.capacity}, {list(self.items)})")


class Packing:
    """Bins in rank order and where each item is; mutations keep types and stamps current
    and record the moves made."""

    def __init__(self, bins: Iterable[Bin]) -> None:
        self.bins: dict[str, Bin] = {}
        for b in sorted(bins, key=lambda b: (b.rank, b.worker_id)):
            self.bins[b.worker_id] = b
        self.where: dict[str, str] = {}
        self.moves: list[Move] = []
        self._clock = max((b.stamp for b in self.bins.values()), default=0)
        for b in self.bins.values():
            for rid in b.items:
                self.where[rid] = b.worker_id

    # ----- mutation -----
    def _retype(self, b: Bin) -> None:
        kind = b.type_now()
        if kind != b.kind:
            b.kind = kind
            self._clock += 1
            b.stamp = self._clock if kind is not None else 0

    def put(self, item: Item, worker_id: str) -> None:
        b = self.bins[worker_id]
        b.add(item)
        self.where[item.request_id] = worker_id
        self._retype(b)

    def take(self, request_id: str) -> Item:
        b = self.bins[self.where.pop(request_id)]
        item = b.remove(request_id)
        self._retype(b)
        return item

    def move(self, request_id: str, dst: str) -> None:
        src = self.where[request_id]
        item = self.take(request_id)
        self.put(item, dst)
        self.moves.append(Move(request_id, src, dst))

    def resize(self, item: Item) -> None:
        """Change an item's size in place (growth); the bin's stamp changes only if its
        type does."""
        b = self.bins[self.where[item.request_id]]
        saved = self.save(b)
        self.take(item.request_id)
        self.put(item, b.worker_id)
        if b.kind == saved[0]:
            self.restore(b, saved)

    def set_clock(self, clock: int) -> None:
        """Stamps given from now on come after ``clock`` (bins restored with old stamps)."""
        self._clock = max(self._clock, clock)

    def save(self, b: Bin) -> tuple[SizeClass | None, int, int]:
        """A bin's type and stamp (and the stamp clock), to undo a tentative change."""
        return b.kind, b.stamp, self._clock

    def restore(self, b: Bin, saved: tuple[SizeClass | None, int, int]) -> None:
        b.kind, b.stamp, self._clock = saved

    # ----- queries -----
    def item(self, request_id: str) -> Item:
        return self.bins[self.where[request_id]].items[request_id]

    def bin_of(self, request_id: str) -> Bin:
        return self.bins[self.where[request_id]]

    def of_type(self, kind: SizeClass, group: frozenset[str] | None) -> list[Bin]:
        return [b for b in self.bins.values() if b.kind == kind and b.group() == group]

    def newest(self, kind: SizeClass, group: frozenset[str] | None) -> Bin | None:
        bins = self.of_type(kind, group)
        return max(bins, key=lambda b: b.stamp) if bins else None

    def active(self) -> list[Bin]:
        return [b for b in self.bins.values() if b.items]


def violations(p: Packing) -> list[str]:
    """Every broken invariant, as text (empty when the packing keeps them all)."""
    out: list[str] = []
    for b in p.bins.values():
        if b.used > b.capacity:
            out.append(f"{b.worker_id}: {b.used} pages in {b.capacity}")
        out.extend(f"{b.worker_id}: {why}" for why in _content_breaks(b))
    groups = {b.group() for b in p.bins.values()}
    for group in groups:
        for kind in (SizeClass.M, SizeClass.S, SizeClass.T, SizeClass.TINY):
            bins = p.of_type(kind, group)
            if not bins:
                continue
            newest = max(bins, key=lambda b: b.stamp)
            for b in bins:
                if b is not newest and b.incomplete():
                    out.append(f"{b.worker_id}: incomplete {kind.name}-bin that is not the "
                               f"newest ({newest.worker_id})")
    return out


def _stale(p: Packing) -> list[str]:
    """Incomplete bins that are not the newest of their type."""
    out: list[str] = []
    for kind in (SizeClass.M, SizeClass.S, SizeClass.T, SizeClass.TINY):
        for group in {b.group() for b in p.bins.values() if b.kind == kind}:
            bins = p.of_type(kind, group)
            newest = max(bins, key=lambda b: b.stamp)
            out.extend(b.worker_id for b in bins if b is not newest and b.incomplete())
    return out


def _touched(p: Packing, start: int) -> list[str]:
    """Bins that moves since ``start`` took from or gave to."""
    return sorted({w for m in p.moves[start:] for w in (m.src, m.dst)})


def _content_breaks(b: Bin) -> list[str]:
    if b.kind is None:
        return []
    counts = b.counts
    out = []
    if b.kind == SizeClass.M:
        if counts[SizeClass.M] > 2:
            out.append(f"M-bin with {counts[SizeClass.M]} M")
        if counts[SizeClass.S]:
            out.append("M-bin with an S")
        if counts[SizeClass.T] > 1:
            out.append(f"M-bin with {counts[SizeClass.T]} T")
    elif b.kind == SizeClass.S:
        if counts[SizeClass.S] > 3:
            out.append(f"S-bin with {counts[SizeClass.S]} S")
        if counts[SizeClass.T]:
            out.append("S-bin with a T")
    return out


class MellRules:
    """The Allocate, Depart and Update rules over a :class:`Packing`; each call is one
    operation of at most ``max_moves`` migrations of requests already placed."""

    def __init__(self, max_moves: int = 10) -> None:
        if max_moves < 1:
            raise ValueError("max_moves must be >= 1")
        self.max_moves = max_moves
        self._left = max_moves

    # ----- operations -----
    def allocate(self, p: Packing, item: Item, prefer: str | None = None) -> str | None:
        """Place a new item (not in ``p``); ``prefer`` is a bin to keep it in when the rules
        allow (where the dispatcher put it). Returns its bin, or None when no bin has room."""
        self._left = self.max_moves
        start = len(p.moves)
        wid = self._place(p, item, prefer)
        if wid is not None:
            self._settle(p, [wid, *_touched(p, start)])
        return wid

    def depart(self, p: Packing, request_id: str) -> None:
        """Remove an item (it finished) and restore its bin."""
        self._left = self.max_moves
        wid = p.where[request_id]
        p.take(request_id)
        self._settle(p, [wid])

    def departed(self, p: Packing, worker_id: str) -> None:
        """An item already gone from ``worker_id`` (seen missing): restore the bin."""
        self._left = self.max_moves
        if worker_id in p.bins:
            self._settle(p, [worker_id])

    def update(self, p: Packing, item: Item) -> None:
        """An item's size changed: keep it where it is if its bin's rules still hold, else
        re-allocate it (and restore the bin it left)."""
        self._left = self.max_moves
        start = len(p.moves)
        b = p.bin_of(item.request_id)
        kind, stamp, _ = p.save(b)
        old = p.item(item.request_id)
        p.resize(item)
        if b.klass(old) == b.klass(item) and b.used <= b.capacity and self._bin_ok(p, b):
            return
        self._relocate(p, item.request_id, keep_if_ok=True)
        if b.kind == kind:  # it left, and the bin is of its old type again
            b.stamp = stamp
        self._settle(p, [b.worker_id, *_touched(p, start)])

    def admit(self, p: Packing, request_id: str) -> None:
        """An item already placed (where the dispatcher put it) is allocated as new: it
        stays when the rules allow, else it moves (one operation)."""
        self._left = self.max_moves
        start = len(p.moves)
        src = p.where[request_id]
        saved = p.save(p.bins[src])
        item = p.take(request_id)
        if self._acceptable(p, p.bins[src], item):
            p.put(item, src)
            p.restore(p.bins[src], saved)
            if p.bins[src].klass(item) == SizeClass.L:
                self._pull(p, p.bins[src])
        else:
            p.put(item, src)
            p.restore(p.bins[src], saved)
            self._relocate(p, request_id)
        self._settle(p, [src, *_touched(p, start)])

    def reconsider(self, p: Packing, request_id: str) -> None:
        """An item (already resized in ``p``) changed class: it stays if its bin's rules
        still hold, else it is re-allocated (one operation)."""
        self._left = self.max_moves
        start = len(p.moves)
        b = p.bin_of(request_id)
        if not (b.used <= b.capacity and self._bin_ok(p, b)):
            self._relocate(p, request_id, keep_if_ok=True)
        self._settle(p, [b.worker_id, *_touched(p, start)])

    def choose(self, p: Packing, item: Item) -> str | None:
        """Where the rules would allocate a new item, moving nothing (the dispatcher's
        question); None when no bin has room."""
        serving = [b for b in p.bins.values() if b.serves(item.model) and not b.draining]
        if not serving:
            return None
        target = self._choose(p, item, serving)
        return target.worker_id if target is not None else None

    def repair(self, p: Packing, budget: int | None = None) -> None:
        """Restore every bin that breaks an invariant (one operation)."""
        self._left = budget if budget is not None else self.max_moves
        self._settle(p, [b.worker_id for b in p.active()])

    @property
    def moves_left(self) -> int:
        return self._left

    # ----- placement -----
    def _place(self, p: Packing, item: Item, prefer: str | None) -> str | None:
        serving = [b for b in p.bins.values() if b.serves(item.model) and not b.draining]
        if not serving:
            return None
        if prefer is not None and prefer in p.bins and self._acceptable(p, p.bins[prefer], item):
            p.put(item, prefer)
            if p.bins[prefer].klass(item) == SizeClass.L:
                self._pull(p, p.bins[prefer])
            return prefer
        target = self._choose(p, item, serving)
        if target is None:
            return None
        p.put(item, target.worker_id)
        if target.klass(item) == SizeClass.L:
            self._pull(p, target)
        return target.worker_id

    def _choose(self, p: Packing, item: Item, serving: list[Bin]) -> Bin | None:
        ref = serving[0]
        cls = ref.klass(item)
        active = [b for b in serving if b.items]
        l_bins = [b for b in active if b.kind == SizeClass.L and b.fits(item)]
        if cls == SizeClass.L:
            return self._open(serving, item) or self._best_fit(active, item)
        if cls in (SizeClass.M, SizeClass.S, SizeClass.T):
            if l_bins:
                return l_bins[0]
            group = ref.group()
            newest = p.newest(cls, group)
            if newest is not None and newest.fits(item) and self._acceptable(p, newest, item):
                return newest
            return self._open(serving, item) or self._best_fit(
                [b for b in active if self._acceptable(p, b, item)], item) or self._best_fit(
                active, item)
        # tiny: first fit, oldest bins first, never into an incomplete M/S bin
        for b in active:
            if b.fits(item) and not (b.kind in COMPLETE and b.incomplete()):
                return b
        return self._open(serving, item) or self._best_fit(active, item)

    @staticmethod
    def _open(serving: list[Bin], item: Item) -> Bin | None:
        for b in serving:  # rank order
            if not b.items and b.fits(item):
                return b
        return None

    @staticmethod
    def _best_fit(bins: list[Bin], item: Item) -> Bin | None:
        fitting = [b for b in bins if b.fits(item)]
        return min(fitting, key=lambda b: (b.free - b.pages(item), b.rank)) if fitting else None

    def _acceptable(self, p: Packing, b: Bin, item: Item) -> bool:
        """Whether ``item`` may join ``b`` without breaking an invariant."""
        if not b.serves(item.model) or b.draining or not b.fits(item):
            return False
        saved = p.save(b)
        p.put(item, b.worker_id)
        try:
            return self._bin_ok(p, b)
        finally:
            p.take(item.request_id)
            p.restore(b, saved)

    def _bin_ok(self, p: Packing, b: Bin) -> bool:
        if b.used > b.capacity or _content_breaks(b):
            return False
        if b.kind is None or not b.incomplete():
            return True
        # an incomplete bin must be the newest of its type, and the only incomplete one
        others = [o for o in p.of_type(b.kind, b.group()) if o is not b]
        return all(o.stamp < b.stamp and not o.incomplete() for o in others)

    def _pull(self, p: Packing, l_bin: Bin) -> None:
        """An L-bin takes the largest S or M that fits from the newest S/M-bin."""
        if self._left <= 0:
            return
        best: tuple[int, str] | None = None
        for kind in (SizeClass.M, SizeClass.S):
            donor = p.newest(kind, l_bin.group())
            if donor is None or donor is l_bin:
                continue
            for rid, it in donor.items.items():
                if donor.klass(it) == kind and l_bin.fits(it) and l_bin.serves(it.model):
                    size = l_bin.pages(it)
                    if best is None or size > best[0]:
                        best = (size, rid)
        if best is not None:
            self._move(p, best[1], l_bin.worker_id)

    # ----- moving -----
    def _move(self, p: Packing, request_id: str, dst: str) -> bool:
        if self._left <= 0 or p.where[request_id] == dst:
            return False
        self._left -= 1
        p.move(request_id, dst)
        return True

    def _relocate(self, p: Packing, request_id: str, keep_if_ok: bool = False) -> bool:
        """Re-allocate an item already placed: take it out, choose by the rules (keeping it
        where it is when allowed), and move it. False when it stays put."""
        if self._left <= 0:
            return False
        src = p.where[request_id]
        saved = p.save(p.bins[src])
        item = p.take(request_id)
        serving = [b for b in p.bins.values() if b.serves(item.model) and not b.draining]
        target: Bin | None = None
        if keep_if_ok and self._acceptable(p, p.bins[src], item):
            target = p.bins[src]
        if target is None:
            others = [b for b in serving if b.worker_id != src]
            target = self._choose(p, item, others) if others else None
        p.put(item, src)
        p.restore(p.bins[src], saved)
        if target is None or target.worker_id == src:
            return False
        self._move(p, request_id, target.worker_id)
        if target.klass(item) == SizeClass.L:
            self._pull(p, target)
        return True

    # ----- restoring invariants -----
    def _settle(self, p: Packing, worker_ids: list[str]) -> None:
        """Fix the bins in the worklist (and those the fixes touch) until none breaks an
        invariant or the operation's moves run out."""
        work = list(dict.fromkeys(worker_ids))
        steps = 0
        scan_moves = -1
        while self._left > 0 and steps < 8 * self.max_moves + 4 * len(p.bins):
            if not work:
                # A bin that became the newest of its type can leave an older one short:
                # look over every type for incomplete bins that are not the newest, again
                # after any scan whose fixes moved something.
                if len(p.moves) == scan_moves:
                    return
                scan_moves = len(p.moves)
                work = _stale(p)
                continue
            steps += 1
            b = p.bins[work.pop(0)]
            for wid in self._fix(p, b):
                if wid not in work:
                    work.append(wid)

    def _fix(self, p: Packing, b: Bin) -> list[str]:
        """One repair step on ``b``; returns the bins to look at again (those a move
        touched, or older incomplete bins of its type when ``b`` is the newest)."""
        if not b.items:
            return []
        before = len(p.moves)
        if b.used > b.capacity:
            self._shed(p, b)
        elif _content_breaks(b):
            self._evict_strays(p, b)
        elif b.incomplete():
            kind = b.kind
            assert kind is not None
            if p.newest(kind, b.group()) is b:  # allowed; older incomplete ones are not
                return [o.worker_id for o in p.of_type(kind, b.group())
                        if o is not b and o.incomplete()]
            self._refill(p, b)
        return _touched(p, before)

    def _shed(self, p: Packing, b: Bin) -> None:
        """An overflowing bin re-allocates items, the smallest that ends the overflow first."""
        excess = b.used - b.capacity
        items = sorted(b.items.values(), key=lambda it: (b.pages(it), it.request_id))
        enough = [it for it in items if b.pages(it) >= excess]
        order = enough[:1] + [it for it in reversed(items) if it not in enough[:1]]
        for it in order:
            if b.used <= b.capacity or self._left <= 0:
                return
            self._relocate(p, it.request_id)

    def _evict_strays(self, p: Packing, b: Bin) -> None:
        """Items a bin of this type may not hold (an S in an M-bin, a second T, ...) leave."""
        kind = b.kind
        ranked = sorted(b.items.values(), key=lambda it: (-b.pages(it), it.request_id))
        for it in ranked:
            if not _content_breaks(b) or self._left <= 0:
                return
            cls = b.klass(it)
            stray = (
                (kind == SizeClass.M and (cls == SizeClass.S or (cls == SizeClass.T and b.count(
                    SizeClass.T) > 1) or (cls == SizeClass.M and b.count(SizeClass.M) > 2)))
                or (kind == SizeClass.S and (cls == SizeClass.T or (
                    cls == SizeClass.S and b.count(SizeClass.S) > 3)))
            )
            if stray:
                self._relocate(p, it.request_id)

    def _refill(self, p: Packing, b: Bin) -> None:
        """An incomplete bin that is not the newest of its type: fill it from the newest
        (and then the next newest) while their items fit; when nothing there fits, send its
        own items of its class to the newest instead (re-allocating what does not fit), so
        it stops being of the type. One direction per call: nothing moves back and forth."""
        kind = b.kind
        assert kind is not None
        donor = p.newest(kind, b.group())
        if donor is None or donor is b:
            return
        if any(b.fits(it) for it in self._donations(donor, kind)):
            while self._left > 0 and b.kind == kind and b.incomplete():
                donor = p.newest(kind, b.group())
                if donor is None or donor is b:
                    return
                gift = next((it for it in self._donations(donor, kind) if b.fits(it)), None)
                if gift is None:
                    return
                self._move(p, gift.request_id, b.worker_id)
            return
        while self._left > 0 and b.kind == kind:
            own = sorted((it for it in b.items.values() if b.klass(it) == kind),
                         key=lambda it: (-b.pages(it), it.request_id))
            if not own:
                return
            if donor.fits(own[0]) and donor.serves(own[0].model):
                self._move(p, own[0].request_id, donor.worker_id)
            elif not self._relocate(p, own[0].request_id):
                return

    @staticmethod
    def _donations(donor: Bin, kind: SizeClass) -> list[Item]:
        """What ``donor`` may give a bin of type ``kind``: items of the class for M/S bins;
        for a T-bin, T items then tiny ones, largest first."""
        items = list(donor.items.values())
        if kind in COMPLETE:
            pick = [it for it in items if donor.klass(it) == kind]
        elif kind == SizeClass.T:
            pick = [it for it in items if donor.klass(it) in (SizeClass.T, SizeClass.TINY)]
        else:
            pick = [it for it in items if donor.klass(it) == SizeClass.TINY]
        return sorted(pick, key=lambda it: (-donor.klass(it), -donor.pages(it), it.request_id))
