"""The Transformer container, the forward pass, weight transforms and checkpoint round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from model_helpers import log_softmax, random_model

import circuitalg as ca

CONFIGS = {
    "attn-only, no LN": dict(normalization=None),
    "attn-only, LN": dict(normalization="LN"),
    "MLP, LN": dict(normalization="LN", d_mlp=24),
    "MLP, LNPre": dict(normalization="LNPre", d_mlp=24),
    "MLP, no LN": dict(normalization=None, d_mlp=24),
}


def naive_forward(model: ca.Transformer, tokens: np.ndarray) -> np.ndarray:
    """An independent, loop-based forward pass: one position, one head at a time, in the paper's notation."""
    c, p = model.config, model.params
    seq = len(tokens)

    def ln(x: np.ndarray, prefix: str) -> np.ndarray:
        if c.normalization is None:
            return x
        mu = x.mean()
        y = (x - mu) / math.sqrt(((x - mu) ** 2).mean() + c.ln_eps)
        if c.normalization == "LN":
            y = y * p[prefix + ".w"] + p[prefix + ".b"]
        return y

    resid = [p["W_E"][:, t] + p["W_pos"][:, i] for i, t in enumerate(tokens)]
    for layer in range(c.n_layers):
        a = f"blocks.{layer}.attn."
        xs = [ln(r, f"blocks.{layer}.ln1") for r in resid]
        new = [r + p[a + "b_O"] for r in resid]
        for h in range(c.n_heads):
            q = [p[a + "W_Q"][h] @ x + p[a + "b_Q"][h] for x in xs]
            k = [p[a + "W_K"][h] @ x + p[a + "b_K"][h] for x in xs]
            v = [p[a + "W_V"][h] @ x + p[a + "b_V"][h] for x in xs]
            for i in range(seq):
                s = np.array([q[i] @ k[j] / math.sqrt(c.d_head) for j in range(i + 1)])
                w = np.exp(s - s.max())
                w /= w.sum()
                new[i] = new[i] + p[a + "W_O"][h] @ sum(w[j] * v[j] for j in range(i + 1))
        resid = new
        if c.d_mlp is not None:
            m = f"blocks.{layer}.mlp."
            for i in range(seq):
                x = ln(resid[i], f"blocks.{layer}.ln2")
                pre = p[m + "W_in"] @ x + p[m + "b_in"]
                act = 0.5 * pre * (1 + np.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre**3)))
                resid[i] = resid[i] + p[m + "W_out"] @ act + p[m + "b_out"]
    return np.stack([p["W_U"] @ ln(r, "ln_final") + p["b_U"] for r in resid])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_run_matches_an_independent_loop_forward_pass(name: str) -> None:
    model = random_model(**CONFIGS[name], n_layers=2)
    tokens = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    logits, cache = model.run(tokens)
    np.testing.assert_allclose(logits, naive_forward(model, tokens), rtol=1e-12, atol=1e-12)
    assert cache.pattern.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(cache.pattern.sum(-1), 1.0, rtol=1e-14)
    assert np.all(np.triu(cache.pattern, k=1) == 0)  # causal
    assert cache.resid.shape == (3, 8, 16)
    # the residual stream accounting closes: resid[l+1] = resid[l] + attn_out[l] (+ mlp_out[l])
    for layer in range(2):
        step = cache.attn_out[layer] + (cache.mlp_out[layer] if cache.mlp_out is not None else 0)
        np.testing.assert_allclose(cache.resid[layer + 1], cache.resid[layer] + step, atol=1e-12)
    assert (cache.ln1_scale is None) == (model.config.normalization is None)


@pytest.mark.parametrize("name", ["attn-only, LN", "MLP, LN", "MLP, LNPre"])
def test_weight_transforms_keep_the_outputs(name: str) -> None:
    model = random_model(**CONFIGS[name], seed=3)
    tokens = np.array([0, 5, 7, 7, 2, 11, 12])
    ref, _ = model.run(tokens)
    folded = ca.fold_layer_norm(model)
    assert folded.config.normalization == "LNPre" and not any(k.endswith((".w", ".b")) for k in folded.params)
    for transform in (ca.fold_layer_norm, ca.center_writing_weights, ca.fold_value_biases):
        out, _ = transform(model).run(tokens)
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10, err_msg=transform.__name__)
    # all together, in TransformerLens's order
    processed = ca.center_unembed(ca.fold_value_biases(ca.center_writing_weights(folded)))
    out, _ = processed.run(tokens)
    np.testing.assert_allclose(log_softmax(out), log_softmax(ref), rtol=1e-10, atol=1e-10)
    assert not np.allclose(out, ref)  # centring the unembedding shifts raw logits
    np.testing.assert_allclose(processed.params["W_U"].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(processed.params["W_E"].mean(axis=0), 0.0, atol=1e-12)
    for h in processed.heads():
        np.testing.assert_allclose(h.W_V.array.sum(axis=1), 0.0, atol=1e-12)  # reading weights centred
        assert not h.b_V.any()


def test_fold_layer_norm_matches_its_formula() -> None:
    model = random_model(normalization="LN", seed=1)
    folded = ca.fold_layer_norm(model, center_reads=False)
    w, b = model.params["blocks.1.ln1.w"], model.params["blocks.1.ln1.b"]
    W_K = model.params["blocks.1.attn.W_K"]
    np.testing.assert_allclose(folded.params["blocks.1.attn.W_K"], W_K * w)
    np.testing.assert_allclose(folded.params["blocks.1.attn.b_K"], model.params["blocks.1.attn.b_K"] + W_K @ b)


def test_center_writing_weights_needs_layer_norm() -> None:
    with pytest.raises(ca.ConfigError, match="normalization=None"):
        ca.center_writing_weights(random_model(normalization=None))


def test_logit_lens() -> None:
    model = random_model(normalization="LN", d_mlp=24)
    tokens = np.array([1, 2, 3, 4])
    logits, cache = model.run(tokens)
    lens = ca.logit_lens(model, cache)
    assert lens.shape == (3, 4, 13)
    np.testing.assert_allclose(lens[-1], logits, atol=1e-12)
    x0 = model.params["W_E"][:, tokens].T + model.params["W_pos"][:, :4].T
    ln_f = ca.LayerNorm(model.config.ln_eps, model.params["ln_final.w"], model.params["ln_final.b"])  # the stored norm
    np.testing.assert_allclose(lens[0], ln_f(x0)[0] @ model.params["W_U"].T + model.params["b_U"], atol=1e-12)
    with pytest.raises(ca.TooLargeError):
        ca.logit_lens(model, cache, max_bytes=100)


def test_heads_are_typed_maps_on_their_own_spaces() -> None:
    model = random_model(d_mlp=24)
    h = model.head(1, 2)
    assert str(h) == h.name == "L1H2" and h.key == (1, 2)
    assert h.space == ca.Space("L1H2", 4)
    assert h.W_Q.shape == (4, 16) and h.W_O.shape == (16, 4)
    assert h.ov.domain == h.ov.codomain == model.resid_space
    np.testing.assert_allclose(h.ov.to_dense(), h.W_O.array @ h.W_V.array)
    np.testing.assert_allclose(h.qk.to_dense(), h.W_Q.array.T @ h.W_K.array)
    assert str(h.qk.symbol) == "W_Q^{1.2}.T*W_K^{1.2}"
    with pytest.raises(ca.SpaceMismatchError, match="L1H1"):
        h.W_O @ model.head(1, 1).W_V  # one head's output cannot read another head's values
    assert model.head(1, 2) is h  # the same leaves every time, so decompositions are cached once
    assert len(list(model.heads())) == 6
    full_ov = model.W_U @ h.ov @ model.W_E
    assert full_ov.shape == (13, 13)
    dense_sv = np.linalg.svd(full_ov.to_dense(), compute_uv=False)
    sv = full_ov.singular_values()
    np.testing.assert_allclose(sv, dense_sv[: len(sv)], rtol=1e-10, atol=1e-12)
    mlp = model.mlp(0)
    assert mlp.W_in.codomain == ca.Space("mlp0", 24)
    with pytest.raises(ca.InvalidArgumentError, match="out of range"):
        model.head(2, 0)
    with pytest.raises(ca.InvalidArgumentError, match="attention-only"):
        random_model().mlp(0)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_own_format_round_trip(tmp_path, suffix: str) -> None:
    model = random_model(normalization="LN", d_mlp=24)
    model = ca.Transformer(model.config, model.params, vocab=[f"t{i}" for i in range(13)], name="m")
    path = ca.save(model, tmp_path / f"m{suffix}")
    back = ca.load(path)
    assert back.config == model.config and back.vocab == model.vocab
    for k, v in model.params.items():
        np.testing.assert_array_equal(back.params[k], v)


def test_float32_on_request(tmp_path) -> None:
    model = random_model()
    back = ca.load(ca.save(model, tmp_path / "m.safetensors"), dtype=np.float32)
    assert back.dtype == np.float32 and back.W_E.dtype == np.float32


def test_transformer_lens_layout_round_trip() -> None:
    model = random_model(normalization="LN", d_mlp=24)
    sd = ca.to_transformer_lens(model.params, model.config)
    assert sd["blocks.0.attn.W_Q"].shape == (3, 16, 4) and sd["embed.W_E"].shape == (13, 16)
    with pytest.raises(ca.ConfigError, match="has MLPs but the config names no act_fn"):
        ca.Transformer.from_state_dict(sd)  # the activation is not in the weights: never guessed
    back = ca.Transformer.from_state_dict(sd, config={"act_fn": "gelu_new"})  # the rest inferred
    assert back.config == model.config
    tokens = np.arange(8)
    np.testing.assert_allclose(back.run(tokens)[0], model.run(tokens)[0], rtol=1e-12, atol=1e-12)


# TransformerLens 3.9.0's HookedTransformerConfig fields at their defaults (as a plain dict, so the
# test needs no transformer_lens): a config like this must load, and each computation-changing
# field set away from its default must be refused.
TL_39_DEFAULTS = {
    'd_model': 16, 'd_head': 4, 'n_layers': 2, 'n_ctx': 10, 'n_heads': 3, 'd_mlp': 24, 'd_vocab': 13, 'device': 'cpu',
    'use_attn_result': False, 'use_split_qkv_input': False, 'default_prepend_bos': True,
    'positional_embedding_type': 'standard', 'n_key_value_heads': None, 'attn_only': False, 'gated_mlp': False,
    'uses_rms_norm': False, 'eps': 1e-05, 'layer_norm_folding': False, 'act_fn': 'gelu_new',
    'normalization_type': 'LN', 'num_experts': None, 'experts_per_token': None, 'final_rms': False,
    'dtype': 'float32', 'model_name': 'custom', 'use_attn_scale': True, 'attn_scale': 2.0, 'use_hook_mlp_in': False,
    'use_attn_in': False, 'use_qk_norm': False, 'clip_qkv': None, 'use_logn_attn': False, 'train_seq_length': None,
    'use_dynamic_ntk_rope': False, 'use_local_attn': False, 'ungroup_grouped_query_attention': False,
    'original_architecture': None, 'from_checkpoint': False, 'checkpoint_index': None,
    'checkpoint_label_type': None, 'checkpoint_value': None, 'tokenizer_name': None, 'window_size': None,
    'attn_types': None, 'init_mode': 'gpt2', 'n_devices': 1, 'attention_dir': 'causal', 'seed': None,
    'initializer_range': 0.28, 'init_weights': True, 'scale_attn_by_inverse_layer_idx': False, 'd_vocab_out': 13,
    'parallel_attn_mlp': False, 'rotary_dim': None, 'n_params': 768, 'use_hook_tokens': False,
    'tokenizer_prepends_bos': None, 'post_embedding_ln': False, 'rotary_base': 10000, 'rotary_base_local': None,
    'rotary_scaling_factor': 1.0, 'trust_remote_code': False, 'rotary_adjacent_pairs': False, 'load_in_4bit': False,
    'quantization_method': None, 'relative_attention_max_distance': None, 'relative_attention_num_buckets': None,
    'decoder_start_token_id': None, 'tie_word_embeddings': False, 'use_normalization_before_and_after': False,
    'attn_scores_soft_cap': -1.0, 'output_logits_soft_cap': -1.0, 'use_NTK_by_parts_rope': False,
    'NTK_by_parts_low_freq_factor': 1.0, 'NTK_by_parts_high_freq_factor': 4.0, 'NTK_by_parts_factor': 8.0,
    'NTK_original_ctx_len': 8192, 'use_yarn_rope': False, 'yarn_factor': 1.0, 'yarn_attention_factor': 1.0,
    'yarn_beta_fast': 32.0, 'yarn_beta_slow': 1.0, 'yarn_original_max_position_embeddings': 4096,
    'yarn_truncate': True, 'yarn_global_attn_only': False, 'use_attention_sinks': False, 'norm_topk_prob': False,
}


def test_transformer_lens_config_fields_are_implemented_or_refused() -> None:
    model = random_model(normalization="LN", d_mlp=24)
    sd = ca.to_transformer_lens(model.params, model.config)
    back = ca.Transformer.from_state_dict(sd, config=TL_39_DEFAULTS)
    assert back.config == model.config
    refused = {
        "attention_dir": ("sideways", "attention_dir='sideways'"),
        "d_vocab_out": (20, "the weights have d_vocab_out=13"),
        "positional_embedding_type": ("alibi", "positional embeddings"),
        "use_yarn_rope": (True, "YaRN"),
        "n_key_value_heads": (1, "the weights have n_kv_heads=3"),
        "use_local_attn": (True, "attn_types"),  # local attention needs its layer types
        "attn_scores_soft_cap": ("high", "attn_softcap='high' must be a positive finite number"),
        "normalization_type": ("LayerNormX", "LayerNormX"),
        "use_qk_norm": (True, "qk_norm=true is implemented for RMSNorm models"),
        "use_normalization_before_and_after": (True, "post_norms=true is implemented for RMSNorm models"),
        "post_embedding_ln": (True, "after the embedding"),
        "num_experts": (8, "mixture-of-experts"),
        "scale_attn_by_inverse_layer_idx": (True, "inverse layer index"),
        "load_in_4bit": (True, "quantised"),
        "n_heads": (4, "the weights have n_heads=3"),
        "d_mlp": (32, "the weights have d_mlp=24"),
        "n_ctx": (1024, "the weights have n_ctx=10"),
        "attn_only": (True, "has MLP weights"),
        "act_fn": ("swish", "act_fn='swish' is not supported"),
    }
    for key, (value, match) in refused.items():
        with pytest.raises(ca.ConfigError, match=match):
            ca.Transformer.from_state_dict(sd, config={**TL_39_DEFAULTS, key: value})
    capped = ca.Transformer.from_state_dict(
        sd, config={**TL_39_DEFAULTS, "attn_scores_soft_cap": 50.0, "output_logits_soft_cap": 30.0})
    assert (capped.config.attn_softcap, capped.config.final_softcap) == (50.0, 30.0)
    with pytest.raises(ca.ConfigError, match=r"unknown config fields \['use_new_thing'\]"):
        ca.Transformer.from_state_dict(sd, config={**TL_39_DEFAULTS, "use_new_thing": True})
    no_act = {k: v for k, v in TL_39_DEFAULTS.items() if k != "act_fn"}
    with pytest.raises(ca.ConfigError, match="names no act_fn"):
        ca.Transformer.from_state_dict(sd, config=no_act)


def test_config_never_guesses_the_activation() -> None:
    with pytest.raises(ca.ConfigError, match="d_mlp=24 needs act_fn"):
        ca.TransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_vocab=5, n_ctx=4, d_mlp=24)


def test_transformer_lens_layout_without_ln_needs_the_normalization() -> None:
    model = random_model(normalization=None)
    sd = ca.to_transformer_lens(model.params, model.config)
    with pytest.raises(ca.ConfigError, match="normalization"):
        ca.Transformer.from_state_dict(sd)
    back = ca.Transformer.from_state_dict(sd, config={"normalization": None})
    assert back.config == model.config


def hf_state_dict(model: ca.Transformer) -> tuple[dict, dict]:
    """A GPT-2 (Conv1D, fused QKV) state dict and config.json written from canonical params by hand."""
    c, p = model.config, model.params
    sd = {"transformer.wte.weight": p["W_E"].T, "transformer.wpe.weight": p["W_pos"].T}
    for l in range(c.n_layers):
        a, h = f"blocks.{l}.attn.", f"transformer.h.{l}."
        qkv = [p[a + w].transpose(2, 0, 1).reshape(c.d_model, -1) for w in ("W_Q", "W_K", "W_V")]
        sd[h + "attn.c_attn.weight"] = np.concatenate(qkv, axis=1)
        sd[h + "attn.c_attn.bias"] = np.concatenate([p[a + b].reshape(-1) for b in ("b_Q", "b_K", "b_V")])
        sd[h + "attn.c_proj.weight"] = p[a + "W_O"].transpose(0, 2, 1).reshape(-1, c.d_model)
        sd[h + "attn.c_proj.bias"] = p[a + "b_O"]
        sd[h + "attn.bias"] = np.tril(np.ones((c.n_ctx, c.n_ctx)))  # a causal-mask buffer
        for src, dst in (("ln_1", "ln1"), ("ln_2", "ln2")):
            sd[h + src + ".weight"], sd[h + src + ".bias"] = p[f"blocks.{l}.{dst}.w"], p[f"blocks.{l}.{dst}.b"]
        m = f"blocks.{l}.mlp."
        sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_fc.bias"] = p[m + "W_in"].T, p[m + "b_in"]
        sd[h + "mlp.c_proj.weight"], sd[h + "mlp.c_proj.bias"] = p[m + "W_out"].T, p[m + "b_out"]
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = p["ln_final.w"], p["ln_final.b"]
    cfg = {"model_type": "gpt2", "n_layer": c.n_layers, "n_head": c.n_heads, "n_embd": c.d_model,
           "vocab_size": c.d_vocab, "n_positions": c.n_ctx, "n_inner": c.d_mlp, "activation_function": "gelu_new"}
    return sd, cfg


def test_hf_gpt2_layout_by_hand(tmp_path) -> None:
    """Tied embeddings, fused QKV Conv1D weights and the mask buffer, without transformers installed."""
    params = dict(random_model(normalization="LN", d_mlp=24, n_heads=4).params)
    params["W_U"] = params["W_E"].T  # GPT-2 ties the unembedding to the embedding
    params["b_U"] = np.zeros(13)
    model = ca.Transformer(random_model(normalization="LN", d_mlp=24, n_heads=4).config, params)
    sd, cfg = hf_state_dict(model)
    back = ca.Transformer.from_state_dict(sd, config=cfg)
    tokens = np.arange(10)
    np.testing.assert_allclose(back.run(tokens)[0], model.run(tokens)[0], rtol=1e-13, atol=1e-13)
    # the same as a checkpoint directory
    import json

    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "vocab.json").write_text(json.dumps({("Ġ" + str(i)): i for i in range(13)}))
    loaded = ca.load(tmp_path)
    np.testing.assert_allclose(loaded.run(tokens)[0], model.run(tokens)[0], rtol=1e-13, atol=1e-13)
    assert loaded.vocab[3] == " 3"  # GPT-2's byte-level 'Ġ' decodes to a space


def test_tiny_hf_gpt2_matches_transformers(tmp_path) -> None:
    """A random tiny GPT-2 saved by transformers loads with ca.load and reproduces its logits."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=101, n_positions=32)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model = ca.load(tmp_path)
    assert model.config.n_heads == 4 and model.config.d_head == 16 and model.config.d_mlp == 256
    tokens = np.random.default_rng(0).integers(0, 101, size=32)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)[None]).logits[0].double().numpy()
    logits, _ = model.run(tokens)
    err = np.abs(logits - ref).max()
    assert err < 1e-4, err
    # Our float64 pass agrees with float32 torch to float32 rounding, far inside the criterion.
    assert err < 1e-5 * max(1.0, np.abs(ref).max())


def test_matches_transformer_lens_attention_only() -> None:
    """Random attention-only HookedTransformers (with and without LN) in TL layout."""
    pytest.importorskip("transformer_lens")
    torch = pytest.importorskip("torch")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    for norm in (None, "LN"):
        cfg = HookedTransformerConfig(
            n_layers=2, d_model=64, n_ctx=32, d_head=16, n_heads=4, d_vocab=101, attn_only=True,
            normalization_type=norm, act_fn=None, seed=0, init_weights=True, dtype=torch.float64,
        )
        tl = HookedTransformer(cfg)
        with torch.no_grad():
            for name, param in tl.named_parameters():  # random biases and LN weights too
                param.add_(0.1 * torch.randn_like(param))
        model = ca.Transformer.from_hooked_transformer(tl)
        tokens = np.random.default_rng(1).integers(0, 101, size=20)
        with torch.no_grad():
            ref = tl(torch.tensor(tokens)[None]).double().numpy()[0]
        np.testing.assert_allclose(model.run(tokens)[0], ref, rtol=1e-9, atol=1e-9)


def test_weight_processing_equals_transformer_lens() -> None:
    """fold_layer_norm + center_writing_weights + center_unembed + fold_value_biases = TL's process_weights_."""
    pytest.importorskip("transformer_lens")
    torch = pytest.importorskip("torch")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, d_mlp=64, act_fn="gelu_new",
        normalization_type="LN", seed=0, dtype=torch.float64,
    )
    tl = HookedTransformer(cfg)
    with torch.no_grad():
        for _, param in tl.named_parameters():
            param.add_(0.1 * torch.randn_like(param))
    ours = ca.Transformer.from_state_dict(tl.state_dict(), config=tl.cfg)
    tl.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)  # folds b_V too
    theirs = ca.Transformer.from_state_dict(tl.state_dict(), config=tl.cfg)
    processed = ca.fold_value_biases(ca.center_unembed(ca.center_writing_weights(ca.fold_layer_norm(ours))))
    assert processed.config == theirs.config
    for key, value in theirs.params.items():
        # TL 3.x rounds through float32 while processing, hence the float32-level tolerance.
        np.testing.assert_allclose(processed.params[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_the_model_owns_its_weights() -> None:
    """Changing the caller's arrays afterwards (as TL's in-place processing does) leaves the model intact."""
    model = random_model()
    params = {k: np.array(v) for k, v in model.params.items()}
    copy = ca.Transformer(model.config, params)
    before = copy.run(TOKENS_SHORT)[0]
    params["W_E"] += 1.0
    np.testing.assert_array_equal(copy.run(TOKENS_SHORT)[0], before)
    with pytest.raises(ValueError):
        copy.params["W_E"][0, 0] = 1.0  # read-only


TOKENS_SHORT = np.array([1, 2, 3])


def test_transformer_lens_state_dict_without_biases_loads() -> None:
    """A model without biases needs no zero tensors: absent biases are a model without them."""
    model = random_model(normalization="LN", d_mlp=24, biases=False)
    sd = {k: v for k, v in ca.to_transformer_lens(model.params, model.config).items()
          if k.rsplit(".", 1)[-1] not in ca.model.params.BIAS_KEYS}
    assert "unembed.b_U" not in sd and "blocks.0.attn.b_Q" not in sd
    back = ca.Transformer.from_state_dict(sd, config={"act_fn": "gelu_new"})
    tokens = np.arange(8)
    np.testing.assert_allclose(back.run(tokens)[0], model.run(tokens)[0], rtol=1e-12, atol=1e-12)


def test_separate_output_vocabulary_and_bidirectional_attention() -> None:
    """d_vocab_out and attention_dir='bidirectional' are implemented, not ignored: checked against a
    dense numpy forward pass written here."""
    rng = np.random.default_rng(0)
    cfg = ca.TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=11, n_ctx=6,
                               normalization=None, d_vocab_out=5, causal=False)
    params = {k: 0.3 * rng.standard_normal(s) for k, s in ca.param_shapes(cfg).items()}
    m = ca.Transformer(cfg, params)
    tokens = np.array([1, 4, 2, 9, 0])
    x = params["W_E"][:, tokens].T + params["W_pos"][:, :5].T
    for l in range(2):
        a = f"blocks.{l}.attn."
        out = params[a + "b_O"].copy()
        for h in range(2):
            q = x @ params[a + "W_Q"][h].T + params[a + "b_Q"][h]
            k = x @ params[a + "W_K"][h].T + params[a + "b_K"][h]
            v = x @ params[a + "W_V"][h].T + params[a + "b_V"][h]
            s = q @ k.T / 2.0  # no mask: every query sees every key
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out = out + (p @ v) @ params[a + "W_O"][h].T
        x = x + out
    logits, cache = m.run(tokens)
    np.testing.assert_allclose(logits, x @ params["W_U"].T + params["b_U"], rtol=1e-12, atol=1e-12)
    assert logits.shape == (5, 5) and np.all(cache.pattern[:, :, 0, 1:] > 0)  # position 0 sees later keys
    table = ca.head_table(m, k=2)
    assert np.all(np.isnan(table.copying))  # W_U W_OV W_E is 5 x 11: no eigenvalues
    run = ca.expand(m).on(tokens, cache)
    assert np.abs(run.logits() - logits).max() < 1e-10 * np.abs(logits).max()
    sd = ca.to_transformer_lens(m.params, cfg)
    back = ca.Transformer.from_state_dict(sd, config={**TL_39_DEFAULTS, "attention_dir": "bidirectional",
                                                      "normalization_type": None, "d_vocab": 11, "d_vocab_out": 5,
                                                      "n_ctx": 6, "d_model": 8, "d_head": 4, "n_heads": 2,
                                                      "d_mlp": None, "attn_only": True})
    assert back.config == cfg


def test_load_dtype_auto_keeps_the_stored_precision(tmp_path) -> None:
    """dtype="auto": float32 when every stored tensor has 32 bits or fewer (exact), else float64."""
    model = random_model(normalization="LN", d_mlp=24)
    f64 = ca.save(model, tmp_path / "m64.safetensors")
    f32 = ca.save(ca.Transformer(model.config, {k: np.asarray(v, np.float32) for k, v in model.params.items()},
                                 dtype=np.float32), tmp_path / "m32.safetensors")
    assert ca.load(f64, dtype="auto").dtype == np.float64
    assert ca.load(f32, dtype="auto").dtype == np.float32
    assert ca.load(f32).dtype == np.float64  # the default stays float64
    np.testing.assert_array_equal(ca.load(f32, dtype="auto").params["W_E"], ca.load(f32).params["W_E"])


def test_bad_dtype_is_refused_before_reading(tmp_path) -> None:
    path = ca.save(random_model(), tmp_path / "m.safetensors")
    for bad in ("foo", "float16", np.int32):
        with pytest.raises(ca.InvalidArgumentError, match="dtype"):
            ca.load(path, dtype=bad)
        with pytest.raises(ca.InvalidArgumentError, match="dtype must be numpy.float32 or numpy.float64"):
            ca.Transformer(random_model().config, random_model().params, dtype=bad)


def _f32_file(model: ca.Transformer, path) -> str:
    return ca.save(ca.Transformer(model.config, {k: np.asarray(v, np.float32) for k, v in model.params.items()},
                                  dtype=np.float32), path)


@pytest.mark.parametrize("normalization", ["LN", "RMS", None])
def test_load_with_fold_equals_fold_after_load(tmp_path, normalization) -> None:
    """ca.load(path, fold=True) is exactly fold_layer_norm of the loaded model (same config, same
    arrays bit for bit), also from a Hugging Face GPT-2 directory; folding it again changes nothing
    and returns the same object."""
    import json

    from safetensors.numpy import save_file

    model = random_model(normalization=normalization, d_mlp=24, n_heads=4, seed=11)
    paths = [_f32_file(model, tmp_path / "m.safetensors")]
    if normalization == "LN":
        params = dict(model.params)
        params["W_U"], params["b_U"] = params["W_E"].T, np.zeros(13)
        sd, cfg = hf_state_dict(ca.Transformer(model.config, params))
        hf = tmp_path / "hf"
        hf.mkdir()
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}, str(hf / "model.safetensors"))
        (hf / "config.json").write_text(json.dumps(cfg))
        paths.append(hf)
    for path in paths:
        ref = ca.fold_layer_norm(ca.load(path, dtype="auto"), dtype=np.float64)
        got = ca.load(path, dtype=np.float64, fold=True)
        assert got.config == ref.config and got.dtype == np.float64
        assert got.params.keys() == ref.params.keys()
        for k in ref.params:
            np.testing.assert_array_equal(got.params[k], ref.params[k], err_msg=k)
        assert ca.fold_layer_norm(got) is got
        hw = got.head_weights  # the folded stacks are the model's head view: shared, read-only, no copy
        for name in ("W_Q", "W_V", "W_O"):
            assert np.shares_memory(getattr(hw, name), got.params[f"blocks.1.attn.{name}"])
            assert not getattr(hw, name).flags.writeable
    with pytest.raises(ca.InvalidArgumentError, match="fold="):
        ca.load(paths[0], fold="yes")


def test_load_with_fold_never_holds_both_models(tmp_path) -> None:
    """Folding while loading peaks at the folded model plus one raw tensor, below loading and then
    folding (which holds the float32 model and its float64 fold at once): measured with
    tracemalloc on a model whose arrays dominate."""
    import tracemalloc

    model = random_model(n_layers=2, n_heads=4, d_model=64, d_head=16, d_vocab=6000, d_mlp=256, n_ctx=64,
                         normalization="LN", seed=2)
    path = _f32_file(model, tmp_path / "m.safetensors")

    def peak(fn) -> int:
        tracemalloc.start()
        try:
            kept = fn()
            return tracemalloc.get_traced_memory()[1], kept
        finally:
            tracemalloc.stop()

    both, _ = peak(lambda: ca.fold_layer_norm(ca.load(path, dtype="auto"), dtype=np.float64))
    fold, m = peak(lambda: ca.load(path, dtype=np.float64, fold=True))
    size = sum(v.nbytes for v in m.params.values())
    largest_raw = max(v.nbytes for v in m.params.values()) // 2  # the largest float32 tensor
    assert fold <= size + largest_raw + (256 << 10), (fold, size, largest_raw)  # the folded model + one raw tensor
    assert fold < 0.85 * both, (fold, both)
