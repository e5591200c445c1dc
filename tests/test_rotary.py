"""Rotary position embeddings and parallel blocks: GPT-NeoX (Pythia) against transformers, the
typed ``W_QK(Δ)`` against the forward pass, TransformerLens rotary models where installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_helpers import assert_matches_hf, save_random_hf

import circuitalg as ca

TOKENS = np.random.default_rng(5).integers(0, 61, size=18)


def _neox(tmp_path, **overrides):
    kwargs = dict(
        vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=24, rotary_pct=0.5, hidden_act="gelu", tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0,
    )
    return save_random_hf(tmp_path, "GPTNeoXForCausalLM", "GPTNeoXConfig", **{**kwargs, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [{}, {"use_parallel_residual": False}, {"rotary_pct": 1.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
     {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}}],
    ids=["parallel-partial", "sequential", "full-linear-scaling", "partial-yarn"],
)
def test_hf_gpt_neox_matches_transformers(tmp_path, overrides) -> None:
    hf, torch = _neox(tmp_path, **overrides)
    model = ca.load(tmp_path)
    c = model.config
    assert c.rotary is not None and model.W_pos is None
    assert c.rotary.dim == (8 if overrides.get("rotary_pct", 0.5) == 1.0 else 4)
    assert c.parallel_attn_mlp == overrides.get("use_parallel_residual", True)
    assert c.rotary.scaling == (overrides.get("rope_scaling") or {}).get("rope_type", "none")
    logits, cache = assert_matches_hf(model, hf, torch, TOKENS)
    # the path expansion stays exact: rotary acts on queries and keys, whose patterns are frozen
    run = ca.expand(model).on(TOKENS, cache)
    assert np.abs(run.logits() - logits).max() < 1e-8 * np.abs(logits).max()
    assert all(t.source.kind != "pos" for t in ca.expand(model))


def test_gpt_neox_config_forms(tmp_path) -> None:
    """transformers 5.x writes rope_parameters; 4.x wrote rotary_pct / rotary_emb_base: both read the same."""
    _neox(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    new = ca.load(tmp_path).config
    old = {k: v for k, v in cfg.items() if k != "rope_parameters"}
    old.update(rotary_pct=cfg["rope_parameters"]["partial_rotary_factor"],
               rotary_emb_base=cfg["rope_parameters"]["rope_theta"])
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert ca.load(tmp_path).config == new
    (tmp_path / "config.json").write_text(json.dumps({**old, "rope_scaling": {"type": "yarn", "factor": 4.0}}))
    yarn = ca.load(tmp_path).config.rotary  # 4.x rope_scaling: original context = max_position_embeddings
    assert yarn.scaling == "yarn" and yarn.original_max_position_embeddings == cfg["max_position_embeddings"]
    assert yarn.attention_factor == pytest.approx(0.1 * np.log(4.0) + 1.0)
    (tmp_path / "config.json").write_text(json.dumps({**old, "rope_scaling": {"type": "longrope", "factor": 4.0}}))
    with pytest.raises(ca.ConfigError, match="rope_type='longrope' needs short_factor, long_factor"):
        ca.load(tmp_path)


QK_VARIANTS = {
    "half": dict(rotary={"dim": 4, "base": 50.0, "style": "half"}),
    "interleaved": dict(rotary={"dim": 4, "base": 50.0, "style": "interleaved"}),
    "yarn": dict(rotary={"dim": 4, "base": 50.0, "scaling": "yarn", "factor": 4.0, "attention_factor": 1.3,
                         "original_max_position_embeddings": 4}),
    # Qwen3's per-head q/k norms (frozen scales) and Gemma 2's score soft-capping, GQA
    "qk-norm-softcap-gqa": dict(rotary={"dim": 6, "base": 20.0}, normalization="RMSPre", qk_norm=True,
                                attn_softcap=2.0, n_kv_heads=1),
}


@pytest.mark.parametrize("variant", list(QK_VARIANTS))
def test_qk_at_offset_equals_the_forward_pass_scores(variant: str) -> None:
    """W_QK(Δ) = W_Qᵀ R(Δ) W_K reproduces the pre-softmax scores of the forward pass (read back from
    its patterns: log p_ij - log p_ii = s_ij - s_ii), to 1e-10, with the frozen norm scales (layer
    norm and per-head q/k norms) dividing the form and the soft-cap applied to the score."""
    rng = np.random.default_rng(0)
    cfg = ca.TransformerConfig(n_layers=1, n_heads=2, d_model=12, d_head=6, d_vocab=17, n_ctx=10,
                               **{"normalization": None, **QK_VARIANTS[variant]})
    params = {k: 0.5 * rng.standard_normal(s) for k, s in ca.param_shapes(cfg).items()}
    for b in ("b_Q", "b_K"):
        params[f"blocks.0.attn.{b}"] = np.zeros_like(params[f"blocks.0.attn.{b}"])
    m = ca.Transformer(cfg, params)
    tokens = rng.integers(0, 17, size=10)
    _, cache = m.run(tokens)
    x = cache.resid[0]  # what layer 0 reads
    if cache.ln1_scale is not None:
        x = x / cache.ln1_scale[0][:, None]
    cap = (lambda s: cfg.attn_softcap * np.tanh(s / cfg.attn_softcap)) if cfg.attn_softcap else (lambda s: s)
    for head in m.heads():
        with np.errstate(divide="ignore"):  # masked (future) positions: log 0 = -inf, never read
            logp = np.log(cache.pattern[0, head.index])
        sq = np.ones(10) if cache.q_scale is None else cache.q_scale[0, head.index]
        sk = np.ones(10) if cache.k_scale is None else cache.k_scale[0, cfg.kv_head(head.index)]
        for i in range(10):
            for j in range(i + 1):
                s_ij = x[i] @ ca.to_dense(head.qk_at(j - i)) @ x[j] / (cfg.attn_scale * sq[i] * sk[j])
                s_ii = x[i] @ ca.to_dense(head.qk_at(0)) @ x[i] / (cfg.attn_scale * sq[i] * sk[i])
                assert abs((logp[i, j] - logp[i, i]) - (cap(s_ij) - cap(s_ii))) < 1e-10
        if cfg.rotary.attention_factor == 1.0:
            np.testing.assert_allclose(ca.to_dense(head.qk_at(0)), ca.to_dense(head.qk), atol=1e-14)
        assert head.rotation(3).symbol.name == "R_{0}(3)"


def test_rotary_model_analyses_say_what_is_not_defined(tmp_path) -> None:
    _neox(tmp_path)
    model = ca.load(tmp_path)
    table = ca.head_table(model, ca.repeated_random_tokens(model, 8, 2), k=2)
    assert np.all(np.isfinite(table.positional_prev_token))  # by offset, through W_QK(Δ)
    with pytest.raises(ca.InvalidArgumentError, match="rotary position embeddings"):
        ca.circuits.diagnostics.positional_pattern(model, model.head(0, 0), 8)
    search = ca.top_circuits(ca.fold_layer_norm(model), 5, 2)
    assert search.total == ca.count_circuits(model, 2) and all(c.source.kind == "embed" for c in search)
    graph = ca.CircuitGraph(ca.fold_layer_norm(model))
    assert "pos" not in graph.nx and graph.nx.number_of_edges() > 0
    from circuitalg.cli import main

    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Rotary model: no W<sub>pos</sub>" in page


def test_transformer_lens_rotary_parallel() -> None:
    pytest.importorskip("transformer_lens")
    torch = pytest.importorskip("torch")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    for adjacent in (False, True):
        cfg = HookedTransformerConfig(
            n_layers=2, d_model=32, n_ctx=24, d_head=8, n_heads=4, d_vocab=61, d_mlp=48, act_fn="gelu",
            normalization_type="LN", positional_embedding_type="rotary", rotary_dim=4,
            rotary_adjacent_pairs=adjacent, parallel_attn_mlp=True, seed=0, dtype=torch.float64,
        )
        tl = HookedTransformer(cfg)
        with torch.no_grad():
            for _, param in tl.named_parameters():
                param.add_(0.1 * torch.randn_like(param))
        model = ca.Transformer.from_hooked_transformer(tl)
        assert model.config.rotary.style == ("interleaved" if adjacent else "half")
        with torch.no_grad():
            ref = tl(torch.tensor(TOKENS)[None]).double().numpy()[0]
        np.testing.assert_allclose(model.run(TOKENS)[0], ref, rtol=1e-8, atol=1e-8)


def test_hf_gptj_matches_transformers(tmp_path) -> None:
    """GPT-J: interleaved partial rotary, one layer norm feeding attention and MLP in parallel, biased lm_head."""
    hf, torch = save_random_hf(tmp_path, "GPTJForCausalLM", "GPTJConfig", vocab_size=61, n_positions=24, n_embd=32,
                               n_layer=3, n_head=4, rotary_dim=4, n_inner=48, bos_token_id=0, eos_token_id=0)
    model = ca.load(tmp_path)
    c = model.config
    assert (c.rotary.style, c.rotary.dim, c.parallel_attn_mlp) == ("interleaved", 4, True)
    assert np.abs(model.b_U).max() > 0  # the biased lm_head
    logits, cache = assert_matches_hf(model, hf, torch, TOKENS)
    run = ca.expand(model).on(TOKENS, cache)
    assert np.abs(run.logits() - logits).max() < 1e-8 * np.abs(logits).max()


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_rotary_offset_pattern_is_the_pattern_of_mean_content(style: str) -> None:
    """When every token embeds as the mean embedding μ, the forward pass attends exactly by offset:
    its patterns equal rotary_offset_pattern (the weight-based positional score of rotary heads)."""
    rng = np.random.default_rng(1)
    cfg = ca.TransformerConfig(n_layers=1, n_heads=3, d_model=12, d_head=6, d_vocab=9, n_ctx=12,
                               normalization=None, rotary={"dim": 6, "base": 30.0, "style": style})
    params = {k: 0.7 * rng.standard_normal(s) for k, s in ca.param_shapes(cfg).items()}
    params["W_E"] = np.repeat(rng.standard_normal((12, 1)), 9, axis=1)  # every token embeds as μ
    for b in ("b_Q", "b_K"):
        params[f"blocks.0.attn.{b}"] = np.zeros_like(params[f"blocks.0.attn.{b}"])
    m = ca.Transformer(cfg, params)
    _, cache = m.run(rng.integers(0, 9, size=12))
    for head in m.heads():
        np.testing.assert_allclose(ca.circuits.diagnostics.rotary_offset_pattern(m, head, 12),
                                   cache.pattern[0, head.index], atol=1e-12)
