"""The sympy twin: structure, shapes and LaTeX, never expanded to entries."""

import numpy as np
import sympy

import circuitalg as ca


def _maps():
    rng = np.random.default_rng(0)
    vocab, resid, head, pos = ca.Space("vocab", 50257), ca.Space("resid", 768), ca.Space("L0H0", 64), ca.Space("pos", 8)
    small = lambda shape: rng.standard_normal(shape)
    W_E = ca.Dense(np.zeros((768, 50257)), vocab, resid, "W_E")
    W_U = ca.Dense(np.zeros((50257, 768)), resid, vocab, "W_U")
    W_V = ca.Dense(small((64, 768)), resid, head, "W_V")
    W_O = ca.Dense(small((768, 64)), head, resid, "W_O")
    A = ca.Dense(small((8, 8)), pos, pos, "A")
    return W_E, W_U, W_V, W_O, A


def test_product_twin_is_a_matmul_of_named_symbols() -> None:
    W_E, W_U, W_V, W_O, _ = _maps()
    full = W_U @ W_O @ W_V @ W_E
    sym = full.symbol
    assert isinstance(sym, sympy.MatMul)
    assert [str(a) for a in sym.args] == ["W_U", "W_O", "W_V", "W_E"]
    assert sym.shape == (50257, 50257) == full.shape
    assert all(isinstance(a, sympy.MatrixSymbol) for a in sym.args)
    assert str(sym) == "W_U*W_O*W_V*W_E"
    assert ca.latex(full) == "W_{U} W_{O} W_{V} W_{E}"


def test_transposes_kron_sums_and_scalars() -> None:
    W_E, W_U, W_V, W_O, A = _maps()
    assert str(((W_U @ W_O)).T.symbol) == "W_O.T*W_U.T"
    k = ca.kron(A, W_O @ W_V)
    assert isinstance(k.symbol, sympy.KroneckerProduct)
    assert k.symbol.shape == k.shape == (8 * 768, 8 * 768)
    s = W_O @ W_V + ca.identity(W_V.domain)
    assert isinstance(s.symbol, sympy.MatAdd)
    assert s.symbol.shape == (768, 768)
    half = 0.5 * (W_O @ W_V)
    assert half.symbol == sympy.Rational(1, 2) * sympy.MatrixSymbol("W_O", 768, 64) * sympy.MatrixSymbol("W_V", 64, 768)
    assert "I" in str((W_O @ W_V - 3 * ca.identity(W_V.domain)).symbol)


def test_twin_agrees_with_numbers_on_small_maps() -> None:
    """Substituting the leaves' arrays into the twin gives the map's dense matrix."""
    rng = np.random.default_rng(3)
    x, y, z = ca.Space("x", 3), ca.Space("y", 4), ca.Space("z", 2)
    A = ca.Dense(rng.integers(-3, 4, (4, 3)), x, y, "A")
    B = ca.Dense(rng.integers(-3, 4, (2, 4)), y, z, "B")
    C = ca.Dense(rng.integers(-3, 4, (3, 2)), z, x, "C")
    m = ca.kron(A @ C, B).T + ca.kron(C.T @ A.T, B.T)
    subs = {sympy.MatrixSymbol(n.name, *n.shape): sympy.Matrix(n.array.astype(int)) for n in (A, B, C)}
    exact = sympy.Matrix(m.symbol.subs(subs).doit())
    np.testing.assert_array_equal(np.array(exact, dtype=float), m.to_dense())
