"""Gemma 3 (text and the text tower of multimodal checkpoints), OLMo 2 and Phi-3 against
transformers' own randomly initialised models: logits and attention patterns, path expansion,
the per-layer rotary embeddings, OLMo 2's post-norms and whole-projection q/k norms, Phi-3's fused
projections and LongRoPE on both sides of ``original_max_position_embeddings``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from model_helpers import assert_matches_hf, save_random_hf

import circuitalg as ca

TOKENS = np.random.default_rng(11).integers(0, 61, size=16)
SHORT = TOKENS[:7]  # within Phi-3's original_max_position_embeddings below: LongRoPE's short factors
COMMON = dict(vocab_size=61, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=48, max_position_embeddings=24, bos_token_id=0, eos_token_id=0, pad_token_id=0)
#: small rotary bases so that 16 positions turn every plane (Gemma 3's are 10k local, 1M global)
GEMMA3 = dict(head_dim=12, query_pre_attn_scalar=10, sliding_window=5, attention_bias=True,
              final_logit_softcapping=0.3,
              layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
              rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 100.0},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}})
PHI3_ROPE = {"rope_type": "longrope", "rope_theta": 100.0, "partial_rotary_factor": 0.5,
             "short_factor": [1.0, 2.0], "long_factor": [3.0, 8.0]}
FAMILIES = {
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", GEMMA3),
    "olmo2": ("Olmo2ForCausalLM", "Olmo2Config", dict(attention_bias=True, rope_parameters={"rope_theta": 50.0})),
    "olmo2-tied": ("Olmo2ForCausalLM", "Olmo2Config", dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(sliding_window=5, rope_parameters=PHI3_ROPE,
                                                   original_max_position_embeddings=8)),
    "phi3-default": ("Phi3ForCausalLM", "Phi3Config", dict(num_key_value_heads=1, tie_word_embeddings=True)),
}


def _hf(path, family: str):
    model_cls, config_cls, extra = FAMILIES[family]
    return save_random_hf(path, model_cls, config_cls, **{**COMMON, **extra})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_matches_transformers(tmp_path, family: str) -> None:
    hf, torch = _hf(tmp_path, family)
    model = ca.load(tmp_path)
    c = model.config
    assert c.normalization == "RMS" and c.gated_mlp and c.rotary is not None
    logits, cache = assert_matches_hf(model, hf, torch, TOKENS)
    back = np.arange(len(TOKENS))[:, None] - np.arange(len(TOKENS))[None, :]
    if family == "gemma3":
        assert c.post_norms and c.qk_norm and c.qk_norm_scope == "head" and c.attn_softcap is None
        assert c.attn_windows == (5, 5, None, 5) and np.all(cache.pattern[[0, 1, 3]][:, :, back >= 5] == 0.0)
        assert c.attn_scale == pytest.approx(np.sqrt(10)) and c.final_softcap == 0.3
        assert (c.rotary.base, c.rotary.scaling, c.rotary.factor) == (100.0, "linear", 8.0)
        assert (c.rotary_local.base, c.rotary_local.scaling) == (10.0, "none")
        assert [model.head(l, 0).rotary for l in range(4)] == [c.rotary_local, c.rotary_local, c.rotary, c.rotary_local]
        with torch.no_grad():
            ref = hf(torch.tensor(TOKENS)[None]).logits[0].double().numpy()
        # negative control: one rotary embedding for every layer does not reproduce transformers
        assert np.abs(model.with_params(model.params, rotary_local=None).run(TOKENS)[0] - ref).max() > 1e-3
    if family.startswith("olmo2"):
        assert not c.pre_norms and c.post_norms and c.qk_norm and c.qk_norm_scope == "all"
        assert model.layers[0].ln1 is None and model.layers[0].ln2 is None and cache.ln1_scale is None
        # one scale over the whole projection, the same for every head of a layer
        np.testing.assert_array_equal(cache.q_scale[:, 0], cache.q_scale[:, 3])
        assert model.params["blocks.0.attn.q_norm.w"].shape == (4, 8)
    if family == "phi3":
        assert c.attn_windows == (5,) * 4 and c.rotary.dim == 4 and c.rotary.scaling == "longrope"
        assert c.rotary.original_max_position_embeddings == 8
        assert c.rotary.attention_factor == pytest.approx(np.sqrt(1 + np.log(24 / 8) / np.log(8)))
        assert_matches_hf(model, hf, torch, SHORT)  # short factors: the prompt is within 8 tokens
        np.testing.assert_allclose(c.rotary.inv_freq(), c.rotary.inv_freq(8))
        assert np.all(c.rotary.inv_freq(9) < c.rotary.inv_freq())  # the long factors are larger
    if family.endswith("-tied"):
        np.testing.assert_array_equal(model.params["W_U"], model.params["W_E"].T)


@pytest.mark.parametrize("family", ["gemma3", "phi3", "phi3-default"])
def test_path_expansion_is_exact(tmp_path, family: str) -> None:
    _hf(tmp_path, family)
    _check_path_expansion(ca.load(tmp_path))


def test_path_expansion_is_exact_without_pre_norms(tmp_path) -> None:
    _hf(tmp_path, "olmo2")
    _check_path_expansion(ca.load(tmp_path))


def _check_path_expansion(model: ca.Transformer) -> None:
    """Every path term, with patterns, norm scales and MLP outputs frozen, adds up to the (pre-cap) logits."""
    for tokens in (TOKENS, SHORT):
        logits, cache = model.run(tokens)
        if model.config.final_softcap is not None:
            logits = cache.logits_precap
        run = ca.expand(model).on(tokens, cache)
        assert np.abs(run.logits() - logits).max() < 1e-8 * np.abs(logits).max()
    folded = ca.fold_layer_norm(model)
    np.testing.assert_allclose(folded.run(TOKENS)[0], model.run(TOKENS)[0], atol=1e-10 * np.abs(logits).max())


def test_multimodal_gemma3_checkpoint_reads_its_text_tower(tmp_path) -> None:
    """A Gemma3ForConditionalGeneration checkpoint (text under model.language_model., a vision tower
    and projector beside it) loads as its text model and matches transformers' text-only logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # transformers' multimodal class leaves the final soft-cap out (its causal-LM class applies it)
    text = {**COMMON, **GEMMA3, "final_logit_softcapping": None}
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    image_token_index=60, boi_token_index=58, eoi_token_index=59)
    torch.manual_seed(0)
    hf = transformers.Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for _, param in hf.named_parameters():
            param.add_(0.05 * torch.randn_like(param))
    hf.save_pretrained(tmp_path)
    keys = json.loads((tmp_path / "config.json").read_text())
    assert keys["model_type"] == "gemma3"
    model = ca.load(tmp_path)
    assert model.config.rotary_local is not None and model.config.post_norms and model.config.final_softcap is None
    logits, _ = assert_matches_hf(model, hf, torch, TOKENS)
    # the hub's (transformers 4.x) names: language_model.model.*, vision_tower.* at the top
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tmp_path / "model.safetensors"))
    renamed = {k.replace("model.language_model.", "language_model.model.").replace("model.vision_tower.", "vision_tower.")
               .replace("model.multi_modal_projector.", "multi_modal_projector."): v for k, v in tensors.items()}
    assert any(k.startswith("language_model.model.layers.") for k in renamed)
    save_file(renamed, str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(ca.load(tmp_path).run(TOKENS)[0], logits)
    capped = {**keys, "text_config": {**keys["text_config"], "final_logit_softcapping": 0.3}}
    (tmp_path / "config.json").write_text(json.dumps(capped))
    with pytest.raises(ca.ConfigError, match="Gemma3ForConditionalGeneration does not apply it"):
        ca.load(tmp_path)


@pytest.mark.parametrize("family", ["gemma3", "phi3"])
def test_transformers_4x_config_forms_read_the_same(tmp_path, family: str) -> None:
    """transformers 4.x wrote Gemma 3's rotary as rope_theta (global), rope_local_base_freq and
    rope_scaling (global), its layers as sliding_window_pattern; Phi-3's LongRoPE as rope_scaling
    {"type": "su", ...}: such config.json files load to the same circuitalg config."""
    _hf(tmp_path, family)
    new = ca.load(tmp_path).config
    cfg = json.loads((tmp_path / "config.json").read_text())
    old = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "layer_types")}
    if family == "gemma3":
        old.update(rope_theta=100.0, rope_local_base_freq=10.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
                   sliding_window_pattern=3)
        new = dataclasses.replace(new, attn_windows=(5, 5, None, 5))  # pattern 3: layer 2 global, as above
    else:
        old.update(rope_theta=100.0, partial_rotary_factor=0.5,
                   rope_scaling={"type": "su", "short_factor": PHI3_ROPE["short_factor"],
                                 "long_factor": PHI3_ROPE["long_factor"]})
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert ca.load(tmp_path).config == new


def test_refusals(tmp_path) -> None:
    _hf(tmp_path, "gemma3")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "attn_logit_softcapping": 50.0}))
    with pytest.raises(ca.ConfigError, match="attn_logit_softcapping=50.0 in a Gemma 3 config"):
        ca.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "use_bidirectional_attention": True}))
    with pytest.raises(ca.ConfigError, match="use_bidirectional_attention"):
        ca.load(tmp_path)
    phi = {**cfg, "model_type": "phi3", "rope_parameters": {"rope_type": "linear", "factor": 2.0}}
    (tmp_path / "config.json").write_text(json.dumps(phi))
    with pytest.raises(ca.ConfigError, match="Phi-3 implements default and longrope"):
        ca.load(tmp_path)
    with pytest.raises(ca.ConfigError, match="rotary_local is the rotary embedding of the sliding-window layers"):
        ca.TransformerConfig(n_layers=1, n_heads=1, d_model=4, d_head=4, d_vocab=5, n_ctx=8, rotary={"dim": 4},
                             rotary_local={"dim": 4, "base": 10.0})
    with pytest.raises(ca.ConfigError, match="longrope' needs freq_factors"):
        ca.Rotary(dim=4, scaling="longrope", long_factors=(1.0, 2.0))


@pytest.mark.parametrize("family", ["gemma3", "olmo2"])
def test_report_runs(tmp_path, family: str) -> None:
    from circuitalg.cli import main
    from circuitalg.report import architecture_notes

    _hf(tmp_path / "ckpt", family)
    assert main(["report", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 0
    notes = "\n".join(architecture_notes(ca.load(tmp_path / "ckpt").config))
    assert "q/k RMSNorms: weights folded into W_Q, W_K" in notes
    assert "norms of each sublayer's output: weights folded into W_O and the MLP writers" in notes


@pytest.mark.parametrize("family", ["gemma3", "olmo2", "phi3"])
def test_round_trip_through_circuitalg_files(tmp_path, family: str) -> None:
    """ca.save writes the new config fields (rotary_local, LongRoPE factors, pre_norms, qk_norm_scope)."""
    _hf(tmp_path / "hf", family)
    model = ca.load(tmp_path / "hf")
    back = ca.load(ca.save(model, tmp_path / "m.safetensors"))
    assert back.config == model.config
    np.testing.assert_allclose(back.run(TOKENS)[0], model.run(TOKENS)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["gemma3", "olmo2", "phi3"])
def test_report_notes_say_how_the_new_features_enter(tmp_path, family: str) -> None:
    from circuitalg.report import architecture_notes

    _hf(tmp_path, family)
    notes = " | ".join(architecture_notes(ca.load(tmp_path).config))
    if family == "gemma3":
        assert "per-head q/k RMSNorms" in notes and "sliding-window layers rotate with base 10" in notes
    if family == "olmo2":
        assert "whole-projection (all heads together) q/k RMSNorms" in notes and "no input norms" in notes
        assert "per-head" not in notes
    if family == "phi3":
        assert "LongRoPE's attention factor" in notes and "short factors" in notes and "beyond 8 tokens" in notes
        assert "YaRN" not in notes
