"""Run independent chunks of work in worker processes (numpy code holds the GIL too often
for threads to help). Falls back to running in this process when processes cannot be
started (e.g. inside a daemonic process) or ``n_jobs`` ≤ 1."""

from __future__ import annotations

import multiprocessing
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

_limiter: Any = None  # keeps the worker's BLAS thread limit alive


def _one_blas_thread() -> None:
    """Worker initialiser: one BLAS thread per worker process (no oversubscription)."""
    global _limiter
    from threadpoolctl import threadpool_limits

    _limiter = threadpool_limits(limits=1, user_api="blas")


def run_parallel(fn: Callable[..., Any], calls: Sequence[tuple], n_jobs: int) -> list[Any]:
    """``[fn(*args) for args in calls]``, spread over up to ``n_jobs`` processes.

    ``fn`` must be a module-level function; results come back in call order. Forking is
    used on Linux when this process runs a single Python thread (fast, nothing to
    re-import), spawning otherwise.
    """
    if n_jobs <= 1 or len(calls) <= 1:
        return [fn(*args) for args in calls]
    method = "fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn"
    try:
        with ProcessPoolExecutor(min(n_jobs, len(calls)),
                                 mp_context=multiprocessing.get_context(method),
                                 initializer=_one_blas_thread) as pool:
            futures = [pool.submit(fn, *args) for args in calls]
            return [f.result() for f in futures]
    except (AssertionError, OSError, BrokenProcessPool):
        # e.g. "daemonic processes are not allowed to have children"
        return [fn(*args) for args in calls]
