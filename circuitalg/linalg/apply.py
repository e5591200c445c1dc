"""Applying maps to blocks of vectors, dense evaluation and the scipy operator.

``matmat(m, X)`` computes ``M @ X`` and ``rmatmat(m, Y)`` computes ``Mᵀ @ Y`` for 2-D
numpy blocks, one registered implementation per node kind; everything else in
:mod:`circuitalg.linalg` reaches the maps through these two functions or through the
structure of the nodes.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla

from circuitalg.errors import InvalidArgumentError, ShapeError
from circuitalg.linalg.budget import check_budget
from circuitalg.maps.nodes import (
    Dense,
    Diagonal,
    Identity,
    Kron,
    LinearMap,
    Product,
    Scaled,
    Sum,
    Transpose,
    as_float_array,
    require_map,
)
from circuitalg.maps.rules import transpose

__all__ = ["matmat", "rmatmat", "matvec", "rmatvec", "to_dense", "as_operator", "evaluate"]


@singledispatch
def matmat(m: LinearMap, X: np.ndarray) -> np.ndarray:
    """``M @ X`` for a 2-D block ``X`` of shape ``(domain.dim, k)``."""
    raise InvalidArgumentError(f"no matmat rule for {type(m).__name__}; register one with matmat.register.")


@singledispatch
def rmatmat(m: LinearMap, Y: np.ndarray) -> np.ndarray:
    """``Mᵀ @ Y`` for a 2-D block ``Y`` of shape ``(codomain.dim, k)``."""
    raise InvalidArgumentError(f"no rmatmat rule for {type(m).__name__}; register one with rmatmat.register.")


@matmat.register
def _(m: Dense, X: np.ndarray) -> np.ndarray:
    return m.array @ X


@rmatmat.register
def _(m: Dense, Y: np.ndarray) -> np.ndarray:
    return m.array.T @ Y


@matmat.register
@rmatmat.register
def _(m: Identity, X: np.ndarray) -> np.ndarray:
    return X


@matmat.register
@rmatmat.register
def _(m: Diagonal, X: np.ndarray) -> np.ndarray:
    return m.values[:, None] * X


@matmat.register
def _(m: Product, X: np.ndarray) -> np.ndarray:
    for f in reversed(m.factors):
        X = matmat(f, X)
    return X


@rmatmat.register
def _(m: Product, Y: np.ndarray) -> np.ndarray:
    for f in m.factors:
        Y = rmatmat(f, Y)
    return Y


@matmat.register
def _(m: Sum, X: np.ndarray) -> np.ndarray:
    out = matmat(m.terms[0], X)
    for t in m.terms[1:]:
        out = out + matmat(t, X)
    return out


@rmatmat.register
def _(m: Sum, Y: np.ndarray) -> np.ndarray:
    out = rmatmat(m.terms[0], Y)
    for t in m.terms[1:]:
        out = out + rmatmat(t, Y)
    return out


@matmat.register
def _(m: Scaled, X: np.ndarray) -> np.ndarray:
    return m.scalar * matmat(m.inner, X)


@rmatmat.register
def _(m: Scaled, Y: np.ndarray) -> np.ndarray:
    return m.scalar * rmatmat(m.inner, Y)


@matmat.register
def _(m: Transpose, X: np.ndarray) -> np.ndarray:
    return rmatmat(m.inner, X)


@rmatmat.register
def _(m: Transpose, Y: np.ndarray) -> np.ndarray:
    return matmat(m.inner, Y)


def _kron_apply(factors: tuple[LinearMap, ...], X: np.ndarray, adjoint: bool) -> np.ndarray:
    """Apply each factor along its own axis of ``X`` reshaped to the factor dimensions."""
    k = X.shape[1]
    in_dims = [f.codomain.dim if adjoint else f.domain.dim for f in factors]
    Y = X.reshape(*in_dims, k)
    for axis, f in enumerate(factors):
        moved = np.moveaxis(Y, axis, 0)
        rest = moved.shape[1:]
        flat = moved.reshape(moved.shape[0], -1)
        out = rmatmat(f, flat) if adjoint else matmat(f, flat)
        Y = np.moveaxis(out.reshape(out.shape[0], *rest), 0, axis)
    return Y.reshape(-1, k)


@matmat.register
def _(m: Kron, X: np.ndarray) -> np.ndarray:
    return _kron_apply(m.factors, X, adjoint=False)


@rmatmat.register
def _(m: Kron, Y: np.ndarray) -> np.ndarray:
    return _kron_apply(m.factors, Y, adjoint=True)


# --- public application --------------------------------------------------------------------
def _as_block(m: LinearMap, x: Any, dim: int, side: str) -> tuple[np.ndarray, bool]:
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.ndim not in (1, 2):
        raise ShapeError(
            f"{side} of {m.symbol}: expected shape ({dim},) or ({dim}, k), got {arr.shape}."
        )
    arr = as_float_array(arr, lambda: f"input to {side} of {m.symbol}", ndim=arr.ndim)
    if arr.shape[0] != dim:
        space = m.domain if side == "matvec" else m.codomain
        raise ShapeError(
            f"{side} of {m.symbol}: input has {arr.shape[0]} rows but the map's "
            f"{'domain' if side == 'matvec' else 'codomain'} is {space}; expected shape "
            f"({dim},) or ({dim}, k)."
        )
    vector = arr.ndim == 1
    return (arr[:, None] if vector else arr), vector


def _finish(out: np.ndarray, inp: np.ndarray, vector: bool, dtype: np.dtype) -> np.ndarray:
    if out is inp:
        out = out.copy()
    out = np.asarray(out, dtype=np.result_type(dtype, inp.dtype))
    return out[:, 0] if vector else out


def matvec(m: LinearMap, x: Any) -> np.ndarray:
    """Apply ``m`` to ``x`` of shape ``(domain.dim,)`` or ``(domain.dim, k)``."""
    require_map(m, "matvec")
    X, vector = _as_block(m, x, m.domain.dim, "matvec")
    return _finish(matmat(m, X), X, vector, m.dtype)


def rmatvec(m: LinearMap, y: Any) -> np.ndarray:
    """Apply ``mᵀ`` to ``y`` of shape ``(codomain.dim,)`` or ``(codomain.dim, k)``."""
    require_map(m, "rmatvec")
    Y, vector = _as_block(m, y, m.codomain.dim, "rmatvec")
    return _finish(rmatmat(m, Y), Y, vector, m.dtype)


# --- dense evaluation -------------------------------------------------------------------------
def evaluate(m: LinearMap, max_bytes: int | None = None) -> np.ndarray:
    """The dense matrix of ``m`` (internal: may return a read-only view of a leaf)."""
    check_budget(m.shape, m.dtype, lambda: f"to_dense of {m.symbol}", max_bytes)
    return _evaluate(m, max_bytes)


@singledispatch
def _evaluate(m: LinearMap, max_bytes: int | None) -> np.ndarray:
    """The dense matrix of ``m``, its size already checked: one rule per node kind; any other
    node is applied to the identity."""
    return matmat(m, np.eye(m.shape[1], dtype=m.dtype))


@_evaluate.register
def _(m: Dense, max_bytes: int | None) -> np.ndarray:
    return m.array


@_evaluate.register
def _(m: Transpose, max_bytes: int | None) -> np.ndarray:
    if isinstance(m.inner, Dense):
        return m.inner.array.T
    return matmat(m, np.eye(m.shape[1], dtype=m.dtype))


@_evaluate.register
def _(m: Identity, max_bytes: int | None) -> np.ndarray:
    return np.eye(m.shape[0], dtype=m.dtype)


@_evaluate.register
def _(m: Diagonal, max_bytes: int | None) -> np.ndarray:
    return np.diag(m.values)


@_evaluate.register
def _(m: Kron, max_bytes: int | None) -> np.ndarray:
    out = evaluate(m.factors[0], max_bytes)
    for f in m.factors[1:]:
        out = np.kron(out, evaluate(f, max_bytes))
    return out


@_evaluate.register
def _(m: Scaled, max_bytes: int | None) -> np.ndarray:
    return m.scalar * evaluate(m.inner, max_bytes)


@_evaluate.register
def _(m: Sum, max_bytes: int | None) -> np.ndarray:
    return sum((evaluate(t, max_bytes) for t in m.terms[1:]), evaluate(m.terms[0], max_bytes))


@_evaluate.register
def _(m: Product, max_bytes: int | None) -> np.ndarray:
    n, d = m.shape
    if d > n:  # start from the narrower end so intermediates stay small
        return evaluate(transpose(m), max_bytes).T
    X = evaluate(m.factors[-1], max_bytes)
    for f in reversed(m.factors[:-1]):
        check_budget((f.codomain.dim, d), m.dtype, lambda: f"to_dense of {m.symbol}", max_bytes)
        X = matmat(f, X)
    return X


def to_dense(m: LinearMap, max_bytes: int | None = None) -> np.ndarray:
    """The dense matrix of ``m``, a new writable array.

    Raises
    ------
    TooLargeError
        If the matrix (or an intermediate of its evaluation) would exceed ``max_bytes``
        (default :data:`~circuitalg.linalg.budget.DEFAULT_MAX_BYTES`); the message gives the
        size in GB.
    """
    require_map(m, "to_dense")
    out = evaluate(m, max_bytes)
    if not (out.flags.owndata and out.flags.writeable):
        out = out.copy()
    return out.astype(m.dtype, copy=False)


class MapOperator(spla.LinearOperator):
    """A :class:`scipy.sparse.linalg.LinearOperator` view of a :class:`LinearMap`."""

    def __init__(self, m: LinearMap) -> None:
        super().__init__(dtype=m.dtype, shape=m.shape)
        self.map = m

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return matmat(self.map, np.asarray(x).reshape(-1, 1))[:, 0]

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return rmatmat(self.map, np.asarray(x).reshape(-1, 1))[:, 0]

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        return matmat(self.map, np.asarray(X))

    def _rmatmat(self, X: np.ndarray) -> np.ndarray:
        return rmatmat(self.map, np.asarray(X))

    def _adjoint(self) -> MapOperator:
        return MapOperator(transpose(self.map))

    _transpose = _adjoint


def as_operator(m: LinearMap) -> MapOperator:
    """``m`` as a scipy ``LinearOperator`` (so ``scipy.sparse.linalg.svds`` works on any map)."""
    require_map(m, "as_operator")
    return MapOperator(m)
