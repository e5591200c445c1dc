"""Helpers shared by the spectral routines (argument checks), so the routines are siblings."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numpy as np

from circuitalg.errors import InvalidArgumentError, ShapeError
from circuitalg.maps.nodes import LinearMap

__all__ = ["check_k", "core_count", "require_square", "small_lapack", "split_small_products"]


def check_k(m: LinearMap, k: int | None, limit: int) -> int:
    """Validate ``k`` (None means all ``limit`` values) and return the count to keep."""
    if k is None:
        return limit
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidArgumentError(f"k must be a positive integer or None, got {k!r}.")
    if k > min(m.shape):
        raise InvalidArgumentError(
            f"k={k} exceeds min(shape)={min(m.shape)} of {m.symbol} {m.shape}; pass k <= {min(m.shape)}."
        )
    return min(int(k), limit)


def require_square(m: LinearMap, what: str) -> None:
    """Raise :class:`ShapeError` unless ``m`` is square."""
    if not m.is_square:
        raise ShapeError(
            f"{what} needs a square map, but {m.symbol} maps {m.domain} -> {m.codomain} "
            f"(shape {m.shape}); use singular_values for non-square maps."
        )


#: Work (``m n min(m, n)`` of the matrix) below which a LAPACK call runs on one BLAS thread:
#: OpenBLAS's threads cost more to start than such a call's work (a 768 x 64 QR: 1.8 ms on two
#: threads, 0.5-1 ms on one, on a 2-core machine).
SMALL_LAPACK_WORK = 64 * 1024 * 1024
_CONTROLLER: Any = None


def _controller() -> Any:
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


@contextlib.contextmanager
def small_lapack(*shape: int) -> Iterator[None]:
    """Run the enclosed BLAS/LAPACK calls on one thread when a matrix of ``shape`` is small (see
    :data:`SMALL_LAPACK_WORK`; per-head loops make thousands of such calls); otherwise a no-op."""
    m, n = (shape + (1,))[:2] if len(shape) < 2 else shape[:2]
    if m * n * min(m, n) > SMALL_LAPACK_WORK:
        yield
        return
    with _controller().limit(limits=1, user_api="blas"):
        yield


T = TypeVar("T")
_SPLIT_LOCK = threading.Lock()


def core_count() -> int:
    """The cores this process may run on (its affinity set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def split_small_products(fn: Callable[[int, int], T], n: int) -> list[T]:
    """``[fn(lo, hi) ...]`` over contiguous chunks covering ``range(n)``, one chunk per core, each in
    its own thread with BLAS on one thread: for loops of many small independent products (per-head
    ``d_head``-sized matrices), which OpenBLAS's own threads slow down (the circuit search's 9,504
    norm bounds of 64 x 64 matrices at GPT-2-small shapes: 0.24 s this way, 0.46 s on OpenBLAS's
    two threads, on a 2-core machine).

    ``fn`` must only write to its own chunk's outputs (numpy releases the GIL in the products).
    It uses no more threads than BLAS may (``OPENBLAS_NUM_THREADS=1`` and the like keep it on one
    core). One split runs at a time: a call made while another thread is in one (or with one core
    or BLAS thread, or ``n < 2``) runs ``fn(0, n)`` in the caller's thread, with the BLAS threads
    as they are.
    """
    blas = [p["num_threads"] for p in _controller().info() if p["user_api"] == "blas"]
    workers = min(core_count(), max(blas, default=1), n)
    if workers < 2 or not _SPLIT_LOCK.acquire(blocking=False):
        return [fn(0, n)]
    try:
        chunks = list(itertools.pairwise(round(i * n / workers) for i in range(workers + 1)))
        with _controller().limit(limits=1, user_api="blas"):
            futures = [_pool(workers - 1).submit(fn, lo, hi) for lo, hi in chunks[1:]]
            try:
                first = fn(*chunks[0])  # the caller's thread takes the first chunk
            finally:
                wait(futures)  # no chunk outlives the split (nor its one-thread BLAS limit)
            return [first, *(f.result() for f in futures)]
    finally:
        _SPLIT_LOCK.release()


_POOL: tuple[ThreadPoolExecutor, int] | None = None  # (the pool, its number of threads)


def _pool(size: int) -> ThreadPoolExecutor:
    """The worker threads of :func:`split_small_products`, kept between calls (under its lock):
    new threads per call would each take their own malloc arena and OpenBLAS buffers (about 100 MiB
    more peak memory over a GPT-2-small report) and cost their start-up."""
    global _POOL
    if _POOL is None or _POOL[1] < size:
        if _POOL is not None:
            _POOL[0].shutdown(wait=False)
        _POOL = (ThreadPoolExecutor(size, thread_name_prefix="circuitalg-split"), size)
    return _POOL[0]


def _forget_pool() -> None:  # a forked child has none of its parent's threads
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
