"""Memory budgets: every dense allocation of a map-sized array is checked here first.

``DEFAULT_MAX_BYTES`` (1 GiB) bounds :func:`circuitalg.linalg.to_dense` and the outputs
of :func:`~circuitalg.linalg.svd`; ``SMALL_DENSE_BYTES`` (64 MiB) is the size below which
a map with no structural rule is evaluated densely rather than iteratively.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from circuitalg.errors import TooLargeError, check_int

__all__ = ["DEFAULT_MAX_BYTES", "SMALL_DENSE_BYTES", "nbytes", "check_budget"]

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
