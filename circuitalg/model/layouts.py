"""State-dict layouts: TransformerLens, Hugging Face GPT-2 and circuitalg's own.

Each converter maps a flat ``{name: array}`` dict in a foreign layout (row-vector
``x @ W`` weights) to circuitalg's canonical parameters (column layout, names from
:func:`circuitalg.model.params.param_shapes`) and a :class:`TransformerConfig`. Shapes are
checked here, against the config, with messages that name the tensor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from circuitalg.errors import ConfigError, LoadError
from circuitalg.model.config import TransformerConfig, require_config
from circuitalg.model.params import param_shapes, to_numpy

__all__ = ["LAYOUTS", "detect_layout", "convert_state_dict", "to_transformer_lens", "hf_config"]

LAYOUTS = ("circuitalg", "transformer_lens", "hf_gpt2", "hf_gpt_neo", "hf_gpt_neox", "hf_gptj", "hf_llama")

#: Buffers that checkpoints carry but that are not parameters (causal masks and the like).
_TL_BUFFERS = re.compile(r"^blocks\.\d+\.attn\.(mask|IGNORE)$")
_TL_ROTARY_BUFFERS = re.compile(r"^blocks\.\d+\.attn\.(mask|IGNORE|rotary_cos|rotary_sin)$")
_HF_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_HF_NEO_BUFFERS = re.compile(r"^h\.\d+\.attn\.attention\.(bias|masked_bias)$")
_HF_GPTJ_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias|embed_positions)$|^embed_positions$")
_HF_LLAMA_BUFFERS = re.compile(r"^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$")
_HF_NEOX_BUFFERS = re.compile(r"^gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$|^gpt_neox\.rotary_emb\.inv_freq$")


def detect_layout(keys: Any, source: str = "state dict") -> str:
    """The layout of a state dict, from its keys."""
    keys = set(keys)
    if "embed.W_E" in keys:
        return "transformer_lens"
    if "h.0.attn.attention.q_proj.weight" in keys or "transformer.h.0.attn.attention.q_proj.weight" in keys:
        return "hf_gpt_neo"
    if "gpt_neox.embed_in.weight" in keys:
        return "hf_gpt_neox"
    if "transformer.h.0.mlp.fc_in.weight" in keys or "h.0.mlp.fc_in.weight" in keys:
        return "hf_gptj"
    if "model.embed_tokens.weight" in keys and "model.layers.0.self_attn.q_proj.weight" in keys:
        return "hf_llama"
    if "wte.weight" in keys or "transformer.wte.weight" in keys:
        return "hf_gpt2"
    if "W_E" in keys:
        return "circuitalg"
    sample = sorted(keys)[:6]
    raise LoadError(
        f"{source}: unknown checkpoint layout (first keys: {sample}); circuitalg reads TransformerLens "
        "('embed.W_E', 'blocks.0.attn.W_Q', ...), Hugging Face GPT-2 ('transformer.wte.weight', "
        "'transformer.h.0.attn.c_attn.weight', ...), GPT-Neo ('transformer.h.0.attn.attention.q_proj.weight', "
        "...) and its own format ('W_E', 'blocks.0.attn.W_Q', ...)."
    )


def convert_state_dict(
    state_dict: Mapping[str, Any], *, layout: str = "auto", config: Any = None, source: str = "state dict"
) -> tuple[TransformerConfig, dict[str, Any]]:
    """Convert ``state_dict`` to ``(config, canonical params)``; see the module docstring."""
    if not isinstance(state_dict, Mapping):
        raise LoadError(f"{source}: expected a mapping of tensor names to arrays, got {type(state_dict).__name__}.")
    bad = [k for k in state_dict if not isinstance(k, str)]
    if bad:
        raise LoadError(f"{source}: tensor names must be strings, got {bad[:3]}.")
    if layout == "auto":
        layout = detect_layout(state_dict.keys(), source)
    if layout == "circuitalg":
        if config is None:
            raise ConfigError(
                f"{source}: the circuitalg layout needs its config (the JSON stored beside the arrays); "
                "pass config=TransformerConfig(...) or a dict."
            )
        return _as_config(config, source), dict(state_dict)
    if layout == "transformer_lens":
        return _from_transformer_lens(state_dict, config, source)
    if layout == "hf_gpt2":
        return _from_hf_gpt2(state_dict, config, source)
    if layout == "hf_gpt_neo":
        return _from_hf_gpt_neo(state_dict, config, source)
    if layout == "hf_gpt_neox":
        return _from_hf_gpt_neox(state_dict, config, source)
    if layout == "hf_llama":
        return _from_hf_llama(state_dict, config, source)
    if layout == "hf_gptj":
        return _from_hf_gptj(state_dict, config, source)
    raise LoadError(f"{source}: unknown layout {layout!r}; use 'auto' or one of {LAYOUTS}.")


def _as_config(config: Any, source: str) -> TransformerConfig:
    if isinstance(config, TransformerConfig):
        return config
    if isinstance(config, Mapping):
        return TransformerConfig.from_dict(config, source=source)
    raise ConfigError(f"{source}: config must be a TransformerConfig or a dict, got {type(config).__name__}.")


def _np(value: Any) -> np.ndarray:
    return np.asarray(to_numpy(value))


def _get(sd: Mapping[str, Any], key: str, shape: tuple[int, ...], source: str) -> np.ndarray:
    if key not in sd:
        raise LoadError(f"{source}: missing tensor {key!r}; the checkpoint is incomplete or not this layout.")
    arr = _np(sd[key])
    if arr.shape != shape:
        raise LoadError(f"{source}: tensor {key!r} has shape {arr.shape}, expected {shape}.")
    return arr


def _shape_of(sd: Mapping[str, Any], key: str, ndim: int, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise LoadError(f"{source}: missing tensor {key!r}; the checkpoint is incomplete or not this layout.")
    shape = tuple(int(s) for s in getattr(sd[key], "shape", np.shape(sd[key])))
    if len(shape) != ndim:
        raise LoadError(f"{source}: tensor {key!r} has shape {shape}, expected a {ndim}-D tensor.")
    return shape


def _count_layers(keys: Any, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    n = max(found) + 1 if found else 0
    missing = sorted(set(range(n)) - found)
    if missing:
        raise LoadError(f"blocks {missing} are missing (found blocks {sorted(found)}).")
    return n


def _check_no_extra(sd: Mapping[str, Any], used: set[str], buffers: re.Pattern[str], source: str) -> None:
    extra = sorted(k for k in sd if k not in used and not buffers.match(k))
    if extra:
        raise LoadError(
            f"{source}: unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''}; the architecture "
            "is not one circuitalg supports (GPT-2 style: learned positions, LayerNorm, GELU MLP) or the "
            "config does not match the checkpoint."
        )


# -- TransformerLens ------------------------------------------------------------------------


def _off(v: Any) -> bool:
    return v is None or v is False


def _softcap_off(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0)


#: TransformerLens config fields that change the computation but that circuitalg does not
#: implement (yet): each is accepted only at its neutral value, and refused otherwise.
_TL_NEUTRAL: dict[str, tuple[Any, str]] = {
    "positional_embedding_type": (lambda v: v in ("standard", "rotary"), "positional embeddings other than learned or rotary"),
    "use_qk_norm": (_off, "query/key norms"),
    "clip_qkv": (lambda v: v is None, "clipped query/key/value"),
    "use_logn_attn": (_off, "log-n attention scaling"),
    "use_dynamic_ntk_rope": (_off, "dynamic NTK rotary scaling"),
    "use_yarn_rope": (_off, "YaRN rotary scaling"),
    "scale_attn_by_inverse_layer_idx": (_off, "attention scaled by the inverse layer index"),
    "post_embedding_ln": (_off, "a layer norm after the embedding"),
    "use_normalization_before_and_after": (_off, "normalisation before and after each sublayer"),
    "num_experts": (lambda v: v is None, "mixture-of-experts MLPs"),
    "relative_attention_max_distance": (lambda v: v is None, "relative attention biases"),
    "relative_attention_num_buckets": (lambda v: v is None, "relative attention biases"),
    "decoder_start_token_id": (lambda v: v is None, "encoder-decoder models"),
    "attn_scores_soft_cap": (_softcap_off, "attention-logit soft-capping"),
    "output_logits_soft_cap": (_softcap_off, "final-logit soft-capping"),
    "use_attention_sinks": (_off, "attention sinks"),
    "load_in_4bit": (_off, "4-bit quantised weights"),
    "quantization_method": (lambda v: v is None, "quantised weights"),
}
#: Fields that cannot change what the weights compute once the fields above are neutral
#: (hook switches, initialisation, devices, tokenizer metadata, rotary settings of a model
#: without rotary embeddings, MoE settings of a model without experts).
_TL_NO_EFFECT = frozenset({
    "model_name", "device", "n_devices", "dtype", "seed", "init_mode", "init_weights", "initializer_range",
    "n_params", "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in", "use_hook_tokens",
    "default_prepend_bos", "tokenizer_name", "tokenizer_prepends_bos", "trust_remote_code", "original_architecture",
    "from_checkpoint", "checkpoint_index", "checkpoint_label_type", "checkpoint_value", "layer_norm_folding",
    "tie_word_embeddings", "train_seq_length", "ungroup_grouped_query_attention", "experts_per_token",
    "norm_topk_prob", "rotary_base_local", "rotary_scaling_factor",
    "yarn_factor", "yarn_attention_factor", "yarn_beta_fast", "yarn_beta_slow",
    "yarn_original_max_position_embeddings", "yarn_truncate", "yarn_global_attn_only",
})
#: Size fields checked against the weights (TL's "not set" values are skipped).
_TL_SIZES = ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx", "d_mlp")
#: Fields circuitalg reads (TransformerLens and circuitalg names).
_TL_READ = frozenset({
    *_TL_SIZES, "attn_only", "act_fn", "eps", "ln_eps", "use_attn_scale", "attn_scale", "normalization_type",
    "normalization", "d_vocab_out", "attention_dir", "causal", "n_key_value_heads", "n_kv_heads", "gated_mlp", "final_rms", "uses_rms_norm",
    "use_local_attn", "attn_types", "window_size",
    "attn_windows", "positional_embedding_type", "rotary_dim", "rotary_base", "rotary_adjacent_pairs",
    "use_NTK_by_parts_rope", "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor", "NTK_by_parts_factor",
    "NTK_original_ctx_len", "parallel_attn_mlp", "rotary",
})


def _tl_config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, TransformerConfig):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    import dataclasses

    if dataclasses.is_dataclass(config):  # a HookedTransformerConfig (no transformer_lens import)
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {k: getattr(config, k) for k in dir(config) if not k.startswith("_") and not callable(getattr(config, k))}


def _tl_config_fields(config: Any, source: str) -> dict[str, Any]:
    """Config fields from a TL HookedTransformerConfig, a dict of TL or circuitalg fields, or None.

    Every field is accounted for: read, accepted at its neutral value (:data:`_TL_NEUTRAL`),
    known to have no effect (:data:`_TL_NO_EFFECT`), or refused with a :class:`ConfigError`;
    an unknown field is refused rather than ignored.
    """
    if config is None:
        return {}
    d = _tl_config_dict(config)
    unknown = sorted(k for k in d if k not in _TL_READ and k not in _TL_NEUTRAL and k not in _TL_NO_EFFECT)
    if unknown:
        raise ConfigError(
            f"{source}: unknown config fields {unknown}; circuitalg cannot tell whether they change what the model "
            "computes, so it does not ignore them. Remove them from the config if they do not."
        )
    for key, (neutral, what) in _TL_NEUTRAL.items():
        if key in d and not neutral(d[key]):
            raise ConfigError(f"{source}: {key}={d[key]!r} ({what}) is not supported by circuitalg.")
    out: dict[str, Any] = {}
    for key in _TL_SIZES:
        v = d.get(key)
        if v is not None and not (isinstance(v, int) and v < 0):
            out[key] = v
    if d.get("n_key_value_heads") is not None:
        out["n_kv_heads"] = d["n_key_value_heads"]
    if d.get("n_kv_heads") is not None:
        out["n_kv_heads"] = d["n_kv_heads"]
    if "gated_mlp" in d:
        out["gated_mlp"] = bool(d["gated_mlp"])
    if d.get("d_vocab_out") not in (None, -1):
        out["d_vocab_out"] = d["d_vocab_out"]
    if "attention_dir" in d:
        if d["attention_dir"] not in ("causal", "bidirectional"):
            raise ConfigError(f"{source}: attention_dir={d['attention_dir']!r}; use 'causal' or 'bidirectional'.")
        out["causal"] = d["attention_dir"] == "causal"
    if "causal" in d:
        out["causal"] = d["causal"]
    if "attn_only" in d:
        out["attn_only"] = bool(d["attn_only"])
    if "normalization_type" in d:
        norm = d["normalization_type"]
        if norm not in ("LN", "LNPre", "RMS", "RMSPre", None):
            raise ConfigError(
                f"{source}: normalization_type={norm!r} is not supported; circuitalg handles LN, LNPre, RMS, RMSPre, None."
            )
        out["normalization"] = norm
    if "normalization" in d:
        out["normalization"] = d["normalization"]
    if "act_fn" in d:
        out["act_fn"] = "gelu_new" if d["act_fn"] == "gelu_pytorch_tanh" else d["act_fn"]  # the same tanh form
    if "eps" in d:
        out["ln_eps"] = d["eps"]
    if "ln_eps" in d:
        out["ln_eps"] = d["ln_eps"]
    if d.get("use_local_attn"):
        types, w = d.get("attn_types"), d.get("window_size")
        if not isinstance(types, (list, tuple)) or any(t not in ("global", "local") for t in types):
            raise ConfigError(f"{source}: use_local_attn=True needs attn_types, a list of 'global'/'local' per layer; got {types!r}.")
        if "local" in types and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ConfigError(f"{source}: local attention needs window_size, a positive integer; got {w!r}.")
        out["attn_windows"] = tuple(w if t == "local" else None for t in types)
    if "attn_windows" in d:
        out["attn_windows"] = d["attn_windows"]
    if d.get("positional_embedding_type") == "rotary":
        rotary: dict[str, Any] = {
            "dim": d.get("rotary_dim") or d.get("d_head"), "base": d.get("rotary_base", 10000),
            "style": "interleaved" if d.get("rotary_adjacent_pairs") else "half",
        }
        if d.get("use_NTK_by_parts_rope"):  # TransformerLens's name for Llama 3.1's scaling
            rotary.update(
                scaling="llama3", factor=d.get("NTK_by_parts_factor", 8.0),
                low_freq_factor=d.get("NTK_by_parts_low_freq_factor", 1.0),
                high_freq_factor=d.get("NTK_by_parts_high_freq_factor", 4.0),
                original_max_position_embeddings=d.get("NTK_original_ctx_len", 8192),
            )
        if rotary["dim"] is None:
            raise ConfigError(f"{source}: positional_embedding_type='rotary' needs rotary_dim (or d_head).")
        out["rotary"] = rotary
    if "rotary" in d and d["rotary"] is not None:
        out["rotary"] = d["rotary"]
    if "parallel_attn_mlp" in d:
        out["parallel_attn_mlp"] = d["parallel_attn_mlp"]
    if d.get("use_attn_scale") is False:
        out["attn_scale"] = 1.0
    elif "attn_scale" in d and d["attn_scale"] not in (None, 0, -1, -1.0):
        out["attn_scale"] = d["attn_scale"]  # TransformerConfig checks it
    return out


def _check_sizes(fields: dict[str, Any], found: dict[str, Any], source: str) -> None:
    """Raise if a size the config states differs from the one the weights have."""
    for key, value in found.items():
        if key in fields and fields[key] != value:
            raise ConfigError(
                f"{source}: the config says {key}={fields[key]!r} but the weights have {key}={value!r}; "
                "pass the config these weights were saved with."
            )


def _from_transformer_lens(
    sd: Mapping[str, Any], config: Any, source: str
) -> tuple[TransformerConfig, dict[str, Any]]:
    fields = _tl_config_fields(config, source)
    V, D = _shape_of(sd, "embed.W_E", 2, source)
    V_out = _shape_of(sd, "unembed.W_U", 2, source)[1]
    _check_sizes(fields, {"d_vocab_out": V_out}, source)
    fields["d_vocab_out"] = V_out
    rotary = fields.get("rotary") is not None
    if rotary:  # no W_pos: the context length comes from the config
        if "n_ctx" not in fields:
            raise ConfigError(f"{source}: a rotary model has no pos_embed.W_pos to read n_ctx from; pass it in the config.")
        n_ctx = fields["n_ctx"]
    else:
        n_ctx, _ = _shape_of(sd, "pos_embed.W_pos", 2, source)
    try:
        L = _count_layers(sd.keys(), r"^blocks\.(\d+)\.")
    except LoadError as exc:
        raise LoadError(f"{source}: {exc}") from None
    if L == 0:
        raise LoadError(f"{source}: no 'blocks.{{l}}.attn.W_Q' tensors: not a transformer checkpoint.")
    H, _, dh = _shape_of(sd, "blocks.0.attn.W_Q", 3, source)
    gqa = "blocks.0.attn._W_K" in sd  # TransformerLens stores shared key/value heads as _W_K, _W_V
    H_kv = _shape_of(sd, "blocks.0.attn._W_K", 3, source)[0] if gqa else H
    _check_sizes(fields, {"n_kv_heads": H_kv}, source)
    if gqa:
        fields["n_kv_heads"] = H_kv
    has_mlp = "blocks.0.mlp.W_in" in sd
    d_mlp = _shape_of(sd, "blocks.0.mlp.W_in", 2, source)[1] if has_mlp else None
    has_ln = "blocks.0.ln1.w" in sd
    if "normalization" not in fields:
        if has_ln and "blocks.0.ln1.b" in sd:
            fields["normalization"] = "LN"
        elif has_ln:
            raise ConfigError(
                f"{source}: the checkpoint has norm weights without biases: RMSNorm or a LayerNorm without bias; "
                "pass config={'normalization': 'RMS'} (or the model's HookedTransformerConfig)."
            )
        else:
            raise ConfigError(
                f"{source}: the checkpoint has no layer-norm weights, so it is either un-normalised or "
                "had its layer norms folded (LNPre); pass config={'normalization': None} or "
                "{'normalization': 'LNPre'} (or the model's HookedTransformerConfig)."
            )
    _check_sizes(fields, {"n_layers": L, "n_heads": H, "d_model": D, "d_head": dh, "d_vocab": V, "n_ctx": n_ctx}, source)
    if "attn_only" in fields and fields["attn_only"] == has_mlp:
        raise ConfigError(
            f"{source}: the config says attn_only={fields['attn_only']} but the checkpoint "
            f"{'has' if has_mlp else 'has no'} MLP weights (blocks.0.mlp.W_in); pass the matching config."
        )
    if has_mlp:
        _check_sizes(fields, {"d_mlp": d_mlp}, source)
        if fields.get("act_fn") is None:
            raise ConfigError(
                f"{source}: the checkpoint has MLPs but the config names no act_fn, and the activation cannot be "
                "read from the weights; pass config={'act_fn': 'gelu_new'} (or 'gelu', 'relu': the model's own) "
                "or the model's HookedTransformerConfig."
            )
    else:
        fields["act_fn"] = None
    cfg = TransformerConfig(
        n_layers=L, n_heads=H, d_model=D, d_head=dh, d_vocab=V, n_ctx=n_ctx, d_mlp=d_mlp,
        **{k: v for k, v in fields.items()
           if k in ("normalization", "act_fn", "attn_scale", "ln_eps", "attn_windows", "rotary", "parallel_attn_mlp",
                    "n_kv_heads", "gated_mlp", "d_vocab_out", "causal")},
    )
    used: set[str] = set()

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        used.add(key)
        return _get(sd, key, shape, source)

    def bias(key: str, shape: tuple[int, ...]) -> np.ndarray:
        """A bias, or zeros when the state dict has none (a model without that bias)."""
        return get(key, shape) if key in sd else np.zeros(shape, dtype=_np(sd["embed.W_E"]).dtype)

    p: dict[str, Any] = {"W_E": get("embed.W_E", (V, D)).T}
    if not rotary:
        p["W_pos"] = get("pos_embed.W_pos", (n_ctx, D)).T
    p["W_U"] = get("unembed.W_U", (D, V_out)).T
    p["b_U"] = bias("unembed.b_U", (V_out,))
    kv = "_" if gqa else ""
    for l_ in range(L):
        b = f"blocks.{l_}."
        p[b + "attn.W_Q"] = get(b + "attn.W_Q", (H, D, dh)).transpose(0, 2, 1)
        p[b + "attn.b_Q"] = bias(b + "attn.b_Q", (H, dh))
        for w in ("K", "V"):
            p[b + "attn.W_" + w] = get(b + f"attn.{kv}W_" + w, (H_kv, D, dh)).transpose(0, 2, 1)
            p[b + "attn.b_" + w] = bias(b + f"attn.{kv}b_" + w, (H_kv, dh))
        p[b + "attn.W_O"] = get(b + "attn.W_O", (H, dh, D)).transpose(0, 2, 1)
        p[b + "attn.b_O"] = bias(b + "attn.b_O", (D,))
        for ln in ("ln1",) + (("ln2",) if has_mlp else ()):
            if cfg.normalization in ("LN", "RMS"):
                p[b + ln + ".w"] = get(b + ln + ".w", (D,))
            if cfg.normalization == "LN":
                p[b + ln + ".b"] = get(b + ln + ".b", (D,))
        if d_mlp is not None:
            p[b + "mlp.W_in"] = get(b + "mlp.W_in", (D, d_mlp)).T
            p[b + "mlp.b_in"] = bias(b + "mlp.b_in", (d_mlp,))
            p[b + "mlp.W_out"] = get(b + "mlp.W_out", (d_mlp, D)).T
            p[b + "mlp.b_out"] = bias(b + "mlp.b_out", (D,))
            if cfg.gated_mlp:
                # TransformerLens adds b_in after the gate product: W_out (act(g) * lin + b_in) + b_out,
                # which is W_out (act(g) * lin) + (b_out + W_out b_in): fold it into b_out, exactly
                p[b + "mlp.W_gate"] = get(b + "mlp.W_gate", (D, d_mlp)).T
                p[b + "mlp.b_gate"] = np.zeros(d_mlp, dtype=p[b + "mlp.b_in"].dtype)
                p[b + "mlp.b_out"] = p[b + "mlp.b_out"] + p[b + "mlp.W_out"] @ p[b + "mlp.b_in"]
                p[b + "mlp.b_in"] = np.zeros_like(p[b + "mlp.b_in"])
    if cfg.normalization in ("LN", "RMS"):
        p["ln_final.w"] = get("ln_final.w", (D,))
    if cfg.normalization == "LN":
        p["ln_final.b"] = get("ln_final.b", (D,))
    _check_no_extra(sd, used, _TL_ROTARY_BUFFERS if rotary else _TL_BUFFERS, source)
    return cfg, p


def to_transformer_lens(params: Mapping[str, np.ndarray], config: TransformerConfig) -> dict[str, np.ndarray]:
    """Canonical parameters to a TransformerLens state dict (row layout, numpy arrays)."""
    from circuitalg.errors import InvalidArgumentError, ShapeError

    shapes = param_shapes(require_config(config, "to_transformer_lens"))
    if not isinstance(params, Mapping):
        raise InvalidArgumentError(
            f"to_transformer_lens: params must map names to arrays (model.params), got {type(params).__name__}."
        )
    missing = [k for k in shapes if k not in params]
    if missing:
        raise InvalidArgumentError(
            f"to_transformer_lens: params lack {missing[:4]}{' ...' if len(missing) > 4 else ''}; "
            "pass model.params with model.config."
        )
    for k, shape in shapes.items():
        got = np.shape(params[k])
        if got != shape:
            raise ShapeError(f"to_transformer_lens: params[{k!r}] has shape {got}, expected {shape} for this config.")
    out: dict[str, np.ndarray] = {"embed.W_E": params["W_E"].T}  # (W_U's rows: the output vocabulary)
    if "W_pos" in params:
        out["pos_embed.W_pos"] = params["W_pos"].T
    out["unembed.W_U"] = params["W_U"].T
    out["unembed.b_U"] = params["b_U"]
    for key, value in params.items():
        if not key.startswith("blocks.") and not key.startswith("ln_final."):
            continue
        if key.endswith(("mlp.b_gate", "mlp.b_in")) and config.gated_mlp:
            if np.any(value != 0):  # TransformerLens's gated MLP has no gate bias and adds b_in after the product
                raise ConfigError(
                    f"to_transformer_lens: {key} is nonzero, which TransformerLens's gated MLP cannot represent; "
                    "fold it into b_out first if it is a post-product bias."
                )
            if key.endswith("b_gate"):
                continue
        if key.endswith(("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O")):
            value = value.transpose(0, 2, 1)
        elif key.endswith(("mlp.W_in", "mlp.W_out", "mlp.W_gate")):
            value = value.T
        if config.n_kv_heads is not None and key.endswith(("attn.W_K", "attn.W_V", "attn.b_K", "attn.b_V")):
            head, _, name = key.rpartition(".")
            key = f"{head}._{name}"  # TransformerLens's names for shared key/value heads
        out[key] = value
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# -- Hugging Face GPT-2 and GPT-Neo -------------------------------------------------------

_HF_ACT = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


#: The Hugging Face architectures circuitalg reads, by ``config.json`` ``model_type``, with
#: their state-dict layout.
HF_MODEL_TYPES = {
    "gpt2": "hf_gpt2", "gpt_neo": "hf_gpt_neo", "gpt_neox": "hf_gpt_neox", "gptj": "hf_gptj",
    "llama": "hf_llama", "mistral": "hf_llama", "qwen2": "hf_llama",
}
#: Llama-layout families: which projections carry biases (q/k/v, o, MLP), from the config or fixed.
_LLAMA_BIASES = {
    "llama": lambda d: (bool(d.get("attention_bias", False)), bool(d.get("attention_bias", False)),
                        bool(d.get("mlp_bias", False))),
    "mistral": lambda d: (False, False, False),
    "qwen2": lambda d: (True, False, False),
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
    hidden_act = model_type in ("gpt_neox", "llama", "mistral", "qwen2")
    act_key = "hidden_act" if hidden_act else "activation_function"
    act = d.get(act_key, {"gpt_neox": "gelu", "gpt2": "gelu_new", "gpt_neo": "gelu_new"}.get(model_type, "silu"))
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
    if lm_head is not None:
        W_U = _np(lm_head)
        if W_U.shape != (V, D):
            raise LoadError(f"{source}: tensor 'lm_head.weight' has shape {W_U.shape}, expected {(V, D)}.")
        p["W_U"] = W_U
    elif isinstance(config, Mapping) and config.get("tie_word_embeddings") is False:
        raise LoadError(f"{source}: missing tensor 'lm_head.weight' (config says tie_word_embeddings=false).")
    else:  # tied embeddings: the checkpoint does not store lm_head
        p["W_U"] = W_E
    p["b_U"] = np.zeros(V, dtype=W_E.dtype)  # these models' unembeddings have no bias
    return p


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
    elif kind != "default":
        raise ConfigError(
            f"{source}: rope_type={kind!r} is not supported: circuitalg implements default, linear and llama3 rotary "
            "embeddings (scalings that rescale scores or depend on the sequence length are not approximated)."
        )
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
    used: set[str] = set()
    biased = not (isinstance(config, Mapping) and config.get("attention_bias") is False)

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        used.add(key)
        return _get(flat, key, shape, source)

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
    _check_no_extra(flat, used, _HF_NEOX_BUFFERS, source)
    return c, p


def _hf_llama_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Llama, Mistral, Qwen2: RMSNorm, rotary (half-split), grouped-query attention, a gated MLP
    (SwiGLU), no learned positions; Mistral's and Qwen2's sliding windows."""
    model_type = d["model_type"]
    out = _sizes(d, {"n_layers": "num_hidden_layers", "n_heads": "num_attention_heads", "d_model": "hidden_size",
                     "d_vocab": "vocab_size", "n_ctx": "max_position_embeddings", "d_mlp": "intermediate_size"}, source)
    head_dim = d.get("head_dim")
    out["d_head"] = (head_dim if head_dim is not None
                     else _head_size(out["d_model"], out["n_heads"], ("hidden_size", "num_attention_heads"), source))
    out["n_kv_heads"] = d.get("num_key_value_heads", out["n_heads"])
    out["act_fn"] = _HF_ACT[d.get("hidden_act", "silu")]
    out["gated_mlp"] = True
    out["ln_eps"] = d.get("rms_norm_eps", 1e-6)
    out["normalization"] = "RMS"
    out["rotary"] = _hf_rotary(d, out["d_head"], source)
    window = d.get("sliding_window")
    types = d.get("layer_types")
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
    used: set[str] = set()

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        used.add(key)
        return _get(flat, key, shape, source)

    W_E = get("model.embed_tokens.weight", (V, D))
    p: dict[str, Any] = {"W_E": W_E.T}
    if lm_head is not None:
        W_U = _np(lm_head)
        if W_U.shape != (V, D):
            raise LoadError(f"{source}: tensor 'lm_head.weight' has shape {W_U.shape}, expected {(V, D)}.")
        p["W_U"] = W_U
    elif isinstance(config, Mapping) and config.get("tie_word_embeddings"):
        p["W_U"] = W_E
    else:
        raise LoadError(f"{source}: missing tensor 'lm_head.weight' (the config does not tie the embeddings).")
    p["b_U"] = np.zeros(V, dtype=W_E.dtype)
    zeros = lambda *shape: np.zeros(shape, dtype=W_E.dtype)  # noqa: E731  (projections without bias)
    for l_ in range(c.n_layers):
        h, b = f"model.layers.{l_}.", f"blocks.{l_}."
        a = h + "self_attn."
        for name, n in (("Q", H), ("K", H_kv), ("V", H_kv)):  # nn.Linear (out, in): rows grouped by head
            p[b + "attn.W_" + name] = get(a + f"{name.lower()}_proj.weight", (n * dh, D)).reshape(n, dh, D)
            p[b + "attn.b_" + name] = (get(a + f"{name.lower()}_proj.bias", (n * dh,)).reshape(n, dh) if qkv_bias
                                       else zeros(n, dh))
        p[b + "attn.W_O"] = get(a + "o_proj.weight", (D, H * dh)).reshape(D, H, dh).transpose(1, 0, 2)
        p[b + "attn.b_O"] = get(a + "o_proj.bias", (D,)) if o_bias else zeros(D)
        p[b + "ln1.w"] = get(h + "input_layernorm.weight", (D,))
        p[b + "ln2.w"] = get(h + "post_attention_layernorm.weight", (D,))
        m = h + "mlp."
        for ours, theirs, shape in (("W_gate", "gate_proj", (c.d_mlp, D)), ("W_in", "up_proj", (c.d_mlp, D)),
                                    ("W_out", "down_proj", (D, c.d_mlp))):
            p[b + "mlp." + ours] = get(m + theirs + ".weight", shape)  # type: ignore[arg-type]
            bias_shape = (shape[0],)
            p[b + "mlp." + ours.replace("W_", "b_")] = (get(m + theirs + ".bias", bias_shape) if mlp_bias
                                                        else zeros(*bias_shape))
    p["ln_final.w"] = get("model.norm.weight", (D,))
    _check_no_extra(flat, used, _HF_LLAMA_BUFFERS, source)
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
    used: set[str] = set()

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        used.add(key)
        return _get(flat, key, shape, source)

    W_E = get("wte.weight", (V, D))
    p: dict[str, Any] = {"W_E": W_E.T}
    if lm_head is not None:
        W_U = _np(lm_head)
        if W_U.shape != (V, D):
            raise LoadError(f"{source}: tensor 'lm_head.weight' has shape {W_U.shape}, expected {(V, D)}.")
        p["W_U"] = W_U
    elif isinstance(config, Mapping) and config.get("tie_word_embeddings"):
        p["W_U"] = W_E
    else:
        raise LoadError(f"{source}: missing tensor 'lm_head.weight' (the config does not tie the embeddings).")
    if "lm_head.bias" in sd:
        p["b_U"] = _get(sd, "lm_head.bias", (V,), source)
        used.add("lm_head.bias")
    else:
        raise LoadError(f"{source}: missing tensor 'lm_head.bias' (GPT-J's unembedding has a bias).")
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
    flat.pop("lm_head.bias", None)
    _check_no_extra(flat, used, _HF_GPTJ_BUFFERS, source)
    return c, p


def _from_hf_gpt2(sd: Mapping[str, Any], config: Any, source: str) -> tuple[TransformerConfig, dict[str, Any]]:
    c, flat, lm_head = _hf_parts(sd, config, source, "gpt2")
    D, H, dh = c.d_model, c.n_heads, c.d_head
    used: set[str] = set()

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        used.add(key)
        return _get(flat, key, shape, source)

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
    _check_no_extra(flat, used, _HF_BUFFERS, source)
    return c, p


def _from_hf_gpt_neo(sd: Mapping[str, Any], config: Any, source: str) -> tuple[TransformerConfig, dict[str, Any]]:
    c, flat, lm_head = _hf_parts(sd, config, source, "gpt_neo")
    D, H, dh = c.d_model, c.n_heads, c.d_head
    used: set[str] = set()

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        used.add(key)
        return _get(flat, key, shape, source)

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
    _check_no_extra(flat, used, _HF_NEO_BUFFERS, source)
    return c, p
