"""Eigenvalues of square maps through the cyclic small product."""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg as spla

from circuitalg.errors import ShapeError, TooLargeError
from circuitalg.linalg.accuracy import accuracy, eigen_conditions, eigen_noise_floor, warn_if_imprecise
from circuitalg.linalg.apply import as_operator, evaluate
from circuitalg.linalg.factors import Chain, evaluate_chain
from circuitalg.linalg.plan import plan
from circuitalg.linalg.svd import check_k
from circuitalg.maps.nodes import LinearMap, Scaled, Transpose, require_map

__all__ = ["eigenvalues", "cyclic_core", "require_square"]


def require_square(m: LinearMap, what: str) -> None:
    """Raise :class:`ShapeError` unless ``m`` is square."""
    if not m.is_square:
        raise ShapeError(
            f"{what} needs a square map, but {m.symbol} maps {m.domain} -> {m.codomain} "
            f"(shape {m.shape}); use singular_values for non-square maps."
        )


def cyclic_core(chain: Chain) -> np.ndarray:
    """The small square matrix ``F_{j+1} ... F_k F_1 ... F_j`` (``j`` the bottleneck),
    which has the nonzero eigenvalues and the trace of the chain (without its scalar).

    The wrap-around pair ``F_k F_1`` (e.g. ``W_E W_U``) is cached on its leaves."""
    j = chain.bottleneck
    fs = chain.factors
    rotated = fs[j:] + fs[:j] if 0 < j < len(fs) else fs
    return evaluate_chain(rotated)


def _order(vals: np.ndarray) -> np.ndarray:
    """Indices sorting eigenvalues by descending magnitude (then real, imaginary part)."""
    vals = np.asarray(vals, dtype=np.result_type(vals.dtype, np.complex64))
    return np.lexsort((-vals.imag, -vals.real, -np.abs(vals)))


Spectrum = tuple[np.ndarray, np.ndarray]  # (eigenvalues, their condition numbers)


def _all_eigenvalues(m: LinearMap, k: int | None) -> Spectrum:
    """Eigenvalues and their condition numbers (``nan`` where unknown: the iterative route)."""
    if isinstance(m, Scaled):
        w, c = _all_eigenvalues(m.inner, k)
        return m.scalar * w, c
    if isinstance(m, Transpose):
        return _all_eigenvalues(m.inner, k)
    p = plan(m, "eigenvalues", k)
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
