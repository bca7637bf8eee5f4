"""Exact KV reservation with lending: which free pages a batch policy has promised. Pure.

A sequence admitted with a reservation owns ``pages`` pages in all: those it holds and the
free ones promised to it for the tokens it is predicted to write, so it never waits for
memory in the middle of its output unless it outruns its prediction. Promised pages that are
not written yet may be lent: a borrower predicted to finish before its lender writes that
far lives inside the lender's promise instead of taking pages of its own. A loan is always
recoverable: the borrower is preempted, never the lender, when the lender needs the pages
or when the borrower outruns what it borrowed and cannot get a reservation of its own.

Accounting. A reservation of ``R`` pages is backed partly by pages of the sequence's own
(``own``) and partly by loans from lenders' promises. With ``F`` free pages in the pool and a
sequence holding ``H`` pages::

    promised   = sum over sequences (own - H)
    unreserved = F - promised              (kept >= 0)

An owner's ``own`` is its whole ``R``; a borrower's pages taken from its lenders' promises are
no longer free, but their lenders' ``own - H`` still counts them, hence a borrower's
``own - H`` may be negative. ``promised`` is what the worker reports as its reserved pages.
When a lender leaves, its pages are free again and its loans become its borrowers' own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class Reservation:
    """One admitted sequence's promise (mutable ledger state)."""

    pages: int  # reserved in all, held ones included
    loans: dict[str, int] = field(default_factory=dict)  # lender -> pages borrowed from it
    lent: int = 0  # pages of this promise lent to borrowers
    num_growths: int = 0  # times it outran its prediction and grew

    @property
    def own(self) -> int:
        return self.pages - sum(self.loans.values())


class ReservationLedger:
    """Reservations of the sequences one worker admitted, keyed by sequence id."""

    def __init__(self) -> None:
        self._entries: dict[str, Reservation] = {}

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def get(self, seq_id: str) -> Reservation | None:
        return self._entries.get(seq_id)

    # ------------------------------------------------------------------ changes
    def reserve(self, seq_id: str, pages: int, loans: Mapping[str, int] | None = None) -> None:
        """A reservation of ``pages`` in all, ``loans`` of them borrowed (lender -> pages)
        and the rest from unreserved pages."""
        entry = Reservation(pages, {k: v for k, v in (loans or {}).items() if v > 0})
        if entry.own < 0:
            raise ValueError(f"{seq_id}: loans exceed the reservation")
        for lender, n in entry.loans.items():
            self._entries[lender].lent += n
        self._entries[seq_id] = entry

    def grow(self, seq_id: str, pages: int) -> None:
        """Raise a reservation to ``pages`` in all (the added pages are its own)."""
        entry = self._entries[seq_id]
        entry.pages = max(entry.pages, pages)
        entry.num_growths += 1

    def release(self, seq_id: str) -> None:
        """Forget a sequence (finished, preempted, gone). Its lenders get their pages back;
        its borrowers keep what they borrowed from it as their own."""
        entry = self._entries.pop(seq_id, None)
        if entry is None:
            return
        for lender, n in entry.loans.items():
            other = self._entries.get(lender)
            if other is not None:
                other.lent = max(0, other.lent - n)
        if entry.lent:
            for other in self._entries.values():
                other.loans.pop(seq_id, None)

    def sync(self, held: Mapping[str, int]) -> None:
        """Forget every sequence that holds no pages now (it left, or lost its KV)."""
        for seq_id in [s for s in self._entries if held.get(s, 0) <= 0]:
            self.release(seq_id)

    # ------------------------------------------------------------------ queries
    def borrowers_of(self, seq_id: str) -> list[str]:
        return [s for s, e in self._entries.items() if seq_id in e.loans]

    def is_borrower(self, seq_id: str) -> bool:
        entry = self._entries.get(seq_id)
        return entry is not None and bool(entry.loans)

    def promised(self, held: Mapping[str, int]) -> int:
        """Free pages promised to admitted sequences (see the module docstring)."""
        return sum(e.own - held.get(s, 0) for s, e in self._entries.items())

    def unreserved(self, num_free_pages: int, held: Mapping[str, int]) -> int:
        return num_free_pages - self.promised(held)

    def lendable(self, seq_id: str, held: int) -> int:
        """Pages of an owner's promise not yet written and not lent (a borrower lends none)."""
        entry = self._entries[seq_id]
        if entry.loans:
            return 0
        return max(0, entry.pages - held - entry.lent)
