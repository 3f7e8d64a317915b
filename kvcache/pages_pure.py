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
- A page leaving its class is emptied slot by slot: each item moves to the top free chunk
  of its class (a rescue: the caller's `rescue` puts a copy in its place, as the native
  twin copies the record, so what a caller held of it is no longer the item) or, when
  there is none, is evicted by the caller's `evict`.
"""

from __future__ import annotations

from collections.abc import Callable

from kvcache.items import Item


class Pages:
    """The pages of one arena: which class holds each, the free chunks of each class, and
    the chunk of each linked item (`place` and `vacate` keep it)."""

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
        self.owner: dict[int, Item] = {}  # chunk -> the item in it
        self.chunk_of: dict[bytes, int] = {}  # key -> the chunk of its item
        self.moved = 0  # pages moved from one class to another or the pool
        self.rescues = 0  # items moved off a leaving page

    def counts(self) -> list[int]:
        """Pages by class id; index 0: the pool."""
        counts = [len(held) for held in self.of_class]
        counts[0] = len(self.pool)
        return counts

    def table(self) -> list[tuple[int, int, int]]:
        """(class, pages, free chunks) of every class holding a page, by class id."""
        return [(cls, len(self.of_class[cls]), len(self.free[cls]))
                for cls in range(1, len(self.of_class)) if self.of_class[cls]]

    def take(self, cls: int) -> int:
        """The top free chunk of `cls`, or -1."""
        free = self.free[cls]
        return free.pop() if free else -1

    def place(self, chunk: int, item: Item) -> None:
        self.owner[chunk] = item
        self.chunk_of[item.key] = chunk

    def vacate(self, item: Item, cls: int) -> None:
        """`item` of class `cls` leaves: its chunk goes on top of the free list."""
        chunk = self.chunk_of.pop(item.key)
        del self.owner[chunk]
        self.free[cls].append(chunk)

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

    def move(self, src: int, dst: int, evict: Callable[[Item], None],
             rescue: Callable[[Item], Item]) -> None:
        """Empty the emptiest page of `src` (rescues first: `rescue` returns the copy now
        linked in the item's place; `evict`, which must vacate the item, for the rest) and
        give it to `dst` (0: the pool)."""
        page = self.emptiest(src)
        self.withdraw(page)
        for chunk in self.chunks(page):
            item = self.owner.get(chunk)
            if item is None:
                continue
            target = self.take(src)
            if target >= 0:
                del self.owner[chunk]
                self.place(target, rescue(item))
                self.rescues += 1
            else:
                evict(item)
                self.free[src].pop()  # the chunk just freed: it leaves with its page
        self.release(page)
        if dst == 0:
            self.pool.append(page)
        else:
            self.give(page, dst)
        self.moved += 1

    def from_pool_to(self, dst: int) -> None:
        """`slabs reassign 0 dst`: a pooled page to `dst`."""
        self.give(self.pool.pop(), dst)
        self.moved += 1

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
