"""Which slab page moves where: the decisions of `slabs reassign` and `slabs automove`.

Both storage twins (kvcache/lru_pure.py, kvcache/_kvlru.pyx) hand these functions the
same plain figures per class (pages, free chunks, chunks per page, evictions) and carry
out the answer, so they move the same page at the same moment. Nothing here reads a clock:
the daemon decides how often automove runs (kvcache/server.py, once a second).

The policy, memcached's in spirit (slabs.c's reassign and slab_automove.c), simplified:
- A class gives a page only while it keeps one: it must have at least MIN_PAGES_TO_GIVE.
- `slabs reassign -1 <dst>` and a class that has no page yet when memory is full take the
  page of the class holding the most pages (the lowest id on a tie; memcached's -1 goes
  round the classes instead). `slabs reassign 0 <dst>` hands on a page of the pool.
- automove, given the evictions each class made since the last call and the age of each
  class's LRU tail (now minus its last access): the class that evicted most is short of
  memory (none evicted: nothing moves). Its page comes from a class with a whole page of
  free chunks if there is one (the most free pages), else, at level 1, from a class that
  evicted nothing and whose tail is older than the evicting class's (the oldest tail:
  memory goes from older data to younger, as memcached's age ratio does), else, at
  level 2 (memcached's aggressive mode), from any class that evicted fewer (the fewest
  evictions, then the most pages).
"""

from __future__ import annotations

from typing import NamedTuple

MIN_PAGES_TO_GIVE = 2  # memcached: a class with fewer has no spare page
AUTOMOVE_OFF, AUTOMOVE_ON, AUTOMOVE_AGGRESSIVE = 0, 1, 2
ANY_CLASS = -1  # `slabs reassign -1 <dst>`: memcached picks the source
POOL_CLASS = 0  # `slabs reassign <src> 0`: the page goes to the global page pool

# What `slabs reassign` can come to (kvcache/admin.py words them as memcached does).
REASSIGN_OK, REASSIGN_BADCLASS, REASSIGN_NOSPARE, REASSIGN_SAME = 0, 1, 2, 3


class ClassFigures(NamedTuple):
    """Per class, index = class id (index 0 unused): what the decisions read."""

    pages: list[int]
    free_chunks: list[int]
    per_page: list[int]
    evictions: list[int]  # since the last automove call
    ages: list[int]  # seconds since the class's LRU tail was last stored or read


def richest(pages: list[int], dst: int) -> int:
    """The class (not `dst`) with the most pages, at least MIN_PAGES_TO_GIVE; 0 if none."""
    best, most = 0, MIN_PAGES_TO_GIVE - 1
    for cls in range(1, len(pages)):
        if cls != dst and pages[cls] > most:
            best, most = cls, pages[cls]
    return best


def reassign_source(src: int, dst: int, pages: list[int]) -> int:
    """`src` with -1 resolved to the class with the most pages (-1 still if none: then
    memcached answers BADCLASS)."""
    if src != ANY_CLASS or src == dst:
        return src
    return richest(pages, dst) or ANY_CLASS


def reassign_check(src: int, dst: int, pages: list[int]) -> int:
    """Whether `slabs reassign src dst` may go ahead (src resolved by reassign_source):
    REASSIGN_OK or the reason it may not, checked in memcached's order. Class ids run
    0 (the pool, whose page count is pages[0]) to len(pages) - 1."""
    if src == dst:
        return REASSIGN_SAME
    if not (0 <= src < len(pages)) or not (0 <= dst < len(pages)):
        return REASSIGN_BADCLASS
    if pages[src] < MIN_PAGES_TO_GIVE:
        return REASSIGN_NOSPARE
    return REASSIGN_OK


def automove_pick(level: int, figures: ClassFigures) -> tuple[int, int] | None:
    """(src, dst) of the page automove should move now, or None (module docstring)."""
    if level == AUTOMOVE_OFF:
        return None
    evictions = figures.evictions
    dst = 0
    for cls in range(1, len(evictions)):
        if evictions[cls] > evictions[dst]:
            dst = cls
    if dst == 0:
        return None
    src = _free_page_holder(figures, dst)
    if src == 0 and level == AUTOMOVE_ON:
        src = _oldest_idle(figures, dst)
    elif src == 0:
        src = _least_evicting(figures, dst)
    return (src, dst) if src else None


def _free_page_holder(figures: ClassFigures, dst: int) -> int:
    best, most = 0, 0
    for cls in range(1, len(figures.pages)):
        if cls == dst or figures.pages[cls] < MIN_PAGES_TO_GIVE or not figures.per_page[cls]:
            continue
        free_pages = figures.free_chunks[cls] // figures.per_page[cls]
        if free_pages > most:
            best, most = cls, free_pages
    return best


def _oldest_idle(figures: ClassFigures, dst: int) -> int:
    best, oldest = 0, figures.ages[dst]
    for cls in range(1, len(figures.pages)):
        if (cls != dst and figures.pages[cls] >= MIN_PAGES_TO_GIVE
                and figures.evictions[cls] == 0 and figures.ages[cls] > oldest):
            best, oldest = cls, figures.ages[cls]
    return best


def _least_evicting(figures: ClassFigures, dst: int) -> int:
    best = 0
    best_key = (figures.evictions[dst], -(1 << 62))  # only classes that evicted fewer
    for cls in range(1, len(figures.pages)):
        if cls == dst or figures.pages[cls] < MIN_PAGES_TO_GIVE:
            continue
        key = (figures.evictions[cls], -figures.pages[cls])
        if key < best_key:
            best, best_key = cls, key
    return best
