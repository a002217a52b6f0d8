"""How many threads the engine's numerics use: LightGBM's `num_threads`, and the BLAS pools through threadpoolctl.

An explanation's fits are small (a few thousand rows): one thread is as fast in wall time as the machine's
default pools, and it lets N explanations (threads, processes or Ray tasks) really use N cores. The BLAS limit
is process-wide (the pools are), so concurrent explanations in one process share it: the first to enter sets
it, the last to leave restores the library's own setting. (OpenMP's setting is per calling thread, which is
why LightGBM, the engine's OpenMP user, is told its thread count per call instead.)

threadpoolctl (3.8 here) lets only one live thread change a pthreads OpenBLAS pool and silently ignores the
others, so the limit is always set and restored by one long-lived thread of this module: set from each
explanation's own thread (explain_many's workers), it was ignored once another thread had set it first, and
the fits then ran on every core's BLAS thread (measured: twice the CPU seconds for the same explanations).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

_lock = threading.Lock()
_active = 0
_limiter: Any = None
_controller: ThreadPoolExecutor | None = None


def _on_controller(fn: Callable[[], Any]) -> Any:
    """fn() run on the module's one thread that changes the BLAS pools (started on first use; call under _lock)."""
    global _controller
    if _controller is None:
        _controller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spex-blas-limits")
    return _controller.submit(fn).result()


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
            _limiter = _on_controller(lambda: threadpool_limits(limits=n_jobs, user_api="blas"))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _on_controller(_limiter.restore_original_limits)
                _limiter = None
