"""How circuitalg uses the process it runs in: worker threads, BLAS threads and memory advice.

This module is the only place in circuitalg that starts threads or changes a process setting.
The mathematics never depends on it: every kernel that splits work takes a :class:`Runtime`
argument and gives the same numbers on :data:`SERIAL` (each item of a split is computed by the
same code whatever chunk it falls in).

A :class:`Runtime` is a small immutable value. The public routines use :func:`current`, which is
the innermost runtime entered with ``with`` in this context, else :data:`AUTO` (one worker per
core this process may use, NumPy's own memory advice)::

    with ca.Runtime(workers=1):          # serial: no threads started, BLAS threads as they are
        ca.top_circuits(model)
    with ca.Runtime(hugepage_advice=False):   # what the command and the report enter
        ca.write_report(model, "out")

Entering a runtime with ``hugepage_advice`` set changes NumPy's huge-page advice for the whole
process while the block runs (NumPy has one setting); the previous setting is restored when the
last such block exits.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from circuitalg.errors import InvalidArgumentError

__all__ = ["Runtime", "AUTO", "SERIAL", "current", "core_count", "SMALL_LAPACK_WORK"]

T = TypeVar("T")

#: Work (``m n min(m, n)`` of a matrix) below which a LAPACK call runs on one BLAS thread:
#: OpenBLAS's threads cost more to start than the work of such a call, and per-head loops make
#: thousands of them.
SMALL_LAPACK_WORK = 64 * 1024 * 1024


def core_count() -> int:
    """The cores this process may run on (its affinity set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Runtime:
    """Worker threads, BLAS threads and memory advice for the work inside a ``with`` block.

    Parameters
    ----------
    workers : int or None
        Threads a split (:meth:`map`) may use; None means one per core this process may run on,
        1 means serial (no thread is started).
    hugepage_advice : bool or None
        NumPy's transparent-huge-page advice for new large arrays while the block runs; None
        leaves NumPy's setting. ``False`` avoids the kernel's synchronous 2 MiB page faults where
        free memory is fragmented (loading a model's worth of new arrays). Ignored where this NumPy
        has no such setting or the user set ``NUMPY_MADVISE_HUGEPAGE``.
    """

    workers: int | None = None
    hugepage_advice: bool | None = None

    def __post_init__(self) -> None:
        w = self.workers
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise InvalidArgumentError(f"Runtime(workers={w!r}): pass a positive integer, or None for one per core.")
        if self.hugepage_advice is not None and not isinstance(self.hugepage_advice, bool):
            raise InvalidArgumentError(
                f"Runtime(hugepage_advice={self.hugepage_advice!r}): pass True, False or None (leave NumPy's setting)."
            )

    @property
    def threads(self) -> int:
        """The number of threads :meth:`map` uses at most."""
        return core_count() if self.workers is None else self.workers

    def map(self, fn: Callable[[int, int], T], n: int) -> list[T]:
        """``[fn(lo, hi), ...]`` over contiguous chunks covering ``range(n)``, in order.

        One chunk per thread, each thread with BLAS on one thread (many small independent products
        run faster side by side than on BLAS's own threads) and in a copy of the caller's context
        (:func:`current` and NumPy's error state as the caller has them). ``fn`` must write only its
        own chunk's outputs. Runs ``[fn(0, n)]`` in the caller's thread when this runtime has one worker, BLAS
        may use one thread (``OPENBLAS_NUM_THREADS=1`` and the like), ``n < 2``, or another split
        is running (splits do not nest).
        """
        workers = min(self.threads, _blas_threads(), n)
        if workers < 2 or not _SPLIT_LOCK.acquire(blocking=False):
            return [fn(0, n)]
        try:
            chunks = list(itertools.pairwise(round(i * n / workers) for i in range(workers + 1)))
            with _controller().limit(limits=1, user_api="blas"):
                pool = _pool(workers - 1)  # each chunk in its own copy of the caller's context
                futures = [pool.submit(contextvars.copy_context().run, fn, lo, hi) for lo, hi in chunks[1:]]
                try:
                    first = fn(*chunks[0])  # the caller's thread takes the first chunk
                finally:
                    wait(futures)  # no chunk outlives the split (nor its one-thread BLAS limit)
                return [first, *(f.result() for f in futures)]
        finally:
            _SPLIT_LOCK.release()

    def lapack(self, *shape: int) -> contextlib.AbstractContextManager[None]:
        """A block for one LAPACK call on a matrix of ``shape``: on one BLAS thread when the call is
        small (:data:`SMALL_LAPACK_WORK`), else BLAS's threads as they are."""
        m, n = (tuple(shape) + (1, 1))[:2]
        if m * n * min(m, n) > SMALL_LAPACK_WORK:
            return contextlib.nullcontext()
        return _controller().limit(limits=1, user_api="blas")

    def __enter__(self) -> Runtime:
        _STACK.set((*_STACK.get(), self))
        if self.hugepage_advice is not None:
            _advice_enter(self.hugepage_advice)
        return self

    def __exit__(self, *exc: object) -> None:
        stack = _STACK.get()
        _STACK.set(stack[:-1])
        if self.hugepage_advice is not None:
            _advice_exit()


#: One worker per core, NumPy's memory advice: what the routines use outside any ``with``.
AUTO = Runtime()
#: One worker: no thread started by circuitalg.
SERIAL = Runtime(workers=1)

_STACK: contextvars.ContextVar[tuple[Runtime, ...]] = contextvars.ContextVar("circuitalg_runtime", default=())


def current() -> Runtime:
    """The innermost :class:`Runtime` entered in this context, else :data:`AUTO`."""
    stack = _STACK.get()
    return stack[-1] if stack else AUTO


# --- threads ---------------------------------------------------------------------------------

_CONTROLLER: Any = None
_SPLIT_LOCK = threading.Lock()
_POOL: tuple[ThreadPoolExecutor, int] | None = None  # (the pool, its number of threads)


def _controller() -> Any:
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _blas_threads() -> int:
    return max((p["num_threads"] for p in _controller().info() if p["user_api"] == "blas"), default=1)


def _pool(size: int) -> ThreadPoolExecutor:
    """The worker threads of :meth:`Runtime.map`, kept between calls (under its lock): new
    threads per call would each take their own malloc arena and BLAS buffers, and their start-up."""
    global _POOL
    if _POOL is None or _POOL[1] < size:
        if _POOL is not None:
            _POOL[0].shutdown(wait=False)
        _POOL = (ThreadPoolExecutor(size, thread_name_prefix="circuitalg"), size)
    return _POOL[0]


def _forget_pool() -> None:  # a forked child has none of its parent's threads
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


# --- memory advice ---------------------------------------------------------------------------

_ADVICE_LOCK = threading.Lock()
_ADVICE: dict[str, Any] = {"depth": 0, "previous": None}


def _hugepage_switch() -> Callable[[bool], bool] | None:
    """NumPy's setter of its huge-page advice (returns the previous setting), or None where this
    NumPy has none (then its behaviour is kept)."""
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)  # NumPy 2
    if multiarray is None:  # NumPy 1.x
        multiarray = getattr(getattr(np, "core", None), "multiarray", None)
    return getattr(multiarray, "_set_madvise_hugepage", None)


def _advice_enter(on: bool) -> None:
    """Blocks may overlap in threads: the first sets the advice, the last restores it (the first
    block's setting holds for all of them; NumPy has one)."""
    switch = _hugepage_switch()
    if switch is None or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    with _ADVICE_LOCK:
        if _ADVICE["depth"] == 0:
            _ADVICE["previous"] = switch(on)
        _ADVICE["depth"] += 1


def _advice_exit() -> None:
    switch = _hugepage_switch()
    if switch is None or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    with _ADVICE_LOCK:
        _ADVICE["depth"] -= 1
        if _ADVICE["depth"] == 0:
            switch(bool(_ADVICE["previous"]))

