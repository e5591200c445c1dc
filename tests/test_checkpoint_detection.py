"""Checkpoints as people have them: tied embeddings stored under either name of the pair (what
``safetensors.torch.save_model`` writes), the family told by ``config.json`` (``model_type`` or
``architectures``) rather than by tensor names, and mismatches refused with the names at fault."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_helpers import assert_matches_hf

import circuitalg as ca

TOKENS = np.random.default_rng(5).integers(0, 61, size=12)
LLAMA = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=48, max_position_embeddings=16, bos_token_id=0, eos_token_id=0, pad_token_id=0)
TIED = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {**LLAMA, "tie_word_embeddings": True}),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", {**LLAMA, "head_dim": 8, "sliding_window": 4}),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, vocab_size=61, n_positions=16,
                                                   bos_token_id=0, eos_token_id=0)),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                            intermediate_size=48, vocab_size=61,
                                                            max_position_embeddings=16, tie_word_embeddings=True,
                                                            bos_token_id=0, eos_token_id=0)),
}


def _save_model(path, family: str):
    """A random tied transformers model written as ``safetensors.torch.save_model`` writes it (one
    name of each tied pair kept) with its config.json; returns ``(model, torch, stored keys)``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors import safe_open
    from safetensors.torch import save_model

    model_cls, config_cls, config = TIED[family]
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config)).eval()
    with torch.no_grad():
        for _, param in hf.named_parameters():
            param.add_(0.05 * torch.randn_like(param))
    path.mkdir(parents=True, exist_ok=True)
    hf.config.save_pretrained(path)
    save_model(hf, str(path / "model.safetensors"))
    with safe_open(str(path / "model.safetensors"), "np") as f:
        keys = set(f.keys())
    return hf, torch, keys


@pytest.mark.parametrize("family", list(TIED))
def test_tied_checkpoint_written_by_save_model_loads(tmp_path, family: str) -> None:
    hf, torch, keys = _save_model(tmp_path, family)
    embed = {"gpt2": "transformer.wte.weight", "gpt_neox": "gpt_neox.embed_in.weight"}.get(
        family, "model.embed_tokens.weight")
    assert len(keys & {embed, "lm_head.weight", "embed_out.weight"}) == 1  # one name of the tied pair
    model = ca.load(tmp_path)
    assert_matches_hf(model, hf, torch, TOKENS)
    scale = np.sqrt(32) if family == "gemma3" else 1.0  # Gemma's embedding scale is folded into W_E
    np.testing.assert_allclose(model.params["W_U"], model.params["W_E"].T / scale, rtol=1e-6)


def test_family_from_architectures_when_model_type_is_absent(tmp_path) -> None:
    hf, torch, _ = _save_model(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    no_type = {k: v for k, v in cfg.items() if k != "model_type"}
    (tmp_path / "config.json").write_text(json.dumps({**no_type, "architectures": ["LlamaForCausalLM"]}))
    assert_matches_hf(ca.load(tmp_path), hf, torch, TOKENS)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": None, "architectures": ["Nope"]}))
    with pytest.raises(ca.ConfigError, match="no model_type \\(and no architectures entry circuitalg knows\\)"):
        ca.load(tmp_path)  # the keys say Llama-like, but not which family's config.json this is


def test_config_and_keys_that_disagree_are_refused(tmp_path) -> None:
    _save_model(tmp_path, "gpt2")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ca.ConfigError, match="tensors are a gpt2 checkpoint but config.json says model_type='llama'"):
        ca.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon"}))
    with pytest.raises(ca.ConfigError, match="model_type='falcon'"):
        ca.load(tmp_path)


def test_untied_checkpoint_without_its_embedding_is_refused(tmp_path) -> None:
    _save_model(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    with pytest.raises(ca.LoadError, match="missing tensor 'model.embed_tokens.weight'"):
        ca.load(tmp_path)
