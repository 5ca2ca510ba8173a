"""Run independent chunks of work on worker threads.

The heavy lifting is in the compiled kernels of :mod:`.kernels`, which release the GIL, so
threads run them in parallel without the cost of starting processes and pickling designs —
and threads work where processes cannot be started (e.g. inside a daemonic process)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from threadpoolctl import threadpool_limits


def run_parallel(fn: Callable[..., Any], calls: Sequence[tuple], n_jobs: int) -> list[Any]:
    """``[fn(*args) for args in calls]`` on up to ``n_jobs`` threads, results in call order.

    Chunks are handed out as threads become free, so passing more calls than ``n_jobs``
    balances uneven work.
    """
    if n_jobs <= 1 or len(calls) <= 1:
        return [fn(*args) for args in calls]
    with ThreadPoolExecutor(min(n_jobs, len(calls))) as pool:
        return list(pool.map(lambda args: fn(*args), calls))


_P = ParamSpec("_P")
_R = TypeVar("_R")


def single_blas_thread(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator: run ``fn`` with BLAS/LAPACK limited to one thread.

    Every matrix here is tiny (n ≈ 20 rows). Multi-threaded BLAS only adds synchronisation,
    and when other processes keep the cores busy, OpenBLAS's waiting threads make e.g. the
    rank of 21 designs of 19 × 667 take a second instead of 10 ms.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper
