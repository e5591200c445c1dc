"""Eigenvalues of square maps through the cyclic small product."""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg as spla

from circuitalg.errors import TooLargeError
from circuitalg.linalg.accuracy import accuracy, eigen_conditions, eigen_noise_floor, warn_if_imprecise
from circuitalg.linalg.apply import as_operator, evaluate
from circuitalg.linalg.common import check_k, require_square
from circuitalg.linalg.factors import cyclic_core
from circuitalg.linalg.plan import Plan, plan
from circuitalg.maps.chain import Chain
from circuitalg.maps.nodes import LinearMap, require_map

__all__ = ["eigenvalues"]


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


def _warn_if_ill_conditioned(m: LinearMap, vals: np.ndarray, cond: np.ndarray) -> None:
    """Warn if an eigenvalue above the noise floor has a bound over warn_rtol * |λ_1|."""
    acc = accuracy(m)
    above = np.abs(vals) > eigen_noise_floor(m, acc)
    if not above.any():
        return
    worst = float(np.max(np.where(np.isnan(cond[above]), 0.0, cond[above])))
    warn_if_imprecise(m, "eigenvalues", worst * acc, float(np.abs(vals[0])), stacklevel=4)


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
    keep = _order(w)[:n]
    vals = np.asarray(w, dtype=np.result_type(w.dtype, np.complex64))[keep]
    if len(vals):
        _warn_if_ill_conditioned(m, vals, cond[keep])
    out_dtype = np.complex64 if m.dtype == np.float32 else np.complex128
    return vals.astype(out_dtype)
