"""How many threads the engine's numerics use: LightGBM's `num_threads`, and the BLAS pools through threadpoolctl.

An explanation's fits are small (a few thousand rows): one thread is as fast in wall time as the machine's
default pools, and it lets N explanations (threads, processes or Ray tasks) really use N cores. The BLAS limit
is process-wide (the pools are), so concurrent explanations in one process share it: the first to enter sets
it, the last to leave restores the library's own setting. (OpenMP's setting is per calling thread, which is
why LightGBM, the engine's OpenMP user, is told its thread count per call instead.)
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

_lock = threading.Lock()
_active = 0
_limiter: Any = None


def check_n_jobs(n_jobs: int | None) -> int | None:
    """n_jobs as given, or a ValueError: an integer >= 1, or None for the libraries' defaults."""
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1):
        raise ValueError(f"n_jobs must be an integer >= 1 or None (the libraries' defaults), got {n_jobs!r}")
    return n_jobs


@contextlib.contextmanager
def limit_threads(n_jobs: int | None) -> Iterator[None]:
    """Run the block with BLAS pools of `n_jobs` threads (None: leave them as they are)."""
    global _active, _limiter
    if n_jobs is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with _lock:
        if _active == 0:
            _limiter = threadpool_limits(limits=n_jobs, user_api="blas")
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _limiter.restore_original_limits()
                _limiter = None
