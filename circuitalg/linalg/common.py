"""Argument checks shared by the spectral routines, so the routines are siblings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from circuitalg import runtime
from circuitalg.errors import InvalidArgumentError, ShapeError
from circuitalg.maps.nodes import LinearMap

__all__ = ["check_k", "require_square"]

T = TypeVar("T")


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


# TODO(rename): delegations to circuitalg.runtime while tests/test_resources.py switches; then remove them.
core_count = runtime.core_count


def split_small_products(fn: Callable[[int, int], T], n: int) -> list[T]:
    """``runtime.current().map(fn, n)``."""
    return runtime.current().map(fn, n)
