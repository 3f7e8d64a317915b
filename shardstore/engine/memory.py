"""Giving freed heap memory back to the operating system after the keydir drops a run.

Strategy: a keydir merge frees the old packed run's buffers (megabytes each). glibc's malloc
serves such blocks from the heap once its adaptive mmap threshold has grown past them, and
a freed block in the middle of the heap stays in the process's RSS. `trim_heap` calls
glibc's `malloc_trim(0)`, which returns every whole free page to the kernel; where the C
library has no such call (not glibc), it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["trim_heap"]

LIBC_FALLBACK = "libc.so.6"


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or LIBC_FALLBACK)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_MALLOC_TRIM = _find_malloc_trim()


def trim_heap() -> bool:
    """Return free heap pages to the kernel; True if the C library could be asked."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
