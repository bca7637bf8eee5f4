"""One KV page pool per worker, shared by every model it holds.

A page is ``page_size_bytes`` of one flat storage tensor. Allocation hands out page ids and
knows nothing about models; each model views the storage as
[num_pages, num_layers, 2, tokens_per_page, num_kv_heads, head_dim] in its own KV dtype with
its own tokens per page, so a page freed by one model serves another at once (a bfloat16
model fits twice the tokens of a float32 one in a page).

The pool never holds two storages at once: a resize copies the pages in use to host memory,
frees the old storage, allocates the new one and copies them back. The engine sizes the pool
after the weights are loaded (and shrinks it before loading more), so on a GPU the weights and
the KV pool together never exceed the budget, not even for a moment.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KvLayout:
    """How one model (for the layers held) lays its KV out in a page."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    tokens_per_page: int
    dtype: torch.dtype = torch.float32

    @property
    def token_elems(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim


class PagePool:
    def __init__(
        self, page_size_bytes: int, num_pages: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.page_size_bytes = page_size_bytes
        self.dtype = dtype
        self.device = device
        self.elem_bytes = torch.empty((), dtype=dtype).element_size()
        self.page_elems = page_size_bytes // self.elem_bytes
        self.storage: torch.Tensor = self._new_storage(num_pages)
        self.num_pages = num_pages
        self._free: list[int] = list(range(num_pages))  # a min-heap: low page ids go first
        self._used: set[int] = set()

    # ---- allocation (model-agnostic)
    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    @property
    def num_used_pages(self) -> int:
        return len(self._used)

    def allocate(self, n: int) -> list[int] | None:
        if n > len(self._free):
            return None
        pages = [heapq.heappop(self._free) for _ in range(n)]
        self._used.update(pages)
        # Fresh pages read as zeros: masked attention over unwritten slots stays finite.
        self._pages().index_fill_(0, torch.tensor(pages, device=self.device), 0)
        return pages

    def free(self, pages: list[int]) -> None:
        for p in pages:
            self._used.remove(p)  # KeyError on a double free: a bug, not bad input
        for p in pages:
            heapq.heappush(self._free, p)

    def resize(self, num_pages: int) -> dict[int, int]:
        """Grow or shrink to ``num_pages``; pages in use above the new size move down.

        Returns {old page id: new page id} for moved pages; the caller rewrites page tables.
        At no point are two storages allocated: the pages in use wait in host memory while
        the old storage is released and the new one allocated.
        """
        if num_pages < 0:
            raise ValueError(f"cannot resize to {num_pages} pages")
        if num_pages < len(self._used):
            raise ValueError(f"cannot shrink to {num_pages} pages: {len(self._used)} in use")
        remap: dict[int, int] = {}
        if num_pages < self.num_pages:
            high = sorted(p for p in self._used if p >= num_pages)
            low_free = sorted(p for p in self._free if p < num_pages)
            remap = dict(zip(high, low_free, strict=False))
        if num_pages != self.num_pages:
            moves = sorted((p, remap.get(p, p)) for p in self._used)  # (old id, new id)
            saved = self._stage_to_host([old for old, _ in moves])
            self.storage = self._new_storage(0)  # release the old storage first
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.storage = self._new_storage(num_pages)
            self.num_pages = num_pages
            if moves:
                dst = torch.tensor([new for _, new in moves], device=self.device)
                self._pages().index_copy_(0, dst, saved.to(self.device))
        self._used = {remap.get(p, p) for p in self._used}
        self.num_pages = num_pages
        self._free = [p for p in range(num_pages) if p not in self._used]  # ascending: a heap
        log.info("KV pool resized to %d pages (%d moved)", num_pages, len(remap))
        return remap

    def _new_storage(self, num_pages: int) -> torch.Tensor:
        """The only place the pool allocates device memory. Zeroed, so the memory is committed
        now: a host that cannot back the budget fails at start, not under a burst, and a CPU
        worker's resident size is its steady size from the first request on."""
        return torch.zeros(num_pages * self.page_elems, dtype=self.dtype, device=self.device)

    def _stage_to_host(self, pages: list[int], chunk: int = 16) -> torch.Tensor:
        """Copy ``pages`` to host memory a few at a time (no device-side temporary larger
        than ``chunk`` pages)."""
        out = torch.empty((len(pages), self.page_elems), dtype=self.dtype, device="cpu")
        view = self._pages()
        for i in range(0, len(pages), chunk):
            idx = torch.tensor(pages[i : i + chunk], device=self.device)
            out[i : i + len(idx)].copy_(view.index_select(0, idx))
        return out

    @property
    def storage_bytes(self) -> int:
        return self.storage.numel() * self.elem_bytes

    def _pages(self, num_pages: int | None = None) -> torch.Tensor:
        n = self.num_pages if num_pages is None else num_pages
        return self.storage.view(n, self.page_elems)

    def _page(self, p: int) -> torch.Tensor:
        return self.storage[p * self.page_elems : (p + 1) * self.page_elems]

    # ---- model views
    def layout_for(
        self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype | None = None
    ) -> KvLayout:
        dtype = dtype or self.dtype
        token_bytes = num_layers * 2 * num_kv_heads * head_dim * dtype.itemsize
        tpp = self.page_elems * self.elem_bytes // token_bytes
        return KvLayout(num_layers, num_kv_heads, head_dim, tpp, dtype)

    def view(self, layout: KvLayout) -> torch.Tensor:
        """[num_pages, num_layers, 2, tokens_per_page, num_kv_heads, head_dim] over storage,
        in the layout's dtype."""
        t, h, d = layout.tokens_per_page, layout.num_kv_heads, layout.head_dim
        storage = self.storage
        page_stride = self.page_elems
        if layout.dtype != self.dtype:
            storage = storage.view(torch.uint8).view(layout.dtype)
            page_stride = self.page_elems * self.elem_bytes // layout.dtype.itemsize
        shape = (self.num_pages, layout.num_layers, 2, t, h, d)
        stride = (page_stride, 2 * t * h * d, t * h * d, h * d, d, 1)
        return storage.as_strided(shape, stride)
