"""Feature circuits do not depend on the residual basis or on folded norms: rotating a model's
residual stream (ca.rotate_residual) together with its dictionaries, or folding its norms
(ca.fold_layer_norm), leaves every feature number unchanged to 1e-12."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from model_helpers import random_rotation
from test_feature_circuits import clt, close, llama_like, ln_model, sae, transcoder

import circuitalg as ca
from circuitalg.features import Dictionary, DictionarySet, HookKind, TopK
from circuitalg.features.binding import bind
from circuitalg.features.circuits import (
    feature_logits,
    feature_qk,
    head_virtual_weights,
    layer_virtual_weights,
    position_features,
    token_features,
    top_feature_logits,
    top_feature_weights,
    virtual_weights,
)
from circuitalg.features.coactivation import coactivation_stats, era, twera

#: hooks whose space turns with the residual basis (RMS-normalised MLP input: the norm commutes
#: with an orthogonal map; a layer norm's with one that fixes the all-ones vector)
_TURNING = {HookKind.RESID_PRE, HookKind.RESID_MID, HookKind.RESID_POST, HookKind.MLP_NORMALIZED, HookKind.MLP_OUT,
            HookKind.ATTN_OUT}


def rotate_dict(d: Dictionary, Q: np.ndarray) -> Dictionary:
    """The dictionary in the residual basis ``Q r``: encoders ``W_enc Qᵀ``, decoders ``Q W_dec``,
    decoder biases ``Q b_dec``."""
    assert all(h.kind in _TURNING for h in d.reads + d.writes)
    return dataclasses.replace(
        d, W_enc=tuple(W @ Q.T for W in d.W_enc), W_dec=tuple(Q @ W for W in d.W_dec), b_dec=tuple(Q @ b for b in d.b_dec),
        W_skip=None if d.W_skip is None else Q @ d.W_skip @ Q.T,
    )


def rotate_set(s: DictionarySet, Q: np.ndarray) -> DictionarySet:
    return DictionarySet(s.name, [rotate_dict(m, Q) for m in s])


def feature_numbers(model: ca.Transformer, dicts: dict, clt_set: DictionarySet | None = None) -> dict:
    """Every feature number of the circuits module between ``dicts`` (``{"src": .., "tgt": ..}``)."""
    b = {k: bind(d, model) for k, d in dicts.items()}
    src, tgt = b["src"], b["tgt"]
    c = model.config
    out = {"vw": virtual_weights(src, tgt).to_dense(), "logits": feature_logits(src).to_dense(),
           "tokens": token_features(tgt).to_dense()}
    last = c.n_layers - 1
    for h in range(c.n_heads):
        out[f"head{h}"] = head_virtual_weights(src, tgt, (last, h)).to_dense()
        for delta in (0, -3):
            out[f"qk{h}/{delta}"] = feature_qk(src, src, (last, h), delta).to_dense()
            out[f"tokqk{h}/{delta}"] = feature_qk("embed", src, (last, h), delta).to_dense()
    out["layer"] = layer_virtual_weights(src, tgt, last).to_dense()
    if model.W_pos is not None:
        out["pos"] = position_features(tgt).to_dense()
        out["posqk"] = feature_qk(src, "pos", (last, 0)).to_dense()
    tops = {
        "top_vw": top_feature_weights(virtual_weights(src, tgt), 12),
        "top_layer": top_feature_weights(layer_virtual_weights(src, tgt, last), 12, by_abs=False),
        "top_era": top_feature_weights(era(virtual_weights(src, tgt), np.linspace(0, 2, src.dictionary.n_features)), 5),
        "top_tokens": top_feature_weights(token_features(tgt), 7),
    }
    if clt_set is not None:
        pairs = virtual_weights(bind(clt_set, model), bind(clt_set, model))
        for key, m in pairs.items():
            out[f"clt{key}"] = m.to_dense()
        tops["top_clt"] = top_feature_weights(pairs, 9)
    for name, top in tops.items():
        out[name + "/ids"] = [(e.row, e.col) for e in top]
        out[name] = top.values
        assert top.exact
    tl = top_feature_logits(src, 4)
    out["logit_tokens/ids"] = tl.tokens.tolist()
    out["logit_tokens"] = tl.values
    return out


def assert_same(a: dict, b: dict, rtol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith("/ids"):
            assert a[k] == b[k], k
        else:
            close(b[k], np.asarray(a[k]), rtol)


def llama_dicts(d: int = 16) -> tuple[dict, DictionarySet]:
    src = sae("s0", HookKind.RESID_PRE, 0, d=d, seed=1)
    tgt = transcoder("t1", 1, reads=HookKind.MLP_NORMALIZED, d=d, seed=2, activation=TopK(4))
    return {"src": src, "tgt": tgt}, clt("c", 2, reads=HookKind.MLP_NORMALIZED, F=8)


def test_rotating_an_rms_rotary_gqa_model_with_its_dictionaries() -> None:
    model = ca.fold_layer_norm(llama_like())  # RMSNorm commutes with Q once its weight is folded
    assert model.config.normalization == "RMSPre"
    Q = random_rotation(16, seed=4)
    rotated = ca.rotate_residual(model, Q)
    dicts, cl = llama_dicts()
    before = feature_numbers(model, dicts, cl)
    after = feature_numbers(rotated, {k: rotate_dict(d, Q) for k, d in dicts.items()}, rotate_set(cl, Q))
    assert_same(before, after)
    # the activations on data too: the statistics and TWERA are unchanged
    tokens = np.random.default_rng(0).integers(0, 17, size=(3, 7))
    s1 = coactivation_stats(model, [dicts["src"], dicts["tgt"], cl], tokens)
    s2 = coactivation_stats(rotated, [rotate_dict(dicts["src"], Q), rotate_dict(dicts["tgt"], Q), rotate_set(cl, Q)], tokens)
    for name in s1.means:
        close(s2.mean(name), s1.mean(name), 1e-10)
    vw1 = virtual_weights(bind(dicts["src"], model), bind(dicts["tgt"], model))
    vw2 = virtual_weights(bind(rotate_dict(dicts["src"], Q), rotated), bind(rotate_dict(dicts["tgt"], Q), rotated))
    t1, t2 = twera(vw1, s1), twera(vw2, s2)
    assert t1.nnz == t2.nnz > 0
    close(t2.toarray(), t1.toarray(), 1e-10)


def test_rotating_an_attention_only_model_with_learned_positions() -> None:
    model = ca.zoo.load("attn2l")
    Q = random_rotation(64, seed=1)
    src = sae("a1", HookKind.RESID_PRE, 1, d=64, F=24, seed=3)
    tgt = sae("a2", HookKind.RESID_POST, 1, d=64, F=20, seed=4)
    before = feature_numbers(model, {"src": src, "tgt": tgt})
    after = feature_numbers(ca.rotate_residual(model, Q), {"src": rotate_dict(src, Q), "tgt": rotate_dict(tgt, Q)})
    assert_same(before, after)


def test_rotating_a_layer_norm_model_with_a_basis_change_that_fixes_the_ones_vector() -> None:
    model = ca.fold_layer_norm(ln_model())
    d = 16
    H = np.linalg.qr(np.column_stack([np.ones(d), np.random.default_rng(0).normal(size=(d, d - 1))]))[0]
    inner = np.eye(d)
    inner[1:, 1:] = random_rotation(d - 1, seed=2)
    Q = H @ inner @ H.T  # Q 1 = 1
    assert np.allclose(Q @ np.ones(d), np.ones(d))
    src = sae("s1", HookKind.RESID_MID, 1, seed=5)
    tgt = transcoder("t2", 2, reads=HookKind.MLP_NORMALIZED, seed=6)
    cl = clt("c", 3, reads=HookKind.MLP_NORMALIZED, F=6)
    before = feature_numbers(model, {"src": src, "tgt": tgt}, cl)
    after = feature_numbers(ca.rotate_residual(model, Q), {"src": rotate_dict(src, Q), "tgt": rotate_dict(tgt, Q)},
                            rotate_set(cl, Q))
    assert_same(before, after)


@pytest.mark.parametrize("make", [ln_model, llama_like])
def test_folding_norms_changes_no_feature_number(make) -> None:
    model = make()
    folded = ca.fold_layer_norm(model)
    L = model.config.n_layers
    src = sae("s0", HookKind.RESID_PRE, 0, seed=7)
    tgt = transcoder("t", L - 1, reads=HookKind.MLP_NORMALIZED, seed=8)
    cl = clt("c", L, reads=HookKind.MLP_NORMALIZED, F=6)
    assert_same(feature_numbers(model, {"src": src, "tgt": tgt}, cl), feature_numbers(folded, {"src": src, "tgt": tgt}, cl))
    tokens = np.random.default_rng(2).integers(0, model.config.d_vocab, size=(2, 6))
    a, b = coactivation_stats(model, [src, tgt], tokens), coactivation_stats(folded, [src, tgt], tokens)
    for name in a.means:
        close(b.mean(name), a.mean(name), 1e-10)
    # a dictionary that reads the MLP input after ln2's weight cannot be read into the folded model
    # (raised by bind or, at the latest, by the first map that reads through its encoder)
    mlp_in = transcoder("m", L - 1, reads=HookKind.MLP_IN)
    assert virtual_weights(bind(src, model), bind(mlp_in, model)).shape == (30, 30)
    with pytest.raises(ca.ConfigError, match="folded"):
        virtual_weights(bind(src, folded), bind(mlp_in, folded))


def test_rotation_refuses_unfolded_norms_so_the_comparison_is_never_vacuous() -> None:
    with pytest.raises(ca.ConfigError):
        ca.rotate_residual(llama_like(), random_rotation(16))
