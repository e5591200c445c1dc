"""Smart constructors: structure of the simplified trees (values are in the harness)."""

import numpy as np
import pytest

import circuitalg as ca


@pytest.fixture()
def maps():
    rng = np.random.default_rng(0)
    v, r, h = ca.Space("vocab", 11), ca.Space("resid", 5), ca.Space("h", 2)
    W_E = ca.Dense(rng.standard_normal((5, 11)), v, r, "W_E")
    W_U = ca.Dense(rng.standard_normal((11, 5)), r, v, "W_U")
    W_V = ca.Dense(rng.standard_normal((2, 5)), r, h, "W_V")
    W_O = ca.Dense(rng.standard_normal((5, 2)), h, r, "W_O")
    return v, r, h, W_E, W_U, W_V, W_O


def test_products_flatten_and_drop_identities(maps) -> None:
    v, r, h, W_E, W_U, W_V, W_O = maps
    p = (W_U @ ca.identity(r)) @ (W_O @ (W_V @ W_E))
    assert isinstance(p, ca.Product)
    assert [f.name for f in p.factors] == ["W_U", "W_O", "W_V", "W_E"]
    assert isinstance(ca.identity(r) @ ca.identity(r), ca.Identity)
    assert W_E @ ca.identity(v) is W_E


def test_scalars_are_pulled_out_and_folded(maps) -> None:
    v, r, h, W_E, W_U, W_V, W_O = maps
    p = (2 * W_U) @ (W_O * 3) @ W_V @ (W_E / 4)
    assert isinstance(p, ca.Scaled) and p.scalar == pytest.approx(1.5)
    assert isinstance(p.inner, ca.Product)
    assert 1 * W_E is W_E


def test_transpose_is_pushed_to_leaves(maps) -> None:
    v, r, h, W_E, W_U, W_V, W_O = maps
    t = (W_U @ W_O @ W_V @ W_E).T
    assert isinstance(t, ca.Product)
    assert all(isinstance(f, ca.Transpose) for f in t.factors)
    assert [f.inner.name for f in t.factors] == ["W_E", "W_V", "W_O", "W_U"]
    assert W_E.T.T is W_E
    assert isinstance((W_E + W_E).T, ca.Sum)
    k = ca.kron(W_E, W_V).T
    assert isinstance(k, ca.Kron) and all(isinstance(f, ca.Transpose) for f in k.factors)


def test_mixed_product_rule_applies_only_when_spaces_conform(maps) -> None:
    v, r, h, W_E, W_U, W_V, W_O = maps
    p = ca.kron(W_O, W_U) @ ca.kron(W_V, W_E)
    assert isinstance(p, ca.Kron)
    assert [f.symbol for f in p.factors] == [(W_O @ W_V).symbol, (W_U @ W_E).symbol]
    np.testing.assert_allclose(p.to_dense(), np.kron(W_O.array, W_U.array) @ np.kron(W_V.array, W_E.array))


def test_kron_flattens_and_builds_product_spaces(maps) -> None:
    v, r, h, W_E, W_U, W_V, W_O = maps
    k = ca.kron(ca.kron(W_E, W_V), W_O)
    assert isinstance(k, ca.Kron) and len(k.factors) == 3
    assert k.domain == ca.product_space(v, r, h)
    assert k.domain.dim == 11 * 5 * 2
    assert isinstance(k.domain, ca.ProductSpace)


def test_kron_matches_the_paper_convention(maps) -> None:
    """(A ⊗ W) x = A x Wᵀ for x of shape (n_ctx, d)."""
    rng = np.random.default_rng(1)
    pos = ca.Space("pos", 4)
    v, r, h, W_E, W_U, W_V, W_O = maps
    A = ca.Dense(np.tril(rng.random((4, 4))), pos, pos, "A")
    x = rng.standard_normal((4, 5))
    ov = W_O @ W_V
    out = ca.kron(A, ov).matvec(x.reshape(-1)).reshape(4, 5)
    np.testing.assert_allclose(out, A.array @ x @ ov.to_dense().T)


def test_sum_flattens(maps) -> None:
    v, r, h, W_E, W_U, W_V, W_O = maps
    s = W_E + (W_E + W_E)
    assert isinstance(s, ca.Sum) and len(s.terms) == 3
    d = (W_E - W_E).to_dense()
    np.testing.assert_array_equal(d, 0)


def test_maps_are_immutable(maps) -> None:
    W_E = maps[3]
    with pytest.raises(AttributeError):
        W_E.name = "other"
    with pytest.raises(ValueError):
        W_E.array[0, 0] = 1.0
