"""GGUF files: written with gguf's own writer from random transformers models (llama.cpp's tensor
names and conversions: Q/K row permutation, Gemma's ``1 + w`` norms, GPT-2's transposes),
quantised (Q8_0, Q4_K, Q6_K) and in F16/BF16, read by ``ca.load`` and compared with
transformers' own GGUF loading of the same file (same dequantised weights)."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import assert_matches_hf, save_random_hf

import circuitalg as ca

gguf = pytest.importorskip("gguf")
TOKENS = np.random.default_rng(3).integers(0, 61, size=14)
COMMON = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=256, max_position_embeddings=24, bos_token_id=0, eos_token_id=0)
Q = gguf.GGMLQuantizationType
#: which tensors are stored in which type (the rest F32): K-quants need rows of 256 (ffn_down)
QUANTS = {"blk.0.ffn_down.weight": Q.Q4_K, "blk.1.ffn_down.weight": Q.Q6_K, "blk.0.attn_q.weight": Q.Q8_0,
          "blk.1.attn_v.weight": Q.F16, "blk.1.ffn_up.weight": Q.BF16, "blk.0.ffn_gate.weight": Q.Q8_0,
          "blk.0.attn_qkv.weight": Q.Q8_0, "blk.1.attn_output.weight": Q.F16}
_LLAMA = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
          "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_GEMMA = {**_LLAMA, "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
          "post_feedforward_layernorm": "post_ffw_norm"}
_PHI3 = {**_LLAMA, "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}
_GPT2 = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
         "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def _random_kquant(rng, qtype, rows: int, cols: int) -> np.ndarray:
    """Random K-quant blocks with finite scales (gguf can dequantise but not write K-quants)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    if qtype == Q.Q4_K:  # d, dmin (f16) lead each block
        raw[..., 0:4] = np.array([0.002, 0.001], dtype=np.float16).view(np.uint8)
    else:  # Q6_K: d (f16) ends each block
        raw[..., size - 2:] = np.array([0.0005], dtype=np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def _to_gguf_name(hf: str, family: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight", "transformer.wte.weight": "token_embd.weight",
           "transformer.wpe.weight": "position_embd.weight", "transformer.ln_f.weight": "output_norm.weight",
           "transformer.ln_f.bias": "output_norm.bias"}
    if hf in top:
        return top[hf]
    prefix = "transformer.h." if family == "gpt2" else "model.layers."
    layer, rest = hf[len(prefix):].split(".", 1)
    stem, suffix = rest.rsplit(".", 1)
    table = {"gpt2": _GPT2, "gemma2": _GEMMA, "gemma3": _GEMMA, "phi3": _PHI3}.get(family, _LLAMA)
    return f"blk.{layer}.{table[stem]}.{suffix}"


def _write_gguf(path, hf, family: str, arch: str, quants=QUANTS, rope_freqs=None) -> None:
    """What llama.cpp's convert_hf_to_gguf.py writes for this transformers model (``quants``: the
    storage type of chosen tensors; ``rope_freqs``: Llama 3.1's per-plane frequency divisors;
    Phi-3's LongRoPE factors are written as its converter writes them)."""
    rng = np.random.default_rng(0)
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"random {family}")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings if family != "gpt2" else c.n_positions)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size if family != "gpt2" else c.n_inner)
    w.add_head_count(c.num_attention_heads)
    if family == "gpt2":
        w.add_layer_norm_eps(c.layer_norm_epsilon)
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"\u0120t{i}" for i in range(c.vocab_size)])  # byte-level: "Ġt5" is " t5"
    else:
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        rope = c.rope_parameters.get("full_attention", c.rope_parameters)  # Gemma 3: the global layers'
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        w.add_rope_freq_base(rope["rope_theta"])
        if family != "phi3":  # llama.cpp's Phi-3 converter writes no key length
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
        w.add_tokenizer_model("llama")
        w.add_token_list([f"\u2581t{i}" for i in range(c.vocab_size)])
    if family == "gemma2":
        w.add_sliding_window(c.sliding_window)
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    if family == "gemma3":
        w.add_sliding_window(c.sliding_window)
        if rope["rope_type"] == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(rope["factor"])
    if family == "phi3":  # transformers' Phi-3 default pad id (32000) lies outside this vocabulary
        w.add_pad_token_id(c.pad_token_id)
    if family == "phi3" and rope["rope_type"] == "longrope":  # convert_hf_to_gguf's Phi3MiniModel
        original = c.original_max_position_embeddings
        scale = c.max_position_embeddings / original
        w.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(scale) / np.log(original))))
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], dtype=np.float32))
    for name, t in hf.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        a = t.detach().float().numpy()
        g = _to_gguf_name(name, family)
        if family == "llama" and (".attn_q." in g or ".attn_k." in g):  # llama.cpp's permute(n_head)
            n = c.num_attention_heads if ".attn_q." in g else c.num_key_value_heads
            a = a.reshape(n, 2, a.shape[0] // n // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        if family in ("gemma2", "gemma3") and g.endswith("norm.weight"):
            a = a + 1.0
        if family == "gpt2" and g.endswith(".weight") and any(k in g for k in ("attn_qkv", "attn_output", "ffn_")):
            a = a.T  # Conv1D (in, out) -> (out, in)
        a = np.ascontiguousarray(a, dtype=np.float32)
        qtype = quants.get(g, Q.F32)
        if qtype in (Q.Q4_K, Q.Q6_K) and a.shape[1] % 256:
            qtype = Q.Q8_0
        if qtype in (Q.Q4_K, Q.Q6_K):
            w.add_tensor(g, _random_kquant(rng, qtype, *a.shape), raw_dtype=qtype)
        elif qtype != Q.F32:
            w.add_tensor(g, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(g, a)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", "llama", dict(head_dim=8)),
    # transformers reads no head_dim for Qwen3 GGUF files (its default is 128), so the model has 128
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", "qwen3", dict(head_dim=128)),
    # transformers takes query_pre_attn_scalar = 256 (its default); llama.cpp takes the head size
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", "gemma2", dict(head_dim=256, query_pre_attn_scalar=256,
                                                                    sliding_window=5, pad_token_id=0)),
    # transformers' Gemma 3 GGUF loading takes its defaults for what GGUF does not carry: query_pre_attn_scalar 256,
    # every sixth layer global, local base 10000 (llama.cpp's rules give the same here)
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", "gemma3", dict(
        num_hidden_layers=6, head_dim=256, query_pre_attn_scalar=256, sliding_window=5, pad_token_id=0,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    # transformers' Phi-3 GGUF loading reads no rotary dimension count: full rotary here
    "phi3": ("Phi3ForCausalLM", "Phi3Config", "phi3", dict(pad_token_id=0)),
    # transformers' GPT-2 GGUF loading reads neither n_positions nor n_inner: its defaults (1024, 4 n_embd) here
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", "gpt2", dict(n_embd=32, n_layer=2, n_head=4, n_inner=128,
                                                          n_positions=1024, vocab_size=61, bos_token_id=0,
                                                          eos_token_id=0)),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_matches_transformers_gguf_loading(tmp_path, family: str) -> None:
    model_cls, config_cls, arch, extra = FAMILIES[family]
    config = extra if family == "gpt2" else {**COMMON, **extra}
    hf, torch = save_random_hf(tmp_path / "hf", model_cls, config_cls, **config)
    path = tmp_path / "model.gguf"
    _write_gguf(path, hf, family, arch)
    model = ca.load(path)
    assert model.name == "model.gguf" and model.vocab is not None and model.vocab[5] == " t5"
    import transformers

    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf").eval()
    logits, _ = assert_matches_hf(model, ref, torch, TOKENS)
    # the quantised tensors really were quantised: the model differs from the unquantised one
    with torch.no_grad():
        original = hf(torch.tensor(TOKENS)[None]).logits[0].double().numpy()
    assert np.abs(logits - original).max() > 1e-4
    if family == "gemma2":
        c = model.config
        assert c.post_norms and (c.attn_softcap, c.final_softcap) == (50.0, 30.0) and c.attn_windows == (5, None)
    if family == "qwen3":
        assert model.config.qk_norm
    if family == "gemma3":
        c = model.config
        assert c.post_norms and c.qk_norm and c.attn_windows == (5, 5, 5, 5, 5, None) and c.attn_softcap is None
        assert (c.rotary.base, c.rotary_local.base, c.attn_scale) == (1000.0, 10000.0, 16.0)


def test_gguf_phi3_longrope_matches_the_transformers_model(tmp_path) -> None:
    """A Phi-3 GGUF file carries LongRoPE as rope_factors_short/long tensors and the original context
    length: read back, it reproduces transformers' own LongRoPE model (not its GGUF loader, which
    ignores them) on prompts longer and shorter than that length; unquantised weights."""
    rope = {"rope_type": "longrope", "rope_theta": 100.0, "partial_rotary_factor": 0.5,
            "short_factor": [1.0, 2.0], "long_factor": [3.0, 8.0]}
    hf, torch = save_random_hf(tmp_path / "hf", "Phi3ForCausalLM", "Phi3Config", **COMMON, pad_token_id=0,
                               rope_parameters=rope, original_max_position_embeddings=8)
    _write_gguf(tmp_path / "phi3.gguf", hf, "phi3", "phi3", quants={})
    model = ca.load(tmp_path / "phi3.gguf")
    r = model.config.rotary
    assert (r.scaling, r.dim, r.freq_factors, r.long_factors) == ("longrope", 4, (1.0, 2.0), (3.0, 8.0))
    for tokens in (TOKENS, TOKENS[:6]):  # 14 tokens: the long factors; 6: the short ones
        assert_matches_hf(model, hf, torch, tokens)


def test_gguf_llama3_rope_freqs_match_the_llama3_scaling(tmp_path) -> None:
    """llama.cpp stores Llama 3.1's rotary scaling as a rope_freqs tensor of per-plane divisors;
    read as freq_factors it reproduces transformers' llama3 model (not its GGUF loader, which
    ignores the tensor); without the tensor the same weights do not."""
    rope = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    hf, torch = save_random_hf(tmp_path / "hf", "LlamaForCausalLM", "LlamaConfig", **COMMON, head_dim=8,
                               rope_parameters=rope)
    scaled = ca.Rotary(dim=8, base=500.0, scaling="llama3", factor=8.0, original_max_position_embeddings=16)
    factors = ca.Rotary(dim=8, base=500.0).inv_freq() / scaled.inv_freq()  # what the converter writes
    assert factors.max() > 1.5  # the scaling acts on these frequencies
    _write_gguf(tmp_path / "plain.gguf", hf, "llama", "llama", quants={})
    _write_gguf(tmp_path / "freqs.gguf", hf, "llama", "llama", quants={}, rope_freqs=factors)
    model = ca.load(tmp_path / "freqs.gguf")
    np.testing.assert_allclose(model.config.rotary.inv_freq(), scaled.inv_freq(), rtol=1e-6)
    with torch.no_grad():
        ref = hf(torch.tensor(TOKENS)[None]).logits[0].double().numpy()
    np.testing.assert_allclose(model.run(TOKENS)[0], ref, atol=1e-4)
    assert np.abs(ca.load(tmp_path / "plain.gguf").run(TOKENS)[0] - ref).max() > 1e-3


def _minimal_gguf(path, arch: str, **metadata) -> None:
    """A GGUF file with ``token_embd.weight`` only and the writer calls ``add_<key>(value)`` given."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in metadata.items():
        getattr(w, "add_" + key)(value)
    w.add_tensor("token_embd.weight", np.zeros((5, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_refusals(tmp_path) -> None:
    _minimal_gguf(tmp_path / "bad.gguf", "falcon", block_count=1)
    with pytest.raises(ca.ConfigError, match="general.architecture='falcon'"):
        ca.load(tmp_path / "bad.gguf")
    _minimal_gguf(tmp_path / "yarn.gguf", "llama", block_count=1, head_count=1, context_length=8, embedding_length=4,
                  feed_forward_length=8, rope_scaling_type=gguf.RopeScalingType.YARN)
    with pytest.raises(ca.ConfigError, match="rope.scaling.type='yarn' is not supported in GGUF files"):
        ca.load(tmp_path / "yarn.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(ca.LoadError, match="junk.gguf"):
        ca.load(tmp_path / "junk.gguf")


def test_gguf_without_the_package_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(ca.LoadError, match=r"pip install 'circuitalg\[gguf\]'"):
        ca.load(tmp_path / "m.gguf")
