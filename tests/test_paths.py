"""Path expansion: exact against the forward pass, truncations, per-term weights, laziness."""

from __future__ import annotations

import math

import numpy as np
import pytest
from model_helpers import random_model

import circuitalg as ca

CASES = {  # name: (model kwargs, relative tolerance the issue states)
    "attn-only, no LN": (dict(normalization=None, n_layers=3), 1e-9),
    "attn-only, LN": (dict(normalization="LN", n_layers=3), 1e-8),
    "MLP, LN": (dict(normalization="LN", n_layers=3, d_mlp=24), 1e-8),
    "MLP, LNPre": (dict(normalization="LNPre", n_layers=2, d_mlp=24), 1e-8),
    "MLP, no LN": (dict(normalization=None, n_layers=2, d_mlp=24), 1e-8),
}
TOKENS = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5])


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", list(CASES))
def test_full_expansion_equals_the_forward_pass(name: str) -> None:
    kwargs, tol = CASES[name]
    model = random_model(**kwargs, seed=7)
    logits, cache = model.run(TOKENS)
    ps = ca.expand(model, max_heads=model.config.n_layers)
    assert rel_err(ps.logits(TOKENS, cache), logits) < tol
    # term by term, each computed on its own (no shared prefixes), sums to the same logits
    run = ps.on(TOKENS, cache)
    total = sum(run.contribution(term) for term in ps)
    assert rel_err(total, logits) < tol


@pytest.mark.parametrize("name", ["attn-only, no LN", "MLP, LN"])
def test_truncated_orders_differ_by_exactly_the_omitted_terms(name: str) -> None:
    kwargs, _ = CASES[name]
    model = random_model(**kwargs, seed=11)
    logits, cache = model.run(TOKENS)
    full = ca.expand(model)
    for order in range(model.config.n_layers):
        truncated = ca.expand(model, max_heads=order)
        omitted = sum(full.on(TOKENS, cache).contribution(t) for t in full if len(t.heads) > order)
        diff = full.logits(TOKENS, cache) - truncated.logits(TOKENS, cache)
        np.testing.assert_allclose(diff, omitted, rtol=1e-9, atol=1e-9 * np.abs(logits).max())
        assert np.abs(omitted).max() > 1e-3  # the omitted terms matter, so the check can fail
        assert all(len(t.heads) <= order for t in truncated)


def test_path_weight_and_position_map_give_the_contribution() -> None:
    """contribution = D_f P_hk..P_h1 X ⊗ W, with W the dense weight map: the tensor-product form."""
    model = random_model(normalization="LN", n_layers=3, seed=2)
    logits, cache = model.run(TOKENS)
    ps = ca.expand(model)
    run = ps.on(TOKENS, cache)
    n_vocab = model.config.d_vocab
    for term in ps.terms(source="embed"):
        W = term.weight.to_dense()  # (vocab, vocab), small here
        X = np.eye(n_vocab)[:, TOKENS]
        expected = run.position_map(term) @ (W @ X).T
        np.testing.assert_allclose(run.contribution(term), expected, rtol=1e-10, atol=1e-12)
    term = next(ps.terms(source="pos", n_heads=2))
    W = term.weight.to_dense()
    expected = run.position_map(term) @ W[:, : len(TOKENS)].T
    np.testing.assert_allclose(run.contribution(term), expected, rtol=1e-10, atol=1e-12)


def test_path_names_symbols_and_weights() -> None:
    model = random_model(normalization=None, n_layers=2, n_heads=4)
    ps = ca.expand(model, max_heads=2)
    term = next(t for t in ps.terms(source="embed", n_heads=2) if t.heads == ((0, 3), (1, 2)))
    assert term.name == "embed -> L0H3 -> L1H2 -> unembed"
    assert str(term.symbol) == "W_U*W_O^{1.2}*W_V^{1.2}*W_O^{0.3}*W_V^{0.3}*W_E"
    assert term.weight.domain == model.vocab_space and term.weight.codomain == model.vocab_space
    expected = model.W_U.array @ model.head(1, 2).ov.to_dense() @ model.head(0, 3).ov.to_dense() @ model.W_E.array
    np.testing.assert_allclose(term.weight.to_dense(), expected, rtol=1e-12)
    direct = next(ps.terms(source="pos", n_heads=0))
    assert str(direct.symbol) == "W_U*W_pos" and direct.weight.domain == model.pos_space


def test_counts_match_enumeration() -> None:
    model = random_model(normalization="LN", n_layers=3, n_heads=2, d_mlp=24)
    for order in range(4):
        ps = ca.expand(model, max_heads=order)
        assert len(list(ps)) == len(ps)
        for src in ps.sources:
            for n in range(order + 1):
                assert len(list(ps.terms(source=src, n_heads=n))) == ps.count(source=src, n_heads=n)
    assert ca.expand(model).count(source="embed") == 1 + 6 + 3 * 4 + 8
    assert ca.expand(model).count(source="mlp1") == 1 + 2  # MLP outputs are read by later layers only


def test_gpt2_small_shapes_expand_lazily() -> None:
    """Order 2 on GPT-2-small shapes: 1 + 144 + 9,504 token paths, built and iterated without weights."""
    cfg = ca.TransformerConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_vocab=50257, n_ctx=1024,
                               normalization=None)
    model = _shape_only_model(cfg)
    ps = ca.expand(model, max_heads=2)
    assert ps.count(source="embed") == 1 + 144 + 9_504 == math.comb(12, 2) * 144 + 145
    terms = list(ps.terms(source="embed"))
    assert len(terms) == 9_649
    assert terms[200].heads[0][0] < terms[200].heads[1][0]
    assert all("weight" not in t.__dict__ for t in terms)  # nothing built while iterating
    w = terms[-1].weight
    assert isinstance(w, ca.Product) and w.shape == (50257, 50257)
    assert max(f.shape[0] * f.shape[1] for f in w.leaves()) <= 50257 * 768  # no vocab x vocab leaf
    assert ps.model is model  # without layer norms nothing is folded or copied


def _shape_only_model(cfg: ca.TransformerConfig) -> ca.Transformer:
    """GPT-2-small shapes with cheap float32 weights (broadcast zeros are not allowed: values must be finite)."""
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s, dtype=np.float32) for k, s in ca.param_shapes(cfg).items()}
    return ca.Transformer(cfg, params, dtype=np.float32)


@pytest.mark.parametrize("d_vocab", [13, 40])  # W_U wide (QR of it) and tall (its cached leaf factor)
def test_top_ranks_terms_by_their_contribution(d_vocab: int) -> None:
    model = random_model(normalization="LN", n_layers=2, d_mlp=24, seed=5, d_vocab=d_vocab)
    logits, cache = model.run(TOKENS)
    ps = ca.expand(model)
    top = ps.top(TOKENS, cache, k=5)
    run = ps.on(TOKENS, cache)
    all_norms = sorted((np.linalg.norm(run.contribution(t)) for t in ps), reverse=True)
    np.testing.assert_allclose([s.score for s in top], all_norms[:5], rtol=1e-10)
    for s in top:
        np.testing.assert_allclose(s.score, np.linalg.norm(run.contribution(s.circuit)), rtol=1e-10)
    targets = np.roll(TOKENS, -1)
    top_t = ps.top(TOKENS, cache, k=3, targets=targets)
    for s in top_t:
        c = run.contribution(s.circuit)
        np.testing.assert_allclose(s.score, c[np.arange(len(TOKENS)), targets].sum(), rtol=1e-10)
    # the target scores of all terms add up to the target logits
    every = ps.top(TOKENS, cache, k=len(ps), targets=targets)
    np.testing.assert_allclose(sum(s.score for s in every), logits[np.arange(len(TOKENS)), targets].sum())


def test_bad_arguments() -> None:
    model = random_model()
    logits, cache = model.run(TOKENS)
    ps = ca.expand(model)
    with pytest.raises(ca.InvalidArgumentError, match="max_heads=-1"):
        ca.expand(model, max_heads=-1)
    with pytest.raises(ca.InvalidArgumentError, match="unknown sources"):
        ca.expand(model, sources=("embed", "resid"))
    with pytest.raises(ca.ShapeError, match="same length"):
        ps.logits(TOKENS[:4], cache)
    with pytest.raises(ca.InvalidArgumentError, match="outside the vocabulary"):
        ps.logits(np.full(len(TOKENS), 99), cache)
    with pytest.raises(ca.ShapeError, match="Pass the cache from this model's run"):
        ps.logits(TOKENS, random_model(n_heads=2).run(TOKENS)[1])
    with pytest.raises(ca.InvalidArgumentError, match="unknown source 'mlp0'"):
        list(ps.terms(source="mlp0"))
