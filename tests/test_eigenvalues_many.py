"""Batched eigenvalues: ``eigenvalues_many`` against the one-by-one loop (values, order, warnings)
and dense numpy, and the batched helpers it uses against their one-by-one counterparts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import circuitalg as ca
from circuitalg.linalg import factors
from circuitalg.linalg.accuracy import (
    eigen_conditions,
    eigen_conditions_many,
    magnitude,
    leaf_magnitudes,
)
from circuitalg.testing import match_spectra

V, D, H = 3000, 32, 6


def _heads(dtype=np.float64, tied: bool = False, seed: int = 0, n_heads: int = H):
    rng = np.random.default_rng(seed)
    vocab, resid = ca.Space("vocab", V), ca.Space("resid", D)
    E = rng.standard_normal((V, D)).T.astype(dtype) / np.sqrt(D)
    if tied:
        U = E.T * (1 + 0.1 * rng.standard_normal(D)).astype(dtype)
        U = U - U.mean(axis=1, keepdims=True)
    else:
        U = (rng.standard_normal((V, D)) / np.sqrt(D)).astype(dtype)
    W_E, W_U = ca.Dense(E, vocab, resid, "W_E"), ca.Dense(U, resid, vocab, "W_U")
    if tied:
        W_U = ca.declare_tied(W_U, W_E)
    maps = []
    for h in range(n_heads):
        hs = ca.Space(f"h{h}", 8)
        W_V = ca.Dense((rng.standard_normal((8, D)) / np.sqrt(D)).astype(dtype), resid, hs, f"W_V{h}")
        W_O = ca.Dense((rng.standard_normal((D, 8)) / np.sqrt(D)).astype(dtype), hs, resid, f"W_O{h}")
        maps.append(W_U @ W_O @ W_V @ W_E)
    return maps


def _same(a: np.ndarray, b: np.ndarray, rtol: float) -> None:
    x, y = match_spectra(a.astype(complex), b.astype(complex))[:2]
    assert np.max(np.abs(x - y)) <= rtol * max(np.abs(b).max(), 1e-300)


@pytest.mark.parametrize("tied", [False, True])
def test_matches_the_loop_and_dense_numpy(tied) -> None:
    loop = [m.eigenvalues() for m in _heads(tied=tied)]
    many = ca.eigenvalues_many(_heads(tied=tied))  # fresh leaves: nothing cached from the loop
    assert len(many) == len(loop)
    for m, a, b in zip(_heads(tied=tied), many, loop):
        assert a.dtype == b.dtype == np.complex128 and a.shape == b.shape
        np.testing.assert_array_equal(np.abs(a), np.sort(np.abs(a))[::-1])  # descending magnitude
        _same(a, b, 1e-12)
        F = m.factors
        core = F[2].array @ F[3].array @ F[0].array @ F[1].array
        _same(a[:8], np.linalg.eigvals(core), 1e-10)


def test_mixed_maps_keep_their_order_and_routes() -> None:
    """Maps of other shapes (a Kronecker product, a small dense map, heads of two models, k) are
    computed as eigenvalues computes them, in the order given."""
    a, b = ca.Space("a", 3), ca.Space("b", 2)
    rng = np.random.default_rng(1)
    K = ca.Kron([ca.Dense(rng.standard_normal((3, 3)), a, a, "A"), ca.Dense(rng.standard_normal((2, 2)), b, b, "B")])
    small = ca.Dense(rng.standard_normal((3, 3)), a, a, "S")
    one, two = _heads(seed=2, n_heads=3), _heads(seed=3, n_heads=2)
    maps = [one[0], K, two[0], small, one[1], two[1], one[2]]
    for k in (None, 3):
        many = ca.eigenvalues_many(maps, k)
        for m, got in zip(maps, many):
            _same(got, m.eigenvalues(k), 1e-12)
            assert len(got) == len(m.eigenvalues(k))
    assert ca.eigenvalues_many([]) == []


def test_structural_zeros_stay_exactly_zero() -> None:
    maps = _heads()
    m = maps[2]
    W_O0 = ca.Dense(np.zeros((D, 8)), m.factors[1].domain, m.factors[1].codomain, "W_O0")
    maps[2] = m.factors[0] @ W_O0 @ m.factors[2] @ m.factors[3]
    out = ca.eigenvalues_many(maps)
    assert not np.any(out[2])
    assert np.all(np.abs(out[1][:8]) > 0)


def test_warnings_are_the_loops() -> None:
    """float32 tied heads warn (a-priori bound above u^(1/3)); the batch warns for the same maps
    with the same messages."""
    def caught(fn):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always", ca.PrecisionWarning)
            fn()
        return sorted(str(x.message).split(" may be")[0] for x in w if issubclass(x.category, ca.PrecisionWarning))

    loop = caught(lambda: [m.eigenvalues() for m in _heads(np.float32, tied=True)])
    many = caught(lambda: ca.eigenvalues_many(_heads(np.float32, tied=True)))
    assert loop == many
    assert caught(lambda: ca.eigenvalues_many(_heads(np.float64))) == []  # float64: no warning


def test_batches_in_pieces_when_the_shared_product_is_large(monkeypatch) -> None:
    """The shared product ``(W_E W_U) [W_O ...]`` is formed at most BATCH_BYTES at a time: pieces
    of one and of two heads (the last one shorter) give the whole batch's results."""
    whole = ca.eigenvalues_many(_heads(seed=4, n_heads=5))
    for per_piece in (1, 2):
        monkeypatch.setattr(factors, "BATCH_BYTES", D * 8 * 8 * per_piece)
        for a, b in zip(ca.eigenvalues_many(_heads(seed=4, n_heads=5)), whole):
            _same(a, b, 1e-12)


def test_leaf_magnitudes_equal_magnitude_one_by_one() -> None:
    rng = np.random.default_rng(5)
    r, h = ca.Space("r", 96), ca.Space("h", 16)
    arrays = [(rng.standard_normal((16, 96)) * s).astype(np.float32) for s in (1.0, 3.0, 1e-3)]
    arrays.append(rng.standard_normal((96, 16)).astype(np.float32))  # the other orientation
    arrays.append(rng.standard_normal((16, 96)))  # float64: the factor route, one by one
    def leaves():
        return [ca.Dense(a, r, h, f"A{i}") if a.shape == (16, 96) else ca.Dense(a, h, r, f"A{i}")
                for i, a in enumerate(arrays)]
    one = [magnitude(leaf) for leaf in leaves()]
    batch = leaves()
    leaf_magnitudes(batch + batch[:2])  # repeated leaves are done once
    for leaf, ref, a in zip(batch, one, arrays):
        got = leaf.cache.norm2
        assert got == ref  # the same route one by one or batched
        assert got >= np.linalg.norm(a.astype(np.float64), 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eigen_conditions_many_equals_one_by_one(dtype) -> None:
    rng = np.random.default_rng(6)
    stack = rng.standard_normal((5, 12, 12)).astype(dtype)
    stack[1] = np.triu(stack[1]) + 3 * np.eye(12)  # well separated
    rtol = 1e-9 if dtype == np.float64 else 2e-3
    for (w, kappa), a in zip(eigen_conditions_many(stack), stack):
        w1, k1 = eigen_conditions(a)
        o, o1 = np.lexsort((w.imag, w.real)), np.lexsort((w1.imag, w1.real))
        np.testing.assert_allclose(w[o], w1[o1], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(kappa[o], k1[o1], rtol=rtol * 10)
    # a defective matrix (a Jordan block): the one-by-one route, infinite or huge condition
    J = np.stack([np.eye(4, k=1) + 2 * np.eye(4)]).astype(dtype)
    (w, kappa), = eigen_conditions_many(J)
    assert np.allclose(w, 2, atol=1e-3) and np.all(kappa > 1e3)
    assert eigen_conditions_many(np.zeros((0, 3, 3))) == []


def test_bad_arguments() -> None:
    x, y = ca.Space("x", 2), ca.Space("y", 3)
    A = ca.Dense(np.ones((3, 2)), x, y, "A")
    with pytest.raises(ca.InvalidArgumentError, match="a sequence of maps, got Dense"):
        ca.eigenvalues_many(A)
    with pytest.raises(ca.InvalidArgumentError, match=r"maps\[1\]\) takes a ca.LinearMap"):
        ca.eigenvalues_many([A.T @ A, np.eye(2)])
