"""Weight-based feature circuits (circuitalg.features.circuits, .coactivation) against dense float64
references built from ``model.params`` by hand (the norm weights and centring written out, rotary
rotations from their formula), never from the maps under test."""

from __future__ import annotations

import dataclasses
import re
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from model_helpers import random_model

import circuitalg as ca
from circuitalg.features import Dictionary, DictionaryKind, DictionarySet, Hook, HookKind, JumpReLU, ReLU, TopK
from circuitalg.features.binding import bind
from circuitalg.features.circuits import (
    FeatureId,
    TokenId,
    feature_logits,
    feature_qk,
    head_virtual_weights,
    layer_virtual_weights,
    position_features,
    token_features,
    top_feature_logits,
    top_feature_weights,
    virtual_weights,
    weight_entries,
    weight_factors,
)
from circuitalg.features.coactivation import CoactivationStats, coactivation_stats, era, top_twera, twera
from circuitalg.maps.nodes import Dense
from circuitalg.maps.rules import add, compose
from circuitalg.spaces import Space

K = DictionaryKind
RTOL = 1e-12


# --- models and dictionaries ----------------------------------------------------------------------
def llama_like(seed: int = 0, n_layers: int = 2) -> ca.Transformer:
    """RMSNorm, rotary (half style), grouped-query attention (4 heads, 2 kv groups), gated SiLU MLP."""
    cfg = ca.TransformerConfig(n_layers=n_layers, n_heads=4, n_kv_heads=2, d_model=16, d_head=4, d_vocab=17, n_ctx=12,
                               d_mlp=20, normalization="RMS", act_fn="silu", gated_mlp=True,
                               rotary={"dim": 4, "base": 50.0})
    rng = np.random.default_rng(seed)
    params = {k: (1.0 + 0.2 * rng.normal(size=s)) if k.endswith(".w") else 0.5 * rng.normal(size=s)
              for k, s in ca.param_shapes(cfg).items()}
    return ca.Transformer(cfg, params, name=f"llama-like-{seed}")


def ln_model(seed: int = 1) -> ca.Transformer:
    """LayerNorm (weights and biases unfolded), learned positions, GELU MLPs, 3 layers."""
    return random_model(n_layers=3, n_heads=3, d_model=16, d_head=4, d_mlp=24, normalization="LN", seed=seed)


def make_dict(name: str, kind: DictionaryKind, reads, writes, d: int = 16, F: int = 30, seed: int = 0,
              activation=None, skip: bool = False, enc_scale=None) -> Dictionary:
    rng = np.random.default_rng(seed)
    W_enc = [rng.normal(size=(F, d)) for _ in reads]
    if enc_scale is not None:
        W_enc = [W * np.asarray(enc_scale)[:, None] for W in W_enc]
    return Dictionary(
        name, kind, tuple(reads), tuple(writes), W_enc, 0.1 * rng.normal(size=F), [rng.normal(size=(d, F)) for _ in writes],
        [0.1 * rng.normal(size=d) for _ in writes], activation or ReLU(),
        W_skip=rng.normal(size=(d, d)) if skip else None,
    )


def sae(name: str, kind: HookKind, layer: int, **kw) -> Dictionary:
    h = Hook(kind, layer)
    return make_dict(name, K.SAE, [h], [h], **kw)


def transcoder(name: str, layer: int, *, reads: HookKind = HookKind.MLP_IN, **kw) -> Dictionary:
    kind = K.SKIP_TRANSCODER if kw.get("skip") else K.TRANSCODER
    return make_dict(name, kind, [Hook(reads, layer)], [Hook(HookKind.MLP_OUT, layer)], **kw)


def clt(name: str, n_layers: int, *, reads: HookKind = HookKind.MLP_IN, F: int = 12, seed: int = 10) -> DictionarySet:
    members = [make_dict(f"{name}{l}", K.CROSS_LAYER_TRANSCODER, [Hook(reads, l)],
                         [Hook(HookKind.MLP_OUT, j) for j in range(l, n_layers)], F=F, seed=seed + l)
               for l in range(n_layers)]
    return DictionarySet(name, members)


# --- the dense reference, from model.params ---------------------------------------------------------
class Ref:
    """The model's maps written out from its parameters (column convention)."""

    def __init__(self, model: ca.Transformer) -> None:
        self.m, self.p, self.c = model, model.params, model.config
        d = self.c.d_model
        self.P = np.eye(d) - 1.0 / d if self.c.normalization == "LN" else np.eye(d)

    def reads(self, W: np.ndarray, ln: str) -> np.ndarray:
        """``W diag(w) P``: a weight reading behind the norm ``ln``."""
        w = self.p.get(ln + ".w")
        return (W * w if w is not None else W) @ self.P

    def W_Q(self, l: int, h: int) -> np.ndarray:
        return self.reads(self.p[f"blocks.{l}.attn.W_Q"][h], f"blocks.{l}.ln1")

    def group(self, h: int) -> int:
        return h // (self.c.n_heads // self.c.kv_heads)

    def W_K(self, l: int, h: int) -> np.ndarray:
        return self.reads(self.p[f"blocks.{l}.attn.W_K"][self.group(h)], f"blocks.{l}.ln1")

    def W_V(self, l: int, h: int) -> np.ndarray:
        return self.reads(self.p[f"blocks.{l}.attn.W_V"][self.group(h)], f"blocks.{l}.ln1")

    def W_O(self, l: int, h: int) -> np.ndarray:
        return self.p[f"blocks.{l}.attn.W_O"][h]

    def W_U(self) -> np.ndarray:
        return self.reads(self.p["W_U"], "ln_final")

    def R(self, delta: int) -> np.ndarray:
        """The rotary rotation between a query and a key ``delta`` positions apart ("half" pairs)."""
        dh = self.c.d_head
        R = np.eye(dh)
        rot = self.c.rotary
        if rot is None:
            return R
        half = rot.dim // 2
        for k in range(half):
            phi = delta * rot.base ** (-2.0 * k / rot.dim)
            a, b = k, k + half
            R[a, a] = R[b, b] = np.cos(phi)
            R[a, b], R[b, a] = -np.sin(phi), np.sin(phi)
        return R

    def enc(self, d: Dictionary, i: int = 0, norm_scale: float = 1.0) -> np.ndarray:
        """The encoder from the stream: ``W_enc`` behind ln2's weight and centring for the MLP input."""
        h = d.reads[i]
        if h.kind is HookKind.MLP_IN:
            return self.reads(d.W_enc[i], f"blocks.{h.layer}.ln2") / norm_scale
        if h.kind is HookKind.MLP_NORMALIZED:
            return d.W_enc[i] @ self.P / norm_scale
        return d.W_enc[i]


def close(got: np.ndarray, ref: np.ndarray, rtol: float = RTOL) -> None:
    got = np.asarray(got)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(np.abs(ref).max(), 1e-300))


# --- values -----------------------------------------------------------------------------------------
def test_residual_virtual_weights_include_the_mlp_input_norm_weight() -> None:
    m = ln_model()
    R = Ref(m)
    s = sae("s0", HookKind.RESID_PRE, 0)
    t = transcoder("t1", 1, seed=1)
    skip = transcoder("k2", 2, seed=2, skip=True)
    bs, bt, bk = bind(s, m), bind(t, m), bind(skip, m)
    vw = virtual_weights(bs, bt)
    assert (vw.domain, vw.codomain) == (s.feature_space, t.feature_space)
    close(vw.to_dense(), R.enc(t) @ s.W_dec[0])
    close(virtual_weights(bt, bk).to_dense(), R.enc(skip) @ t.W_dec[0])
    # a frozen norm scale divides the MLP-input encoder
    close(virtual_weights(bs, bind(t, m, norm_scale=2.5)).to_dense(), R.enc(t, norm_scale=2.5) @ s.W_dec[0])
    # the map is lazy and factored: plan, accuracy and the SVD from the d_model core
    assert type(ca.plan(vw, "svd")).__name__ == "ChainPlan"
    acc = ca.accuracy(vw)
    assert 0 < acc < 1e-10 * np.abs(vw.to_dense()).max()
    close(vw.singular_values()[: m.config.d_model], np.linalg.svd(R.enc(t) @ s.W_dec[0], compute_uv=False)[: m.config.d_model])
    assert "W_enc^{t1}" in str(vw.symbol) and "W_dec^{s0}" in str(vw.symbol)


def test_cross_layer_transcoder_sums_only_the_decoders_that_land_before_the_reader() -> None:
    m = ln_model()
    R = Ref(m)
    cl = clt("c", 3)
    bc = bind(cl, m)
    tgt = sae("r2", HookKind.RESID_PRE, 2, seed=5)
    bt = bind(tgt, m)
    # member 0 writes MLP_OUT 0, 1, 2: the stream before layer 2 holds the first two
    close(virtual_weights(bc[0], bt).to_dense(), tgt.W_enc[0] @ (cl[0].W_dec[0] + cl[0].W_dec[1]))
    pairs = virtual_weights(bc, bc)
    assert sorted(pairs) == [("c0", "c1"), ("c0", "c2"), ("c1", "c2")]
    for (a, b), vw in pairs.items():
        la, lb = int(a[1]), int(b[1])
        ref = sum(R.enc(cl[lb]) @ cl[la].W_dec[j - la] for j in range(la, lb))
        close(vw.to_dense(), ref)
    # no member writes before member 0 reads
    with pytest.raises(ca.InvalidArgumentError, match="no member"):
        virtual_weights(bc[1:], bc[0])
    # top-k over every pair at once equals the brute force over their union
    top = top_feature_weights(pairs, 8)
    brute = sorted(((abs(v), a, b, i, j, v) for (a, b), vw in pairs.items() for (i, j), v in np.ndenumerate(vw.to_dense())),
                   key=lambda t: -t[0])[:8]
    assert [(e.row, e.col) for e in top] == [(FeatureId(b, i), FeatureId(a, j)) for _, a, b, i, j, _ in brute]
    close(top.values, np.array([t[-1] for t in brute]))
    assert top.exact


def test_head_and_layer_virtual_weights() -> None:
    m = ln_model()
    R = Ref(m)
    s, t = sae("s0", HookKind.RESID_PRE, 1, seed=3), transcoder("t1", 1, seed=4)
    bs, bt = bind(s, m), bind(t, m)
    for h in range(m.config.n_heads):
        hv = head_virtual_weights(bs, bt, (1, h))
        ref = R.enc(t) @ R.W_O(1, h) @ R.W_V(1, h) @ s.W_dec[0]
        close(hv.to_dense(), ref)
        assert hv.rank_bound == m.config.d_head
        close(hv.singular_values(), np.linalg.svd(ref, compute_uv=False)[: m.config.d_head])
        U, S, Vh = hv.svd()
        close((U * S) @ Vh, ref)
    lv = layer_virtual_weights(bs, bt, 1)
    close(lv.to_dense(), sum(R.enc(t) @ R.W_O(1, h) @ R.W_V(1, h) @ s.W_dec[0] for h in range(m.config.n_heads)))
    # a residual hook at the layer's input feeds its attention; an MLP input after it reads its output
    head = m.head(1, 2)
    assert head_virtual_weights(bs, bt, head).shape == (30, 30)
    with pytest.raises(ca.InvalidArgumentError, match="none before layer 0"):
        head_virtual_weights(bs, bt, (0, 0))
    late = bind(sae("s2", HookKind.RESID_PRE, 2), m)
    with pytest.raises(ca.InvalidArgumentError, match="none after layer 2"):
        layer_virtual_weights(bs, bind(transcoder("t2", 1), m), 2)
    with pytest.raises(ca.InvalidArgumentError, match="none before layer 1"):
        layer_virtual_weights(late, bt, 1)


def test_llama_like_rms_rotary_gqa() -> None:
    m = llama_like()
    R = Ref(m)
    s = sae("s0", HookKind.RESID_PRE, 0, seed=1)
    t = transcoder("t1", 1, seed=2, activation=JumpReLU(np.full(30, 0.1)))
    bs, bt = bind(s, m), bind(t, m)
    close(virtual_weights(bs, bt).to_dense(), R.enc(t) @ s.W_dec[0])
    for h in range(4):  # heads 0, 1 share kv group 0; heads 2, 3 group 1
        close(head_virtual_weights(bs, bt, (1, h)).to_dense(), R.enc(t) @ R.W_O(1, h) @ R.W_V(1, h) @ s.W_dec[0])
        for delta in (0, -1, -5):
            qk = feature_qk(bs, bs, (1, h), delta)
            assert (qk.domain, qk.codomain) == (s.feature_space, s.feature_space)
            ref = s.W_dec[0].T @ R.W_Q(1, h).T @ R.R(delta) @ R.W_K(1, h) @ s.W_dec[0]
            close(qk.to_dense(), ref)
        # tokens as queries, features as keys, and the other way round
        tok = feature_qk("embed", bs, (0, h), -2)
        close(tok.to_dense(), m.params["W_E"].T @ R.W_Q(0, h).T @ R.R(-2) @ R.W_K(0, h) @ s.W_dec[0])
        close(feature_qk(bs, "embed", (1, h), 0).to_dense(),
              s.W_dec[0].T @ R.W_Q(1, h).T @ R.W_K(1, h) @ m.params["W_E"])
    close(feature_logits(bs).to_dense(), R.W_U() @ s.W_dec[0])
    close(token_features(bt).to_dense(), R.enc(t) @ m.params["W_E"])
    with pytest.raises(ca.ConfigError, match="rotary"):
        position_features(bs)
    with pytest.raises(ca.ConfigError, match="rotary"):
        feature_qk(bs, "pos", (1, 0))
    with pytest.raises(ca.InvalidArgumentError, match="none before layer 0"):
        feature_qk(bind(sae("m1", HookKind.RESID_MID, 0), m), bs, (0, 1))


def test_learned_positions_and_readouts_on_zoo_models() -> None:
    m = ca.zoo.load("attn2l")
    R = Ref(m)
    s = sae("z1", HookKind.RESID_PRE, 1, d=64, F=40, seed=7, activation=TopK(5))
    t = sae("z2", HookKind.RESID_POST, 1, d=64, F=24, seed=8)
    bs, bt = bind(s, m), bind(t, m)
    close(position_features(bs).to_dense(), s.W_enc[0] @ m.params["W_pos"])
    close(feature_qk(bs, "pos", (1, 3)).to_dense(), s.W_dec[0].T @ R.W_Q(1, 3).T @ R.W_K(1, 3) @ m.params["W_pos"])
    close(feature_qk("pos", bs, (1, 0)).to_dense(), m.params["W_pos"].T @ R.W_Q(1, 0).T @ R.W_K(1, 0) @ s.W_dec[0])
    close(layer_virtual_weights(bs, bt, 1).to_dense(),
          sum(t.W_enc[0] @ R.W_O(1, h) @ R.W_V(1, h) @ s.W_dec[0] for h in range(4)))
    one = ca.zoo.load("attn1l")
    R1 = Ref(one)
    a, c = sae("b0", HookKind.RESID_PRE, 0, d=64, F=16, seed=9), sae("b1", HookKind.RESID_POST, 0, d=64, F=18, seed=10)
    ba, bc = bind(a, one), bind(c, one)
    close(virtual_weights(ba, bc).to_dense(), c.W_enc[0] @ a.W_dec[0])
    for h in range(4):
        close(head_virtual_weights(ba, bc, (0, h)).to_dense(), c.W_enc[0] @ R1.W_O(0, h) @ R1.W_V(0, h) @ a.W_dec[0])
    close(feature_logits(bc).to_dense(), R1.W_U() @ c.W_dec[0])
    # top logit tokens of every feature: exact, strings from the model's vocabulary
    ref = R.W_U() @ s.W_dec[0]
    for by, key in (("value", ref), ("abs", np.abs(ref)), ("negative", -ref)):
        tl = top_feature_logits(bs, 5, by=by)
        for f in range(40):
            order = np.lexsort((np.arange(64), -key[:, f]))[:5]
            assert list(tl.tokens[f]) == list(order)
            close(tl.values[f], ref[order, f])
        assert tl.of(3)[0][0] == TokenId(int(tl.tokens[3, 0]), m.vocab[tl.tokens[3, 0]])
    assert "z1#0" in str(tl)
    # small blocks give the same table
    tl2 = top_feature_logits(bs, 5, features=[3, 7, 11], max_bytes=4 * 64 * 2)
    assert np.array_equal(tl2.tokens, top_feature_logits(bs, 5).tokens[[3, 7, 11]])
    # a dead feature (zero decoder column): every logit ties at 0, ranked by token id
    W_dec = s.W_dec[0].copy()
    W_dec[:, 0] = 0.0
    dead = top_feature_logits(bind(dataclasses.replace(s, W_dec=(W_dec,)), m), 5)
    assert list(dead.tokens[0]) == [0, 1, 2, 3, 4] and np.all(dead.values[0] == 0.0)
    top = top_feature_weights(feature_logits(bs), 6, vocab=m)
    assert all(isinstance(e.row, TokenId) and e.row.token == m.vocab[e.row.index] for e in top)
    flat = np.argsort(-np.abs(ref), axis=None, kind="stable")[:6]
    assert [(e.row.index, e.col.index) for e in top] == [divmod(int(i), 40) for i in flat]


# --- top-k and its certificate ----------------------------------------------------------------------
def brute_top(ref: np.ndarray, k: int, by_abs: bool) -> list[tuple[int, int]]:
    key = np.abs(ref) if by_abs else ref
    i, j = np.unravel_index(np.lexsort((np.arange(ref.size), -key.ravel()))[:k], ref.shape)
    return list(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("by_abs", [True, False])
def test_top_feature_weights_equal_brute_force(by_abs: bool) -> None:
    m = ln_model()
    R = Ref(m)
    s, t = sae("s0", HookKind.RESID_PRE, 0, F=60), transcoder("t2", 2, F=50, seed=3)
    bs, bt = bind(s, m), bind(t, m)
    cases = {
        "resid": (virtual_weights(bs, bt), R.enc(t) @ s.W_dec[0]),
        "layer": (layer_virtual_weights(bs, bt, 1), sum(R.enc(t) @ R.W_O(1, h) @ R.W_V(1, h) @ s.W_dec[0] for h in range(3))),
        "era": (era(virtual_weights(bs, bt), np.linspace(0, 1, 60)), (R.enc(t) @ s.W_dec[0]) * np.linspace(0, 1, 60)),
    }
    for name, (mp, ref) in cases.items():
        for k in (1, 7, 40):
            top = top_feature_weights(mp, k, by_abs=by_abs)
            assert [(e.row.index, e.col.index) for e in top] == brute_top(ref, k, by_abs), name
            close(top.values, ref[tuple(np.array(brute_top(ref, k, by_abs)).T)])
            assert top.exact and top.certificates[0].n_unevaluated == 0
            rot = top_feature_weights(mp, k, by_abs=by_abs, rotate=True)  # ranked from the factored SVD
            assert [(e.row, e.col) for e in rot] == [(e.row, e.col) for e in top] and np.array_equal(rot.values, top.values)
            assert all(isinstance(e.row, FeatureId) and e.row.dictionary == "t2" for e in top)
    assert "exact" in str(top) and "t2#" in str(top)


def test_certificate_is_true_for_every_unevaluated_entry() -> None:
    m = ln_model()
    s = sae("s0", HookKind.RESID_PRE, 0, F=40)
    # encoder rows of decaying norms: the norm bound excludes most rows unevaluated
    t = sae("s2", HookKind.RESID_PRE, 2, F=80, seed=4, enc_scale=0.8 ** np.arange(80))
    vw = virtual_weights(bind(s, m), bind(t, m))
    ref = t.W_enc[0] @ s.W_dec[0]
    for kwargs, want_exact in ((dict(max_bytes=8 * 40 * 2), True), (dict(max_rows=5), None)):
        top = top_feature_weights(vw, 10, **kwargs)
        cert = top.certificates[0]
        assert cert.rows_scanned < cert.n_rows and cert.unscanned_rows.size == cert.n_rows - cert.rows_scanned
        assert cert.n_unevaluated == cert.unscanned_rows.size * 40
        left = np.abs(ref[cert.unscanned_rows])
        assert left.max() <= cert.bound  # the bound holds for every entry not evaluated
        if cert.exact:
            assert cert.bound < cert.kth
            assert [(e.row.index, e.col.index) for e in top] == brute_top(ref, 10, True)
        else:  # the top of the rows evaluated
            scanned = np.setdiff1d(np.arange(80), cert.unscanned_rows)
            sub = brute_top(ref[scanned], 10, True)
            assert [(e.row.index, e.col.index) for e in top] == [(int(scanned[i]), j) for i, j in sub]
            assert "NOT exact" in str(cert)
        if want_exact:
            assert cert.exact and "exact" in top.certificate()


def test_disjoint_supports_score_exactly_zero() -> None:
    m = ln_model()
    rng = np.random.default_rng(3)
    F = 20
    W_dec = rng.normal(size=(16, F))
    W_dec[8:, :10] = 0.0  # features 0..9 write only coordinates 0..7
    W_enc = rng.normal(size=(F, 16))
    W_enc[:10, :8] = 0.0  # target features 0..9 read only coordinates 8..15
    h0, h2 = Hook(HookKind.RESID_PRE, 0), Hook(HookKind.RESID_PRE, 2)
    s = Dictionary("src", K.SAE, (h0,), (h0,), [rng.normal(size=(F, 16))], np.zeros(F), [W_dec], [np.zeros(16)], ReLU())
    t = Dictionary("tgt", K.SAE, (h2,), (h2,), [W_enc], np.zeros(F), [rng.normal(size=(16, F))], [np.zeros(16)], ReLU())
    vw = virtual_weights(bind(s, m), bind(t, m))
    dense = vw.to_dense()
    assert np.all(dense[:10, :10] == 0.0) and np.all(dense[10:, 10:] != 0.0)
    rows, cols = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    assert np.all(weight_entries(vw, rows, cols) == 0.0)
    every = top_feature_weights(vw, F * F)
    zeros = [e for e in every if e.row.index < 10 and e.col.index < 10]
    assert len(zeros) == 100 and all(e.value == 0.0 for e in zeros)
    assert all(e.value == 0.0 for e in every[-100:])


# --- ERA / TWERA ------------------------------------------------------------------------------------
def test_era_twera_against_brute_force_on_a_batch() -> None:
    m = ln_model()
    R = Ref(m)
    s = sae("s1", HookKind.RESID_PRE, 1, seed=1)
    t = transcoder("t1", 1, seed=2, activation=TopK(6))
    post = sae("p1", HookKind.RESID_POST, 1, seed=3, F=20)
    tokens = np.random.default_rng(0).integers(0, m.config.d_vocab, size=(6, 9))
    stats = coactivation_stats(m, [s, bind(t, m), post], tokens, batch_size=4, skip_first=1)
    # brute force: one sequence at a time, the hooks computed from the parameters
    acts = {"s1": [], "t1": [], "p1": []}
    eps = m.config.ln_eps
    for seq in tokens:
        _, cache = m.run(seq)
        x = cache.resid_mid[1]
        xc = x - x.mean(axis=-1, keepdims=True)
        mlp_in = xc / np.sqrt((xc**2).mean(axis=-1, keepdims=True) + eps) * m.params["blocks.1.ln2.w"] + m.params["blocks.1.ln2.b"]
        acts["s1"].append(s.encode(cache.resid[1])[1:])
        acts["t1"].append(t.encode(mlp_in)[1:])
        acts["p1"].append(post.encode(cache.resid[2])[1:])
    A = {k: np.concatenate(v) for k, v in acts.items()}
    n = A["s1"].shape[0]
    assert stats.n_tokens == n == 6 * 8
    for k in A:
        close(stats.mean(k), A[k].mean(axis=0))
    for a in A:
        for b in A:
            close(stats.comoment(a, b).toarray(), A[a].T @ A[b] / n)
    vw = virtual_weights(bind(s, m), bind(t, m))
    V = R.enc(t) @ s.W_dec[0]
    close(era(vw, stats).to_dense(), V * A["s1"].mean(axis=0)[None, :])
    mean_t = A["t1"].mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.where(mean_t[:, None] > 0, V * (A["t1"].T @ A["s1"] / n) / mean_t[:, None], 0.0)
    got = twera(vw, stats)
    assert sp.issparse(got) and got.nnz == np.count_nonzero(ref)
    close(got.toarray(), ref)
    close(twera(vw, comoment=A["t1"].T @ A["s1"] / n, target_mean=mean_t).toarray(), ref)
    # statistics supplied as activations
    close(twera(vw, CoactivationStats.from_activations(A)).toarray(), ref)
    for by_abs in (True, False):
        top = top_twera(vw, stats, 12, by_abs=by_abs)
        want = brute_top(ref, 12, by_abs)  # the zeros (stored or not) rank too, in (row, column) order
        assert [(e.row.index, e.col.index) for e in top] == want
        assert top.exact and "co-active" in top.certificate()
    # the layer's other paths (through heads) weigh the same statistics
    lv = layer_virtual_weights(bind(s, m), bind(t, m), 1)
    Vh = sum(R.enc(t) @ R.W_O(1, h) @ R.W_V(1, h) @ s.W_dec[0] for h in range(3))
    close(twera(lv, stats).toarray(), np.where(ref != 0, Vh * ref / np.where(V != 0, V, 1), 0.0), rtol=1e-10)


def test_coactivation_stats_of_a_cross_layer_transcoder_and_errors() -> None:
    m = ln_model()
    cl = clt("c", 3, F=10)
    tokens = np.random.default_rng(1).integers(0, m.config.d_vocab, size=(3, 6))
    stats = coactivation_stats(m, cl, tokens)
    assert sorted(stats.means) == ["c0", "c1", "c2"] and stats.comoment("c2", "c0").shape == (10, 10)
    folded = ca.fold_layer_norm(m)
    with pytest.raises(ca.ConfigError, match="folded"):
        coactivation_stats(folded, cl, tokens)
    with pytest.raises(ca.ConfigError, match="bound to"):
        coactivation_stats(folded, bind(sae("x", HookKind.RESID_PRE, 0), m), tokens)
    with pytest.raises(ca.ShapeError):
        coactivation_stats(m, cl, tokens[0])
    vw = virtual_weights(bind(cl, m)[0], bind(cl, m)[1])
    with pytest.raises(ca.InvalidArgumentError, match="no co-activation statistics"):
        twera(vw, coactivation_stats(m, [cl[0]], tokens))
    with pytest.raises(ca.ShapeError):
        era(vw, np.ones(3))


# --- validation -------------------------------------------------------------------------------------
def test_inputs_are_checked_with_clear_errors() -> None:
    m, other = ln_model(), ln_model(seed=2)
    s, t = sae("s0", HookKind.RESID_PRE, 0), transcoder("t1", 1)
    with pytest.raises(ca.InvalidArgumentError, match="not bound to a model"):
        virtual_weights(s, bind(t, m))
    with pytest.raises(ca.ConfigError, match="same model"):
        virtual_weights(bind(s, m), bind(t, other))
    with pytest.raises(ca.ConfigError, match="another model"):
        head_virtual_weights(bind(s, m), bind(t, m), other.head(0, 0))
    with pytest.raises(ca.InvalidArgumentError, match="no residual path"):
        virtual_weights(bind(t, m), bind(s, m))  # the target reads before the source writes
    with pytest.raises(ca.InvalidArgumentError, match="no residual path"):
        virtual_weights(bind(s, m), bind(s, m))  # the same hook: not strictly before
    with pytest.raises(ca.ConfigError, match="not a linear function"):
        virtual_weights(bind(s, m), bind(sae("o", HookKind.MLP_OUT, 2), m))
    with pytest.raises(ca.InvalidArgumentError, match="layer=7"):
        layer_virtual_weights(bind(s, m), bind(t, m), 7)
    with pytest.raises(ca.InvalidArgumentError, match="delta"):
        feature_qk(bind(s, m), bind(s, m), (1, 0), 0.5)
    with pytest.raises(ca.InvalidArgumentError, match="one side must be"):
        feature_qk("embed", "pos", (1, 0))
    with pytest.raises(ca.InvalidArgumentError):
        top_feature_weights(np.eye(3), 2)
    with pytest.raises(ca.InvalidArgumentError):
        top_feature_weights(virtual_weights(bind(s, m), bind(t, m)), 0)
    with pytest.raises(ca.InvalidArgumentError, match="by="):
        top_feature_logits(bind(s, m), 3, by="largest")


# --- review of issue 28: certificates, the feeding rule, names, factor budgets, TWERA's zeros ------
def factored(L: np.ndarray, V: np.ndarray, a: str = "A", b: str = "B") -> ca.LinearMap:
    """The map ``L @ V`` (``a`` -> ``b``) held as its two factors."""
    mid = Space("mid", L.shape[1])
    return compose(Dense(L, mid, Space(b, L.shape[0]), "L"), Dense(V, Space(a, V.shape[1]), mid, "V"))


def adversarial_maps() -> dict[str, tuple[ca.LinearMap, np.ndarray]]:
    """Maps whose unevaluated rows are zero, tie the k-th value at 0, or are all negative."""
    rng = np.random.default_rng(0)
    out = {}

    def put(name: str, m: ca.LinearMap) -> None:
        out[name] = (m, m.to_dense())

    L = np.zeros((6, 2))
    L[5] = [1, 0]
    put("tie at zero", factored(L, np.array([[0.0, 1, 2, 3, 4], [1, 1, 1, 1, 1]])))
    L = np.zeros((6, 2))
    L[5] = [-1, 0]
    put("zero rows, negative k-th", factored(L, np.array([[1.0, 1, 2, 3, 4], [1, 1, 1, 1, 1]])))
    L = np.zeros((6, 2))
    L[0] = [1, 0]
    V = rng.normal(size=(2, 5))
    V[:, 0] = 0
    put("zero rows, fewer nonzero than k", factored(L, V))
    put("all negative", factored(-np.abs(rng.normal(size=(8, 2))), np.abs(rng.normal(size=(2, 9)))))
    put("all ties", factored(np.ones((10, 2)), np.ones((2, 10))))
    put("tiny", factored(rng.normal(size=(3, 1)), rng.normal(size=(1, 3))))
    put("sum", add(factored(rng.normal(size=(20, 2)) * 0.7 ** np.arange(20)[:, None], rng.normal(size=(2, 30))),
                   factored(rng.normal(size=(20, 3)), rng.normal(size=(3, 30)))))
    return out


@pytest.mark.parametrize("by_abs", [True, False])
def test_every_printed_certificate_is_true(by_abs: bool) -> None:
    """Adversarial maps, every budget: an exact result is the brute-force ranking, and every
    unevaluated entry satisfies the printed inequality (``<= bound``, and ``< k-th`` when exact)."""
    for name, (m, ref) in adversarial_maps().items():
        key = np.abs(ref) if by_abs else ref
        for k in (1, 5, 12, ref.size, ref.size + 3):
            for kw in ({}, {"max_rows": 1}, {"max_rows": 2}, {"max_rows": 3}, {"max_rows": 2, "rotate": True}):
                top = top_feature_weights(m, k, by_abs=by_abs, **kw)
                got = [(e.row.index, e.col.index) for e in top]
                assert len(got) == min(k, ref.size)
                cert = top.certificates[0]
                text = str(cert)
                left = key[cert.unscanned_rows].ravel()
                assert cert.n_unevaluated == left.size
                if left.size:  # the bound holds for every entry not evaluated, also as printed
                    printed = float(re.search(r"each <= (\S+?)[ ,]", text)[1])
                    assert np.abs(ref[cert.unscanned_rows]).max() <= cert.bound <= printed
                if kw.get("rotate"):  # ranked from the SVD's rounded factors: ties may break otherwise
                    want = brute_top(ref, k, by_abs) if cert.exact else None
                    if want is not None:
                        np.testing.assert_allclose([key[ij] for ij in got], [key[ij] for ij in want], atol=1e-12)
                elif cert.exact:
                    assert got == brute_top(ref, k, by_abs), (name, k, kw)
                    assert top.exact and "NOT" not in text
                    if left.size:
                        assert left.max() <= cert.bound < cert.kth == key[got[-1]]
                        nums = re.search(r"each <= (\S+) < the k-th value (\S+)\)", text)
                        assert left.max() <= float(nums[1]) < float(nums[2]) <= cert.kth  # true as printed
                else:
                    assert "NOT exact" in text and not top.exact
                    assert cert.bound >= cert.kth  # an unevaluated entry could rank, as it says
                    if not kw.get("rotate"):
                        scanned = np.setdiff1d(np.arange(ref.shape[0]), cert.unscanned_rows)
                        sub = brute_top(ref[scanned], k, by_abs)
                        assert got == [(int(scanned[i]), j) for i, j in sub], (name, k, kw)


def test_a_printed_certificate_keeps_a_close_bound_and_kth_apart() -> None:
    from circuitalg.features.circuits import WeightCertificate

    c = WeightCertificate("M", 10, 3, 4, np.arange(4, 10), 1.00001, 1.00002, True)
    nums = re.search(r"each <= (\S+) < the k-th value (\S+)\)", str(c))
    assert 1.00001 <= float(nums[1]) < float(nums[2]) <= 1.00002


def test_residual_hook_at_the_mlp_input_depth_feeds_the_mlp() -> None:
    """resid_mid L is what MLP L reads (through ln2); the same depth on the stream, or an output
    at its own depth, is no path."""
    m = ln_model()
    R = Ref(m)
    mid = sae("mid1", HookKind.RESID_MID, 1)
    b_mid = bind(mid, m)
    for reads in (HookKind.MLP_IN, HookKind.MLP_NORMALIZED):
        tc = transcoder(f"tc1{reads.name}", 1, reads=reads, seed=2)
        close(virtual_weights(b_mid, bind(tc, m)).to_dense(), R.enc(tc) @ mid.W_dec[0])
    tc1 = bind(transcoder("tc1", 1, seed=2), m)
    no_path = [
        (b_mid, bind(sae("mid1b", HookKind.RESID_MID, 1, seed=3), m)),  # two stream hooks at one depth
        (bind(sae("post0", HookKind.RESID_POST, 0), m), bind(sae("pre1", HookKind.RESID_PRE, 1, seed=3), m)),
        (b_mid, bind(transcoder("tc0", 0, seed=4), m)),  # the MLP before it
        (bind(transcoder("tc1w", 1, seed=5), m), tc1),  # an MLP's output does not feed its own input
    ]
    for s, t in no_path:
        with pytest.raises(ca.InvalidArgumentError, match="no residual path"):
            virtual_weights(s, t)
    # an attention output feeds the MLP of its layer; a resid_pre hook feeds that layer's heads,
    # a resid_mid hook does not
    attn = sae("a1", HookKind.ATTN_OUT, 1, seed=6)
    close(virtual_weights(bind(attn, m), tc1).to_dense(), R.enc(tc1.dictionary) @ attn.W_dec[0])
    with pytest.raises(ca.InvalidArgumentError, match="none before layer 1"):
        head_virtual_weights(b_mid, tc1, (1, 0))
    with pytest.raises(ca.InvalidArgumentError, match="none before layer 1"):
        feature_qk(b_mid, b_mid, (1, 0))


def test_repeated_dictionary_names_are_refused() -> None:
    m = ln_model()
    a, a2 = bind(sae("s", HookKind.RESID_PRE, 0), m), bind(sae("s", HookKind.RESID_PRE, 0, seed=9), m)
    t, t2 = bind(transcoder("t", 1, seed=1), m), bind(transcoder("t", 2, seed=2), m)
    for src, tgt in (([a, a2], [t]), ([a], [t, t2]), ([a, a], [t])):
        with pytest.raises(ca.InvalidArgumentError, match="names repeat"):
            virtual_weights(src, tgt)
    same = bind(sae("t", HookKind.RESID_PRE, 0, seed=3), m)  # a source named like a different target
    with pytest.raises(ca.InvalidArgumentError, match="two different dictionaries are named 't'"):
        virtual_weights([same], [t2])
    with pytest.raises(ca.InvalidArgumentError, match="two different"):
        virtual_weights(same, t2)
    with pytest.raises(ca.InvalidArgumentError, match="two different"):
        head_virtual_weights(same, t, (1, 0))
    with pytest.raises(ca.InvalidArgumentError, match="two different"):
        layer_virtual_weights(same, t, 1)
    with pytest.raises(ca.InvalidArgumentError, match="two different"):
        feature_qk(same, bind(sae("t", HookKind.RESID_PRE, 1, seed=4), m), (1, 0))
    # one dictionary on both sides is fine (a cross-layer transcoder against itself)
    bc = bind(clt("c", 3), m)
    assert sorted(virtual_weights(bc, bc)) == [("c0", "c1"), ("c0", "c2"), ("c1", "c2")]


def test_float32_factors_are_ranked_without_float64_copies_and_the_budget_is_named() -> None:
    rng = np.random.default_rng(4)
    F_t, d, F_s = 20000, 128, 300
    enc = rng.standard_normal((F_t, d), dtype=np.float32)
    dec = rng.standard_normal((d, F_s), dtype=np.float32)
    m = compose(Dense(enc, Space("resid", d), Space("t", F_t), "enc"), Dense(dec, Space("s", F_s), Space("resid", d), "dec"))
    with pytest.raises(ca.TooLargeError, match="factor_bytes"):
        top_feature_weights(m, 5, factor_bytes=enc.nbytes - 1)
    tracemalloc.start()
    try:
        top = top_feature_weights(m, 5, factor_bytes=enc.nbytes, max_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < enc.nbytes  # the float32 encoder is not copied to float64 (that alone is 2x its size)
    ref = enc.astype(np.float64) @ dec.astype(np.float64)
    assert top.exact and [(e.row.index, e.col.index) for e in top] == brute_top(ref, 5, True)
    np.testing.assert_allclose(top.values, [ref[e.row.index, e.col.index] for e in top], rtol=1e-13)
    # a float64 factor counts 8 bytes an entry; weight_factors names its own keyword
    m64 = compose(Dense(enc.astype(np.float64), Space("resid", d), Space("t", F_t), "enc"),
                  Dense(dec.astype(np.float64), Space("s", F_s), Space("resid", d), "dec"))
    with pytest.raises(ca.TooLargeError, match="factor_bytes"):
        top_feature_weights(m64, 5, factor_bytes=enc.nbytes)
    assert [(e.row, e.col) for e in top_feature_weights(m64, 5, factor_bytes=2 * enc.nbytes)] == [(e.row, e.col) for e in top]
    with pytest.raises(ca.TooLargeError, match="max_bytes"):
        weight_factors(m64, max_bytes=enc.nbytes)


def test_top_twera_ranks_the_unstored_zeros() -> None:
    rng = np.random.default_rng(0)
    L, V = -np.abs(rng.normal(size=(4, 2))), np.abs(rng.normal(size=(2, 5)))
    m = factored(L, V, "S", "T")
    C = sp.csr_array(np.array([[0.5, 0, 0, 0, 0], [0, 0.2, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0.1, 0]]))
    mt = np.array([1.0, 1.0, 0.0, 1.0])
    dense = twera(m, comoment=C, target_mean=mt).toarray()
    assert (dense <= 0).all() and (dense < 0).sum() == 3
    for by_abs in (False, True):
        for k in (1, 3, 18, 20, 25):
            top = top_twera(m, comoment=C, target_mean=mt, k=k, by_abs=by_abs)
            assert [(e.row.index, e.col.index) for e in top] == brute_top(dense, k, by_abs), (by_abs, k)
            np.testing.assert_array_equal(top.values, [dense[e.row.index, e.col.index] for e in top])
            assert top.exact and "every other entry is 0" in top.certificate()
