"""Hypothesis-generated expression trees checked against their dense evaluation.

The dense matrix of each tree is built by numpy alongside the tree (never through
circuitalg), then every public numeric function is compared with it.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import circuitalg as ca
from circuitalg.testing import (
    Case,
    check_algebra,
    check_apply,
    check_dense,
    check_norm_trace,
    check_singular_values,
    check_structure,
    check_svd,
    random_tree,
    tolerance,
)

# test_accuracy.py checks where precision warnings fire; here only the values matter
pytestmark = pytest.mark.filterwarnings("ignore::circuitalg.PrecisionWarning")

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _drawer(data):
    return lambda what, lo, hi: data.draw(st.integers(lo, hi), label=what)


def _space(data, name: str) -> ca.Space:
    if data.draw(st.integers(0, 3), label=f"{name}-product") == 0:
        return ca.product_space(
            ca.Space(f"{name}a", data.draw(st.integers(1, 3))), ca.Space(f"{name}b", data.draw(st.integers(1, 3)))
        )
    return ca.Space(name, data.draw(st.integers(1, 6), label=f"{name}-dim"))


def _tree(data, domain, codomain, depth=3, dtype=np.float64):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    return random_tree(_drawer(data), rng, domain, codomain, depth, dtype)


DTYPES = st.sampled_from([np.float64, np.float32])


@SETTINGS
@given(st.data())
def test_random_trees_match_dense(data) -> None:
    domain, codomain = _space(data, "x"), _space(data, "y")
    dtype = data.draw(DTYPES, label="dtype")
    m, d = _tree(data, domain, codomain, dtype=dtype)
    assert m.dtype == dtype
    case = Case("random-tree", m, d)
    for check in (check_structure, check_dense, check_apply, check_norm_trace, check_singular_values, check_svd, check_algebra):
        check(case)
    if m.is_square:
        # power sums of the spectrum are well conditioned even for defective matrices
        lam = m.eigenvalues()
        scale = max(np.linalg.norm(d, 2), 1e-12)
        for p in (1, 2, 3):
            ref = np.trace(np.linalg.matrix_power(d / scale, p))
            np.testing.assert_allclose(np.sum((lam / scale) ** p).real, ref, atol=tolerance(m) * 10 * d.shape[0])


@SETTINGS
@given(st.data())
def test_transpose_of_product_law(data) -> None:
    x, y, z = _space(data, "x"), _space(data, "y"), _space(data, "z")
    a, da = _tree(data, z, y)
    b, db = _tree(data, x, z)
    lhs = (a @ b).T
    rhs = b.T @ a.T
    tol = 1e-10 * (1 + np.linalg.norm(da) * np.linalg.norm(db))
    np.testing.assert_allclose(lhs.to_dense(), rhs.to_dense(), atol=tol)
    np.testing.assert_allclose(lhs.to_dense(), db.T @ da.T, atol=tol)


@SETTINGS
@given(st.data())
def test_mixed_product_law(data) -> None:
    p, q, r, s, t, u = (_space(data, n) for n in "pqrstu")
    a, da = _tree(data, q, p, 2)
    c, dc = _tree(data, r, q, 2)
    b, db = _tree(data, t, s, 2)
    d, dd = _tree(data, u, t, 2)
    lhs = ca.kron(a, b) @ ca.kron(c, d)
    rhs = ca.kron(a @ c, b @ d)
    ref = np.kron(da @ dc, db @ dd)
    tol = 1e-10 * (1 + np.abs(ref).max())
    np.testing.assert_allclose(lhs.to_dense(), ref, atol=tol)
    np.testing.assert_allclose(rhs.to_dense(), ref, atol=tol)
    ref_s = np.linalg.svd(ref, compute_uv=False)  # the two trees may differ in rank_bound
    for side in (lhs, rhs):
        s = side.singular_values()
        np.testing.assert_allclose(s, ref_s[: len(s)], atol=tol)
        np.testing.assert_allclose(ref_s[len(s) :], 0, atol=tol)
    np.testing.assert_allclose(lhs.norm(), np.linalg.norm(ref), atol=tol)


@SETTINGS
@given(st.data())
def test_distributivity_and_associativity(data) -> None:
    w, x, y, z = (_space(data, n) for n in "wxyz")
    a, da = _tree(data, y, z)
    b, db = _tree(data, x, y)
    b2, db2 = _tree(data, x, y)
    c, dc = _tree(data, w, x)
    tol = 1e-9 * (1 + np.abs(da).max() * (np.abs(db).max() + np.abs(db2).max()) * (1 + np.abs(dc).max())) * 10
    np.testing.assert_allclose((a @ (b + b2)).to_dense(), (a @ b + a @ b2).to_dense(), atol=tol)
    np.testing.assert_allclose((a @ (b + b2)).to_dense(), da @ (db + db2), atol=tol)
    np.testing.assert_allclose(((a @ b) @ c).to_dense(), (a @ (b @ c)).to_dense(), atol=tol)
    np.testing.assert_allclose((a @ (b + b2) @ c).norm(), np.linalg.norm(da @ (db + db2) @ dc), atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_is_kept_and_float64_is_default(dtype) -> None:
    rng = np.random.default_rng(0)
    v, r = ca.Space("v", 20), ca.Space("r", 4)
    E = ca.Dense(rng.standard_normal((4, 20)).astype(dtype), v, r, "E")
    U = ca.Dense(rng.standard_normal((20, 4)).astype(dtype), r, v, "U")
    m = U @ E
    assert m.dtype == dtype
    assert m.singular_values().dtype == dtype
    assert m.to_dense().dtype == dtype
    assert m.matvec(np.ones(20, dtype=dtype)).dtype == dtype
    assert m.eigenvalues().dtype == (np.complex64 if dtype == np.float32 else np.complex128)
