"""Singular values and singular value decompositions of maps, factored where possible."""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse.linalg as spla

from circuitalg.errors import TooLargeError
from circuitalg.linalg.accuracy import accuracy, warn_if_imprecise
from circuitalg.linalg.apply import as_operator, evaluate, matmat, rmatmat
from circuitalg.linalg.budget import check_budget
from circuitalg.linalg.common import check_k, small_lapack
from circuitalg.linalg.factors import _well_conditioned_cholesky, core, gram_factor
from circuitalg.linalg.plan import Plan, plan
from circuitalg.maps.chain import Chain
from circuitalg.maps.nodes import Dense, Identity, LinearMap, require_map

__all__ = ["singular_values", "svd"]


def _svdvals(a: np.ndarray) -> np.ndarray:
    with small_lapack(*a.shape):
        return sla.svdvals(a, check_finite=False)


def _leaf_values(m: Dense) -> np.ndarray:
    rows, cols = m.shape
    if rows > cols:
        return _svdvals(gram_factor(m, "cols"))
    if cols > rows:
        return _svdvals(gram_factor(m, "rows"))
    return _svdvals(m.array)


def _all_singular_values(m: LinearMap, k: int | None) -> np.ndarray:
    """Singular values, descending, before truncation (may be longer than rank_bound)."""
    p = plan(m, "singular_values", k)
    return abs(p.scalar) * _target_singular_values(p, k)


def _target_singular_values(p: Plan, k: int | None) -> np.ndarray:
    m: LinearMap = p.target  # type: ignore[assignment]
    if p.method == "leaf":
        return _leaf_values(m)  # type: ignore[arg-type]
    if p.method == "identity":
        return np.ones(m.shape[0], dtype=m.dtype)
    if p.method == "diagonal":
        return np.sort(np.abs(m.values))[::-1]  # type: ignore[attr-defined]
    if p.method == "kron":
        out = np.ones(1, dtype=m.dtype)
        for f in m.factors:  # type: ignore[attr-defined]
            out = np.multiply.outer(out, _all_singular_values(f, None)).ravel()
        return np.sort(out)[::-1]
    if p.method == "chain":
        chain: Chain = p.chain  # type: ignore[assignment]
        return abs(chain.scalar) * _svdvals(core(chain))
    if p.method == "dense":
        return _svdvals(evaluate(m))
    if k is None or k >= min(m.shape):
        raise TooLargeError(
            f"singular_values of {m.symbol} {m.shape}: no structural rule applies and the map is "
            "too large to evaluate densely; pass k to compute the top k with "
            "scipy.sparse.linalg.svds."
        )
    s = spla.svds(as_operator(m), k=k, return_singular_vectors=False, random_state=0)
    return np.sort(s)[::-1]


def singular_values(m: LinearMap, k: int | None = None) -> np.ndarray:
    """Singular values of ``m``, descending.

    Returns ``min(rank_bound, k)`` values (all ``rank_bound`` when ``k`` is None). The
    method is chosen by :func:`~circuitalg.linalg.plan`: chains go through the small
    core (O((n+m) r^2) once per outer leaf, O(d r^2) per chain), Kronecker products are
    factor-wise, and maps with no structure fall back to ``scipy.sparse.linalg.svds``.
    """
    require_map(m, "singular_values")
    n = check_k(m, k, m.rank_bound)
    s = np.asarray(_all_singular_values(m, k)[:n], dtype=m.dtype)
    if len(s):
        warn_if_imprecise(m, "singular_values", accuracy(m), float(s[0]))
    return s


# --- full decompositions -------------------------------------------------------------------------
def _chain_svd(m: LinearMap, chain: Chain) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    j = chain.bottleneck
    fs = chain.factors
    r = chain.dims[j]
    n, mm = m.shape
    check_budget((n, r), m.dtype, lambda: f"svd of {m.symbol} (left vectors)", None)
    check_budget((mm, r), m.dtype, lambda: f"svd of {m.symbol} (right vectors)", None)
    eye = np.eye(r, dtype=m.dtype)
    L = eye
    for f in reversed(fs[:j]):
        L = matmat(f, L)
    Rt = eye
    for f in fs[j:]:
        Rt = rmatmat(f, Rt)
    QL, RL = _tall_qr(L)
    QR, RR = _tall_qr(Rt)
    Uc, S, Vhc = np.linalg.svd(RL @ RR.T, full_matrices=False)
    sign = -1.0 if chain.scalar < 0 else 1.0
    return sign * (QL @ Uc), abs(chain.scalar) * S, Vhc @ QR.T


#: CholeskyQR2 is used for a tall factor whose triangular factor's diagonal ratio stays below this
#: (its orthogonality error is then about ``u``, as Householder's; above it, Householder QR).
CHOLQR_COND_LIMIT = 1e4


def _tall_qr(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin QR of a tall ``A`` (``n x r``, ``n >> r``, e.g. a vocabulary-sized left factor):
    CholeskyQR2 (two rounds of ``R = chol(AᵀA)``, ``Q = A R⁻¹``; Yamamoto et al. 2015), several
    times faster than Householder on such shapes and as orthogonal when ``A`` is well conditioned
    (checked on the first round's factor, :data:`CHOLQR_COND_LIMIT`); Householder QR otherwise."""
    n, r = A.shape
    if n < 8 * r or r == 0:
        return np.linalg.qr(A)
    Q, R = A, np.eye(r, dtype=A.dtype)
    for _ in range(2):
        C = _well_conditioned_cholesky(Q.T @ Q, CHOLQR_COND_LIMIT)  # upper
        if C is None:
            return np.linalg.qr(A)
        Q = sla.solve_triangular(C, Q.T, trans="T", lower=False, check_finite=False).T  # Q C⁻¹
        R = C @ R
    return np.ascontiguousarray(Q), R


def _all_svd(m: LinearMap, k: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = plan(m, "svd", k)
    U, S, Vh = _target_svd(p, k)
    if p.transposed:
        U, Vh = Vh.T, U.T
    return (-U if p.scalar < 0 else U), abs(p.scalar) * S, Vh


def _target_svd(p: Plan, k: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m: LinearMap = p.target  # type: ignore[assignment]
    n, d = m.shape
    if p.method in ("identity", "diagonal"):
        check_budget((n, n), m.dtype, lambda: f"svd of {m.symbol}", None)
        vals = np.ones(n, dtype=m.dtype) if isinstance(m, Identity) else m.values  # type: ignore[attr-defined]
        order = np.argsort(-np.abs(vals), kind="stable")
        eye = np.eye(n, dtype=m.dtype)[:, order]
        signs = np.where(vals[order] < 0, -1.0, 1.0).astype(m.dtype)
        return eye * signs, np.abs(vals[order]), eye.T
    if p.method == "kron":
        U, S, Vh = np.ones((1, 1)), np.ones(1), np.ones((1, 1))
        for f in m.factors:  # type: ignore[attr-defined]
            Uf, Sf, Vhf = _all_svd(f, None)
            U, S, Vh = np.kron(U, Uf), np.kron(S, Sf), np.kron(Vh, Vhf)
        order = np.argsort(-S, kind="stable")
        return U[:, order], S[order], Vh[order]
    if p.method == "chain":
        return _chain_svd(m, p.chain)  # type: ignore[arg-type]
    if p.method in ("leaf", "dense"):
        check_budget((n, min(n, d)), m.dtype, lambda: f"svd of {m.symbol}", None)
        check_budget((min(n, d), d), m.dtype, lambda: f"svd of {m.symbol}", None)
        return np.linalg.svd(evaluate(m), full_matrices=False)
    if k is None or k >= min(m.shape):
        raise TooLargeError(
            f"svd of {m.symbol} {m.shape}: no structural rule applies and the map is too large to "
            "evaluate densely; pass k to compute the top k with scipy.sparse.linalg.svds."
        )
    U, S, Vh = spla.svds(as_operator(m), k=k, random_state=0)
    order = np.argsort(-S)
    return U[:, order], S[order], Vh[order]


def svd(m: LinearMap, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``(U, S, Vh)`` with ``m ≈ U @ diag(S) @ Vh``.

    ``U`` is ``(codomain.dim, r)``, ``S`` descending, ``Vh`` is ``(r, domain.dim)``, with
    ``r = min(rank_bound, k)``. Output sizes are checked against the memory budget.
    Chains compute ``U`` and ``Vh`` from the thin QR of the two halves of the chain split
    at its bottleneck, and an SVD of the small core. Accuracy and warnings as for
    :func:`singular_values`.
    """
    require_map(m, "svd")
    n = check_k(m, k, m.rank_bound)
    U, S, Vh = _all_svd(m, k)
    dt = m.dtype
    if n:
        warn_if_imprecise(m, "svd", accuracy(m), float(S[0]))
    return (
        np.asarray(U[:, :n], dtype=dt),
        np.asarray(S[:n], dtype=dt),
        np.asarray(Vh[:n], dtype=dt),
    )
