"""Every user error raises a circuitalg exception; the messages are pinned here."""

import re

import numpy as np
import pytest

import circuitalg as ca


@pytest.fixture()
def spaces():
    return ca.Space("vocab", 50), ca.Space("resid", 8), ca.Space("L0H0", 2)


def test_space_mismatch_names_both_spaces_and_suggests_transpose(spaces) -> None:
    vocab, resid, head = spaces
    W_E = ca.Dense(np.ones((8, 50)), vocab, resid, "W_E")
    W_V = ca.Dense(np.ones((2, 8)), resid, head, "W_V")
    with pytest.raises(ca.SpaceMismatchError) as err:
        W_E @ W_V
    assert str(err.value) == (
        "cannot compose W_E @ W_V: W_E reads from vocab[50] but W_V writes to L0H0[2]. "
        "Check the order of the factors (g @ f means g after f)."
    )
    assert isinstance(err.value, ValueError) and isinstance(err.value, ca.CircuitAlgError)
    W_U = ca.Dense(np.ones((50, 8)), resid, vocab, "W_U")
    with pytest.raises(ca.SpaceMismatchError, match=re.escape("Did you mean to transpose the right-hand map (right.T)?")):
        W_U @ W_U


def test_space_mismatch_same_dim_different_names() -> None:
    a, b = ca.Space("resid", 4), ca.Space("resid_copy", 4)
    A = ca.Dense(np.eye(4), a, a, "A")
    B = ca.Dense(np.eye(4), b, b, "B")
    with pytest.raises(ca.SpaceMismatchError, match="The dimensions agree but the names differ"):
        A @ B


def test_sum_mismatch(spaces) -> None:
    vocab, resid, head = spaces
    A = ca.Dense(np.ones((8, 50)), vocab, resid, "A")
    B = ca.Dense(np.ones((2, 8)), resid, head, "B")
    with pytest.raises(ca.SpaceMismatchError) as err:
        A + B
    assert str(err.value) == (
        "cannot add A + B: A maps vocab[50] -> resid[8] but B maps resid[8] -> L0H0[2]. "
        "Terms of a sum must share domain and codomain."
    )


def test_non_2d_array(spaces) -> None:
    vocab, resid, _ = spaces
    with pytest.raises(ca.InvalidArrayError) as err:
        ca.Dense(np.ones((3, 8, 50)), vocab, resid, "W_E")
    assert str(err.value) == (
        "Dense 'W_E': expected a 2-D array, got 3-D with shape (3, 8, 50). "
        "Stack per-head weights into separate maps, one per head."
    )


def test_wrong_shape_suggests_transpose(spaces) -> None:
    vocab, resid, _ = spaces
    with pytest.raises(ca.ShapeError) as err:
        ca.Dense(np.ones((50, 8)), vocab, resid, "W_E")
    assert str(err.value) == (
        "Dense 'W_E': array shape (50, 8) does not match (codomain.dim, domain.dim) = (8, 50) for "
        "vocab[50] -> resid[8]. The array looks transposed: if it is a row-vector weight (x @ W), "
        "pass array.T."
    )


def test_nan_and_inf(spaces) -> None:
    vocab, resid, _ = spaces
    a = np.ones((8, 50))
    a[2, 5] = np.nan
    a[3, 1] = np.inf
    with pytest.raises(ca.NonFiniteError) as err:
        ca.Dense(a, vocab, resid, "W_E")
    assert str(err.value) == (
        "Dense 'W_E': contains 1 NaN and 1 infinite entries (first at index (2, 5)); "
        "fix or clean the weights before analysing them."
    )
    with pytest.raises(ca.NonFiniteError, match="the scalar must be finite"):
        ca.Dense(np.ones((8, 50)), vocab, resid) * float("nan")


def test_wrong_dtypes(spaces) -> None:
    vocab, resid, _ = spaces
    with pytest.raises(ca.DTypeError) as err:
        ca.Dense(np.ones((8, 50), dtype=complex), vocab, resid, "W_E")
    assert str(err.value) == (
        "Dense 'W_E': dtype complex128 is not supported; circuitalg analyses real float32/float64 "
        "weights. Convert with array.astype(numpy.float64) (take .real if the imaginary part is zero)."
    )
    assert isinstance(err.value, TypeError)
    with pytest.raises(ca.DTypeError, match="dtype <U1 is not supported"):
        ca.Dense(np.full((8, 50), "a"), vocab, resid, "W_E")
    with pytest.raises(ca.DTypeError, match="cannot scale a map by str"):
        ca.Dense(np.ones((8, 50)), vocab, resid) * "2"
    # integers are accepted and become float64; float32 is kept
    assert ca.Dense(np.ones((8, 50), dtype=int), vocab, resid).dtype == np.float64
    assert ca.Dense(np.ones((8, 50), dtype=np.float32), vocab, resid).dtype == np.float32


def test_to_dense_over_budget_gives_size_in_gb() -> None:
    vocab, resid = ca.Space("vocab", 50257), ca.Space("resid", 4)
    rng = np.random.default_rng(0)
    W_E = ca.Dense(rng.standard_normal((4, 50257)), vocab, resid, "W_E")
    W_U = ca.Dense(rng.standard_normal((50257, 4)), resid, vocab, "W_U")
    with pytest.raises(ca.TooLargeError) as err:
        (W_U @ W_E).to_dense()
    assert str(err.value) == (
        "to_dense of W_U*W_E needs a dense 50257 x 50257 float64 array of 20.2 GB, above the budget "
        "of 1.07 GB. Use the factored routines (singular_values, norm, eigenvalues, trace, matvec), "
        "which never build it, or pass a larger max_bytes if you really want the dense matrix."
    )
    with pytest.raises(ca.TooLargeError, match=r"of 0.00161 GB, above the budget of 0.001 GB"):
        W_E.to_dense(max_bytes=10**6)
    assert isinstance(err.value, MemoryError)


def test_space_validation() -> None:
    with pytest.raises(ca.InvalidArgumentError, match="dim must be a positive integer, got 0"):
        ca.Space("resid", 0)
    with pytest.raises(ca.InvalidArgumentError, match="non-empty string"):
        ca.Space("", 3)
    assert ca.Space("resid", np.int64(3)).dim == 3


def test_matvec_shape_and_square_requirements(spaces) -> None:
    vocab, resid, _ = spaces
    W_E = ca.Dense(np.ones((8, 50)), vocab, resid, "W_E")
    with pytest.raises(ca.ShapeError) as err:
        W_E.matvec(np.ones(8))
    assert str(err.value) == (
        "matvec of W_E: input has 8 rows but the map's domain is vocab[50]; expected shape (50,) or (50, k)."
    )
    with pytest.raises(ca.ShapeError, match=r"eigenvalues needs a square map, but W_E maps vocab\[50\] -> resid\[8\]"):
        W_E.eigenvalues()
    with pytest.raises(ca.InvalidArgumentError, match=r"k=9 exceeds min\(shape\)=8"):
        W_E.singular_values(k=9)
    with pytest.raises(ca.InvalidArgumentError, match="map @ ndarray is ambiguous"):
        W_E @ np.ones(50)


def test_no_structure_and_too_large_asks_for_k() -> None:
    tall, thin = ca.Space("tall", 100_000), ca.Space("thin", 90)
    rng = np.random.default_rng(0)
    decay = 0.8 ** np.arange(90)  # separated singular values: ARPACK converges fast
    A = ca.Dense(rng.standard_normal((100_000, 90)) * decay, thin, tall, "A")
    B = ca.Dense(rng.standard_normal((100_000, 90)) * decay, thin, tall, "B")
    s = A + B  # 72 MB dense: above the small-dense threshold, no common factor
    with pytest.raises(ca.TooLargeError, match="pass k to compute the top k with scipy.sparse.linalg.svds"):
        s.singular_values()
    assert ca.plan(s).method == "iterative"
    top = s.singular_values(k=2)
    ref = np.linalg.svd(A.array + B.array, compute_uv=False)[:2]
    np.testing.assert_allclose(top, ref, rtol=1e-8)
    # the Frobenius norm still works, from Gram traces of the terms
    np.testing.assert_allclose(s.norm(), np.linalg.norm(A.array + B.array), rtol=1e-12)
