"""Invariances: a change of residual basis changes no circuit, and structural zeros stay zero.

The compiled model (tests/model_helpers.compiled_model) has head-to-head compositions known by
construction; after a random orthogonal change of the residual basis (same function, same
circuits) absent compositions and graph edges must stay below 1e-12 and present ones must be
unchanged to 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import compiled_model, random_model, random_rotation

import circuitalg as ca


def _mask(present: dict, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for (k, a, b) in present:
        if k == kind:
            mask[a[0], a[1], b[0], b[1]] = True
    return mask


@pytest.mark.parametrize("seed", range(4))
def test_rotation_keeps_function(seed: int) -> None:
    m, _ = compiled_model(seed)
    r = ca.rotate_residual(m, random_rotation(m.config.d_model, seed + 10))
    tokens = np.random.default_rng(seed).integers(0, m.config.d_vocab, size=m.config.n_ctx)
    np.testing.assert_allclose(r.run(tokens)[0], m.run(tokens)[0], atol=1e-10)
    g = random_model(d_mlp=8, seed=seed)
    gr = ca.rotate_residual(g, random_rotation(g.config.d_model, seed))
    t = np.arange(g.config.n_ctx) % g.config.d_vocab
    np.testing.assert_allclose(gr.run(t)[0], g.run(t)[0], atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_structural_zero_compositions_stay_zero_in_a_rotated_basis(seed: int, kind: str) -> None:
    m, present = compiled_model(seed)
    r = ca.rotate_residual(m, random_rotation(m.config.d_model, seed + 1))
    s0, s1 = ca.composition_scores(m, kind), ca.composition_scores(r, kind)
    mask = _mask(present, kind, s0.shape)
    assert mask.any() and (~mask).any()
    assert np.all(s0[~mask] == 0.0)  # exact in the coordinate basis
    assert s1[~mask].max() < 1e-12  # and still zero (scores are relative to the normalisation)
    assert s0[mask].min() > 1e-3  # present compositions are there...
    np.testing.assert_allclose(s1[mask], s0[mask], rtol=0, atol=1e-10)  # ...and unchanged


@pytest.mark.parametrize("seed", range(3))
def test_structural_zero_graph_edges_stay_zero_in_a_rotated_basis(seed: int) -> None:
    m, present = compiled_model(seed)
    r = ca.rotate_residual(m, random_rotation(m.config.d_model, seed + 2))
    g0, g1 = ca.CircuitGraph(m).nx, ca.CircuitGraph(r).nx
    assert set(g0.edges(keys=True)) == set(g1.edges(keys=True))
    n_zero = 0
    top_norm = max(d["norm"] for _, _, d in g0.edges(data=True))
    for u, v, key, d0 in g0.edges(keys=True, data=True):
        d1 = g1.edges[u, v, key]
        if d0["score"] == 0.0:
            n_zero += 1
            assert d1["score"] < 1e-12, (u, v, key, d1["score"])
            assert d1["norm"] < 1e-12 * top_norm, (u, v, key, d1["norm"])
        else:
            assert d1["score"] == pytest.approx(d0["score"], abs=1e-10)
            assert d1["norm"] == pytest.approx(d0["norm"], rel=1e-10)
    assert n_zero > 10
    # the head-to-head edges that exist are exactly the compositions built in
    heads = {(u, v, key) for u, v, key, d in g0.edges(keys=True, data=True)
             if key in "qkv" and u.startswith("L") and d["score"] > 0}
    assert heads == {(f"L{a[0]}H{a[1]}", f"L{b[0]}H{b[1]}", k) for (k, a, b) in present}


def test_top_circuits_and_copying_invariant_under_rotation() -> None:
    m, _ = compiled_model(1)
    r = ca.rotate_residual(m, random_rotation(m.config.d_model, 5))
    a, b = ca.top_circuits(m, 12, 2), ca.top_circuits(r, 12, 2)
    assert [c.name for c in a][:5] == [c.name for c in b][:5]
    np.testing.assert_allclose([c.score for c in b], [c.score for c in a], rtol=1e-10)
    ta, tb = ca.head_table(m, k=2), ca.head_table(r, k=2)
    np.testing.assert_allclose(tb.copying, ta.copying, atol=1e-10)
    np.testing.assert_allclose(tb.ov_singular_values, ta.ov_singular_values, rtol=1e-10, atol=1e-12)


def test_rotate_residual_refuses_bad_input() -> None:
    m = random_model()
    D = m.config.d_model
    with pytest.raises(ca.InvalidArgumentError, match="not orthogonal"):
        ca.rotate_residual(m, 2 * np.eye(D))
    with pytest.raises(ca.InvalidArgumentError, match=rf"pass a {D} x {D} orthogonal"):
        ca.rotate_residual(m, np.eye(D + 1))
    ln = random_model(normalization="LN")
    with pytest.raises(ca.ConfigError, match="fold it first"):
        ca.rotate_residual(ln, random_rotation(D))
    with pytest.raises(ca.InvalidArgumentError, match="all-ones"):
        ca.rotate_residual(ca.fold_layer_norm(ln), random_rotation(D))
    # a rotation that fixes the all-ones direction is fine for LNPre models
    u = np.ones(D) / np.sqrt(D)
    P = np.eye(D) - np.outer(u, u)
    B = np.linalg.qr(P @ np.random.default_rng(0).normal(size=(D, D - 1)))[0][:, : D - 1]
    R = np.outer(u, u) + B @ random_rotation(D - 1, 4) @ B.T
    folded = ca.fold_layer_norm(ln)
    t = np.arange(ln.config.n_ctx) % ln.config.d_vocab
    np.testing.assert_allclose(ca.rotate_residual(folded, R).run(t)[0], ln.run(t)[0], atol=1e-10)
