"""Host-side bookkeeping of KV pages: a free list plus reference counts.

The device holds one pool of `num_pages` pages per layer (see `paged_cache.py`); this allocator
only decides which page ids are in use. Page 0 is reserved as the *trash page*: padding tokens
and finished rows write their K/V there, so it is never handed out. A page may be referenced by
several sequences at once (the prompt of a GRPO group, a cached prefix); it returns to the free
list when its last reference is dropped.
"""

from __future__ import annotations

import numpy as np

TRASH_PAGE = 0


class OutOfPages(RuntimeError):
    """Not enough free KV pages for an allocation."""


class PageAllocator:
    """Reference-counted page ids in [1, num_pages).

    Attributes:
      num_pages: pool size, including the reserved trash page.
    """

    def __init__(self, num_pages: int):
        if num_pages < 2:
            raise ValueError(f"need at least 2 pages (one is the reserved trash page), got {num_pages}")
        self.num_pages = num_pages
        self._refcount = np.zeros(num_pages, np.int32)
        self._refcount[TRASH_PAGE] = 1  # permanently held
        # Stack of free pages; pop from the end, so low ids are handed out first.
        self._free = list(range(num_pages - 1, 0, -1))

    @property
    def num_free(self) -> int:
        """Pages available for allocation."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        """Pages referenced by at least one sequence (the trash page is not counted)."""
        return self.num_pages - 1 - len(self._free)

    @property
    def capacity(self) -> int:
        """Pages that can ever be allocated (all but the trash page)."""
        return self.num_pages - 1

    def refcount(self, page: int) -> int:
        return int(self._refcount[page])

    def alloc(self, n: int) -> list[int]:
        """Takes `n` fresh pages (refcount 1 each). Raises OutOfPages, allocating nothing."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            raise OutOfPages(f"need {n} KV pages, {len(self._free)} free of {self.capacity}")
        pages = [self._free.pop() for _ in range(n)]
        self._refcount[pages] = 1
        return pages

    def share(self, pages: list[int]) -> None:
        """Adds one reference to each page (they must be in use)."""
        for p in pages:
            if p == TRASH_PAGE or self._refcount[p] <= 0:
                raise ValueError(f"page {p} is not allocated and cannot be shared")
            self._refcount[p] += 1

    def free(self, pages: list[int]) -> None:
        """Drops one reference to each page; pages with no references left become free."""
        for p in pages:
            if p == TRASH_PAGE or self._refcount[p] <= 0:
                raise ValueError(f"page {p} is not allocated (double free?)")
            self._refcount[p] -= 1
            if self._refcount[p] == 0:
                self._free.append(p)
