"""The dictionary core: hooks, activations, Dictionary and binding to a model, against numpy."""

from __future__ import annotations

import numpy as np
import pytest

import circuitalg as ca
from circuitalg.errors import ConfigError, InvalidArgumentError, ShapeError
from circuitalg.features import (
    BatchTopK, Dictionary, DictionaryKind, DictionarySet, Hook, HookKind, JumpReLU, ReLU, TopK,
)
from circuitalg.features.binding import bind
from model_helpers import random_model


def _sae(d: int, F: int, hook: Hook, *, seed: int = 0, act=None, pre_shift: bool = False, **kw) -> Dictionary:
    r = np.random.default_rng(seed)
    return Dictionary(
        "sae", DictionaryKind.SAE, (hook,), (hook,), [r.normal(size=(F, d))], r.normal(size=F),
        [r.normal(size=(d, F))], [r.normal(size=d)], act or ReLU(), pre_shift=pre_shift, **kw,
    )


def test_hook_names_roundtrip():
    for kind in HookKind:
        h = Hook(kind, 7)
        assert Hook.parse(h.hook_name) == h
    assert Hook.parse("blocks.3.hook_mlp_in") == Hook(HookKind.RESID_MID, 3)  # before ln2
    assert Hook.parse("blocks.3.hook_z") == Hook(HookKind.ATTN_Z, 3)
    assert Hook(HookKind.RESID_PRE, 2).space(8) == ca.Space("resid", 8)
    assert Hook(HookKind.MLP_IN, 2).space(8).name == "mlp_in.2"
    assert Hook(HookKind.RESID_POST, 1).depth == Hook(HookKind.RESID_PRE, 2).depth
    assert Hook(HookKind.MLP_OUT, 1).depth < Hook(HookKind.RESID_POST, 1).depth
    with pytest.raises(InvalidArgumentError, match="unknown hook name"):
        Hook.parse("blocks.3.hook_nothing")
    with pytest.raises(InvalidArgumentError):
        Hook(HookKind.MLP_IN, -1)


def test_activations_match_their_definitions():
    r = np.random.default_rng(1)
    pre = r.normal(size=(6, 9))
    np.testing.assert_array_equal(ReLU()(pre), np.maximum(pre, 0))
    t = r.normal(size=9) * 0.3
    jr = JumpReLU(t)(pre)
    np.testing.assert_array_equal(jr, np.where(pre > t, pre, 0))
    # strict: a value equal to its threshold is off
    at = pre.copy()
    at[0, 0] = t[0]
    assert JumpReLU(t)(at)[0, 0] == 0
    tk = TopK(3)(pre)
    for row, out in zip(pre, tk):
        keep = np.argsort(-row)[:3]
        expect = np.zeros_like(row)
        expect[keep] = np.maximum(row[keep], 0)
        np.testing.assert_array_equal(out, expect)
    # ties go to the lower index
    tie = np.array([[1.0, 2.0, 2.0, 2.0]])
    np.testing.assert_array_equal(TopK(2)(tie), [[0, 2.0, 2.0, 0]])
    # ranking by decoder norm keeps the raw values
    w = np.array([1.0, 10.0, 1.0, 1.0])
    np.testing.assert_array_equal(TopK(1, rank_weights=w)(np.array([[3.0, 1.0, 2.0, 0.5]])), [[0, 1.0, 0, 0]])
    bt = BatchTopK(0.25)(pre)
    np.testing.assert_array_equal(bt, np.where(pre > 0.25, pre, 0))
    assert TopK(3)(pre.astype(np.float32)).dtype == np.float32
    with pytest.raises(InvalidArgumentError):
        TopK(0)


def test_dictionary_forward_equals_numpy():
    r = np.random.default_rng(2)
    h = Hook(HookKind.RESID_PRE, 1)
    d = _sae(8, 20, h, act=TopK(4), pre_shift=True)
    x = r.normal(size=(5, 8))
    pre = (x - d.b_dec[0]) @ d.W_enc[0].T + d.b_enc
    f = TopK(4)(pre)
    np.testing.assert_allclose(d.pre_activations(x), pre, rtol=0, atol=0)
    np.testing.assert_array_equal(d.encode(x), f)
    np.testing.assert_allclose(d.forward(x), f @ d.W_dec[0].T + d.b_dec[0], rtol=1e-15)
    # a skip transcoder adds its linear map
    hi, ho = Hook(HookKind.MLP_IN, 0), Hook(HookKind.MLP_OUT, 0)
    Ws = r.normal(size=(8, 8))
    t = Dictionary("tc", DictionaryKind.SKIP_TRANSCODER, (hi,), (ho,), [d.W_enc[0]], d.b_enc, [d.W_dec[0]],
                   [d.b_dec[0]], ReLU(), W_skip=Ws)
    np.testing.assert_allclose(t.forward(x), t.decode(t.encode(x)) + x @ Ws.T, rtol=1e-15)
    assert d.encoder().shape == (20, 8) and d.decoder().shape == (8, 20)
    assert d.encoder().codomain == d.feature_space == ca.Space("sae", 20)


def test_crosscoder_sums_its_encoders():
    r = np.random.default_rng(3)
    hs = (Hook(HookKind.RESID_PRE, 0), Hook(HookKind.RESID_PRE, 1))
    We = [r.normal(size=(12, 6)) for _ in hs]
    Wd = [r.normal(size=(6, 12)) for _ in hs]
    bd = [r.normal(size=6) for _ in hs]
    c = Dictionary("xc", DictionaryKind.CROSSCODER, hs, hs, We, r.normal(size=12), Wd, bd, ReLU())
    xs = [r.normal(size=(4, 6)) for _ in hs]
    f = np.maximum(xs[0] @ We[0].T + xs[1] @ We[1].T + c.b_enc, 0)
    np.testing.assert_allclose(c.encode(xs), f, rtol=1e-14)
    outs = c.decode(f)
    assert len(outs) == 2
    np.testing.assert_allclose(outs[1], f @ Wd[1].T + bd[1], rtol=1e-14)
    with pytest.raises(ShapeError, match="one \\(n, d\\) array per hook"):
        c.encode(xs[0])


def test_bad_dictionaries_are_named():
    h = Hook(HookKind.RESID_PRE, 0)
    r = np.random.default_rng(4)
    with pytest.raises(ShapeError, match="transpose"):
        Dictionary("bad", DictionaryKind.SAE, (h,), (h,), [r.normal(size=(6, 10))], r.normal(size=10),
                   [r.normal(size=(6, 10))], [r.normal(size=6)], ReLU())
    with pytest.raises(ShapeError, match="threshold"):
        _sae(6, 10, h, act=JumpReLU(np.zeros(9)))
    with pytest.raises(InvalidArgumentError, match="pre_shift"):
        Dictionary("bad", DictionaryKind.TRANSCODER, (h,), (Hook(HookKind.MLP_OUT, 0),), [r.normal(size=(10, 6))],
                   r.normal(size=10), [r.normal(size=(6, 10))], [r.normal(size=6)], ReLU(), pre_shift=True)
    with pytest.raises(InvalidArgumentError, match="preprocessing"):
        _sae(6, 10, h, preprocessing={"fold_everything"})
    for reserved in ("resid", "vocab", "pos", "L0H1", "mlp2", "mlp_in.3"):
        with pytest.raises(InvalidArgumentError, match="model space"):
            Dictionary(reserved, DictionaryKind.SAE, (h,), (h,), [r.normal(size=(10, 6))], r.normal(size=10),
                       [r.normal(size=(6, 10))], [r.normal(size=6)], ReLU())
    with pytest.raises(InvalidArgumentError, match="member names"):
        DictionarySet("set", [_sae(6, 10, h), _sae(6, 10, h)])


def test_binding_checks_the_model():
    m = random_model(d_model=16, d_mlp=24, normalization="LN")
    with pytest.raises(ShapeError, match="d_model=16"):
        bind(_sae(12, 10, Hook(HookKind.RESID_PRE, 0)), m)
    with pytest.raises(ConfigError, match="2 layers"):
        bind(_sae(16, 10, Hook(HookKind.RESID_PRE, 5)), m)
    rms = random_model(d_model=16, d_mlp=24, normalization="RMS")
    with pytest.raises(ConfigError, match="center_writing_weights"):
        bind(_sae(16, 10, Hook(HookKind.RESID_PRE, 0), preprocessing={"center_writing_weights"}), rms)
    with pytest.raises(ConfigError, match="attention-only"):
        bind(_sae(16, 10, Hook(HookKind.MLP_OUT, 0)), random_model(d_model=16))


@pytest.mark.parametrize("normalization", ["LN", "RMS"])
def test_mlp_input_reader_carries_the_norm_weight(normalization):
    m = random_model(d_model=16, d_mlp=24, normalization=normalization, seed=5)
    r = np.random.default_rng(6)
    hi, ho = Hook(HookKind.MLP_IN, 1), Hook(HookKind.MLP_OUT, 1)
    W = r.normal(size=(10, 16))
    tc = Dictionary("tc", DictionaryKind.TRANSCODER, (hi,), (ho,), [W], r.normal(size=10), [r.normal(size=(16, 10))],
                    [r.normal(size=16)], ReLU())
    w = m.params["blocks.1.ln2.w"]
    P = np.eye(16) - 1 / 16 if normalization == "LN" else np.eye(16)
    b = bind(tc, m, norm_scale=2.0)
    np.testing.assert_allclose(b.encoder_from_resid().array, W @ (w[:, None] * P) / 2.0, rtol=1e-13)
    # on the stream: the encoder applied to a residual vector equals the transcoder's pre-activation on
    # the MLP input the model computes, minus the norm bias's constant, at a frozen scale
    x = r.normal(size=(3, 16))
    y, s = m.layers[1].ln2.__class__(m.config.ln_eps, w, m.params.get("blocks.1.ln2.b"), center=normalization == "LN")(x)
    bias = m.params.get("blocks.1.ln2.b")
    direct = (bind(tc, m, norm_scale=1.0).encoder_from_resid().array @ x.T).T / s[:, None]
    const = 0 if bias is None else W @ bias
    np.testing.assert_allclose(direct + const + tc.b_enc, tc.pre_activations(y), rtol=1e-12, atol=1e-12)
    # under fold_ln the hook is the normalised input before the weight
    folded_tc = Dictionary("tc", DictionaryKind.TRANSCODER, (hi,), (ho,), [W], tc.b_enc, list(tc.W_dec), list(tc.b_dec),
                           ReLU(), preprocessing={"fold_ln"})
    np.testing.assert_allclose(bind(folded_tc, m).encoder_from_resid().array, W @ P, rtol=1e-13)
    # a folded model has lost the weight: binding says so instead of guessing
    with pytest.raises(ConfigError, match="folded"):
        bind(tc, ca.fold_layer_norm(m))
    # without any norm the MLP reads the stream itself
    plain = random_model(d_model=16, d_mlp=24, normalization=None, seed=5)
    np.testing.assert_array_equal(bind(tc, plain).encoder_from_resid().array, W)


def test_resid_binding_is_the_dictionary_itself():
    m = random_model(d_model=16, normalization="LN")
    d = _sae(16, 10, Hook(HookKind.RESID_MID, 1))
    b = bind(d, m)
    assert b.encoder_from_resid().array is d.W_enc[0] or np.array_equal(b.encoder_from_resid().array, d.W_enc[0])
    assert b.decoder_to_resid().codomain == m.resid_space
    c = _sae(16, 10, Hook(HookKind.RESID_MID, 1), preprocessing={"center_writing_weights"})
    np.testing.assert_allclose(bind(c, m).encoder_from_resid().array, c.W_enc[0] - c.W_enc[0].mean(1, keepdims=True),
                               rtol=1e-13, atol=1e-15)


def test_decoder_before_a_post_norm_passes_its_weight():
    cfg = ca.TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=11, n_ctx=6, d_mlp=12,
                               normalization="RMS", post_norms=True, act_fn="gelu_new")
    rng = np.random.default_rng(7)
    params = {k: (1 + 0.2 * rng.normal(size=s)) if k.endswith(".w") else 0.5 * rng.normal(size=s)
              for k, s in ca.param_shapes(cfg).items()}
    m = ca.Transformer(cfg, params, biases="zero-fill")
    hi, ho = Hook(HookKind.MLP_IN, 1), Hook(HookKind.MLP_OUT, 1)
    Wd = rng.normal(size=(8, 5))
    make = lambda meta: Dictionary("tc", DictionaryKind.TRANSCODER, (hi,), (ho,), [rng.normal(size=(5, 8))],  # noqa: E731
                                   np.zeros(5), [Wd], [np.zeros(8)], ReLU(), meta=meta)
    b = bind(make({"before_post_norm": True}), m, post_norm_scale=4.0)
    np.testing.assert_allclose(b.decoder_to_resid().array, params["blocks.1.ln2_post.w"][:, None] * Wd / 4.0, rtol=1e-15)
    assert any("post-norm" in n for n in b.notes)
    # a decoder of the block's output after its post-norm (TransformerLens's hook_mlp_out) is added as it is
    np.testing.assert_array_equal(bind(make({}), m).decoder_to_resid().array, Wd)
