"""Llama-family models (Llama, Mistral, Qwen2): RMSNorm, rotary, grouped-query attention, SwiGLU,
sliding windows and biases, against transformers' own randomly initialised models; RMS/GQA/gated
TransformerLens state dicts where transformer-lens is installed."""

from __future__ import annotations

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
    if family == "mistral-window":
        back = np.arange(len(TOKENS))[:, None] - np.arange(len(TOKENS))[None, :]
        assert c.attn_windows == (5, 5, 5) and np.all(cache.pattern[:, :, back >= 5] == 0.0)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_llama_family_path_expansion_and_analyses(tmp_path, family: str) -> None:
    _hf(tmp_path, family)
    model = ca.load(tmp_path)
    logits, cache = model.run(TOKENS)
    run = ca.expand(model).on(TOKENS, cache)  # RMS scales, gates and MLP outputs frozen
    assert np.abs(run.logits() - logits).max() < 1e-8 * np.abs(logits).max()
    truncated = ca.expand(model, max_heads=1).on(TOKENS, cache)
    omitted = sum(run.contribution(t) for t in ca.expand(model) if len(t.heads) > 1)
    np.testing.assert_allclose(run.logits() - truncated.logits(), omitted, atol=1e-9 * np.abs(logits).max())
    folded = ca.fold_layer_norm(model)
    assert folded.config.normalization == "RMSPre"
    np.testing.assert_allclose(folded.run(TOKENS)[0], logits, atol=1e-10 * np.abs(logits).max())
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


def test_llama_report_runs(tmp_path) -> None:
    from circuitalg.cli import main

    _hf(tmp_path / "ckpt", "llama")
    assert main(["report", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 0
    assert "rotary position embeddings and no W_pos" in (tmp_path / "out" / "report.html").read_text()


def test_llama_config_refusals(tmp_path) -> None:
    import json

    _hf(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    yarn = {**cfg, "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}}
    (tmp_path / "config.json").write_text(json.dumps(yarn))
    with pytest.raises(ca.ConfigError, match="rope_type='yarn'"):
        ca.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 3}))
    with pytest.raises(ca.ConfigError, match="not a multiple of n_kv_heads=3"):
        ca.load(tmp_path)


def test_transformer_lens_rms_gqa_gated() -> None:
    pytest.importorskip("transformer_lens")
    torch = pytest.importorskip("torch")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=24, d_head=8, n_heads=4, n_key_value_heads=2, d_vocab=61, d_mlp=48,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
        gated_mlp=True, seed=0, dtype=torch.float64,
    )
    tl = HookedTransformer(cfg)
    with torch.no_grad():
        for _, param in tl.named_parameters():
            param.add_(0.1 * torch.randn_like(param))
    model = ca.Transformer.from_hooked_transformer(tl)
    assert model.config.kv_heads == 2 and model.config.gated_mlp and model.config.normalization == "RMS"
    with torch.no_grad():
        ref = tl(torch.tensor(TOKENS)[None]).double().numpy()[0]
    np.testing.assert_allclose(model.run(TOKENS)[0], ref, rtol=1e-8, atol=1e-8)
