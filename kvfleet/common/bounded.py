"""Bookkeeping that cannot grow without bound."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator


class RecentSet:
    """A set that forgets: members older than ``ttl_s`` expire, and beyond ``max_items`` the
    oldest go first. For ids a service must remember for a while (cancels that arrived before
    their request, requests that migrated away), never for ever."""

    def __init__(self, max_items: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 1 or ttl_s <= 0:
            raise ValueError("max_items must be >= 1 and ttl_s > 0")
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[Hashable, float] = OrderedDict()

    def add(self, item: Hashable) -> None:
        self._items.pop(item, None)
        self._items[item] = self._clock()
        self._expire()

    def discard(self, item: Hashable) -> None:
        self._items.pop(item, None)

    def __contains__(self, item: object) -> bool:
        self._expire()
        return item in self._items

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def __iter__(self) -> Iterator[Hashable]:
        self._expire()
        return iter(list(self._items))

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl_s
        while self._items:
            item, added = next(iter(self._items.items()))
            if added > cutoff and len(self._items) <= self.max_items:
                break
            del self._items[item]
