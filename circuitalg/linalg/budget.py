"""Memory budgets: every dense allocation of a map-sized array is checked here first.

``DEFAULT_MAX_BYTES`` (1 GiB) bounds :func:`circuitalg.linalg.to_dense` and the outputs
of :func:`~circuitalg.linalg.svd`; ``SMALL_DENSE_BYTES`` (64 MiB) is the size below which
a map with no structural rule is evaluated densely rather than iteratively.
:func:`without_hugepage_advice` makes large new arrays without NumPy's huge-page advice.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from circuitalg.errors import TooLargeError, check_int

__all__ = ["DEFAULT_MAX_BYTES", "SMALL_DENSE_BYTES", "nbytes", "check_budget", "without_hugepage_advice"]

DEFAULT_MAX_BYTES: int = 1 << 30
SMALL_DENSE_BYTES: int = 64 << 20


def nbytes(shape: tuple[int, ...], dtype: Any) -> int:
    """Bytes of an array of ``shape`` and ``dtype``."""
    return math.prod(shape) * np.dtype(dtype).itemsize


def check_budget(
    shape: tuple[int, ...], dtype: Any, what: str | Callable[[], str], max_bytes: int | None
) -> None:
    """Raise :class:`TooLargeError` if an array of ``shape`` would exceed ``max_bytes``.

    ``max_bytes=None`` means :data:`DEFAULT_MAX_BYTES`. Nothing is allocated. ``what``
    names the operation; pass a callable to build the name only when the check fails
    (printing a large sympy twin is not free).
    """
    budget = DEFAULT_MAX_BYTES if max_bytes is None else check_int("max_bytes", max_bytes, 0, hint=" or None (1 GiB)")
    need = nbytes(shape, dtype)
    if need > budget:
        what = what() if callable(what) else what
        dims = " x ".join(str(d) for d in shape)
        raise TooLargeError(
            f"{what} needs a dense {dims} {np.dtype(dtype).name} array of {need / 1e9:.3g} GB, "
            f"above the budget of {budget / 1e9:.3g} GB. Use the factored routines "
            "(singular_values, norm, eigenvalues, trace, matvec), which never build it, or "
            "pass a larger max_bytes if you really want the dense matrix."
        )


@contextlib.contextmanager
def without_hugepage_advice() -> Iterator[None]:
    """Allocate the arrays made inside the block without NumPy's transparent-huge-page advice.

    NumPy asks the kernel to back each large array with 2 MiB pages (``madvise(MADV_HUGEPAGE)``).
    Under the usual ``transparent_hugepage/defrag = madvise`` setting the kernel then finds (and
    zeroes) a free 2 MiB page synchronously at each first touch, which is slow where free memory is
    fragmented or handed back to a hypervisor: loading a float32 GPT-2-small checkpoint folded into
    float64 (1 GB of new arrays) took 3.5-3.9 s with the advice and 1.7-1.8 s without on a 2-core
    VM, and the whole GPT-2-small report about 8% less. Used where circuitalg makes a model's worth
    of new arrays (loading, folding) or many large short-lived ones (the report). The previous
    setting is restored on exit; if ``NUMPY_MADVISE_HUGEPAGE`` is set in the environment
    the user's choice stands and nothing changes.
    """
    set_advice = _hugepage_switch()
    if set_advice is None or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        yield
        return
    with _ADVICE_LOCK:  # threads in such blocks at once: the first turns the advice off, the last restores it
        if _ADVICE_STATE["depth"] == 0:
            _ADVICE_STATE["previous"] = set_advice(False)
        _ADVICE_STATE["depth"] += 1
    try:
        yield
    finally:
        with _ADVICE_LOCK:
            _ADVICE_STATE["depth"] -= 1
            if _ADVICE_STATE["depth"] == 0:
                set_advice(bool(_ADVICE_STATE["previous"]))


def _hugepage_switch() -> Callable[[bool], bool] | None:
    """NumPy's setter of its huge-page advice (returns the previous setting), or None where this
    NumPy has none (then its behaviour is kept)."""
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)  # NumPy 2
    if multiarray is None:  # NumPy 1.x
        multiarray = getattr(getattr(np, "core", None), "multiarray", None)
    return getattr(multiarray, "_set_madvise_hugepage", None)


_ADVICE_LOCK = threading.Lock()
_ADVICE_STATE: dict[str, int | bool] = {"depth": 0, "previous": True}
