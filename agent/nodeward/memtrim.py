"""Give freed heap memory back to the system after a ruleset parse (glibc malloc_trim).

A kube-proxy dump is read in 64 KB pipe reads and parsed into ~100,000 objects; once the
read's buffers and the parser's caches are freed, glibc keeps the pages they leave between
live allocations (it only trims the top of the heap by itself): measured 15 MB of a
50,000-rule nft parse resident for nothing, on every re-read of a churning node.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """libc's malloc_trim, or None where there is none (musl, not Linux)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def give_back() -> bool:
    """Release the heap's free pages to the system; False when the libc cannot."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
