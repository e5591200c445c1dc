"""Smart constructors: build maps and apply sound structural simplifications.

Product simplifications are small pure functions from a tuple of factors to a tuple of
factors, listed in :data:`PRODUCT_RULES` and applied in order until none changes anything
(sympy's canonicalize pattern); the other constructors apply their rules inline. Only exact
identities are used:

- products: flatten nested products, drop identities, pull scalars out, and apply the
  mixed-product rule ``(A ⊗ B)(C ⊗ D) = (AC) ⊗ (BD)`` when the factor spaces conform;
- sums: flatten nested sums;
- scalars: fold nested scalars, drop a factor of 1;
- transposes: push through products (reversed), sums, scalars and Kronecker products,
  cancel double transposes, fix identities and diagonals;
- Kronecker products: flatten nested Kronecker products, pull scalars out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError
from circuitalg.maps.nodes import (
    Diagonal,
    Identity,
    Kron,
    LinearMap,
    Product,
    Scaled,
    Sum,
    Transpose,
    check_composable,
    check_scalar,
    require_map,
)
from circuitalg.spaces import Space

__all__ = ["compose", "add", "scale", "transpose", "kron", "identity", "diagonal", "PRODUCT_RULES"]

Factors = tuple[LinearMap, ...]


def _require_maps(maps: Sequence[Any], what: str) -> None:
    for m in maps:
        require_map(m, what)


# --- product rules -----------------------------------------------------------------
def flatten_products(fs: Factors) -> Factors:
    """``(A @ B) @ C -> A @ B @ C``."""
    return tuple(g for f in fs for g in (f.factors if isinstance(f, Product) else (f,)))


def drop_identities(fs: Factors) -> Factors:
    """``A @ I -> A`` (keeps one identity if nothing else is left)."""
    kept = tuple(f for f in fs if not isinstance(f, Identity))
    return kept if kept else fs[:1]


def merge_kron_pairs(fs: Factors) -> Factors:
    """``(A ⊗ B) @ (C ⊗ D) -> (A @ C) ⊗ (B @ D)`` when every factor pair composes."""
    out: list[LinearMap] = []
    for f in fs:
        prev = out[-1] if out else None
        if (
            isinstance(prev, Kron)
            and isinstance(f, Kron)
            and len(prev.factors) == len(f.factors)
            and all(a.domain == b.codomain for a, b in zip(prev.factors, f.factors))
        ):
            out[-1] = kron(*(compose(a, b) for a, b in zip(prev.factors, f.factors)))
        else:
            out.append(f)
    return tuple(out)


PRODUCT_RULES: tuple[Callable[[Factors], Factors], ...] = (
    flatten_products,
    drop_identities,
    merge_kron_pairs,
)


def _pull_scalars(fs: Factors) -> tuple[float | int, Factors]:
    c: float | int = 1
    out = []
    for f in fs:
        if isinstance(f, Scaled):
            c = c * f.scalar
            f = f.inner
        out.append(f)
    return c, tuple(out)


def compose(*maps: LinearMap) -> LinearMap:
    """The composition ``maps[0] @ maps[1] @ ...`` (the last is applied first).

    Raises
    ------
    SpaceMismatchError
        If one map's domain is not the next map's codomain; the message names both
        spaces and suggests the likely fix.
    """
    _require_maps(maps, "compose")
    if not maps:
        raise InvalidArgumentError("compose needs at least one map.")
    fs: Factors = tuple(maps)
    for left, right in zip(fs, fs[1:]):
        check_composable(left, right)
    c, fs = _pull_scalars(flatten_products(fs))
    previous = None
    while fs != previous:
        previous = fs
        for rule in PRODUCT_RULES:
            fs = rule(fs)
        c2, fs = _pull_scalars(fs)
        c = c * c2
    body = fs[0] if len(fs) == 1 else Product(fs)
    return scale(c, body)


# --- sums, scalars ----------------------------------------------------------------------
def add(*maps: LinearMap) -> LinearMap:
    """The sum of ``maps``, flattened. All must share domain and codomain."""
    _require_maps(maps, "add")
    if not maps:
        raise InvalidArgumentError("add needs at least one map.")
    terms = tuple(t for m in maps for t in (m.terms if isinstance(m, Sum) else (m,)))
    return terms[0] if len(terms) == 1 else Sum(terms)


def scale(c: Any, m: LinearMap) -> LinearMap:
    """``c * m`` for a real finite scalar; nested scalars are folded, 1 is dropped."""
    _require_maps((m,), "scale")
    c = check_scalar(c)
    if isinstance(m, Scaled):
        c, m = c * m.scalar, m.inner
    return m if c == 1 else Scaled(c, m)


# --- transposes ---------------------------------------------------------------------------
def transpose(m: LinearMap) -> LinearMap:
    """The transpose of ``m``, pushed down to the leaves."""
    _require_maps((m,), "transpose")
    if isinstance(m, (Identity, Diagonal)):
        return m
    if isinstance(m, Transpose):
        return m.inner
    if isinstance(m, Product):
        return compose(*(transpose(f) for f in reversed(m.factors)))
    if isinstance(m, Sum):
        return add(*(transpose(t) for t in m.terms))
    if isinstance(m, Scaled):
        return scale(m.scalar, transpose(m.inner))
    if isinstance(m, Kron):
        return kron(*(transpose(f) for f in m.factors))
    return Transpose(m)


# --- Kronecker products ---------------------------------------------------------------------
def kron(*maps: LinearMap) -> LinearMap:
    """The Kronecker product ``maps[0] ⊗ maps[1] ⊗ ...`` on product spaces.

    Nested Kronecker products are flattened and scalars pulled out. For a pattern ``A``
    on positions and ``W`` on the residual stream, ``kron(A, W)`` acts on
    ``x.reshape(-1)`` for ``x`` of shape ``(n_pos, d_model)`` as ``A x Wᵀ``.
    """
    _require_maps(maps, "kron")
    if not maps:
        raise InvalidArgumentError("kron needs at least one map.")
    c, fs = _pull_scalars(tuple(g for m in maps for g in (m.factors if isinstance(m, Kron) else (m,))))
    # a scalar inside a factor (e.g. a Kron inside a Scaled) is pulled out by _pull_scalars;
    # Kron factors of a Scaled Kron are flattened on the second pass
    if any(isinstance(f, Kron) for f in fs):
        return scale(c, kron(*fs))
    body = fs[0] if len(fs) == 1 else Kron(fs)
    return scale(c, body)


def identity(space: Space, dtype: Any = np.float64) -> Identity:
    """The identity map on ``space``."""
    return Identity(space, dtype=dtype)


def diagonal(values: Any, space: Space, name: str | None = None) -> Diagonal:
    """The diagonal map on ``space`` with the given diagonal ``values``."""
    return Diagonal(values, space, name=name)
