"""Singular values and singular value decompositions of maps, factored where possible."""

from __future__ import annotations

from functools import singledispatch

import numpy as np
import scipy.linalg as sla
import scipy.sparse.linalg as spla

from circuitalg import runtime
from circuitalg.errors import TooLargeError
from circuitalg.linalg.accuracy import accuracy, warn_if_imprecise
from circuitalg.linalg.apply import as_operator, evaluate, matmat, rmatmat
from circuitalg.linalg.budget import check_budget
from circuitalg.linalg.common import check_k
from circuitalg.linalg.factors import core, gram_factor, well_conditioned_cholesky
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
    tall_qr_method,
)
from circuitalg.maps.nodes import LinearMap, require_map
from circuitalg.runtime import Runtime

__all__ = ["singular_values", "svd", "planned_singular_values", "planned_svd"]


def _svdvals(a: np.ndarray, rt: Runtime) -> np.ndarray:
    with rt.lapack(*a.shape):
        return sla.svdvals(a, check_finite=False)


def _all_singular_values(m: LinearMap, k: int | None, rt: Runtime) -> np.ndarray:
    """Singular values, descending, before truncation (may be longer than rank_bound)."""
    return _scaled_singular_values(plan(m, "singular_values", k), rt)


def _scaled_singular_values(p: Plan, rt: Runtime) -> np.ndarray:
    return abs(p.scalar) * planned_singular_values(p, rt)


@singledispatch
def planned_singular_values(p: Plan, rt: Runtime) -> np.ndarray:
    """Singular values of ``p.target``, descending, before truncation and without ``p.scalar``:
    one rule per plan type (``planned_singular_values.register``)."""
    raise no_rule("singular_values", p)


@planned_singular_values.register
def _(p: LeafPlan, rt: Runtime) -> np.ndarray:
    if p.factor_side is None:
        return _svdvals(p.target.array, rt)
    return _svdvals(gram_factor(p.target, p.factor_side, rt), rt)


@planned_singular_values.register
def _(p: IdentityPlan, rt: Runtime) -> np.ndarray:
    return np.ones(p.target.shape[0], dtype=p.target.dtype)


@planned_singular_values.register
def _(p: DiagonalPlan, rt: Runtime) -> np.ndarray:
    return np.sort(np.abs(p.target.values))[::-1]


@planned_singular_values.register
def _(p: KronPlan, rt: Runtime) -> np.ndarray:
    out = np.ones(1, dtype=p.target.dtype)
    for part in p.parts:
        out = np.multiply.outer(out, _scaled_singular_values(part, rt)).ravel()
    return np.sort(out)[::-1]


@planned_singular_values.register
def _(p: ChainPlan, rt: Runtime) -> np.ndarray:
    return abs(p.chain.scalar) * _svdvals(core(p.chain, rt=rt), rt)


@planned_singular_values.register
def _(p: DensePlan, rt: Runtime) -> np.ndarray:
    return _svdvals(evaluate(p.target), rt)


@planned_singular_values.register
def _(p: IterativePlan, rt: Runtime) -> np.ndarray:
    m, k = p.target, p.k
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
    s = np.asarray(_all_singular_values(m, k, runtime.current())[:n], dtype=m.dtype)
    if len(s):
        warn_if_imprecise(m, "singular_values", accuracy(m), float(s[0]))
    return s


# --- full decompositions -------------------------------------------------------------------------
#: CholeskyQR2 is used for a tall factor whose triangular factor's diagonal ratio stays below this
#: (its orthogonality error is then about ``u``, as Householder's; above it, Householder QR).
CHOLQR_COND_LIMIT = 1e4


def _tall_qr(
    A: np.ndarray, method: str | None = None, rt: Runtime = runtime.SERIAL
) -> tuple[np.ndarray, np.ndarray]:
    """Thin QR of a tall ``A`` (``n x r``, e.g. a vocabulary-sized left factor) by ``method``
    (by default :func:`~circuitalg.linalg.plan.tall_qr_method` of its shape): ``"cholesky-qr2"`` is
    two rounds of ``R = chol(AᵀA)``, ``Q = A R⁻¹`` (Yamamoto et al. 2015), several times faster than
    Householder on such shapes and as orthogonal when ``A`` is well conditioned (checked on each
    round's factor, :data:`CHOLQR_COND_LIMIT`; Householder QR when it is not); ``"householder"`` is
    Householder QR."""
    if (tall_qr_method(*A.shape) if method is None else method) == "householder":
        return np.linalg.qr(A)
    Q, R = A, np.eye(A.shape[1], dtype=A.dtype)
    for _ in range(2):
        C = well_conditioned_cholesky(Q.T @ Q, CHOLQR_COND_LIMIT, rt)  # upper
        if C is None:
            return np.linalg.qr(A)
        Q = sla.solve_triangular(C, Q.T, trans="T", lower=False, check_finite=False).T  # Q C⁻¹
        R = C @ R
    return np.ascontiguousarray(Q), R


def _all_svd(m: LinearMap, k: int | None, rt: Runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _oriented_svd(plan(m, "svd", k), rt)


def _oriented_svd(p: Plan, rt: Runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The SVD of ``p.scalar * p.target`` (transposed when ``p.transposed``)."""
    U, S, Vh = planned_svd(p, rt)
    if p.transposed:
        U, Vh = Vh.T, U.T
    return (-U if p.scalar < 0 else U), abs(p.scalar) * S, Vh


@singledispatch
def planned_svd(p: Plan, rt: Runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``(U, S, Vh)`` of ``p.target`` (without ``p.scalar`` and ``p.transposed``), before
    truncation: one rule per plan type (``planned_svd.register``)."""
    raise no_rule("svd", p)


def _signed_permutation(m: LinearMap, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The SVD of ``diag(vals)``: a signed permutation, the absolute values descending."""
    n = m.shape[0]
    check_budget((n, n), m.dtype, lambda: f"svd of {m.symbol}", None)
    order = np.argsort(-np.abs(vals), kind="stable")
    eye = np.eye(n, dtype=m.dtype)[:, order]
    signs = np.where(vals[order] < 0, -1.0, 1.0).astype(m.dtype)
    return eye * signs, np.abs(vals[order]), eye.T


@planned_svd.register
def _(p: IdentityPlan, rt: Runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _signed_permutation(p.target, np.ones(p.target.shape[0], dtype=p.target.dtype))


@planned_svd.register
def _(p: DiagonalPlan, rt: Runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _signed_permutation(p.target, p.target.values)


@planned_svd.register
def _(p: KronPlan, rt: Runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    U, S, Vh = np.ones((1, 1)), np.ones(1), np.ones((1, 1))
    for part in p.parts:
        Uf, Sf, Vhf = _oriented_svd(part, rt)
        U, S, Vh = np.kron(U, Uf), np.kron(S, Sf), np.kron(Vh, Vhf)
    order = np.argsort(-S, kind="stable")
    return U[:, order], S[order], Vh[order]


@planned_svd.register
def _(p: ChainPlan, rt: Runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m, chain = p.target, p.chain
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
    left, right = p.qr if p.qr is not None else (None, None)
    QL, RL = _tall_qr(L, left, rt)
    QR, RR = _tall_qr(Rt, right, rt)
    Uc, S, Vhc = np.linalg.svd(RL @ RR.T, full_matrices=False)
    sign = -1.0 if chain.scalar < 0 else 1.0
    return sign * (QL @ Uc), abs(chain.scalar) * S, Vhc @ QR.T


@planned_svd.register(LeafPlan)
@planned_svd.register(DensePlan)
def _(p: Plan, rt: Runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = p.target
    n, d = m.shape
    check_budget((n, min(n, d)), m.dtype, lambda: f"svd of {m.symbol}", None)
    check_budget((min(n, d), d), m.dtype, lambda: f"svd of {m.symbol}", None)
    return np.linalg.svd(evaluate(m), full_matrices=False)


@planned_svd.register
def _(p: IterativePlan, rt: Runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m, k = p.target, p.k
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
    U, S, Vh = _all_svd(m, k, runtime.current())
    dt = m.dtype
    if n:
        warn_if_imprecise(m, "svd", accuracy(m), float(S[0]))
    return (
        np.asarray(U[:, :n], dtype=dt),
        np.asarray(S[:n], dtype=dt),
        np.asarray(Vh[:n], dtype=dt),
    )
