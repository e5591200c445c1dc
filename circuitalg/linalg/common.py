"""Argument checks shared by the spectral routines, so the routines are siblings."""

from __future__ import annotations

import numpy as np

from circuitalg.errors import InvalidArgumentError, ShapeError
from circuitalg.maps.nodes import LinearMap

__all__ = ["check_k", "require_square"]


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
