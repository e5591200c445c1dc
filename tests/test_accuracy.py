"""The stated error bounds hold, and precision warnings fire exactly where precision is lost.

The references are independent: numpy/scipy on the float64 dense matrix of the stored
(possibly float32) values, or exact integer arithmetic.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import circuitalg as ca
from circuitalg.linalg.accuracy import eigen_noise_floor, gram_penalty, magnitude, warn_rtol
from circuitalg.linalg.factors import gram_factor, leaf_factor_method
from circuitalg.linalg.plan import plan
from circuitalg.testing import random_tree

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPS64 = np.finfo(np.float64).eps


def _tree(data):
    dims = [data.draw(st.integers(1, 6), label=n) for n in ("n", "m")]
    dom, cod = ca.Space("x", dims[1]), ca.Space("y", dims[0])
    if data.draw(st.booleans(), label="square"):
        cod = dom
    dtype = data.draw(st.sampled_from([np.float64, np.float32]), label="dtype")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    draw = lambda what, lo, hi: data.draw(st.integers(lo, hi), label=what)  # noqa: E731
    return random_tree(draw, np.random.default_rng(seed), dom, cod, 3, dtype)


def _quiet(fn, *args):
    """Call ``fn`` and return (result, list of PrecisionWarnings raised)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", ca.PrecisionWarning)
        out = fn(*args)
    return out, [w for w in rec if issubclass(w.category, ca.PrecisionWarning)]


@SETTINGS
@given(st.data())
def test_singular_values_norm_and_trace_are_within_the_stated_bound(data) -> None:
    m, d = _tree(data)
    acc = ca.accuracy(m)
    assert magnitude(m) >= np.linalg.norm(d, 2) * (1 - 1e-12)
    ref = np.linalg.svd(d, compute_uv=False)
    ref_err = 8 * EPS64 * max(d.shape) * ref[0]  # the float64 reference's own rounding
    s, _ = _quiet(ca.singular_values, m)
    np.testing.assert_array_less(np.abs(s - ref[: len(s)]), acc + ref_err + 1e-300)
    np.testing.assert_array_less(ref[len(s) :], acc + ref_err + 1e-300)
    (_, S, _), _ = _quiet(ca.svd, m)
    np.testing.assert_array_less(np.abs(S - ref[: len(S)]), acc + ref_err + 1e-300)
    r = max(m.rank_bound, 1)
    nrm, _ = _quiet(ca.norm, m)
    assert abs(nrm - np.linalg.norm(d)) <= np.sqrt(r) * acc + ref_err * np.sqrt(r) + 1e-300
    if m.is_square:
        assert abs(ca.trace(m) - np.trace(d)) <= r * acc + ref_err * r + 1e-300


@SETTINGS
@given(st.data())
def test_eigenvalues_without_a_warning_are_within_the_warning_threshold(data) -> None:
    m, d = _tree(data)
    if not m.is_square:
        return
    lam, warned = _quiet(ca.eigenvalues, m)
    if warned or not len(lam):
        return
    ref = np.linalg.eigvals(d)
    scale = abs(lam[0])
    tol = 4 * warn_rtol(m.dtype) * scale + 1e-300
    for v in lam[np.abs(lam) > eigen_noise_floor(m)]:
        assert np.min(np.abs(ref - v)) <= tol, (v, ref, tol)


def _exact_cancelling_product(scale: float):
    """A @ B with ‖A‖‖B‖ ~ scale but A @ B small, all in exactly representable integers."""
    rng = np.random.default_rng(0)
    x = rng.integers(-9, 10, 40).astype(float) * scale
    delta = rng.integers(-3, 4, 40).astype(float)
    y = rng.integers(-5, 6, 30).astype(float)
    A = np.stack([x, x + delta], axis=1)  # 40 x 2
    B = np.stack([y, -y], axis=0)  # 2 x 30
    exact = A @ B  # = -delta y^T, exact in float64 (integers below 2**53)
    np.testing.assert_array_equal(exact, -np.outer(delta, y))
    s, r, t = ca.Space("s", 30), ca.Space("r", 2), ca.Space("t", 40)
    return ca.Dense(A, r, t, "A") @ ca.Dense(B, s, r, "B"), exact


def test_cancelling_factors_warn_and_stay_within_the_bound() -> None:
    m, exact = _exact_cancelling_product(1e10)
    with pytest.warns(ca.PrecisionWarning, match=r"singular_values of A\*B \(40, 30\) may be inaccurate"):
        s = m.singular_values()
    ref = np.linalg.svd(exact, compute_uv=False)
    assert abs(s[0] - ref[0]) <= ca.accuracy(m)
    assert ca.accuracy(m) > warn_rtol(np.float64) * ref[0]
    with pytest.warns(ca.PrecisionWarning, match="norm of A"):
        m.norm()


def test_precision_warnings_point_at_the_callers_line() -> None:
    """Whichever way a result is asked for (a method, the free function, eigenvalues_many, the
    norm), its PrecisionWarning names this file and the calling line, not circuitalg's internals."""
    m, _ = _exact_cancelling_product(1e10)
    x = ca.Space("x", 2)
    sq = ca.Dense(np.array([[1.0, 1.0], [0.0, 1.0]]), x, x, "J")  # defective: its eigenvalues warn
    calls = {
        "method": lambda: m.singular_values(),
        "function": lambda: ca.singular_values(m),
        "norm": lambda: m.norm(),
        "eig method": lambda: sq.eigenvalues(),
        "eig function": lambda: ca.eigenvalues(sq),
        "eig many": lambda: ca.eigenvalues_many([sq, sq]),
    }
    for name, call in calls.items():
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always", ca.PrecisionWarning)
            line = call.__code__.co_firstlineno
            call()
        got = [(w.filename, w.lineno) for w in rec if issubclass(w.category, ca.PrecisionWarning)]
        assert got, name
        assert all(f == __file__ and n == line for f, n in got), (name, got)


def test_mild_factors_do_not_warn() -> None:
    m, exact = _exact_cancelling_product(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ca.PrecisionWarning)
        s = m.singular_values()
        m.norm()
        m.svd()
    ref = np.linalg.svd(exact, compute_uv=False)[:2]  # rank 1: the second value is 0
    np.testing.assert_allclose(s, ref, rtol=0, atol=ca.accuracy(m))
    assert ca.accuracy(m) < 1e-11 * ref[0]


def test_realistic_ov_circuit_is_accurate_and_silent() -> None:
    rng = np.random.default_rng(1)
    v, r, h = ca.Space("vocab", 2000), ca.Space("resid", 64), ca.Space("head", 8)
    W_E = ca.Dense(rng.standard_normal((64, 2000)) / 8, v, r, "W_E")
    W_U = ca.Dense(rng.standard_normal((2000, 64)) / 8, r, v, "W_U")
    W_V = ca.Dense(rng.standard_normal((8, 64)) / 8, r, h, "W_V")
    W_O = ca.Dense(rng.standard_normal((64, 8)) / 8, h, r, "W_O")
    m = W_U @ W_O @ W_V @ W_E
    d = W_U.array @ W_O.array @ W_V.array @ W_E.array
    with warnings.catch_warnings():
        warnings.simplefilter("error", ca.PrecisionWarning)
        s, lam, nrm = m.singular_values(), m.eigenvalues(), m.norm()
    ref = np.linalg.svd(d, compute_uv=False)[:8]
    assert np.max(np.abs(s - ref)) <= ca.accuracy(m)
    assert ca.accuracy(m) < 1e-10 * ref[0]  # the bound is not vacuous
    assert abs(nrm - np.linalg.norm(d)) <= np.sqrt(8) * ca.accuracy(m)
    ref_lam = np.linalg.eigvals(d)
    ref_lam = ref_lam[np.argsort(-np.abs(ref_lam))][:8]
    np.testing.assert_allclose(np.sort_complex(lam), np.sort_complex(ref_lam), atol=1e-9 * abs(ref_lam[0]))


def test_defective_eigenvalues_warn_and_normal_ones_do_not() -> None:
    x = ca.Space("x", 2)
    jordan = ca.Dense(np.array([[1.0, 1.0], [0.0, 1.0]]), x, x, "J")
    with pytest.warns(ca.PrecisionWarning, match=r"eigenvalues of J \(2, 2\)"):
        jordan.eigenvalues()
    nearly = ca.Dense(np.array([[1.0, 1e4], [0.0, 1.0 + 1e-6]]), x, x, "N")  # κ ~ 1e10
    with pytest.warns(ca.PrecisionWarning, match="eigenvalues of N"):
        nearly.eigenvalues()
    sym = ca.Dense(np.array([[2.0, 1.0], [1.0, 3.0]]), x, x, "S")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ca.PrecisionWarning)
        np.testing.assert_allclose(np.sort(sym.eigenvalues().real), np.linalg.eigvalsh(sym.array))


def test_sum_norm_by_gram_traces_warns_when_terms_cancel() -> None:
    rng = np.random.default_rng(2)
    big, r = ca.Space("big", 3000), ca.Space("r", 2)
    a, b = rng.standard_normal((3000, 2)), rng.standard_normal((2, 3000))
    A1, B1 = ca.Dense(a, r, big, "A1"), ca.Dense(b, big, r, "B1")
    A2, B2 = ca.Dense(a.copy(), r, big, "A2"), ca.Dense(b.copy(), big, r, "B2")
    m = A1 @ B1 - A2 @ B2  # exactly zero, but not recognisably so
    assert plan(m, "norm").method not in ("dense", "chain")
    with pytest.warns(ca.PrecisionWarning, match="norm of"):
        value = m.norm()
    assert value <= np.sqrt(4 * 2 * 2 * EPS64) * 2 * np.linalg.norm(a) * np.linalg.norm(b)
    far = A1 @ B1 + 0.5 * (A2 @ B2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ca.PrecisionWarning)
        np.testing.assert_allclose(far.norm(), 1.5 * np.linalg.norm(a @ b), rtol=1e-10)


def test_leaf_gram_factors_are_accumulated_in_float64() -> None:
    """A float32 leaf's Gram matrix is accumulated in float64, so its Cholesky factor is as exact as
    float64 QR of the same numbers (singular values to 1e-12 relative, then stored in float32:
    to float32's resolution); an ill-conditioned leaf (cond > GRAM_COND_LIMIT) is factored by QR."""
    from circuitalg.linalg.factors import GRAM_COND_LIMIT

    rng = np.random.default_rng(3)
    v, r = ca.Space("v", 30000), ca.Space("r", 6)
    for dtype in (np.float32, np.float64):
        data = rng.standard_normal((6, 30000)).astype(dtype)
        E = ca.Dense(data, v, r, "E")
        got = (E.T @ E).singular_values()
        assert leaf_factor_method(E, "rows") == "gram-cholesky"
        ref = np.linalg.svd(data.astype(np.float64), compute_uv=False) ** 2
        np.testing.assert_allclose(got, ref, rtol=1e-12 if dtype == np.float64 else 2e-6)
    bad = rng.standard_normal((6, 300)) * np.array([1.0, 1, 1, 1, 1, 1e-2 / GRAM_COND_LIMIT])[:, None]
    E = ca.Dense(bad.astype(np.float32), ca.Space("v", 300), r, "E")
    (E.T @ E).singular_values()
    assert leaf_factor_method(E, "rows") == "qr"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_norm_bound_is_an_upper_bound_within_a_few_percent(dtype) -> None:
    """The leaf norm used by the error bounds when no factor is cached (the Gram matrix formed in
    the leaf's dtype, rounding bounded a priori) is never below the float64 SVD's largest singular
    value, and at most 10% above it: Gaussian, rank-one-dominated (a large common offset, as in
    real embeddings) and widely scaled columns, tall and wide leaves, blocks smaller than the leaf."""
    from circuitalg.linalg.accuracy import gram_norm2_bound

    rng = np.random.default_rng(11)
    cases = {
        "gaussian": rng.standard_normal((9000, 96)) / np.sqrt(96),
        "offset": 3.0 + 0.01 * rng.standard_normal((9000, 96)),
        "scaled": rng.standard_normal((9000, 96)) * np.logspace(-6, 3, 96),
    }
    for name, a in cases.items():
        a = a.astype(dtype)
        exact = np.linalg.svd(a.astype(np.float64), compute_uv=False)[0]
        for rows in (1000, 4096, 20000):
            got = gram_norm2_bound(a, rows=rows)
            assert exact <= got <= 1.1 * exact, (name, rows, got / exact)
        leaf = ca.Dense(a.T.copy(), ca.Space("v", 9000), ca.Space("r", 96), "E")  # wide: its rows side
        assert exact <= magnitude(leaf) <= 1.1 * exact, name
        # a float32 leaf's norm alone factors nothing; a float64 leaf's Gram is the factor's anyway
        assert (leaf_factor_method(leaf, "rows") is None) == (dtype == np.float32)
    huge = (rng.standard_normal((9000, 8)) * 1e21).astype(dtype)  # a float32 Gram matrix overflows
    leaf = ca.Dense(huge, ca.Space("r", 8), ca.Space("v", 9000), "H")
    np.testing.assert_allclose(magnitude(leaf), np.linalg.svd(huge.astype(np.float64), compute_uv=False)[0], rtol=0.05)


def _spectra(d: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Symmetric PSD test matrices: a Wishart (clustered top), one dominant direction (real
    embeddings' common offset), an exact null vector (a centred leaf), a repeated top, rank one, zero."""
    X = rng.standard_normal((4 * d, d))
    C = X - X.mean(axis=1, keepdims=True)
    Y = X + 3 * rng.standard_normal(d)
    v = rng.standard_normal(d)
    return {
        "wishart": X.T @ X,
        "offset": Y.T @ Y,
        "centred": C.T @ C,
        "repeated": np.diag(np.r_[np.full(5, 7.0), rng.uniform(0, 6, d - 5)]),
        "rank-one": np.outer(v, v),
        "zero": np.zeros((d, d)),
    }


@pytest.mark.parametrize("d", [64, 300])
def test_top_eigenvalue_bound_is_certified_and_tight(d: int) -> None:
    """The bound on the largest eigenvalue that leaf norms use is never below LAPACK's float64
    value (beyond its own rounding) and at most 2 LANCZOS_RTOL above it; at d >= 256 it comes from
    the Cholesky certificate (not the fallback) on every nonzero case."""
    from circuitalg.linalg.accuracy import LANCZOS_RTOL, _certified_top_eigenvalue, top_eigenvalue_bound

    for name, G in _spectra(d, np.random.default_rng(21)).items():
        lam = np.linalg.eigvalsh(G)[-1]
        got = top_eigenvalue_bound(G)
        assert lam - 8 * d * EPS64 * abs(lam) <= got <= lam * (1 + 2 * LANCZOS_RTOL) + 1e-300, name
        if d >= 256 and name != "zero":
            assert _certified_top_eigenvalue(G) == got, name


def test_top_eigenvalue_certificate_rejects_an_estimate_below_the_top(monkeypatch) -> None:
    """Negative control: a Lanczos estimate 1% low (raised by only 0.2%) must fail the Cholesky
    certificate; the bound then falls back to LAPACK's largest eigenvalue, still an upper bound."""
    import scipy.sparse.linalg as spla

    from circuitalg.linalg.accuracy import _certified_top_eigenvalue, top_eigenvalue_bound

    G = _spectra(300, np.random.default_rng(22))["wishart"]
    lam = np.linalg.eigvalsh(G)[-1]
    monkeypatch.setattr(spla, "eigsh", lambda *a, **k: np.array([0.99 * lam]))
    assert _certified_top_eigenvalue(G) is None
    np.testing.assert_allclose(top_eigenvalue_bound(G), lam, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_blocks_split_between_threads_is_within_its_bound(dtype) -> None:
    """A Gram matrix large enough to be split between threads (n d² above SMALL_LAPACK_WORK) is
    within its stated err2 of the float64 product, and equals the serial loop to float64 rounding."""
    from circuitalg.linalg.factors import gram_blocks
    from circuitalg.runtime import SMALL_LAPACK_WORK

    rng = np.random.default_rng(23)
    M = (rng.standard_normal((20000, 64)) + 0.5).astype(dtype)
    assert M.shape[0] * 64 * 64 > SMALL_LAPACK_WORK
    exact = M.astype(np.float64).T @ M.astype(np.float64)
    for rows in (1000, 4096):
        g = gram_blocks(M, rows)
        assert np.linalg.norm(g.G - exact, 2) <= g.err2
        assert np.array_equal(g.G, g.G.T)
        serial = sum((M[s:s + rows].T @ M[s:s + rows]).astype(np.float64) for s in range(0, len(M), rows))
        np.testing.assert_allclose(g.G, serial, rtol=1e-12 if dtype == np.float32 else 1e-10)


def test_accuracy_counts_the_gram_factor_in_either_order() -> None:
    """An eigenvalue call needs no factor, a singular-value call factors the leaf through its Gram
    matrix: the factor's condition number enters the bound whichever came first, so accuracy() is
    the same in either order (to the last bit), and the penalty is about the condition number."""
    rng = np.random.default_rng(12)
    q, _ = np.linalg.qr(rng.standard_normal((3000, 8)))
    data = (q * np.logspace(0, -2.5, 8)) @ np.linalg.qr(rng.standard_normal((8, 8)))[0]  # cond ~316
    middle = rng.standard_normal((8, 8))

    def fresh():  # new leaves: nothing computed about them yet
        v, r = ca.Space("v", 3000), ca.Space("r", 8)
        U = ca.Dense(data, r, v, "U")
        return U @ ca.Dense(middle, r, r, "M") @ U.T

    first_eig = fresh()
    _quiet(first_eig.eigenvalues)
    _quiet(first_eig.singular_values)
    first_sv = fresh()
    _quiet(first_sv.singular_values)
    assert leaf_factor_method(first_sv.factors[0], "cols") == "gram-cholesky"
    assert ca.accuracy(first_eig) == ca.accuracy(first_sv)
    assert ca.accuracy(fresh()) == ca.accuracy(first_sv)  # nothing computed before: the same
    assert 250 < gram_penalty(first_sv) < 400  # cond ~316: large


def test_centred_leaves_are_factored_from_their_gram_matrix_with_the_ones_direction_deflated() -> None:
    """fold_layer_norm centres every reader (rows sum to zero), so its Gram matrix is singular along
    the all-ones vector; the factor deflates that direction instead of falling back to QR: same
    singular values as QR of the same leaf, and the ones direction maps to zero."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((3000, 40))
    A -= A.mean(axis=1, keepdims=True)  # a centred reader (W_in after folding a layer norm)
    W = ca.Dense(A, ca.Space("resid", 40), ca.Space("mlp", 3000), "W_in")
    R = gram_factor(W, "cols")
    assert leaf_factor_method(W, "cols") == "gram-cholesky-centred"
    np.testing.assert_allclose(R.T @ R, A.T @ A, atol=1e-11 * np.abs(A.T @ A).max())
    np.testing.assert_allclose(np.linalg.svd(R, compute_uv=False)[:-1], np.linalg.svd(A, compute_uv=False)[:-1],
                               rtol=1e-12)
    assert np.abs(R @ np.ones(40)).max() < 1e-13 * np.abs(R).max()
    B = ca.Dense(rng.standard_normal((3000, 40)) @ np.diag([1.0] * 39 + [0.0]), ca.Space("resid", 40),
                 ca.Space("mlp", 3000), "B")  # singular along another direction: QR
    gram_factor(B, "cols")
    assert leaf_factor_method(B, "cols") == "qr"


def test_accuracy_rejects_non_maps() -> None:
    with pytest.raises(ca.InvalidArgumentError, match=r"^accuracy takes a ca.LinearMap, got ndarray; wrap arrays as ca.Dense\(array, domain=..., codomain=...\).$"):
        ca.accuracy(np.eye(2))


def test_exact_structural_zeros_do_not_warn() -> None:
    """A virtual weight between orthogonal subspaces is exactly zero: 0.0 is exact, no warning."""
    rng = np.random.default_rng(4)
    resid, head, vocab = ca.Space("resid", 12), ca.Space("head", 3), ca.Space("vocab", 40)
    W_O = np.zeros((12, 3))
    W_O[:6] = rng.standard_normal((6, 3))  # writes into the first half of the stream
    W_Q = np.zeros((3, 12))
    W_Q[:, 6:] = rng.standard_normal((3, 6))  # reads only the second half
    O, Q = ca.Dense(W_O, head, resid, "W_O"), ca.Dense(W_Q, resid, head, "W_Q")
    E = ca.Dense(rng.standard_normal((12, 40)), vocab, resid, "W_E")
    V = ca.Dense(rng.standard_normal((3, 12)), resid, head, "W_V")
    zero = E.T @ Q.T @ Q @ O @ V @ E  # vocab x vocab, exactly zero
    with warnings.catch_warnings():
        warnings.simplefilter("error", ca.PrecisionWarning)
        for _ in range(3):
            assert zero.norm() == 0.0
            assert np.all(zero.singular_values() == 0.0)
            assert np.all(ca.svd(zero)[1] == 0.0)
            assert np.all(zero.eigenvalues() == 0.0)
    assert ca.accuracy(zero) > 0  # the absolute bound still stands


@pytest.mark.parametrize("case", ["well", "ill", "rank-deficient"])
def test_tall_qr_is_orthogonal_and_reconstructs(case: str) -> None:
    """The thin QR of tall factors (CholeskyQR2 when well conditioned, Householder otherwise):
    orthonormal columns and A = Q R to float64 rounding, whatever the conditioning."""
    from circuitalg.linalg.svd import _tall_qr

    rng = np.random.default_rng(4)
    A = rng.standard_normal((3000, 24))
    if case == "ill":
        A = A @ np.diag(np.logspace(0, -9, 24))
    elif case == "rank-deficient":
        A[:, 5] = A[:, 3] * 2.0
    Q, R = _tall_qr(A)
    assert Q.shape == (3000, 24) and R.shape == (24, 24)
    np.testing.assert_allclose(Q.T @ Q, np.eye(24), atol=1e-13)
    np.testing.assert_allclose(Q @ R, A, atol=1e-13 * np.abs(A).max())
    np.testing.assert_allclose(np.abs(np.diag(R)), np.abs(np.diag(np.linalg.qr(A)[1])), rtol=1e-8,
                               atol=1e-12 * np.abs(A).max())
