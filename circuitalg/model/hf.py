"""Hugging Face checkpoints: ``config.json`` and state-dict layouts per family.

Each family reads its ``config.json`` into circuitalg config fields (:func:`hf_config`; keys the
file leaves out take transformers' documented defaults, ``model_type`` is required) and maps its
tensors (``nn.Linear`` weights are ``(out, in)``, already the column layout; GPT-2's ``Conv1D``
is ``(in, out)``) to circuitalg's canonical parameters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from circuitalg.errors import ConfigError, LoadError
from circuitalg.model.config import TransformerConfig
from circuitalg.model.statedict import TensorReader, as_array

__all__ = ["HF_MODEL_TYPES", "HF_LAYOUTS", "hf_config", "convert_hf"]

_HF_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_HF_NEO_BUFFERS = re.compile(r"^h\.\d+\.attn\.attention\.(bias|masked_bias)$")
_HF_GPTJ_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias|embed_positions)$|^embed_positions$")
_HF_LLAMA_BUFFERS = re.compile(r"^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$")
_HF_NEOX_BUFFERS = re.compile(r"^gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$|^gpt_neox\.rotary_emb\.inv_freq$")
_HF_ACT = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


#: The Hugging Face architectures circuitalg reads, by ``config.json`` ``model_type``, with
#: their state-dict layout.
HF_MODEL_TYPES = {
    "gpt2": "hf_gpt2", "gpt_neo": "hf_gpt_neo", "gpt_neox": "hf_gpt_neox", "gptj": "hf_gptj",
    "llama": "hf_llama", "mistral": "hf_llama", "qwen2": "hf_llama", "qwen3": "hf_llama", "gemma2": "hf_llama",
}
#: Llama-layout families: which projections carry biases (q/k/v, o, MLP), from the config or fixed.
_LLAMA_BIASES = {
    "llama": lambda d: (bool(d.get("attention_bias", False)), bool(d.get("attention_bias", False)),
                        bool(d.get("mlp_bias", False))),
    "mistral": lambda d: (False, False, False),
    "qwen2": lambda d: (True, False, False),
    "qwen3": lambda d: (bool(d.get("attention_bias", False)), bool(d.get("attention_bias", False)), False),
    "gemma2": lambda d: (bool(d.get("attention_bias", False)), bool(d.get("attention_bias", False)), False),
}


def hf_config(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """circuitalg config fields from a Hugging Face ``config.json`` dict (GPT-2 or GPT-Neo).

    Keys the file leaves out take the documented defaults of transformers' own config class
    (what transformers itself would run), except ``model_type``, which says what the file
    describes and is required.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: config.json must hold a JSON object, got {type(d).__name__}.")
    if "model_type" not in d:
        raise ConfigError(
            f"{source}: config.json has no model_type, so circuitalg cannot tell which architecture it describes; "
            "add \"model_type\": \"gpt2\" if it is a GPT-2 checkpoint."
        )
    model_type = d["model_type"]
    if model_type not in HF_MODEL_TYPES:
        raise ConfigError(
            f"{source}: model_type={model_type!r}; circuitalg reads Hugging Face checkpoints of model_type "
            f"{sorted(HF_MODEL_TYPES)}."
        )
    act_key = {"gpt2": "activation_function", "gpt_neo": "activation_function", "gptj": "activation_function",
               "gemma2": "hidden_activation"}.get(model_type, "hidden_act")
    act = d.get(act_key, {"gpt_neox": "gelu", "gpt2": "gelu_new", "gpt_neo": "gelu_new", "gptj": "gelu_new",
                          "gemma2": "gelu_pytorch_tanh"}.get(model_type, "silu"))
    if act not in _HF_ACT:
        raise ConfigError(f"{source}: {act_key}={act!r} is not supported; use one of {sorted(_HF_ACT)}.")
    if model_type in _LLAMA_BIASES:
        return _hf_llama_fields(d, source)
    fields = {"gpt2": _hf_gpt2_fields, "gpt_neo": _hf_gpt_neo_fields, "gpt_neox": _hf_gpt_neox_fields,
              "gptj": _hf_gptj_fields}[model_type]
    return fields(d, source)


def _sizes(d: Mapping[str, Any], names: dict[str, str], source: str) -> dict[str, Any]:
    try:
        return {ours: d[theirs] for ours, theirs in names.items()}
    except KeyError as exc:
        raise ConfigError(f"{source}: config.json lacks {exc.args[0]!r}.") from None


def _head_size(d_model: Any, n_heads: Any, names: tuple[str, str], source: str) -> int:
    if not isinstance(d_model, int) or not isinstance(n_heads, int) or n_heads <= 0 or d_model % n_heads:
        raise ConfigError(f"{source}: {names[0]}={d_model!r} is not a multiple of {names[1]}={n_heads!r}.")
    return d_model // n_heads


def _hf_gpt2_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    if d.get("scale_attn_by_inverse_layer_idx"):
        raise ConfigError(f"{source}: scale_attn_by_inverse_layer_idx=true is not supported.")
    out = _sizes(d, {"n_layers": "n_layer", "n_heads": "n_head", "d_model": "n_embd", "d_vocab": "vocab_size",
                     "n_ctx": "n_positions"}, source)
    out["d_head"] = _head_size(out["d_model"], out["n_heads"], ("n_embd", "n_head"), source)
    n_inner = d.get("n_inner")
    out["d_mlp"] = 4 * out["d_model"] if n_inner is None else n_inner
    out["act_fn"] = _HF_ACT[d.get("activation_function", "gelu_new")]
    out["ln_eps"] = d.get("layer_norm_epsilon", 1e-5)
    out["normalization"] = "LN"
    out["attn_scale"] = 0.0 if d.get("scale_attn_weights", True) else 1.0
    return out


def _hf_gpt_neo_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """GPT-Neo: GPT-2's block with separate q/k/v projections (no biases), attention scores
    *not* divided by sqrt(d_head), and local layers (window ``window_size``) as listed by
    ``attention_types`` (expanded to ``attention_layers``)."""
    out = _sizes(d, {"n_layers": "num_layers", "n_heads": "num_heads", "d_model": "hidden_size",
                     "d_vocab": "vocab_size", "n_ctx": "max_position_embeddings"}, source)
    out["d_head"] = _head_size(out["d_model"], out["n_heads"], ("hidden_size", "num_heads"), source)
    inner = d.get("intermediate_size")
    out["d_mlp"] = 4 * out["d_model"] if inner is None else inner
    out["act_fn"] = _HF_ACT[d.get("activation_function", "gelu_new")]
    out["ln_eps"] = d.get("layer_norm_epsilon", 1e-5)
    out["normalization"] = "LN"
    out["attn_scale"] = 1.0
    types = d.get("attention_types", [[["global", "local"], 12]])
    try:
        layers = [t for group, count in types for _ in range(count) for t in group]
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: attention_types={types!r}; expected [[['global', 'local'], n], ...] as GPT-Neo writes it."
        ) from None
    if any(t not in ("global", "local") for t in layers):
        raise ConfigError(f"{source}: attention_types lists {sorted(set(layers))}; GPT-Neo layers are 'global' or 'local'.")
    if len(layers) != out["n_layers"]:
        raise ConfigError(f"{source}: attention_types covers {len(layers)} layers but num_layers={out['n_layers']}.")
    window = d.get("window_size", 256)
    out["attn_windows"] = tuple(window if t == "local" else None for t in layers)
    return out


def _hf_parts(
    sd: Mapping[str, Any], config: Any, source: str, model_type: str
) -> tuple[TransformerConfig, dict[str, Any], Any]:
    """``(config, tensors without the "transformer." prefix, lm_head or None)``."""
    if config is None:
        raise ConfigError(
            f"{source}: a Hugging Face state dict needs its config.json (the number of heads cannot be "
            "read from the weights); pass config=json.load(open('config.json')) or load the directory."
        )
    if isinstance(config, TransformerConfig):
        cfg = config
    else:
        if isinstance(config, Mapping) and "model_type" in config and config["model_type"] != model_type:
            raise ConfigError(
                f"{source}: the tensors are a {model_type} checkpoint but config.json says "
                f"model_type={config.get('model_type')!r}; pass the config these weights were saved with."
            )
        cfg = TransformerConfig.from_dict(hf_config(config, source), source=source)
    if cfg.d_mlp is None:
        raise ConfigError(f"{source}: {model_type} has MLPs; the config given has d_mlp=None.")
    flat: dict[str, Any] = {}
    lm_head = None
    for k, v in sd.items():
        if k == "lm_head.weight":
            lm_head = v
        elif k.startswith("transformer."):
            flat[k[len("transformer."):]] = v
        else:
            flat[k] = v
    return cfg, flat, lm_head


def _hf_embeddings(
    get: Any, cfg: TransformerConfig, config: Any, lm_head: Any, source: str
) -> dict[str, Any]:
    """``W_E``, ``W_pos``, ``W_U`` (``lm_head``, or tied to ``wte``) and a zero ``b_U`` (no bias)."""
    V, D = cfg.d_vocab, cfg.d_model
    W_E = get("wte.weight", (V, D))
    p: dict[str, Any] = {"W_E": W_E.T, "W_pos": get("wpe.weight", (cfg.n_ctx, D)).T}
    p["W_U"] = _hf_unembed(W_E, lm_head, config, source, tied_by_default=True)
    p["b_U"] = np.zeros(V, dtype=W_E.dtype)  # these models' unembeddings have no bias
    return p


def _hf_unembed(W_E: np.ndarray, lm_head: Any, config: Any, source: str, *, tied_by_default: bool) -> np.ndarray:
    """``W_U`` (vocab x d_model): ``lm_head.weight``, or ``W_E``'s rows when the embeddings are tied
    (``tie_word_embeddings``, whose default differs by family) and the checkpoint leaves it out."""
    if lm_head is not None:
        W_U = as_array(lm_head)
        if W_U.shape != W_E.shape:
            raise LoadError(f"{source}: tensor 'lm_head.weight' has shape {W_U.shape}, expected {W_E.shape}.")
        return W_U
    tied = config.get("tie_word_embeddings", tied_by_default) if isinstance(config, Mapping) else tied_by_default
    if not tied:
        raise LoadError(f"{source}: missing tensor 'lm_head.weight' (the config does not tie the embeddings).")
    return W_E


def _hf_norms_and_mlp(get: Any, cfg: TransformerConfig, h: str, b: str, p: dict[str, Any], linear: bool) -> None:
    """Layer norms and the GELU MLP of block ``h`` (Conv1D weights, or nn.Linear when ``linear``)."""
    D, d_mlp = cfg.d_model, cfg.d_mlp
    for src, dst in (("ln_1", "ln1"), ("ln_2", "ln2")):
        p[b + dst + ".w"] = get(h + src + ".weight", (D,))
        p[b + dst + ".b"] = get(h + src + ".bias", (D,))
    if linear:  # nn.Linear stores (out, in): already the column layout
        p[b + "mlp.W_in"] = get(h + "mlp.c_fc.weight", (d_mlp, D))
        p[b + "mlp.W_out"] = get(h + "mlp.c_proj.weight", (D, d_mlp))
    else:  # Conv1D stores (in, out)
        p[b + "mlp.W_in"] = get(h + "mlp.c_fc.weight", (D, d_mlp)).T
        p[b + "mlp.W_out"] = get(h + "mlp.c_proj.weight", (d_mlp, D)).T
    p[b + "mlp.b_in"] = get(h + "mlp.c_fc.bias", (d_mlp,))
    p[b + "mlp.b_out"] = get(h + "mlp.c_proj.bias", (D,))


def _hf_rotary(d: Mapping[str, Any], d_head: int, source: str) -> dict[str, Any]:
    """Rotary settings from a config.json in either form: transformers 5.x ``rope_parameters``
    (``rope_theta``, ``partial_rotary_factor``, ``rope_type``...) or 4.x top-level keys
    (``rope_theta``/``rotary_emb_base``, ``partial_rotary_factor``/``rotary_pct``, ``rope_scaling``)."""
    params = d.get("rope_parameters")
    if params is None:
        params = {
            "rope_theta": d.get("rope_theta", d.get("rotary_emb_base", 10000.0)),
            "partial_rotary_factor": d.get("partial_rotary_factor", d.get("rotary_pct", 1.0)),
            **(d.get("rope_scaling") or {}),
        }
    if not isinstance(params, Mapping):
        raise ConfigError(f"{source}: rope_parameters={params!r} must be a JSON object.")
    kind = params.get("rope_type", params.get("type", "default"))
    fraction = params.get("partial_rotary_factor", 1.0)
    out: dict[str, Any] = {"dim": int(d_head * fraction), "base": params.get("rope_theta", 10000.0), "style": "half"}
    if kind == "linear":
        out.update(scaling="linear", factor=params.get("factor"))
    elif kind == "llama3":
        out.update(
            scaling="llama3", factor=params.get("factor"), low_freq_factor=params.get("low_freq_factor"),
            high_freq_factor=params.get("high_freq_factor"),
            original_max_position_embeddings=params.get("original_max_position_embeddings"),
        )
    elif kind == "yarn":
        factor = params.get("factor")
        original = params.get("original_max_position_embeddings", d.get("max_position_embeddings"))
        if factor is None or original is None:
            raise ConfigError(f"{source}: rope_type='yarn' needs factor and original_max_position_embeddings.")
        attention = params.get("attention_factor")
        if attention is None:  # transformers' default: from factor (and mscale / mscale_all_dim when both set)
            def mscale(scale: float, m: float = 1.0) -> float:
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            ms, ms_all = params.get("mscale"), params.get("mscale_all_dim")
            attention = mscale(factor, ms) / mscale(factor, ms_all) if ms and ms_all else mscale(factor)
        out.update(
            scaling="yarn", factor=factor, original_max_position_embeddings=original,
            beta_fast=params.get("beta_fast") or 32.0, beta_slow=params.get("beta_slow") or 1.0,
            attention_factor=float(attention), truncate=bool(params.get("truncate", True)),
        )
    elif kind == "dynamic":
        pass  # dynamic NTK changes the frequencies only beyond max_position_embeddings (= n_ctx): unscaled within
    elif kind != "default":
        raise ConfigError(
            f"{source}: rope_type={kind!r} is not supported: circuitalg implements default, linear, llama3, yarn and "
            "dynamic rotary embeddings."
        )
    if params.get("freq_factors") is not None:  # per-plane divisors (what GGUF's rope_freqs tensor holds)
        out["freq_factors"] = tuple(params["freq_factors"])
    return out


def _hf_gpt_neox_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """GPT-NeoX (Pythia): partial rotary embeddings, parallel attention and MLP (unless
    ``use_parallel_residual`` is false), fused per-head q/k/v, an untied ``embed_out``."""
    out = _sizes(d, {"n_layers": "num_hidden_layers", "n_heads": "num_attention_heads", "d_model": "hidden_size",
                     "d_vocab": "vocab_size", "n_ctx": "max_position_embeddings", "d_mlp": "intermediate_size"}, source)
    out["d_head"] = _head_size(out["d_model"], out["n_heads"], ("hidden_size", "num_attention_heads"), source)
    out["act_fn"] = _HF_ACT[d.get("hidden_act", "gelu")]
    out["ln_eps"] = d.get("layer_norm_eps", 1e-5)
    out["normalization"] = "LN"
    out["rotary"] = _hf_rotary(d, out["d_head"], source)
    out["parallel_attn_mlp"] = bool(d.get("use_parallel_residual", True))
    return out


def _from_hf_gpt_neox(sd: Mapping[str, Any], config: Any, source: str) -> tuple[TransformerConfig, dict[str, Any]]:
    c, flat, _ = _hf_parts(sd, config, source, "gpt_neox")
    D, H, dh, V = c.d_model, c.n_heads, c.d_head, c.d_vocab
    biased = not (isinstance(config, Mapping) and config.get("attention_bias") is False)
    get = TensorReader(flat, source)

    W_E = get("gpt_neox.embed_in.weight", (V, D))
    p: dict[str, Any] = {"W_E": W_E.T}
    if "embed_out.weight" in flat:
        p["W_U"] = get("embed_out.weight", (V, D))
    elif isinstance(config, Mapping) and config.get("tie_word_embeddings"):
        p["W_U"] = W_E
    else:
        raise LoadError(f"{source}: missing tensor 'embed_out.weight' (GPT-NeoX's unembedding is not tied).")
    p["b_U"] = np.zeros(V, dtype=W_E.dtype)  # embed_out has no bias
    for l_ in range(c.n_layers):
        h, b = f"gpt_neox.layers.{l_}.", f"blocks.{l_}."
        qkv = get(h + "attention.query_key_value.weight", (3 * D, D)).reshape(H, 3, dh, D)  # per head: q, k, v rows
        qkv_b = (get(h + "attention.query_key_value.bias", (3 * D,)) if biased
                 else np.zeros(3 * D, dtype=qkv.dtype)).reshape(H, 3, dh)
        for i, name in enumerate(("Q", "K", "V")):
            p[b + "attn.W_" + name] = qkv[:, i]
            p[b + "attn.b_" + name] = qkv_b[:, i]
        p[b + "attn.W_O"] = get(h + "attention.dense.weight", (D, D)).reshape(D, H, dh).transpose(1, 0, 2)
        p[b + "attn.b_O"] = get(h + "attention.dense.bias", (D,)) if biased else np.zeros(D, dtype=qkv.dtype)
        for src, dst in (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2")):
            p[b + dst + ".w"] = get(h + src + ".weight", (D,))
            p[b + dst + ".b"] = get(h + src + ".bias", (D,))
        p[b + "mlp.W_in"] = get(h + "mlp.dense_h_to_4h.weight", (c.d_mlp, D))  # type: ignore[arg-type]
        p[b + "mlp.b_in"] = get(h + "mlp.dense_h_to_4h.bias", (c.d_mlp,))  # type: ignore[arg-type]
        p[b + "mlp.W_out"] = get(h + "mlp.dense_4h_to_h.weight", (D, c.d_mlp))  # type: ignore[arg-type]
        p[b + "mlp.b_out"] = get(h + "mlp.dense_4h_to_h.bias", (D,))
    p["ln_final.w"] = get("gpt_neox.final_layer_norm.weight", (D,))
    p["ln_final.b"] = get("gpt_neox.final_layer_norm.bias", (D,))
    get.check_all_read(_HF_NEOX_BUFFERS)
    return c, p


def _hf_llama_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Llama, Mistral, Qwen2, Qwen3, Gemma 2: RMSNorm, rotary (half-split), grouped-query
    attention, a gated MLP (SwiGLU; GeGLU in Gemma 2), no learned positions; sliding windows
    (Mistral, Qwen2/3's ``layer_types`` or ``use_sliding_window``, Gemma 2's alternating layers);
    Qwen3's per-head q/k norms; Gemma 2's sandwich norms, soft-capping and
    ``query_pre_attn_scalar``."""
    model_type = d["model_type"]
    out = _sizes(d, {"n_layers": "num_hidden_layers", "n_heads": "num_attention_heads", "d_model": "hidden_size",
                     "d_vocab": "vocab_size", "n_ctx": "max_position_embeddings", "d_mlp": "intermediate_size"}, source)
    head_dim = d.get("head_dim")
    out["d_head"] = (head_dim if head_dim is not None
                     else _head_size(out["d_model"], out["n_heads"], ("hidden_size", "num_attention_heads"), source))
    out["n_kv_heads"] = d.get("num_key_value_heads", out["n_heads"])
    gemma = model_type == "gemma2"
    out["act_fn"] = _HF_ACT[d.get("hidden_activation", "gelu_pytorch_tanh") if gemma else d.get("hidden_act", "silu")]
    out["gated_mlp"] = True
    out["qk_norm"] = model_type == "qwen3"
    if gemma:
        if d.get("use_bidirectional_attention"):
            raise ConfigError(f"{source}: use_bidirectional_attention=true (with sliding windows) is not implemented.")
        out["post_norms"] = True
        out["attn_scale"] = math.sqrt(d.get("query_pre_attn_scalar", 256))
        out["attn_softcap"] = d.get("attn_logit_softcapping", 50.0)
        out["final_softcap"] = d.get("final_logit_softcapping", 30.0)
    out["ln_eps"] = d.get("rms_norm_eps", 1e-6)
    out["normalization"] = "RMS"
    out["rotary"] = _hf_rotary(d, out["d_head"], source)
    window = d.get("sliding_window", 4096 if gemma else None)
    types = d.get("layer_types")
    if gemma and types is None:  # Gemma 2 before layer_types: sliding on even layers
        types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(out["n_layers"])]
    if model_type == "mistral":
        layers = [window] * out["n_layers"] if window is not None else None
    elif types is not None:
        if not isinstance(types, list) or len(types) != out["n_layers"] or any(
            t not in ("full_attention", "sliding_attention") for t in types
        ):
            raise ConfigError(f"{source}: layer_types={types!r}; expected 'full_attention'/'sliding_attention' per layer.")
        layers = [window if t == "sliding_attention" else None for t in types]
    elif d.get("use_sliding_window"):  # Qwen2 before layer_types: sliding from max_window_layers on
        first = d.get("max_window_layers", 0)
        layers = [window if i >= first else None for i in range(out["n_layers"])]
    else:
        layers = None
    if layers is not None and any(w is not None for w in layers):
        if window is None:
            raise ConfigError(f"{source}: sliding-window layers are listed but sliding_window is null.")
        out["attn_windows"] = tuple(layers)
    return out


def _from_hf_llama(sd: Mapping[str, Any], config: Any, source: str) -> tuple[TransformerConfig, dict[str, Any]]:
    model_type = config.get("model_type") if isinstance(config, Mapping) else "llama"
    c, flat, lm_head = _hf_parts(sd, config, source, model_type if model_type in _LLAMA_BIASES else "llama")
    D, H, H_kv, dh, V = c.d_model, c.n_heads, c.kv_heads, c.d_head, c.d_vocab
    qkv_bias, o_bias, mlp_bias = _LLAMA_BIASES.get(model_type, _LLAMA_BIASES["llama"])(config if isinstance(config, Mapping) else {})
    get = TensorReader(flat, source)

    gemma = model_type == "gemma2"
    W_E = get("model.embed_tokens.weight", (V, D))
    # Gemma scales the embeddings by sqrt(d_model) (folded into W_E; the tied W_U is unscaled)
    p: dict[str, Any] = {"W_E": W_E.T * np.asarray(math.sqrt(D), dtype=W_E.dtype) if gemma else W_E.T}
    p["W_U"] = _hf_unembed(W_E, lm_head, config, source, tied_by_default=gemma)
    p["b_U"] = np.zeros(V, dtype=W_E.dtype)
    zeros = lambda *shape: np.zeros(shape, dtype=W_E.dtype)  # noqa: E731  (projections without bias)

    def norm(key: str) -> np.ndarray:  # Gemma's RMSNorm multiplies by (1 + w)
        w = get(key, (D,))
        return 1.0 + w if gemma else w

    norms = (("input_layernorm", "ln1"), ("pre_feedforward_layernorm", "ln2"), ("post_attention_layernorm", "ln1_post"),
             ("post_feedforward_layernorm", "ln2_post")) if gemma else (("input_layernorm", "ln1"),
                                                                       ("post_attention_layernorm", "ln2"))
    for l_ in range(c.n_layers):
        h, b = f"model.layers.{l_}.", f"blocks.{l_}."
        a = h + "self_attn."
        for name, n in (("Q", H), ("K", H_kv), ("V", H_kv)):  # nn.Linear (out, in): rows grouped by head
            p[b + "attn.W_" + name] = get(a + f"{name.lower()}_proj.weight", (n * dh, D)).reshape(n, dh, D)
            p[b + "attn.b_" + name] = (get(a + f"{name.lower()}_proj.bias", (n * dh,)).reshape(n, dh) if qkv_bias
                                       else zeros(n, dh))
        p[b + "attn.W_O"] = get(a + "o_proj.weight", (D, H * dh)).reshape(D, H, dh).transpose(1, 0, 2)
        p[b + "attn.b_O"] = get(a + "o_proj.bias", (D,)) if o_bias else zeros(D)
        if c.qk_norm:  # Qwen3: one RMSNorm weight over d_head for all query heads, one for all key heads
            p[b + "attn.q_norm.w"] = get(a + "q_norm.weight", (dh,))
            p[b + "attn.k_norm.w"] = get(a + "k_norm.weight", (dh,))
        for theirs, ours in norms:
            p[b + ours + ".w"] = norm(h + theirs + ".weight")
        m = h + "mlp."
        for ours, theirs, shape in (("W_gate", "gate_proj", (c.d_mlp, D)), ("W_in", "up_proj", (c.d_mlp, D)),
                                    ("W_out", "down_proj", (D, c.d_mlp))):
            p[b + "mlp." + ours] = get(m + theirs + ".weight", shape)  # type: ignore[arg-type]
            bias_shape = (shape[0],)
            p[b + "mlp." + ours.replace("W_", "b_")] = (get(m + theirs + ".bias", bias_shape) if mlp_bias
                                                        else zeros(*bias_shape))
    p["ln_final.w"] = norm("model.norm.weight")
    get.check_all_read(_HF_LLAMA_BUFFERS)
    return c, p


def _hf_gptj_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """GPT-J: interleaved rotary embeddings on the first ``rotary_dim`` dimensions (base 10000),
    attention and MLP in parallel behind one shared layer norm, a biased ``lm_head``."""
    out = _sizes(d, {"n_layers": "n_layer", "n_heads": "n_head", "d_model": "n_embd", "d_vocab": "vocab_size",
                     "n_ctx": "n_positions"}, source)
    out["d_head"] = _head_size(out["d_model"], out["n_heads"], ("n_embd", "n_head"), source)
    n_inner = d.get("n_inner")
    out["d_mlp"] = 4 * out["d_model"] if n_inner is None else n_inner
    out["act_fn"] = _HF_ACT[d.get("activation_function", "gelu_new")]
    out["ln_eps"] = d.get("layer_norm_epsilon", 1e-5)
    out["normalization"] = "LN"
    dim = d.get("rotary_dim")
    if dim is None:
        raise ConfigError(f"{source}: GPT-J without rotary_dim is not a runnable configuration; set rotary_dim.")
    out["rotary"] = {"dim": dim, "base": 10000.0, "style": "interleaved"}
    out["parallel_attn_mlp"] = True
    return out


def _from_hf_gptj(sd: Mapping[str, Any], config: Any, source: str) -> tuple[TransformerConfig, dict[str, Any]]:
    c, flat, lm_head = _hf_parts(sd, config, source, "gptj")
    D, H, dh, V = c.d_model, c.n_heads, c.d_head, c.d_vocab
    get = TensorReader(flat, source)

    W_E = get("wte.weight", (V, D))
    p: dict[str, Any] = {"W_E": W_E.T}
    p["W_U"] = _hf_unembed(W_E, lm_head, config, source, tied_by_default=False)
    p["b_U"] = get("lm_head.bias", (V,))  # GPT-J's unembedding has a bias
    zeros = lambda *shape: np.zeros(shape, dtype=W_E.dtype)  # noqa: E731  (no q/k/v/out biases)
    for l_ in range(c.n_layers):
        h, b = f"h.{l_}.", f"blocks.{l_}."
        for name in ("Q", "K", "V"):
            p[b + "attn.W_" + name] = get(h + f"attn.{name.lower()}_proj.weight", (D, D)).reshape(H, dh, D)
            p[b + "attn.b_" + name] = zeros(H, dh)
        p[b + "attn.W_O"] = get(h + "attn.out_proj.weight", (D, D)).reshape(D, H, dh).transpose(1, 0, 2)
        p[b + "attn.b_O"] = zeros(D)
        w, bias = get(h + "ln_1.weight", (D,)), get(h + "ln_1.bias", (D,))
        for ln in ("ln1", "ln2"):  # one layer norm feeds both the attention and the MLP
            p[b + ln + ".w"], p[b + ln + ".b"] = w, bias
        p[b + "mlp.W_in"] = get(h + "mlp.fc_in.weight", (c.d_mlp, D))  # type: ignore[arg-type]
        p[b + "mlp.b_in"] = get(h + "mlp.fc_in.bias", (c.d_mlp,))  # type: ignore[arg-type]
        p[b + "mlp.W_out"] = get(h + "mlp.fc_out.weight", (D, c.d_mlp))  # type: ignore[arg-type]
        p[b + "mlp.b_out"] = get(h + "mlp.fc_out.bias", (D,))
    p["ln_final.w"] = get("ln_f.weight", (D,))
    p["ln_final.b"] = get("ln_f.bias", (D,))
    get.check_all_read(_HF_GPTJ_BUFFERS)
    return c, p


def _from_hf_gpt2(sd: Mapping[str, Any], config: Any, source: str) -> tuple[TransformerConfig, dict[str, Any]]:
    c, flat, lm_head = _hf_parts(sd, config, source, "gpt2")
    D, H, dh = c.d_model, c.n_heads, c.d_head
    get = TensorReader(flat, source)

    p = _hf_embeddings(get, c, config, lm_head, source)
    for l_ in range(c.n_layers):
        h, b = f"h.{l_}.", f"blocks.{l_}."
        W = get(h + "attn.c_attn.weight", (D, 3 * D))  # x @ W = [q | k | v]
        bias = get(h + "attn.c_attn.bias", (3 * D,))
        for i, name in enumerate(("Q", "K", "V")):
            w = W[:, i * D:(i + 1) * D]  # (D, H*dh), columns grouped by head
            p[b + "attn.W_" + name] = w.reshape(D, H, dh).transpose(1, 2, 0)
            p[b + "attn.b_" + name] = bias[i * D:(i + 1) * D].reshape(H, dh)
        W_proj = get(h + "attn.c_proj.weight", (D, D))  # z_concat @ W_proj, rows grouped by head
        p[b + "attn.W_O"] = W_proj.reshape(H, dh, D).transpose(0, 2, 1)
        p[b + "attn.b_O"] = get(h + "attn.c_proj.bias", (D,))
        _hf_norms_and_mlp(get, c, h, b, p, linear=False)
    p["ln_final.w"] = get("ln_f.weight", (D,))
    p["ln_final.b"] = get("ln_f.bias", (D,))
    get.check_all_read(_HF_BUFFERS)
    return c, p


def _from_hf_gpt_neo(sd: Mapping[str, Any], config: Any, source: str) -> tuple[TransformerConfig, dict[str, Any]]:
    c, flat, lm_head = _hf_parts(sd, config, source, "gpt_neo")
    D, H, dh = c.d_model, c.n_heads, c.d_head
    get = TensorReader(flat, source)

    p = _hf_embeddings(get, c, config, lm_head, source)
    for l_ in range(c.n_layers):
        h, b = f"h.{l_}.", f"blocks.{l_}."
        a = h + "attn.attention."
        for name in ("Q", "K", "V"):  # nn.Linear (out, in): rows grouped by head; GPT-Neo has no q/k/v bias
            W = get(a + f"{name.lower()}_proj.weight", (D, D))
            p[b + "attn.W_" + name] = W.reshape(H, dh, D)
            p[b + "attn.b_" + name] = np.zeros((H, dh), dtype=W.dtype)
        W_out = get(a + "out_proj.weight", (D, D))  # (out, in): columns grouped by head
        p[b + "attn.W_O"] = W_out.reshape(D, H, dh).transpose(1, 0, 2)
        p[b + "attn.b_O"] = get(a + "out_proj.bias", (D,))
        _hf_norms_and_mlp(get, c, h, b, p, linear=True)
    p["ln_final.w"] = get("ln_f.weight", (D,))
    p["ln_final.b"] = get("ln_f.bias", (D,))
    get.check_all_read(_HF_NEO_BUFFERS)
    return c, p


#: The state-dict layouts of the Hugging Face families.
HF_LAYOUTS = {
    "hf_gpt2": _from_hf_gpt2, "hf_gpt_neo": _from_hf_gpt_neo, "hf_gpt_neox": _from_hf_gpt_neox,
    "hf_gptj": _from_hf_gptj, "hf_llama": _from_hf_llama,
}


def convert_hf(
    sd: Mapping[str, Any], layout: str, config: Any, source: str
) -> tuple[TransformerConfig, dict[str, Any]]:
    """Convert a Hugging Face state dict of ``layout`` (one of :data:`HF_LAYOUTS`)."""
    return HF_LAYOUTS[layout](sd, config, source)
