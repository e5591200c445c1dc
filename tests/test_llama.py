"""Llama-family models (Llama, Mistral, Qwen2): RMSNorm, rotary, grouped-query attention, SwiGLU,
sliding windows and biases, against transformers' own randomly initialised models; RMS/GQA/gated
TransformerLens state dicts where transformer-lens is installed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from model_helpers import assert_matches_hf, save_random_hf

import circuitalg as ca

TOKENS = np.random.default_rng(9).integers(0, 61, size=16)
COMMON = dict(vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=48, max_position_embeddings=24, bos_token_id=0, eos_token_id=0)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(
        rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama-biases-tied": ("LlamaForCausalLM", "LlamaConfig", dict(attention_bias=True, mlp_bias=True,
                                                                  tie_word_embeddings=True, head_dim=12)),
    "mistral-window": ("MistralForCausalLM", "MistralConfig", dict(sliding_window=5)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(num_key_value_heads=1)),
    "llama-yarn": ("LlamaForCausalLM", "LlamaConfig", dict(
        rope_parameters={"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0,
                         "original_max_position_embeddings": 8})),
    "mistral-dynamic": ("MistralForCausalLM", "MistralConfig", dict(
        rope_parameters={"rope_type": "dynamic", "rope_theta": 1000.0, "factor": 2.0})),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(
        head_dim=12, attention_bias=True, sliding_window=4, use_sliding_window=True,
        layer_types=["full_attention", "sliding_attention", "full_attention"])),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(
        head_dim=12, query_pre_attn_scalar=10, sliding_window=5, attn_logit_softcapping=0.2,
        final_logit_softcapping=0.3, pad_token_id=0)),
}


def _hf(tmp_path, family: str):
    model_cls, config_cls, extra = FAMILIES[family]
    return save_random_hf(tmp_path, model_cls, config_cls, **{**COMMON, **extra})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_llama_family_matches_transformers(tmp_path, family: str) -> None:
    hf, torch = _hf(tmp_path, family)
    model = ca.load(tmp_path)
    c = model.config
    assert c.normalization == "RMS" and c.gated_mlp and c.rotary is not None and model.W_pos is None
    assert c.kv_heads == FAMILIES[family][2].get("num_key_value_heads", 2)
    logits, cache = assert_matches_hf(model, hf, torch, TOKENS)
    back = np.arange(len(TOKENS))[:, None] - np.arange(len(TOKENS))[None, :]
    if family == "mistral-window":
        assert c.attn_windows == (5, 5, 5) and np.all(cache.pattern[:, :, back >= 5] == 0.0)
    if family == "qwen3":
        assert c.qk_norm and c.attn_windows == (None, 4, None) and np.all(cache.pattern[1][:, back >= 4] == 0.0)
        assert cache.q_scale.shape == (3, 4, 16) and cache.k_scale.shape == (3, 2, 16)
    if family == "llama-yarn":
        assert c.rotary.scaling == "yarn" and c.rotary.attention_factor == pytest.approx(1 + 0.1 * np.log(4.0))
    if family == "mistral-dynamic":  # within n_ctx dynamic NTK is the unscaled embedding
        assert c.rotary.scaling == "none" and c.rotary.base == 1000.0
    if family == "gemma2":
        assert c.post_norms and c.attn_windows == (5, None, 5) and c.attn_scale == pytest.approx(np.sqrt(10))
        assert (c.attn_softcap, c.final_softcap) == (0.2, 0.3)
        assert np.abs(cache.logits_precap).max() > 0.3 >= np.abs(logits).max()  # the final cap acts
        # negative control: the same weights without the caps do not reproduce transformers
        with torch.no_grad():
            ref = hf(torch.tensor(TOKENS)[None]).logits[0].double().numpy()
        for caps in ({"attn_softcap": None}, {"final_softcap": None}):
            assert np.abs(model.with_params(model.params, **caps).run(TOKENS)[0] - ref).max() > 1e-2


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma2", "mistral-window", "llama-yarn"])
def test_llama_family_path_expansion_and_analyses(tmp_path, family: str) -> None:
    _hf(tmp_path, family)
    model = ca.load(tmp_path)
    logits, cache = model.run(TOKENS)
    if model.config.final_softcap is not None:  # path terms add up to the pre-cap logits
        cap = model.config.final_softcap
        np.testing.assert_allclose(cap * np.tanh(cache.logits_precap / cap), logits, atol=1e-12)
        logits = cache.logits_precap
    run = ca.expand(model).on(TOKENS, cache)  # RMS scales (pre, post, q/k), gates and MLP outputs frozen
    assert np.abs(run.logits() - logits).max() < 1e-8 * np.abs(logits).max()
    truncated = ca.expand(model, max_heads=1).on(TOKENS, cache)
    omitted = sum(run.contribution(t) for t in ca.expand(model) if len(t.heads) > 1)
    np.testing.assert_allclose(run.logits() - truncated.logits(), omitted, atol=1e-9 * np.abs(logits).max())
    folded = ca.fold_layer_norm(model)
    assert folded.config.normalization == "RMSPre"
    np.testing.assert_allclose(folded.run(TOKENS)[0], model.run(TOKENS)[0], atol=1e-10 * np.abs(logits).max())
    # grouped-query attention: the heads of a group share one W_K map object and one space
    layer = model.layers[0]
    group = model.config.n_heads // model.config.kv_heads
    assert layer.heads[0].W_K is layer.heads[group - 1].W_K
    assert layer.heads[0].space == layer.heads[group - 1].space
    if group < model.config.n_heads:
        assert layer.heads[0].W_K is not layer.heads[group].W_K
    hw = model.head_weights
    np.testing.assert_array_equal(hw.kv_head[0], [h // group for h in range(model.config.n_heads)])
    # composition scores (at offset 0) against dense products of the typed maps
    k = ca.composition_scores(folded, "k")
    h1, h2 = folded.head(0, 1), folded.head(1, 3)
    R, W = ca.to_dense(h2.qk), ca.to_dense(h1.ov)
    assert k[0, 1, 1, 3] == pytest.approx(np.linalg.norm(R @ W) / np.linalg.norm(R) / np.linalg.norm(W), rel=1e-9)
    search = ca.top_circuits(folded, 5, 2)
    assert len(search) == 5 and search.total == ca.count_circuits(folded, 2)
    graph = ca.CircuitGraph(folded)
    assert graph.edges("gate", top=1)[0]["reader"].startswith("mlp")
    # edges into grouped-query heads (key and value reads shared per key/value head) against dense maps
    for writer, reader, kind in (("embed", "L1H3", "k"), ("mlp0", "L2H1", "v"), ("embed", "L2H2", "q")):
        edge = graph.edge(writer, reader, kind)
        assert edge["norm"] == pytest.approx(np.linalg.norm(ca.to_dense(edge["weight"])), rel=1e-9)


def test_llama_report_runs(tmp_path) -> None:
    from circuitalg.cli import main

    _hf(tmp_path / "ckpt", "llama")
    assert main(["report", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 0
    assert "Rotary model: no W<sub>pos</sub>" in (tmp_path / "out" / "report.html").read_text()


def test_llama_config_refusals(tmp_path) -> None:
    import json

    _hf(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    longrope = {**cfg, "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0}}
    (tmp_path / "config.json").write_text(json.dumps(longrope))
    with pytest.raises(ca.ConfigError, match="longrope' needs short_factor, long_factor"):
        ca.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "rope_parameters": {"rope_type": "proportional"}}))
    with pytest.raises(ca.ConfigError, match="rope_type='proportional' is not supported"):
        ca.load(tmp_path)
    gemma = {**cfg, "model_type": "gemma2", "use_bidirectional_attention": True}
    (tmp_path / "config.json").write_text(json.dumps(gemma))
    with pytest.raises(ca.ConfigError, match="use_bidirectional_attention"):
        ca.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen3"}))
    with pytest.raises(ca.LoadError, match="q_norm.weight"):  # a Llama checkpoint is not a Qwen3 one
        ca.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 3}))
    with pytest.raises(ca.ConfigError, match="not a multiple of n_kv_heads=3"):
        ca.load(tmp_path)


@pytest.mark.parametrize("extra", [{}, dict(use_qk_norm=True, use_normalization_before_and_after=True,
                                             attn_scores_soft_cap=0.5, output_logits_soft_cap=0.4)])
def test_transformer_lens_rms_gqa_gated(extra) -> None:
    """RMS, GQA, gated MLPs; with Qwen3's q/k norms and Gemma 2's sandwich norms and soft-caps."""
    pytest.importorskip("transformer_lens")
    torch = pytest.importorskip("torch")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=24, d_head=8, n_heads=4, n_key_value_heads=2, d_vocab=61, d_mlp=48,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
        gated_mlp=True, seed=0, dtype=torch.float64, **extra,
    )
    tl = HookedTransformer(cfg)
    with torch.no_grad():
        for _, param in tl.named_parameters():
            param.add_(0.1 * torch.randn_like(param))
    model = ca.Transformer.from_hooked_transformer(tl)
    assert model.config.kv_heads == 2 and model.config.gated_mlp and model.config.normalization == "RMS"
    c = model.config
    assert (c.qk_norm, c.post_norms, c.attn_softcap, c.final_softcap) == (
        (True, True, 0.5, 0.4) if extra else (False, False, None, None))
    with torch.no_grad():
        ref = tl(torch.tensor(TOKENS)[None]).double().numpy()[0]
    np.testing.assert_allclose(model.run(TOKENS)[0], ref, rtol=1e-8, atol=1e-8)


def test_report_states_how_each_architecture_feature_enters(tmp_path) -> None:
    from circuitalg.report import architecture_notes

    _hf(tmp_path, "gemma2")
    notes = "\n".join(architecture_notes(ca.load(tmp_path).config))
    for claim in ("offset 0", "4 query heads per layer read 2 key/value heads", "L0: 5, L2: 5", "weights folded into W_O",
                  "soft-capped at 0.2: QK-circuit values are pre-cap", "path terms add up to the pre-cap logits"):
        assert claim in notes
    assert "q/k RMSNorms" not in notes and "YaRN" not in notes
    assert architecture_notes(ca.zoo.load("attn2l").config) == []  # negative control: a GPT-2-style model


@pytest.mark.parametrize("family", ["gemma2", "qwen3"])
def test_batched_forward_equals_one_sequence_at_a_time(tmp_path, family: str) -> None:
    """run_batch (used by the head diagnostics) is the same computation as run on each row:
    logits, patterns, residual stream and every frozen scale, to 1e-12."""
    from circuitalg.model.forward import run_batch

    _hf(tmp_path, family)
    model = ca.load(tmp_path)
    rows = np.random.default_rng(4).integers(0, 61, size=(3, 12))
    logits, cache = run_batch(model, rows)
    for b, row in enumerate(rows):
        ref_logits, ref = model.run(row)
        np.testing.assert_allclose(logits[b], ref_logits, rtol=0, atol=1e-12)
        for name in ("pattern", "resid", "ln1_scale", "ln1_post_scale", "ln2_post_scale", "q_scale", "logits_precap"):
            got, want = getattr(cache, name), getattr(ref, name)
            assert (got is None) == (want is None)
            if want is not None:
                np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-12)
    with pytest.raises(ca.ShapeError, match="batch, seq"):
        run_batch(model, rows[0])


def test_transforms_respect_post_norms_and_soft_caps(tmp_path) -> None:
    """fold_value_biases moves value biases into the stored b_O (inside Gemma 2's output norm, so the
    logits are unchanged); center_unembed is refused with a final soft-cap (tanh is not
    shift-invariant); rotate_residual is refused with post norms."""
    _hf(tmp_path, "gemma2")
    model = ca.load(tmp_path)
    rng = np.random.default_rng(7)
    p = dict(model.params)
    for l in range(model.config.n_layers):  # give the value heads biases to fold
        p[f"blocks.{l}.attn.b_V"] = 0.3 * rng.standard_normal(p[f"blocks.{l}.attn.b_V"].shape)
    biased = model.with_params(p)
    folded = ca.fold_value_biases(biased)
    np.testing.assert_allclose(folded.run(TOKENS)[0], biased.run(TOKENS)[0], atol=1e-12)
    assert np.abs(folded.run(TOKENS)[0] - model.run(TOKENS)[0]).max() > 1e-6  # the biases mattered
    with pytest.raises(ca.ConfigError, match="final soft-cap"):
        ca.center_unembed(model)
    with pytest.raises(ca.ConfigError, match="post_norms"):
        ca.rotate_residual(ca.fold_layer_norm(model), np.eye(model.config.d_model))


def test_logit_lens_ends_at_the_soft_capped_logits(tmp_path) -> None:
    _hf(tmp_path, "gemma2")
    model = ca.load(tmp_path)
    logits, cache = model.run(TOKENS)
    lens = ca.logit_lens(model, cache)
    np.testing.assert_allclose(lens[-1], logits, atol=1e-12)
    assert np.abs(lens).max() <= model.config.final_softcap


@pytest.mark.parametrize("family", ["gemma2", "qwen3", "llama-yarn"])
def test_new_features_round_trip_through_circuitalg_files(tmp_path, family: str) -> None:
    """ca.save writes every new config field (post/q-k norms, soft-caps, YaRN) and ca.load reads it back."""
    _hf(tmp_path / "hf", family)
    model = ca.load(tmp_path / "hf")
    for suffix in (".safetensors", ".npz"):
        back = ca.load(ca.save(model, tmp_path / f"m{suffix}"))
        assert back.config == model.config
        np.testing.assert_allclose(back.run(TOKENS)[0], model.run(TOKENS)[0], rtol=0, atol=1e-13)  # layout: rounding


@pytest.mark.parametrize("family", ["gemma2", "qwen3"])
def test_transformers_4x_config_forms_read_the_same(tmp_path, family: str) -> None:
    """transformers 4.x wrote rope_theta at the top level and (for Gemma 2, before layer_types) left the
    alternating sliding layers implicit: such a config.json loads to the same circuitalg config."""
    import json

    _hf(tmp_path, family)
    new = ca.load(tmp_path).config
    cfg = json.loads((tmp_path / "config.json").read_text())
    old = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "layer_types")}
    old["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    if family == "qwen3":  # 4.x Qwen3 chose sliding layers by use_sliding_window / max_window_layers
        old.update(use_sliding_window=True, max_window_layers=1)
        new = dataclasses.replace(new, attn_windows=(None, 4, 4))
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert ca.load(tmp_path).config == new
