"""What the numeric routines compute about a leaf is held by the leaf and is a pure function of its
array (and of the leaf it is tied to): no result, and no error bound, depends on what was computed
before, in this process or with another runtime. The tie of W_U to W_E is part of the expression."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from model_helpers import random_model

import circuitalg as ca
from circuitalg.linalg.accuracy import leaf_magnitudes, magnitude
from circuitalg.linalg.factors import Side, gram_blocks, gram_factor, leaf_gram, pair_product, tied_form
from circuitalg.runtime import SERIAL, Runtime

V = 600  # larger than d_model, as a tie needs


def _model(dtype: str, tied: bool) -> ca.Transformer:
    """A fresh model (new leaves, nothing computed about them) with LayerNorm, MLPs and learned
    positions; ``tied``: W_U stored as W_Eᵀ, so the folded W_U is W_Eᵀ diag(g) P."""
    m = random_model(d_vocab=V, d_mlp=24, normalization="LN", seed=7)
    p = dict(m.params)
    if tied:
        p["W_U"] = np.ascontiguousarray(p["W_E"].T)
    return m.with_params(p, dtype=np.dtype(dtype))


def _maps(m: ca.Transformer) -> list[ca.LinearMap]:
    """Every kind of map the analyses ask about: full OV and QK circuits (token and positional), the
    direct path, OV circuits, compositions, MLP paths."""
    out: list[ca.LinearMap] = [m.W_U @ m.W_E]
    heads = list(m.heads())
    for h in heads:
        out += [m.W_U @ h.ov @ m.W_E, m.W_E.T @ h.qk @ m.W_E, m.W_pos.T @ h.qk @ m.W_pos, h.ov]
    out += [heads[-1].qk.T @ heads[0].ov, heads[-1].ov @ heads[0].ov]
    for layer in m.layers:
        out.append(m.W_U @ layer.mlp.W_out @ layer.mlp.W_in @ m.W_E)
    return out


def _accuracies(m: ca.Transformer) -> list[float]:
    """Each map's bound for the factored routes, then for the cyclic-product routes."""
    maps = _maps(m)
    return [ca.accuracy(x) for x in maps] + [ca.accuracy(x, gram_factors=False) for x in maps]


def _prime(m: ca.Transformer) -> None:
    """Compute everything there is to compute about every leaf, by every route."""
    maps = _maps(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.PrecisionWarning)
        ca.eigenvalues_many([x for x in maps if x.is_square])
        for x in maps:
            ca.singular_values(x)
            ca.norm(x)
    leaves = [leaf for x in maps for leaf in x.leaves() if isinstance(leaf, ca.Dense)]
    leaf_magnitudes(leaves)
    for leaf in leaves:
        for side in Side:
            for accurate in (False, True):
                leaf_gram(leaf, side, accurate=accurate)
        tall = Side.tall(leaf)
        if tall is not None:
            gram_factor(leaf, tall)
        tied_form(leaf)
    pair_product(m.W_E, m.W_U)
    pair_product(m.W_U.T, m.W_E.T)
    pair_product(m.W_E, m.W_E.T)


CASES = [("float64", False), ("float64", True), ("float32", False), ("float32", True)]


@pytest.mark.parametrize(("dtype", "tied"), CASES)
def test_accuracy_does_not_depend_on_what_was_computed_before(dtype: str, tied: bool) -> None:
    fresh = _model(dtype, tied)
    assert (tied_form(fresh.W_U) is not None) == tied  # the precondition: the tie holds, or there is none
    product_routes = _model(dtype, tied)
    before = [ca.accuracy(x, gram_factors=False) for x in _maps(product_routes)]
    if dtype == "float32":  # the cyclic-product routes' bound factors nothing (float32 norms need no factor)
        assert all(not leaf.cache.factors for x in _maps(product_routes) for leaf in x.leaves())
    first = _accuracies(_model(dtype, tied))  # nothing computed before
    assert first[len(first) // 2:] == before
    primed = _model(dtype, tied)
    _prime(primed)
    assert _accuracies(primed) == first  # every value, to the last bit
    assert _accuracies(primed) == first  # and again
    with Runtime(workers=1):  # serially, on leaves computed about with threads: the same
        assert _accuracies(primed) == first
    other = _model(dtype, tied)
    with Runtime(workers=1):  # leaves computed about serially, then read with threads
        _prime(other)
    assert _accuracies(other) == first


def test_accuracy_in_a_fresh_process_equals_after_priming() -> None:
    """No process-wide state: a new interpreter, which has computed nothing, gives the values of this
    one after every leaf was factored and primed."""
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import test_leaf_cache as t; "
        "print(json.dumps({f'{d}-{tied}': [x.hex() for x in t._accuracies(t._model(d, tied))] for d, tied in t.CASES}))"
    )
    here = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", script, str(here)], capture_output=True, text=True, check=True)
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    for dtype, tied in CASES:
        m = _model(dtype, tied)
        _prime(m)
        assert [x.hex() for x in _accuracies(m)] == fresh[f"{dtype}-{tied}"], (dtype, tied)


def test_leaf_magnitudes_equal_magnitude_one_by_one_exactly() -> None:
    """Stacked (float32, one Gram block), vocabulary-sized (float32, several blocks), float64 and
    overflowing leaves: the batch gives each leaf's one-by-one value to the last bit."""
    rng = np.random.default_rng(5)
    r, h, v = ca.Space("r", 96), ca.Space("h", 16), ca.Space("v", 9000)
    arrays = [(rng.standard_normal((16, 96)) * s).astype(np.float32) for s in (1.0, 3.0, 1e-3)]
    arrays.append(rng.standard_normal((96, 16)).astype(np.float32))  # the other orientation
    arrays.append(rng.standard_normal((16, 96)))  # float64: the factor route
    arrays.append(rng.standard_normal((96, 9000)).astype(np.float32))  # longer than one Gram block
    arrays.append((rng.standard_normal((16, 96)) * 1e21).astype(np.float32))  # a float32 Gram overflows
    arrays.append(rng.standard_normal((300, 3000)).astype(np.float32))  # d >= 256: certified top eigenvalue

    def leaves() -> list[ca.Dense]:
        spaces = {16: h, 96: r, 9000: v, 300: ca.Space("p", 300), 3000: ca.Space("q", 3000)}
        return [ca.Dense(a, spaces[a.shape[1]], spaces[a.shape[0]], f"A{i}") for i, a in enumerate(arrays)]

    one = [magnitude(leaf) for leaf in leaves()]
    batch = leaves()
    assert leaf_magnitudes(batch + batch[:2]) == one + one[:2]  # repeated leaves are done once
    assert [leaf.cache.norm2 for leaf in batch] == one
    with Runtime(workers=1):
        assert leaf_magnitudes(leaves()) == one
    for got, a in zip(one, arrays):
        assert got >= np.linalg.norm(a.astype(np.float64), 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_matrices_and_ties_do_not_depend_on_the_runtime(dtype) -> None:
    """A Gram matrix split between threads adds its blocks in block order, and the tie's deviation
    pass adds its blocks' sums in order: the same bits serially and on any number of threads."""
    rng = np.random.default_rng(8)
    M = (rng.standard_normal((40000, 64)) + 0.3).astype(dtype)
    with SERIAL:
        serial = gram_blocks(M)
    for rt in (Runtime(workers=2), Runtime(workers=3), Runtime()):
        with rt:
            got = gram_blocks(M)
        assert np.array_equal(got.G, serial.G) and got.err2 == serial.err2
    E = np.ascontiguousarray(rng.standard_normal((48, 9000)).astype(dtype))
    U = E.T * (1 + 0.1 * rng.standard_normal(48)).astype(dtype)
    U = U - U.mean(axis=1, keepdims=True)
    vocab, resid = ca.Space("vocab", 9000), ca.Space("resid", 48)
    forms = []
    for rt in (SERIAL, Runtime(workers=2)):
        W_E = ca.Dense(E, vocab, resid, "W_E")
        W_U = ca.Dense(U, resid, vocab, "W_U", tied_to=W_E)
        with rt:
            forms.append(tied_form(W_U))
    assert forms[0] is not None and forms[1] is not None
    assert forms[0].deviation == forms[1].deviation and np.array_equal(forms[0].gains, forms[1].gains)


def test_the_tie_is_part_of_the_leaf() -> None:
    """declare_tied returns a new leaf that carries its embedding (the old one is untouched, as leaves
    are immutable); a model ties W_U to W_E exactly when they share the vocabulary."""
    m = _model("float64", True)
    assert m.W_U.tied_to is m.W_E and m.W_E.tied_to is None
    plain = ca.Dense(m.W_U.array, m.W_U.domain, m.W_U.codomain, "W_U")
    tied = ca.declare_tied(plain, m.W_E)
    assert plain.tied_to is None and tied_form(plain) is None
    assert tied.tied_to is m.W_E and tied.array is plain.array and tied.name == "W_U"
    assert tied_form(tied) is not None
    with pytest.raises(ca.ShapeError, match="cannot be the transpose"):
        ca.Dense(m.W_E.array, m.W_E.domain, m.W_E.codomain, "X", tied_to=m.W_E)
    with pytest.raises(ca.InvalidArgumentError, match="tied_to must be a ca.Dense"):
        ca.Dense(m.W_U.array, m.W_U.domain, m.W_U.codomain, "X", tied_to=m.W_E.T)
    untied = random_model(d_vocab=V, seed=1)
    assert untied.W_U.tied_to is untied.W_E  # same vocabulary: declared, and found not to hold
    assert tied_form(untied.W_U) is None


def test_leaf_cache_entries_are_read_only_and_computed_once() -> None:
    m = _model("float64", True)
    R = gram_factor(m.W_U, "cols")
    assert gram_factor(m.W_U, Side.COLS) is R and not R.flags.writeable
    assert set(m.W_U.cache.factors) == {Side.COLS}
    G = leaf_gram(m.W_E, "rows").G
    assert np.array_equal(leaf_gram(m.W_E, Side.ROWS, accurate=True).G, G)  # float64: the same either way
    P = pair_product(m.W_E, m.W_U)
    assert pair_product(m.W_E, m.W_U) is P and not P.flags.writeable
    with pytest.raises(ca.InvalidArgumentError, match="side='up'"):
        gram_factor(m.W_U, "up")


def test_magnitude_dispatches_on_every_node_kind() -> None:
    a, b = ca.Space("a", 3), ca.Space("b", 2)
    A = ca.Dense(np.array([[3.0, 0, 0], [0, 4.0, 0]]), a, b, "A")
    D = ca.diagonal(np.array([-5.0, 1.0]), b)
    assert magnitude(ca.identity(a)) == 1.0
    assert magnitude(D) == 5.0
    assert magnitude(A) == pytest.approx(4.0, rel=1e-12)
    assert magnitude(A.T) == magnitude(A)
    assert magnitude(-2 * A) == 2 * magnitude(A)
    assert magnitude(D @ A) == 5 * magnitude(A)
    assert magnitude(A + A) == 2 * magnitude(A)
    assert magnitude(ca.kron(A, D)) == 5 * magnitude(A)
    with pytest.raises(ca.InvalidArgumentError, match="unknown map node"):
        magnitude(ca.LinearMap())


def test_grouped_query_maps_are_named_by_their_group() -> None:
    """Under grouped-query attention W_K and W_V belong to a key/value group: L0KV1, tagged {0.kv1},
    which never reads like head 1's {0.1}."""
    cfg = ca.TransformerConfig(n_layers=1, n_heads=4, d_model=8, d_head=2, d_vocab=11, n_ctx=5, n_kv_heads=2,
                               rotary={"dim": 2, "base": 50.0})
    rng = np.random.default_rng(0)
    m = ca.Transformer(cfg, {k: rng.standard_normal(s) for k, s in ca.param_shapes(cfg).items()})
    h = m.head(0, 3)
    assert h.W_Q.name == "W_Q^{0.3}" and h.W_O.name == "W_O^{0.3}"
    assert h.W_K.name == "W_K^{0.kv1}" and h.W_V.name == "W_V^{0.kv1}" and h.space.name == "L0KV1"
    assert m.head(0, 2).W_K is h.W_K
    full = random_model(d_mlp=4)
    assert full.head(1, 2).W_K.name == "W_K^{1.2}" and full.head(1, 2).space.name == "L1H2"
    assert full.mlp(1).W_in.name == "W_in^{1}" and full.source_map(ca.Source("attn_bias", 1)).name == "b_attn^{1}"
