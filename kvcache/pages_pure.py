"""Slab pages and their chunks for the pure storage twin (kvcache/lru_pure.py).

The native twin keeps the same structures in C (kvcache/_kvarena.pyx); both follow these
rules, in this order, so they hand out the same chunk every time:
- Pages are numbered in the order they are carved; a chunk is named by its offset,
  page * page_bytes + slot * chunk_size.
- A page given to a class puts all its chunks on the class's free list, slot 0 on top.
  The free list is a stack: a freed chunk goes on top, an allocation takes the top.
- A page taken from a class is the one holding the fewest items (the first such in the
  order the class got its pages); its free chunks leave the free list, keeping the order
  of the others. The caller empties its used chunks (rescued or evicted).
- Pages no class holds wait in the pool (a stack) for the next class that needs one.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Pages(Generic[T]):
    """The pages of one arena: which class holds each, the free chunks of each class, and
    what each used chunk holds (`owner`, set and cleared by the caller)."""

    def __init__(self, sizes: list[int], page_bytes: int) -> None:
        self.page_bytes = page_bytes
        self.sizes = [0, *sizes]  # chunk size by class id
        self.per_page = [0, *(page_bytes // size for size in sizes)]
        classes = len(sizes) + 1
        self.count = 0  # pages carved, in the pool or held by a class
        self.page_class: list[int] = []  # by page: its class, 0 while in the pool
        self.of_class: list[list[int]] = [[] for _ in range(classes)]
        self.pool: list[int] = []
        self.free: list[list[int]] = [[] for _ in range(classes)]
        self.owner: dict[int, T] = {}

    def carve(self, cls: int) -> None:
        """A new page for `cls` (the caller checked the limit)."""
        self.page_class.append(0)
        self.count += 1
        self.give(self.count - 1, cls)

    def give(self, page: int, cls: int) -> None:
        """Hand `page` (in no class) to `cls`: all its chunks become free, slot 0 on top."""
        self.page_class[page] = cls
        self.of_class[cls].append(page)
        self.free[cls].extend(reversed(self.chunks(page)))

    def from_pool(self, cls: int) -> bool:
        if not self.pool:
            return False
        self.give(self.pool.pop(), cls)
        return True

    def chunks(self, page: int) -> list[int]:
        cls = self.page_class[page]
        size, base = self.sizes[cls], page * self.page_bytes
        return [base + slot * size for slot in range(self.per_page[cls])]

    def emptiest(self, cls: int) -> int:
        """The page of `cls` holding the fewest items (module docstring)."""
        owner = self.owner
        best, fewest = -1, -1
        for page in self.of_class[cls]:
            used = sum(1 for chunk in self.chunks(page) if chunk in owner)
            if fewest < 0 or used < fewest:
                best, fewest = page, used
        return best

    def withdraw(self, page: int) -> None:
        """Take the free chunks of `page` off its class's free list (order kept)."""
        cls = self.page_class[page]
        low, high = page * self.page_bytes, (page + 1) * self.page_bytes
        self.free[cls] = [chunk for chunk in self.free[cls] if not low <= chunk < high]

    def release(self, page: int) -> None:
        """`page`, emptied and withdrawn, leaves its class (for the caller to give on)."""
        self.of_class[self.page_class[page]].remove(page)
        self.page_class[page] = 0
