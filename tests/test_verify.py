"""ca.verify: sound rewriting proofs, exact refutations, rule soundness, the symbolic path expansion."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import sympy

import circuitalg as ca
from circuitalg.symbolic import verification as V

n, m, k = sympy.symbols("n m k", positive=True, integer=True)
A, B, C = sympy.MatrixSymbol("A", n, m), sympy.MatrixSymbol("B", m, k), sympy.MatrixSymbol("C", k, n)
P, Q, R, S = (sympy.MatrixSymbol(x, d, d) for x, d in (("P", n), ("Q", m), ("R", n), ("S", m)))
K = sympy.KroneckerProduct


@pytest.mark.parametrize(
    "lhs, rhs",
    [
        (K(P, Q) * K(R, S), K(P * R, Q * S)),  # mixed product
        ((A * B * C).T, C.T * B.T * A.T),
        (K(P, Q).T, K(P.T, Q.T)),
        (2 * (P + R) * P - P * 2 * P, 2 * R * P),
        (K(P + R, Q), K(P, Q) + K(R, Q)),
        (K(K(P, Q), R), K(P, K(Q, R))),
        (K(sympy.Identity(n), sympy.Identity(m)) * K(P, Q), K(P, Q)),
    ],
)
def test_proves_by_rewriting(lhs, rhs) -> None:
    v = ca.verify(lhs, rhs)
    assert v.holds and v.method == "rewrite", v.detail
    assert "proof for all values and dimensions" in v.detail


@pytest.mark.parametrize(
    "lhs, rhs",
    [
        (K(P, Q) + K(R, S), K(P + R, Q + S)),  # what sympy's combine_kronecker claims (sympy issue 30272)
        ((P * R).T, P.T * R.T),
        (P * R, R * P),
    ],
)
def test_refutes_with_an_exact_counterexample(lhs, rhs) -> None:
    v = ca.verify(lhs, rhs)
    assert not v.holds and v.method == "exact-random"
    cex = v.counterexample
    values = {name: np.array(mat.tolist(), dtype=object) for name, mat in cex["values"].items()}
    dims = {sympy.Symbol(s, positive=True, integer=True): d for s, d in cex["dims"].items()}
    # recompute both sides independently with sympy's explicit matrices: the counterexample is real
    subs = {sympy.MatrixSymbol(name, *((sympy.sympify(x).subs(dims)) for x in sym.shape)): sympy.Matrix(values[name].tolist())
            for name, sym in [(s.name, s) for s in (lhs - rhs).atoms(sympy.MatrixSymbol)]}
    lhs_num = lhs.subs(dims).subs(subs).doit()
    rhs_num = rhs.subs(dims).subs(subs).doit()
    assert sympy.Matrix(lhs_num) != sympy.Matrix(rhs_num)
    assert sympy.Matrix(lhs_num) == cex["lhs"]


def test_exact_random_holds_with_a_bound_when_normal_forms_differ() -> None:
    """1x1 matrices commute: true at dimension 1 only, which rewriting cannot know."""
    a, b = sympy.MatrixSymbol("a", 1, 1), sympy.MatrixSymbol("b", 1, 1)
    v = ca.verify(a * b, b * a)
    assert v.holds and v.method == "exact-random"
    assert "Schwartz-Zippel" in v.detail and "Not a proof for other dimensions" in v.detail


def test_layer_norm_folding_identity() -> None:
    d, h, t = sympy.symbols("d_model d_head seq", positive=True, integer=True)
    W = sympy.MatrixSymbol("W_V", h, d)
    Dw = sympy.MatrixSymbol("diag_w", d, d)  # the LN weight as a diagonal map
    X = sympy.MatrixSymbol("X_hat", d, t)  # normalised inputs, one column per position
    b, bW, ones = sympy.MatrixSymbol("b_ln", d, 1), sympy.MatrixSymbol("b_V", h, 1), sympy.MatrixSymbol("1", 1, t)
    lhs = W * (Dw * X + b * ones) + bW * ones  # the original: LN then W_V
    rhs = (W * Dw) * X + (W * b + bW) * ones  # the folded weight and bias
    assert ca.verify(lhs, rhs).method == "rewrite" and ca.verify(lhs, rhs).holds


def test_head_as_tensor_product_acts_per_position() -> None:
    """(A ⊗ W_OV)(e_j ⊗ x) = (A e_j) ⊗ (W_O W_V x): a head moves x from position j by the pattern."""
    d, h = sympy.symbols("d_model d_head", positive=True, integer=True)
    Apat = sympy.MatrixSymbol("A", n, n)
    W_O, W_V = sympy.MatrixSymbol("W_O", d, h), sympy.MatrixSymbol("W_V", h, d)
    e, x = sympy.MatrixSymbol("e_j", n, 1), sympy.MatrixSymbol("x", d, 1)
    v = ca.verify(K(Apat, W_O * W_V) * K(e, x), K(Apat * e, W_O * (W_V * x)))
    assert v.holds and v.method == "rewrite"


def test_map_twins_qk_ov_and_virtual_weights() -> None:
    from model_helpers import random_model

    model = random_model(n_layers=2)
    h0, h1 = model.head(0, 1), model.head(1, 2)
    assert ca.verify(h1.qk, h1.W_Q.symbol.T * h1.W_K.symbol).holds
    assert ca.verify(h1.ov.T, h1.W_V.symbol.T * h1.W_O.symbol.T).holds
    virtual = h1.W_K @ h0.W_O  # K-composition virtual weight
    assert ca.verify(h1.qk @ h0.ov, h1.W_Q.T @ virtual @ h0.W_V).holds
    assert not ca.verify(h1.ov @ h0.ov, h0.ov @ h1.ov).holds


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_symbolic_path_expansion_is_proved(n_layers: int) -> None:
    e = ca.symbolic_expansion(n_layers, 2)
    assert len(e.paths) == 3**n_layers  # each layer: skip, head 0 or head 1
    v = e.verify()
    assert v.holds and v.method == "rewrite"
    assert "\\otimes" in ca.latex(v)
    # dropping one path term makes it false, and verify says so
    wrong = sympy.MatAdd(*(t for _, t in e.paths[:-1]))
    assert not ca.verify(e.product, wrong).holds


# -- every rule, numerically on random instances ---------------------------------------------------
def _num(x, values, dims):
    """Dense float evaluation of a word / letter with random values per atom (independent of the rules)."""
    if isinstance(x, V.Atom):
        M = values[x.name]
        return M.T if x.transposed else M
    if isinstance(x, V.KronLetter):
        out = np.ones((1, 1))
        for f in x.factors:
            out = np.kron(out, _num(f, values, dims))
        return out
    out = np.eye(int(sympy.sympify(x.rows).subs(dims)))
    for letter in x.letters:
        out = out @ _num(letter, values, dims)
    return out


def _random_instance(rng):
    dims = {n: 2, m: 3, k: 4}
    shapes = {"P": (2, 2), "Q": (3, 3), "A": (2, 3), "B": (3, 4)}
    values = {name: rng.normal(size=s) for name, s in shapes.items()}
    atom = {name: V.Atom(name, *(sympy.Integer(v) for v in s)) for name, s in shapes.items()}
    return dims, values, atom


def _w(*letters, rows, cols):
    return V.Word(tuple(letters), sympy.Integer(rows), sympy.Integer(cols))


def test_rule_transpose_word_and_letter() -> None:
    rng = np.random.default_rng(0)
    dims, values, a = _random_instance(rng)
    word = _w(a["A"], a["B"], rows=2, cols=4)
    np.testing.assert_allclose(_num(V.rule_transpose_word(word, V.RULES), values, dims), _num(word, values, dims).T)
    kron = V.KronLetter((_w(a["P"], rows=2, cols=2), _w(a["A"], rows=2, cols=3)))
    np.testing.assert_allclose(_num(V.rule_transpose_letter(kron, V.RULES), values, dims), _num(kron, values, dims).T)


def test_rule_mixed_product_and_multiply_words() -> None:
    rng = np.random.default_rng(1)
    dims, values, a = _random_instance(rng)
    left = V.KronLetter((_w(a["P"], rows=2, cols=2), _w(a["A"], rows=2, cols=3)))
    right = V.KronLetter((_w(a["P"], rows=2, cols=2), _w(a["B"], rows=3, cols=4)))
    merged = V.rule_mixed_product(left, right, V.RULES)
    np.testing.assert_allclose(_num(merged, values, dims), _num(left, values, dims) @ _num(right, values, dims))
    # non-conforming factors (3x3 then 2x... ) are left alone even when the total sizes match
    odd = V.KronLetter((_w(a["Q"], rows=3, cols=3), _w(a["P"], rows=2, cols=2)))
    same_size = V.KronLetter((_w(a["P"], rows=2, cols=2), _w(a["Q"], rows=3, cols=3)))
    assert V.rule_mixed_product(odd, same_size, V.RULES) is None
    w1, w2 = V.Word((left,), sympy.Integer(4), sympy.Integer(6)), V.Word((right,), sympy.Integer(6), sympy.Integer(8))
    prod = V.rule_multiply_words(w1, w2, V.RULES)
    np.testing.assert_allclose(_num(prod, values, dims), _num(w1, values, dims) @ _num(w2, values, dims))


def test_rule_collect() -> None:
    rng = np.random.default_rng(2)
    dims, values, a = _random_instance(rng)
    w = _w(a["A"], rows=2, cols=3)
    u = _w(a["P"], a["A"], rows=2, cols=3)
    pairs = [(w, sympy.Rational(1, 3)), (u, sympy.Integer(2)), (w, sympy.Rational(2, 3)), (u, sympy.Integer(-2))]
    poly = V.rule_collect(pairs, sympy.Integer(2), sympy.Integer(3))
    total = sum(float(c) * _num(x, values, dims) for x, c in pairs)
    np.testing.assert_allclose(sum(float(c) * _num(x, values, dims) for x, c in poly.terms), total)
    assert len(poly.terms) == 1


def test_an_injected_wrong_rule_cannot_prove_a_false_identity() -> None:
    def transpose_without_reversing(word, rules):
        return V.Word(tuple(rules.transpose_letter(x, rules) for x in word.letters), word.cols, word.rows)

    bad = dataclasses.replace(V.RULES, transpose_word=transpose_without_reversing)
    # with the wrong rule both sides have the same normal form; the exact guard catches it
    lhs = sympy.Transpose(P * R)  # unevaluated, so the rule is what transposes it
    assert V.normal_form(lhs, bad) == V.normal_form(P.T * R.T, bad)
    assert ca.verify(lhs, R.T * P.T).holds  # the sound rules prove the true identity
    v = ca.verify(lhs, P.T * R.T, rules=bad)
    assert not v.holds and "unsound" in v.detail

    def merge_ignoring_shapes(left, right, rules):
        if isinstance(left, V.KronLetter) and isinstance(right, V.KronLetter):
            return V.KronLetter(tuple(reversed(left.factors)))  # nonsense
        return None

    bad2 = dataclasses.replace(V.RULES, mixed_product=merge_ignoring_shapes)
    # a broken rule loses the proof but never the verdict: exact evaluation of the originals decides
    v2 = ca.verify(K(P, Q) * K(R, S), K(P * R, Q * S), rules=bad2)
    assert v2.holds and v2.method == "exact-random"
    assert not ca.verify(K(P, Q) * K(R, S), K(R * P, Q * S), rules=bad2).holds


def test_verify_numeric() -> None:
    rng = np.random.default_rng(0)
    x, y = ca.Space("x", 30), ca.Space("y", 20)
    F = ca.Dense(rng.normal(size=(20, 30)), x, y, "F")
    G = ca.Dense(rng.normal(size=(30, 30)), x, x, "G")
    v = ca.verify_numeric((F @ G).T, G.T @ F.T)
    assert v.holds and v.method == "numeric" and "not a proof" in v.detail
    assert not ca.verify_numeric(F @ G, F @ G.T).holds


def test_malformed_input_names_the_node() -> None:
    with pytest.raises(ca.InvalidArgumentError, match="unsupported expression node HadamardProduct"):
        ca.verify(sympy.HadamardProduct(P, R), P)
    with pytest.raises(ca.InvalidArgumentError, match="unsupported power"):
        ca.verify(sympy.Inverse(P), P)
    with pytest.raises(ca.InvalidArgumentError, match="expected a sympy matrix expression"):
        ca.verify("A*B", P)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sympy deprecates check=False; it is the only way to build this
        bad = sympy.MatMul(A, A, evaluate=False, check=False)
    with pytest.raises(ca.ShapeError, match="non-conforming product"):
        ca.verify(bad, bad)
    with pytest.raises(ca.ShapeError, match="symbol 'A' is used with shapes"):
        ca.verify(A * sympy.MatrixSymbol("A", m, n), P)

