"""GPT-Neo: local (sliding-window) attention, unscaled scores, nn.Linear q/k/v/out projections.

References: transformers' ``GPTNeoForCausalLM`` (random initialisation, saved with
``save_pretrained``) and TransformerLens's ``use_local_attn`` where it is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import assert_matches_hf, save_random_hf

import circuitalg as ca

WINDOW = 5
TOKENS = np.random.default_rng(3).integers(0, 61, size=20)  # longer than the window


def _hf_model(tmp_path, *, tie: bool = True):
    return save_random_hf(
        tmp_path, "GPTNeoForCausalLM", "GPTNeoConfig", vocab_size=61, max_position_embeddings=24, hidden_size=32,
        num_layers=3, num_heads=4, attention_types=[[["global", "local"], 1], [["local"], 1]], window_size=WINDOW,
        intermediate_size=48, activation_function="gelu_new", bos_token_id=0, eos_token_id=0, tie_word_embeddings=tie,
    )


@pytest.mark.parametrize("tie", [True, False])
def test_hf_gpt_neo_matches_transformers(tmp_path, tie: bool) -> None:
    hf, torch = _hf_model(tmp_path, tie=tie)
    model = ca.load(tmp_path)
    c = model.config
    assert c.attn_windows == (None, WINDOW, WINDOW) and c.attn_scale == 1.0 and c.n_heads == 4
    logits, cache = assert_matches_hf(model, hf, torch, TOKENS)
    # local layers never attend further back than the window; the global layer does
    back = np.arange(len(TOKENS))[:, None] - np.arange(len(TOKENS))[None, :]
    assert np.all(cache.pattern[1][:, back >= WINDOW] == 0.0)
    assert np.all(cache.pattern[0][:, back >= WINDOW] > 0.0)


def test_gpt_neo_path_expansion_is_exact(tmp_path) -> None:
    _hf_model(tmp_path)
    model = ca.load(tmp_path)
    logits, cache = model.run(TOKENS)
    run = ca.expand(model).on(TOKENS, cache)
    assert np.abs(run.logits() - logits).max() < 1e-8 * np.abs(logits).max()
    truncated = ca.expand(model, max_heads=1).on(TOKENS, cache)
    omitted = sum(run.contribution(t) for t in ca.expand(model) if len(t.heads) > 1)
    np.testing.assert_allclose(run.logits() - truncated.logits(), omitted, atol=1e-9 * np.abs(logits).max())


def test_local_position_tables_stay_inside_the_window(tmp_path) -> None:
    _hf_model(tmp_path)
    model = ca.fold_layer_norm(ca.load(tmp_path))
    for head in model.layers[1].heads:  # a local layer
        qk = ca.Circuit(ca.Source("pos"), (), ca.Sink("k", head.id, ca.Source("pos")), model)
        entries = qk.top_tokens(40)
        assert len(entries) == 40
        assert all(0 <= e.row - e.col < WINDOW for e in entries)
        dense = ca.to_dense(qk.weight)
        back = np.arange(dense.shape[0])[:, None] - np.arange(dense.shape[1])[None, :]
        dense[(back < 0) | (back >= WINDOW)] = -np.inf
        np.testing.assert_allclose([e.value for e in entries], np.sort(dense.ravel())[::-1][:40], rtol=1e-10)
        pattern = ca.circuits.diagnostics.positional_pattern(model, head, 12)
        assert np.all(pattern[back[:12, :12] >= WINDOW] == 0.0)


def test_gpt_neo_report_runs(tmp_path, capsys) -> None:
    from circuitalg.cli import main

    _hf_model(tmp_path / "ckpt")
    assert main(["report", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), "--json"]) == 0
    assert (tmp_path / "out" / "report.html").is_file()


def test_config_mismatch_and_bad_attention_types(tmp_path) -> None:
    import json

    _hf_model(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "attention_types": [[["global", "sparse"], 1]]}))
    with pytest.raises(ca.ConfigError, match="'global' or 'local'"):
        ca.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "attention_types": [[["global"], 2]]}))
    with pytest.raises(ca.ConfigError, match="covers 2 layers but num_layers=3"):
        ca.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises((ca.ConfigError, ca.LoadError), match="gpt_neo checkpoint|n_layer"):
        ca.load(tmp_path)
    with pytest.raises(ca.ConfigError, match="attn_windows"):
        ca.TransformerConfig(n_layers=2, n_heads=1, d_model=4, d_head=4, d_vocab=5, n_ctx=6, attn_windows=(3,))


def test_transformer_lens_local_attention() -> None:
    """A TransformerLens model with use_local_attn (GPT-Neo's settings) loads and runs identically."""
    pytest.importorskip("transformer_lens")
    torch = pytest.importorskip("torch")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=24, d_head=8, n_heads=4, d_vocab=61, d_mlp=48, act_fn="gelu_new",
        normalization_type="LN", use_local_attn=True, attn_types=["global", "local"], window_size=WINDOW,
        use_attn_scale=False, seed=0, dtype=torch.float64,
    )
    tl = HookedTransformer(cfg)
    with torch.no_grad():
        for _, param in tl.named_parameters():
            param.add_(0.1 * torch.randn_like(param))
    model = ca.Transformer.from_hooked_transformer(tl)
    assert model.config.attn_windows == (None, WINDOW) and model.config.attn_scale == 1.0
    with torch.no_grad():
        ref = tl(torch.tensor(TOKENS)[None]).double().numpy()[0]
    np.testing.assert_allclose(model.run(TOKENS)[0], ref, rtol=1e-9, atol=1e-9)
