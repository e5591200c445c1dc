"""Eigenvalues of square maps through the cyclic small product."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import partial, singledispatch

import numpy as np
import scipy.sparse.linalg as spla

from circuitalg import runtime
from circuitalg.errors import InvalidArgumentError, TooLargeError
from circuitalg.linalg.accuracy import (
    accuracy,
    eigen_conditions,
    eigen_conditions_many,
    eigenvalue_error,
    magnitude,
    leaf_magnitudes,
    warn_if_imprecise,
    warn_summary,
)
from circuitalg.linalg.apply import as_operator, evaluate
from circuitalg.linalg.common import check_k, require_square
from circuitalg.linalg.factors import cyclic_core, cyclic_cores
from circuitalg.linalg.plan import (
    ChainPlan,
    DensePlan,
    DiagonalPlan,
    IdentityPlan,
    IterativePlan,
    KronPlan,
    LeafPlan,
    Plan,
    no_rule,
    plan,
)
from circuitalg.maps.nodes import Dense, LinearMap, Transpose, require_map
from circuitalg.runtime import Runtime

__all__ = ["eigenvalues", "eigenvalues_many", "eigenvalues_with_bounds", "planned_eigenvalues"]


def _order(vals: np.ndarray) -> np.ndarray:
    """Indices sorting eigenvalues by descending magnitude (then real, imaginary part)."""
    vals = np.asarray(vals, dtype=np.result_type(vals.dtype, np.complex64))
    return np.lexsort((-vals.imag, -vals.real, -np.abs(vals)))


Spectrum = tuple[np.ndarray, np.ndarray]  # (eigenvalues, their condition numbers)


def _all_eigenvalues(m: LinearMap, k: int | None, rt: Runtime) -> Spectrum:
    """Eigenvalues and their condition numbers (``nan`` where unknown: the iterative route)."""
    return _scaled_eigenvalues(plan(m, "eigenvalues", k), rt)


def _scaled_eigenvalues(p: Plan, rt: Runtime) -> Spectrum:
    w, c = planned_eigenvalues(p, rt)
    return p.scalar * w, c  # a transpose has the same eigenvalues


@singledispatch
def planned_eigenvalues(p: Plan, rt: Runtime) -> Spectrum:
    """Eigenvalues of ``p.target`` (without ``p.scalar``) and their condition numbers, unsorted,
    before truncation: one rule per plan type (``planned_eigenvalues.register``)."""
    raise no_rule("eigenvalues", p)


@planned_eigenvalues.register
def _(p: LeafPlan, rt: Runtime) -> Spectrum:
    return eigen_conditions(p.target.array, rt)


@planned_eigenvalues.register
def _(p: IdentityPlan, rt: Runtime) -> Spectrum:
    n = p.target.shape[0]
    return np.ones(n), np.ones(n)


@planned_eigenvalues.register
def _(p: DiagonalPlan, rt: Runtime) -> Spectrum:
    vals = np.asarray(p.target.values)
    return vals, np.ones(len(vals))


@planned_eigenvalues.register
def _(p: KronPlan, rt: Runtime) -> Spectrum:
    out, cond = np.ones(1, dtype=complex), np.ones(1)
    for f, part in zip(p.target.factors, p.parts):
        w, c = _scaled_eigenvalues(part, rt)
        keep = _order(w)[: f.rank_bound]
        out = np.multiply.outer(out, w[keep]).ravel()
        cond = np.multiply.outer(cond, c[keep]).ravel()  # kron eigenvectors: conditions multiply
    return out, cond


@planned_eigenvalues.register
def _(p: ChainPlan, rt: Runtime) -> Spectrum:
    w, c = eigen_conditions(cyclic_core(p.chain, rt), rt)
    return p.chain.scalar * w, c


@planned_eigenvalues.register
def _(p: DensePlan, rt: Runtime) -> Spectrum:
    return eigen_conditions(evaluate(p.target), rt)


@planned_eigenvalues.register
def _(p: IterativePlan, rt: Runtime) -> Spectrum:
    m, k = p.target, p.k
    n = m.shape[0]
    if k is None or k >= n - 1:
        raise TooLargeError(
            f"eigenvalues of {m.symbol} {m.shape}: no structural rule applies and the map is too "
            "large to evaluate densely; pass k to compute the k largest in magnitude with "
            "scipy.sparse.linalg.eigs."
        )
    w = spla.eigs(as_operator(m), k=k, return_eigenvectors=False, v0=np.ones(n))
    return w, np.full(len(w), np.nan)


def _stacked_conditions(stack: np.ndarray, rt: Runtime, lo: int, hi: int) -> list[Spectrum]:
    return eigen_conditions_many(stack[lo:hi], rt)


def _finish(
    m: LinearMap, w: np.ndarray, cond: np.ndarray, n: int, warn: bool = True
) -> tuple[np.ndarray, float]:
    """The ``n`` eigenvalues kept, sorted and cast, and their a-priori error bound relative to the
    largest magnitude (see :func:`eigenvalues_with_bounds`); a :class:`PrecisionWarning` when an
    eigenvalue above the noise floor has a bound over ``warn_rtol · |λ_1|`` (unless not ``warn``)."""
    keep = _order(w)[:n]
    vals = np.asarray(w, dtype=np.result_type(w.dtype, np.complex64))[keep]
    rel = 0.0
    if len(vals):
        bound = eigenvalue_error(vals, cond[keep], accuracy(m, gram_factors=False), magnitude(m))
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

    Accuracy: ``κᵢ · accuracy(m, gram_factors=False)`` to first order for eigenvalues above the
    noise floor (:mod:`circuitalg.linalg.accuracy`); a :class:`~circuitalg.errors.PrecisionWarning`
    says when that exceeds ``eps^(1/3)`` times the largest magnitude, as for (nearly)
    defective eigenvalues. Not checked on the iterative route (``k`` on a map without
    structure).
    """
    require_map(m, "eigenvalues")
    require_square(m, "eigenvalues")
    n = check_k(m, k, m.rank_bound)
    w, cond = _all_eigenvalues(m, k, runtime.current())
    return _finish(m, w, cond, n)[0]


def _eigenvalues_many(
    maps: Sequence[LinearMap], k: int | None, summary: str | None, rt: Runtime
) -> list[tuple[np.ndarray, float]]:
    """Each map's eigenvalues and relative bound (:func:`_finish`); one summary warning naming
    ``summary`` instead of one warning per map when ``summary`` is given. Chains' small
    eigenproblems of equal shapes are solved in stacks, split by ``rt``."""
    if isinstance(maps, LinearMap) or not isinstance(maps, Iterable):
        raise InvalidArgumentError(
            f"eigenvalues_many takes a sequence of maps, got {type(maps).__name__}; "
            "for one map call eigenvalues(m)."
        )
    maps = list(maps)
    counts = []
    for i, m in enumerate(maps):
        require_map(m, f"eigenvalues_many (maps[{i}])")
        require_square(m, f"eigenvalues_many (maps[{i}])")
        counts.append(check_k(m, k, m.rank_bound))
    plans = [plan(m, "eigenvalues", k) for m in maps]
    chained = [(i, p) for i, p in enumerate(plans) if isinstance(p, ChainPlan)]
    cores = cyclic_cores([p.chain for _, p in chained], rt)
    leaves = (f.inner if isinstance(f, Transpose) else f for _, p in chained for f in p.chain.factors)
    leaf_magnitudes([f for f in leaves if isinstance(f, Dense)], rt)
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    by_shape: dict[tuple, list[int]] = {}
    for pos, c in enumerate(cores):
        by_shape.setdefault((c.shape, c.dtype), []).append(pos)
    for positions in by_shape.values():  # equal shapes: one batched eigensolve per thread's chunk
        stack = np.stack([cores[pos] for pos in positions])
        parts = rt.map(partial(_stacked_conditions, stack, rt), len(positions))
        for pos, wc in zip(positions, (wc for part in parts for wc in part)):
            i, cp = chained[pos]
            w, cond = wc
            done[i] = cp.scalar * (cp.chain.scalar * w), cond
    out = []
    for i, (m, p, n) in enumerate(zip(maps, plans, counts)):
        w, cond = done[i] if i in done else _scaled_eigenvalues(p, rt)
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
    (:func:`~circuitalg.linalg.accuracy.leaf_magnitudes`); and the small eigenproblems of equal-shaped
    cores are solved in stacks (:func:`~circuitalg.linalg.accuracy.eigen_conditions_many`), a chunk per
    thread with one BLAS thread each. Results equal the loop's
    to rounding (the batched products sum in another order), with the same precision warnings,
    in the same order. Maps of other shapes are computed as :func:`eigenvalues` computes them.
    :func:`eigenvalues_with_bounds` gives each map's error bound as well, with one warning for all.
    """
    return [vals for vals, _ in _eigenvalues_many(maps, k, None, runtime.current())]


def eigenvalues_with_bounds(
    maps: Sequence[LinearMap], k: int | None = None, *, what: str = "maps"
) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`eigenvalues_many`'s eigenvalues and each map's a-priori error bound relative to its
    largest eigenvalue magnitude (``max κᵢ · accuracy(m, gram_factors=False) / |λ_1|`` over the
    eigenvalues above the noise floor, :mod:`circuitalg.linalg.accuracy`; 0 when none is above it,
    ``inf`` when the largest magnitude is 0 but the bound is not).

    Instead of one :class:`~circuitalg.errors.PrecisionWarning` per map, one for all: how many
    of the maps (``what`` names them, e.g. ``"heads' full OV circuits"``) have a bound over
    :func:`~circuitalg.linalg.accuracy.warn_rtol`, and the largest; none when no map has.
    """
    out = _eigenvalues_many(maps, k, what, runtime.current())
    return [vals for vals, _ in out], np.array([rel for _, rel in out], dtype=np.float64)
