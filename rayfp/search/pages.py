"""Building an index without numpy's huge-page advice.

numpy advises the kernel to back every array of 4 MiB or more with transparent huge pages
(madvise MADV_HUGEPAGE). Where THP is "madvise" with defrag "madvise" (the 2-core VMs here, and
a common default), the first touch of such memory may compact memory synchronously, for seconds.
An index build allocates and fills gigabytes of fresh arrays: 2,000 sources of N = 10,000 took
7.3-15.6 s to build with the advice and 2.8-3.1 s without, alternating in one process
(BENCHMARKS.md "Index build"). Queries were no faster on huge pages, so the advice is lifted
only while an index is built.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import numpy as np

_LOCK = threading.Lock()
_HOLDERS = 0  # builds running without the advice (nested or in other threads)
_BEFORE = True  # numpy's setting when the first of them began


def _switch() -> Callable[[bool], bool] | None:
    """numpy's process-wide switch (it returns the previous setting); None where absent."""
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)
    return getattr(multiarray, "_set_madvise_hugepage", None)


@contextlib.contextmanager
def without_hugepage_advice() -> Iterator[None]:
    """Within (also as a decorator): numpy allocates without the huge-page advice. The switch is
    process-wide: concurrent and nested builds share it, and numpy's setting comes back when the
    last of them ends. A no-op where numpy has no such switch."""
    global _HOLDERS, _BEFORE
    switch = _switch()
    if switch is None:
        yield
        return
    with _LOCK:
        if _HOLDERS == 0:
            _BEFORE = switch(False)
        _HOLDERS += 1
    try:
        yield
    finally:
        with _LOCK:
            _HOLDERS -= 1
            if _HOLDERS == 0:
                switch(_BEFORE)
