"""Conformance harness: every map kind checked against its dense matrix.

In the spirit of linear_operator's ``LinearOperatorTestCase``: a *case* is a map and an
independent dense numpy matrix built from the same arrays (never through circuitalg's own
evaluation); :func:`check_map` runs every operation and algorithm on the map and compares
with numpy/scipy on the dense matrix. :func:`standard_cases` covers every map kind,
including rank-deficient, 1 x 1, tall, wide, float32 and float64 instances, and
:func:`random_tree` builds random expression trees (used with hypothesis in the tests).

Tolerances (relative to the largest singular value of the case): :data:`RTOL64` for
float64 and :data:`RTOL32` for float32; eigenvalues, which can be ill-conditioned for
non-normal matrices, use the square root of those.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.testing as npt
import scipy.optimize
import scipy.sparse.linalg as spla

from circuitalg.maps import Dense, LinearMap, compose, diagonal, identity, kron
from circuitalg.spaces import ProductSpace, Space, product_space

__all__ = [
    "Case",
    "RTOL64",
    "RTOL32",
    "tolerance",
    "standard_cases",
    "check_map",
    "CHECKS",
    "random_dense",
    "random_tree",
    "match_spectra",
]

RTOL64 = 1e-9
RTOL32 = 2e-3


@dataclass(frozen=True)
class Case:
    """A map and its independently built dense matrix (float64)."""

    name: str
    map: LinearMap
    dense: np.ndarray


def tolerance(m: LinearMap) -> float:
    """Relative tolerance for ``m``'s dtype."""
    return RTOL32 if m.dtype == np.float32 else RTOL64


def random_dense(
    rng: np.random.Generator,
    domain: Space,
    codomain: Space,
    name: str | None = None,
    *,
    rank: int | None = None,
    dtype: type = np.float64,
) -> tuple[Dense, np.ndarray]:
    """A random Dense leaf (optionally of a given rank) and its float64 matrix."""
    n, m = codomain.dim, domain.dim
    if rank is None:
        a = rng.standard_normal((n, m))
    else:
        a = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, m))
    a = a.astype(dtype)
    return Dense(a, domain=domain, codomain=codomain, name=name), a.astype(np.float64)


def standard_cases(seed: int = 0) -> list[Case]:
    """Small instances of every map kind, with their dense matrices."""
    rng = np.random.default_rng(seed)
    S = {d: Space(f"s{d}", d) for d in (1, 2, 3, 4, 5, 6, 7, 9, 30)}
    cases: list[Case] = []

    def add(name: str, m: LinearMap, dense: np.ndarray) -> None:
        cases.append(Case(name, m, np.asarray(dense, dtype=np.float64)))

    # leaves
    for label, (n, m) in {"square": (5, 5), "tall": (9, 4), "wide": (3, 7), "1x1": (1, 1)}.items():
        d, a = random_dense(rng, S[m], S[n], f"A_{label}")
        add(f"dense-{label}", d, a)
    d, a = random_dense(rng, S[7], S[6], "A_lowrank", rank=2)
    add("dense-rank-deficient", d, a)
    d, a = random_dense(rng, S[4], S[6], "A_f32", dtype=np.float32)
    add("dense-float32", d, a)
    add("identity", identity(S[4]), np.eye(4))
    add("identity-1x1", identity(S[1]), np.eye(1))
    vals = np.array([3.0, -1.5, 0.0, 2.0, 0.5])
    add("diagonal", diagonal(vals, S[5], "D"), np.diag(vals))

    # products
    A, a = random_dense(rng, S[6], S[30], "W_U")
    B, b = random_dense(rng, S[2], S[6], "W_O")
    C, c = random_dense(rng, S[6], S[2], "W_V")
    E, e = random_dense(rng, S[30], S[6], "W_E")
    add("product-full-ov", A @ B @ C @ E, a @ b @ c @ e)
    add("product-two", A @ B, a @ b)
    add("product-gram", E.T @ E, e.T @ e)
    X, x = random_dense(rng, S[5], S[4], "X", rank=1)
    Y, y = random_dense(rng, S[3], S[5], "Y")
    add("product-rank-deficient", X @ Y, x @ y)
    D = diagonal(rng.uniform(0.5, 2.0, 6), S[6], "Dg")
    add("product-with-diagonal", A @ D @ E, a @ np.diag(D.values) @ e)
    F, f = random_dense(rng, S[3], S[4], "F32a", dtype=np.float32)
    G, g = random_dense(rng, S[5], S[3], "F32b", dtype=np.float32)
    add("product-float32", F @ G, f @ g)
    R1, r1 = random_dense(rng, S[4], S[1], "row")
    C1, c1 = random_dense(rng, S[1], S[4], "col")
    add("product-1x1", R1 @ C1, r1 @ c1)

    # sums, scalars, transposes
    add("sum-common-factors", A @ E + A @ B @ C @ E, a @ e + a @ b @ c @ e)
    P, p = random_dense(rng, S[5], S[5], "P")
    Q, q = random_dense(rng, S[5], S[5], "Q")
    add("sum-plain", P + Q - P @ Q, p + q - p @ q)
    add("scaled-negative", -2.5 * (A @ B), -2.5 * (a @ b))
    add("scaled-zero", 0 * P, 0 * p)
    add("transpose-leaf", P.T, p.T)
    add("transpose-product", (A @ B @ C).T, (a @ b @ c).T)

    # Kronecker products
    K1, k1 = random_dense(rng, S[3], S[3], "K1")
    K2, k2 = random_dense(rng, S[4], S[4], "K2")
    add("kron-square", kron(K1, K2), np.kron(k1, k2))
    K3, k3 = random_dense(rng, S[2], S[3], "K3")
    K4, k4 = random_dense(rng, S[5], S[2], "K4")
    add("kron-rectangular", kron(K3, K4), np.kron(k3, k4))
    add("kron-three", kron(K1, identity(S[2]), K2), np.kron(np.kron(k1, np.eye(2)), k2))
    add("kron-mixed-product", kron(K1, K2) @ kron(K1.T, K2), np.kron(k1, k2) @ np.kron(k1.T, k2))
    pr = product_space(S[3], S[4])
    M, mm = random_dense(rng, pr, S[6], "M_read")
    add("product-through-kron", M @ kron(K1, K2), mm @ np.kron(k1, k2))
    return cases


# --- checks --------------------------------------------------------------------------------
def _scale(dense: np.ndarray) -> float:
    return max(float(np.linalg.norm(dense, 2)) if dense.size else 0.0, 1e-300)


def _close(actual: np.ndarray, desired: np.ndarray, case: Case, what: str, factor: float = 1.0) -> None:
    tol = tolerance(case.map) * factor * _scale(case.dense) * max(1.0, math.sqrt(max(case.dense.shape)))
    npt.assert_allclose(
        np.asarray(actual, dtype=np.result_type(actual, np.float64)),
        desired,
        rtol=0,
        atol=tol,
        err_msg=f"{case.name}: {what}",
    )


def match_spectra(ours: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal matching of two eigenvalue lists; returns (ours, matched ref, unmatched ref)."""
    cost = np.abs(ours[:, None] - ref[None, :])
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    unmatched = np.setdiff1d(np.arange(len(ref)), cols)
    return ours[rows], ref[cols], ref[unmatched]


def check_structure(case: Case) -> None:
    m, d = case.map, case.dense
    npt.assert_equal(m.shape, d.shape, err_msg=f"{case.name}: shape")
    npt.assert_equal(m.shape, (m.codomain.dim, m.domain.dim))
    npt.assert_equal(tuple(m.symbol.shape), m.shape, err_msg=f"{case.name}: symbol shape")
    if not isinstance(m.latex(), str):
        raise AssertionError(f"{case.name}: latex is not a string")
    rank = np.linalg.matrix_rank(d) if d.size else 0
    if m.rank_bound < rank:
        raise AssertionError(f"{case.name}: rank_bound {m.rank_bound} < numerical rank {rank}")


def check_dense(case: Case) -> None:
    m, d = case.map, case.dense
    out = m.to_dense()
    npt.assert_equal(out.dtype, m.dtype, err_msg=f"{case.name}: to_dense dtype")
    _close(out, d, case, "to_dense")
    _close(m.T.to_dense(), d.T, case, "transpose")


def check_apply(case: Case) -> None:
    m, d = case.map, case.dense
    rng = np.random.default_rng(1)
    x = rng.standard_normal(d.shape[1])
    X = rng.standard_normal((d.shape[1], 3))
    y = rng.standard_normal(d.shape[0])
    nx = max(1.0, float(np.linalg.norm(X)))
    ny = max(1.0, float(np.linalg.norm(y)))
    _close(m.matvec(x) / nx, d @ x / nx, case, "matvec")
    _close(m.matvec(X) / nx, d @ X / nx, case, "matvec block")
    _close(m.rmatvec(y) / ny, d.T @ y / ny, case, "rmatvec")
    op = m.as_operator()
    npt.assert_equal(op.shape, d.shape)
    _close(op.matvec(x) / nx, d @ x / nx, case, "operator matvec")
    _close(op.rmatvec(y) / ny, d.T @ y / ny, case, "operator rmatvec")
    _close(op.matmat(X) / nx, d @ X / nx, case, "operator matmat")
    _close(op.T.matvec(y) / ny, d.T @ y / ny, case, "operator .T")
    if min(d.shape) > 2 and np.any(d):
        s = spla.svds(op, k=1, return_singular_vectors=False, random_state=0)
        _close(s, np.linalg.svd(d, compute_uv=False)[:1], case, "scipy svds on the operator", factor=1e3)


def check_norm_trace(case: Case) -> None:
    m, d = case.map, case.dense
    _close(np.array([m.norm()]), np.array([np.linalg.norm(d)]), case, "norm")
    if m.is_square:
        _close(np.array([m.trace()]), np.array([np.trace(d)]), case, "trace")


def check_singular_values(case: Case) -> None:
    m, d = case.map, case.dense
    ref = np.linalg.svd(d, compute_uv=False)
    s = m.singular_values()
    npt.assert_equal(len(s), m.rank_bound, err_msg=f"{case.name}: number of singular values")
    if np.any(np.diff(s) > 0):
        raise AssertionError(f"{case.name}: singular values not descending: {s}")
    _close(s, ref[: len(s)], case, "singular_values")
    _close(ref[len(s) :], np.zeros(len(ref) - len(s)), case, "singular values beyond rank_bound")
    if m.rank_bound >= 1:
        _close(m.singular_values(k=1), ref[:1], case, "top-1 singular value")


def check_svd(case: Case) -> None:
    m, d = case.map, case.dense
    U, S, Vh = m.svd()
    npt.assert_equal(U.shape, (d.shape[0], len(S)))
    npt.assert_equal(Vh.shape, (len(S), d.shape[1]))
    _close(U @ np.diag(S) @ Vh, d, case, "svd reconstruction")
    _close(S, np.linalg.svd(d, compute_uv=False)[: len(S)], case, "svd values")
    keep = S > tolerance(m) * 1e3 * _scale(d)
    eye = np.eye(int(keep.sum()))
    npt.assert_allclose(U[:, keep].T @ U[:, keep], eye, atol=tolerance(m) * 1e3, err_msg=f"{case.name}: U orthonormal")
    npt.assert_allclose(Vh[keep] @ Vh[keep].T, eye, atol=tolerance(m) * 1e3, err_msg=f"{case.name}: Vh orthonormal")


def check_eigenvalues(case: Case) -> None:
    m, d = case.map, case.dense
    if not m.is_square:
        return
    ours = m.eigenvalues()
    ref = np.linalg.eigvals(d)
    npt.assert_equal(len(ours), m.rank_bound, err_msg=f"{case.name}: number of eigenvalues")
    a, b, rest = match_spectra(ours.astype(complex), ref)
    tol = math.sqrt(tolerance(m)) * _scale(d)
    npt.assert_allclose(a, b, rtol=0, atol=tol, err_msg=f"{case.name}: eigenvalues")
    npt.assert_allclose(rest, 0, atol=tol, err_msg=f"{case.name}: eigenvalues beyond rank_bound")


def check_algebra(case: Case) -> None:
    m, d = case.map, case.dense
    _close((2 * m - m).to_dense(), d, case, "2m - m")
    _close((-m).to_dense(), -d, case, "-m")
    rng = np.random.default_rng(2)
    left, l_arr = random_dense(rng, m.codomain, Space("left", 3), "Lft")
    right, r_arr = random_dense(rng, Space("right", 2), m.domain, "Rgt")
    _close(compose(left, m, right).to_dense(), l_arr @ d @ r_arr, case, "composition", factor=10 * (1 + np.abs(l_arr).max() * np.abs(r_arr).max()))
    small, s_arr = random_dense(rng, Space("k_in", 2), Space("k_out", 2), "Ks")
    _close(kron(m, small).to_dense(), np.kron(d, s_arr), case, "kron", factor=10 * (1 + np.abs(s_arr).max()))


CHECKS: tuple[Callable[[Case], None], ...] = (
    check_structure,
    check_dense,
    check_apply,
    check_norm_trace,
    check_singular_values,
    check_svd,
    check_eigenvalues,
    check_algebra,
)


def check_map(case: Case) -> None:
    """Run every check in :data:`CHECKS` on ``case``; raises AssertionError on a mismatch."""
    for check in CHECKS:
        check(case)


# --- random expression trees -------------------------------------------------------------------
def random_tree(
    draw: Callable[[str, int, int], int],
    rng: np.random.Generator,
    domain: Space,
    codomain: Space,
    depth: int,
    dtype: type = np.float64,
) -> tuple[LinearMap, np.ndarray]:
    """A random expression tree from ``domain`` to ``codomain`` and its dense matrix.

    ``draw(what, lo, hi)`` picks an integer in ``[lo, hi]`` (hypothesis's ``draw`` of
    ``integers`` in the tests, or a ``Random`` elsewhere); ``rng`` fills the leaves.
    Leaves may be rank-deficient; dimensions include 1; leaves (and identities) have
    ``dtype``, and the dense matrix is float64 of the stored (rounded) values.
    """
    kinds = ["leaf"] if depth <= 0 else ["leaf", "product", "sum", "scaled", "transpose", "kron", "identity"]
    kind = kinds[draw("kind", 0, len(kinds) - 1)]
    if kind == "identity" and domain == codomain:
        return identity(domain, dtype=dtype), np.eye(domain.dim)
    if (
        kind == "kron"
        and isinstance(domain, ProductSpace)
        and isinstance(codomain, ProductSpace)
        and len(domain.factors) == len(codomain.factors) == 2
    ):
        a, da = random_tree(draw, rng, domain.factors[0], codomain.factors[0], depth - 1, dtype)
        b, db = random_tree(draw, rng, domain.factors[1], codomain.factors[1], depth - 1, dtype)
        return kron(a, b), np.kron(da, db)
    if kind == "product":
        mid_dim = draw("mid", 1, 5)
        if draw("mid-product", 0, 3) == 0:
            mid = product_space(Space("pa", mid_dim), Space("pb", draw("mid2", 1, 3)))
        else:
            mid = Space(f"z{mid_dim}", mid_dim)
        a, da = random_tree(draw, rng, mid, codomain, depth - 1, dtype)
        b, db = random_tree(draw, rng, domain, mid, depth - 1, dtype)
        return a @ b, da @ db
    if kind == "sum":
        a, da = random_tree(draw, rng, domain, codomain, depth - 1, dtype)
        b, db = random_tree(draw, rng, domain, codomain, depth - 1, dtype)
        return a + b, da + db
    if kind == "scaled":
        c = draw("scalar", -4, 4) / 2
        a, da = random_tree(draw, rng, domain, codomain, depth - 1, dtype)
        return c * a, c * da
    if kind == "transpose":
        a, da = random_tree(draw, rng, codomain, domain, depth - 1, dtype)
        return a.T, da.T
    if domain == codomain and draw("diagonal-leaf", 0, 4) == 0:
        vals = rng.standard_normal(domain.dim) * rng.integers(0, 2, domain.dim)  # some zeros
        d = diagonal(vals.astype(dtype), domain)
        return d, np.diag(d.values.astype(np.float64))
    rank = draw("rank", 0, min(domain.dim, codomain.dim))
    return random_dense(rng, domain, codomain, rank=rank or None, dtype=dtype)
