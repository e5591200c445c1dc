"""Eigenvalues of square maps through the cyclic small product."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse.linalg as spla

from circuitalg.errors import InvalidArgumentError, TooLargeError
from circuitalg.linalg.accuracy import (
    accuracy,
    eigen_conditions,
    eigen_conditions_many,
    eigenvalue_error,
    magnitude,
    prime_leaf_norms,
    warn_if_imprecise,
    warn_summary,
)
from circuitalg.linalg.apply import as_operator, evaluate
from circuitalg.linalg.common import check_k, require_square, split_small_products
from circuitalg.linalg.factors import cyclic_core, cyclic_cores
from circuitalg.linalg.plan import Plan, plan
from circuitalg.maps.chain import Chain
from circuitalg.maps.nodes import Dense, LinearMap, Transpose, require_map

__all__ = ["eigenvalues", "eigenvalues_many", "eigenvalues_with_bounds"]


def _order(vals: np.ndarray) -> np.ndarray:
    """Indices sorting eigenvalues by descending magnitude (then real, imaginary part)."""
    vals = np.asarray(vals, dtype=np.result_type(vals.dtype, np.complex64))
    return np.lexsort((-vals.imag, -vals.real, -np.abs(vals)))


Spectrum = tuple[np.ndarray, np.ndarray]  # (eigenvalues, their condition numbers)


def _all_eigenvalues(m: LinearMap, k: int | None) -> Spectrum:
    """Eigenvalues and their condition numbers (``nan`` where unknown: the iterative route)."""
    p = plan(m, "eigenvalues", k)
    w, c = _target_eigenvalues(p, k)
    return p.scalar * w, c  # a transpose has the same eigenvalues


def _target_eigenvalues(p: Plan, k: int | None) -> Spectrum:
    m: LinearMap = p.target  # type: ignore[assignment]
    if p.method == "leaf":
        return eigen_conditions(m.array)  # type: ignore[attr-defined]
    if p.method == "identity":
        return np.ones(m.shape[0]), np.ones(m.shape[0])
    if p.method == "diagonal":
        vals = np.asarray(m.values)  # type: ignore[attr-defined]
        return vals, np.ones(len(vals))
    if p.method == "kron":
        out, cond = np.ones(1, dtype=complex), np.ones(1)
        for f in m.factors:  # type: ignore[attr-defined]
            w, c = _all_eigenvalues(f, None)
            keep = _order(w)[: f.rank_bound]
            out = np.multiply.outer(out, w[keep]).ravel()
            cond = np.multiply.outer(cond, c[keep]).ravel()  # kron eigenvectors: conditions multiply
        return out, cond
    if p.method == "chain":
        chain: Chain = p.chain  # type: ignore[assignment]
        w, c = eigen_conditions(cyclic_core(chain))
        return chain.scalar * w, c
    if p.method == "dense":
        return eigen_conditions(evaluate(m))
    n = m.shape[0]
    if k is None or k >= n - 1:
        raise TooLargeError(
            f"eigenvalues of {m.symbol} {m.shape}: no structural rule applies and the map is too "
            "large to evaluate densely; pass k to compute the k largest in magnitude with "
            "scipy.sparse.linalg.eigs."
        )
    w = spla.eigs(as_operator(m), k=k, return_eigenvectors=False, v0=np.ones(n))
    return w, np.full(len(w), np.nan)


def _finish(m: LinearMap, w: np.ndarray, cond: np.ndarray, n: int, warn: bool = True) -> tuple[np.ndarray, float]:
    """The ``n`` eigenvalues kept, sorted and cast, and their a-priori error bound relative to the
    largest magnitude (see :func:`eigenvalues_with_bounds`); a :class:`PrecisionWarning` when an
    eigenvalue above the noise floor has a bound over ``warn_rtol · |λ_1|`` (unless not ``warn``)."""
    keep = _order(w)[:n]
    vals = np.asarray(w, dtype=np.result_type(w.dtype, np.complex64))[keep]
    rel = 0.0
    if len(vals):
        bound = eigenvalue_error(vals, cond[keep], accuracy(m), magnitude(m))
        scale = float(np.abs(vals[0]))
        if bound > 0.0:
            rel = bound / scale if scale > 0.0 else math.inf
            if warn:
                warn_if_imprecise(m, "eigenvalues", bound, scale)
    out_dtype = np.complex64 if m.dtype == np.float32 else np.complex128
    return vals.astype(out_dtype), rel


def eigenvalues(m: LinearMap, k: int | None = None) -> np.ndarray:
    """Eigenvalues of a square map, as a complex array sorted by descending magnitude.

    Returns the nonzero spectrum padded with zeros to ``rank_bound`` values (or the
    ``k`` largest in magnitude). Chains use ``eig(AB) = eig(BA)`` on the nonzero
    spectrum: ``W_U W_OV W_E`` is evaluated as the ``d_head x d_head`` matrix
    ``W_V (W_E W_U) W_O``, with ``W_E W_U`` computed once and cached.

    Accuracy: ``κᵢ · accuracy(m)`` to first order for eigenvalues above the noise floor
    (:mod:`circuitalg.linalg.accuracy`); a :class:`~circuitalg.errors.PrecisionWarning`
    says when that exceeds ``eps^(1/3)`` times the largest magnitude, as for (nearly)
    defective eigenvalues. Not checked on the iterative route (``k`` on a map without
    structure).
    """
    require_map(m, "eigenvalues")
    require_square(m, "eigenvalues")
    n = check_k(m, k, m.rank_bound)
    w, cond = _all_eigenvalues(m, k)
    return _finish(m, w, cond, n)[0]


def _eigenvalues_many(maps: Sequence[LinearMap], k: int | None, summary: str | None) -> list[tuple[np.ndarray, float]]:
    """Each map's eigenvalues and relative bound (:func:`_finish`); one summary warning naming
    ``summary`` instead of one warning per map when ``summary`` is given."""
    if isinstance(maps, LinearMap) or not isinstance(maps, Iterable):
        raise InvalidArgumentError(
            f"eigenvalues_many takes a sequence of maps, got {type(maps).__name__}; for one map call eigenvalues(m)."
        )
    maps = list(maps)
    counts = []
    for i, m in enumerate(maps):
        require_map(m, f"eigenvalues_many (maps[{i}])")
        require_square(m, f"eigenvalues_many (maps[{i}])")
        counts.append(check_k(m, k, m.rank_bound))
    plans = [plan(m, "eigenvalues", k) for m in maps]
    chained = [i for i, p in enumerate(plans) if p.method == "chain"]
    cores = cyclic_cores([plans[i].chain for i in chained])  # type: ignore[misc]
    leaves = (f.inner if isinstance(f, Transpose) else f for i in chained for f in plans[i].chain.factors)  # type: ignore[union-attr]
    prime_leaf_norms([f for f in leaves if isinstance(f, Dense)])
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    by_shape: dict[tuple, list[int]] = {}
    for pos, c in enumerate(cores):
        by_shape.setdefault((c.shape, c.dtype), []).append(pos)
    for positions in by_shape.values():  # equal shapes: one batched eigensolve per thread's chunk
        stack = np.stack([cores[pos] for pos in positions])
        parts = split_small_products(lambda lo, hi, stack=stack: eigen_conditions_many(stack[lo:hi]), len(positions))
        for pos, wc in zip(positions, (wc for part in parts for wc in part)):
            done[chained[pos]] = wc
    out = []
    for i, (m, p, n) in enumerate(zip(maps, plans, counts)):
        if i in done:
            w, cond = done[i]
            w = p.scalar * (p.chain.scalar * w)  # type: ignore[union-attr]
        else:
            w, cond = _target_eigenvalues(p, k)
            w = p.scalar * w
        out.append(_finish(m, w, cond, n, warn=summary is None))
    if summary is not None:
        rels = np.array([rel for _, rel in out])
        warn_summary("eigenvalues", summary, rels, [m.dtype for m in maps])
    return out


def eigenvalues_many(maps: Sequence[LinearMap], k: int | None = None) -> list[np.ndarray]:
    """``[eigenvalues(m, k) for m in maps]``, with the work the maps share done at once.

    The full OV circuits ``W_U W_O^h W_V^h W_E`` of a model's heads share ``W_E W_U``: their
    ``d_head x d_head`` cores come from one product of ``W_E W_U`` with every ``W_O^h`` side by
    side (:func:`~circuitalg.linalg.factors.cyclic_cores`) and one stacked product with the ``W_V^h``;
    their leaf norms (for the precision check) from stacked Gram matrices
    (:func:`~circuitalg.linalg.accuracy.prime_leaf_norms`); and the small eigenproblems of equal-shaped
    cores are solved in stacks (:func:`~circuitalg.linalg.accuracy.eigen_conditions_many`), a chunk per
    thread with one BLAS thread each. Results equal the loop's
    to rounding (the batched products sum in another order), with the same precision warnings,
    in the same order. Maps of other shapes are computed as :func:`eigenvalues` computes them.
    :func:`eigenvalues_with_bounds` gives each map's error bound as well, with one warning for all.
    """
    return [vals for vals, _ in _eigenvalues_many(maps, k, None)]


def eigenvalues_with_bounds(
    maps: Sequence[LinearMap], k: int | None = None, *, what: str = "maps"
) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`eigenvalues_many`'s eigenvalues and each map's a-priori error bound relative to its
    largest eigenvalue magnitude (``max κᵢ · accuracy(m) / |λ_1|`` over the eigenvalues above the
    noise floor, :mod:`circuitalg.linalg.accuracy`; 0 when none is above it, ``inf`` when the
    largest magnitude is 0 but the bound is not).

    Instead of one :class:`~circuitalg.errors.PrecisionWarning` per map, one for all: how many
    of the maps (``what`` names them, e.g. ``"heads' full OV circuits"``) have a bound over
    :func:`~circuitalg.linalg.accuracy.warn_rtol`, and the largest; none when no map has.
    """
    out = _eigenvalues_many(maps, k, what)
    return [vals for vals, _ in out], np.array([rel for _, rel in out], dtype=np.float64)
