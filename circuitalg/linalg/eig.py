"""Eigenvalues of square maps through the cyclic small product."""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse.linalg as spla

from circuitalg.errors import ShapeError, TooLargeError
from circuitalg.linalg.apply import as_operator, evaluate
from circuitalg.linalg.factors import Chain, evaluate_chain
from circuitalg.linalg.plan import plan
from circuitalg.linalg.svd import check_k
from circuitalg.maps.nodes import LinearMap, Scaled, Transpose

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


def _sorted(vals: np.ndarray) -> np.ndarray:
    vals = np.asarray(vals, dtype=np.result_type(vals.dtype, np.complex64))
    order = np.lexsort((-vals.imag, -vals.real, -np.abs(vals)))
    return vals[order]


def _all_eigenvalues(m: LinearMap, k: int | None) -> np.ndarray:
    if isinstance(m, Scaled):
        return m.scalar * _all_eigenvalues(m.inner, k)
    if isinstance(m, Transpose):
        return _all_eigenvalues(m.inner, k)
    p = plan(m, "eigenvalues", k)
    if p.method == "leaf":
        return sla.eigvals(m.array, check_finite=False)  # type: ignore[attr-defined]
    if p.method == "identity":
        return np.ones(m.shape[0])
    if p.method == "diagonal":
        return np.asarray(m.values)  # type: ignore[attr-defined]
    if p.method == "kron":
        out = np.ones(1, dtype=complex)
        for f in m.factors:  # type: ignore[attr-defined]
            out = np.multiply.outer(out, _sorted(_all_eigenvalues(f, None))[: f.rank_bound]).ravel()
        return out
    if p.method == "chain":
        chain: Chain = p.chain  # type: ignore[assignment]
        return chain.scalar * sla.eigvals(cyclic_core(chain), check_finite=False)
    if p.method == "dense":
        return sla.eigvals(evaluate(m), check_finite=False)
    n = m.shape[0]
    if k is None or k >= n - 1:
        raise TooLargeError(
            f"eigenvalues of {m.symbol} {m.shape}: no structural rule applies and the map is too "
            "large to evaluate densely; pass k to compute the k largest in magnitude with "
            "scipy.sparse.linalg.eigs."
        )
    return spla.eigs(as_operator(m), k=k, return_eigenvectors=False, v0=np.ones(n))


def eigenvalues(m: LinearMap, k: int | None = None) -> np.ndarray:
    """Eigenvalues of a square map, as a complex array sorted by descending magnitude.

    Returns the nonzero spectrum padded with zeros to ``rank_bound`` values (or the
    ``k`` largest in magnitude). Chains use ``eig(AB) = eig(BA)`` on the nonzero
    spectrum: ``W_U W_OV W_E`` is evaluated as the ``d_head x d_head`` matrix
    ``W_V (W_E W_U) W_O``, with ``W_E W_U`` computed once and cached.
    """
    require_square(m, "eigenvalues")
    n = check_k(m, k, m.rank_bound)
    vals = _sorted(_all_eigenvalues(m, k))[:n]
    out_dtype = np.complex64 if m.dtype == np.float32 else np.complex128
    return vals.astype(out_dtype)
