"""State-dict layouts: detection and dispatch, TransformerLens and circuitalg's own.

Hugging Face families live in :mod:`circuitalg.model.hf`.

Each layout's key table is a :class:`~circuitalg.model.statedict.LayoutReader`
(:func:`state_dict_reader`): it finds the :class:`TransformerConfig` and maps a flat
``{name: array}`` mapping in a foreign layout (row-vector ``x @ W`` weights) to circuitalg's
canonical parameters (column layout, names from :func:`circuitalg.model.params.param_shapes`),
part by part, reading each tensor when a part asks for it (a
:class:`~circuitalg.model.statedict.TensorSource` reads it from its file then). Shapes are
checked here, against the config, with messages that name the tensor.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from circuitalg.errors import ConfigError, LoadError
from circuitalg.model.config import TransformerConfig, require_config
from circuitalg.model.hf import HF_LAYOUTS, HF_MODEL_TYPES, hf_model_type, hf_reader
from circuitalg.model.params import param_shapes
from circuitalg.model.statedict import (
    ATTENTION_WEIGHTS,
    LayoutReader,
    TensorReader,
    count_layers,
    tensor_dtype,
    tensor_shape,
)

__all__ = ["LAYOUTS", "detect_layout", "state_dict_reader", "convert_state_dict", "to_transformer_lens"]

LAYOUTS = ("circuitalg", "transformer_lens", "hf_gpt2", "hf_gpt_neo", "hf_gpt_neox", "hf_gptj", "hf_llama")

#: Buffers that checkpoints carry but that are not parameters (causal masks and the like).
_TL_BUFFERS = re.compile(r"^blocks\.\d+\.attn\.(mask|IGNORE)$")
_TL_ROTARY_BUFFERS = re.compile(r"^blocks\.\d+\.attn\.(mask|IGNORE|rotary_cos|rotary_sin)$")


def detect_layout(keys: Any, source: str = "state dict", config: Any = None) -> str:
    """The layout of a state dict: TransformerLens's and circuitalg's from their keys; a Hugging
    Face family from ``config`` (a ``config.json`` dict: ``model_type``, or ``architectures``)
    when it names one (refused when the keys are plainly another family's), else from the keys."""
    keys = set(keys)
    by_keys = _layout_from_keys(keys)
    if by_keys in ("transformer_lens", "circuitalg"):
        return by_keys
    model_type = hf_model_type(config)
    if model_type is not None:
        if model_type not in HF_MODEL_TYPES:
            raise ConfigError(
                f"{source}: config.json says model_type={model_type!r}; circuitalg reads Hugging Face checkpoints "
                f"of model_type {sorted(HF_MODEL_TYPES)}."
            )
        if by_keys is not None and by_keys != HF_MODEL_TYPES[model_type]:
            raise ConfigError(
                f"{source}: the tensors are a {by_keys[3:]} checkpoint but config.json says model_type={model_type!r}; "
                "pass the config these weights were saved with."
            )
        return HF_MODEL_TYPES[model_type]
    if by_keys is not None:
        return by_keys
    sample = sorted(keys)[:6]
    raise LoadError(
        f"{source}: unknown checkpoint layout (first keys: {sample}); circuitalg reads TransformerLens "
        "('embed.W_E', 'blocks.0.attn.W_Q', ...), Hugging Face checkpoints (told by the model_type of their "
        "config.json, or by keys such as 'transformer.h.0.attn.c_attn.weight' or 'model.layers.0.self_attn.q_proj.weight') "
        "and its own format ('W_E', 'blocks.0.attn.W_Q', ...)."
    )


def _layout_from_keys(keys: set[str]) -> str | None:
    """The layout that a state dict's keys alone show, or None."""
    if "embed.W_E" in keys:
        return "transformer_lens"
    if "W_E" in keys:
        return "circuitalg"
    if "h.0.attn.attention.q_proj.weight" in keys or "transformer.h.0.attn.attention.q_proj.weight" in keys:
        return "hf_gpt_neo"
    if "gpt_neox.embed_in.weight" in keys or "gpt_neox.layers.0.attention.query_key_value.weight" in keys:
        return "hf_gpt_neox"
    if "transformer.h.0.mlp.fc_in.weight" in keys or "h.0.mlp.fc_in.weight" in keys:
        return "hf_gptj"
    if "model.layers.0.self_attn.q_proj.weight" in keys or "model.layers.0.self_attn.qkv_proj.weight" in keys:
        return "hf_llama"  # embeddings stored as model.embed_tokens.weight, lm_head.weight (tied) or both
    if "wte.weight" in keys or "transformer.wte.weight" in keys or "transformer.h.0.attn.c_attn.weight" in keys:
        return "hf_gpt2"
    return None


def state_dict_reader(
    state_dict: Mapping[str, Any], *, layout: str = "auto", config: Any = None, source: str = "state dict"
) -> LayoutReader:
    """The :class:`~circuitalg.model.statedict.LayoutReader` of ``state_dict`` (a mapping or a
    :class:`~circuitalg.model.statedict.TensorSource`): its config, and its canonical parameters
    read part by part; see the module docstring."""
    if not isinstance(state_dict, Mapping):
        raise LoadError(f"{source}: expected a mapping of tensor names to arrays, got {type(state_dict).__name__}.")
    bad = [k for k in state_dict if not isinstance(k, str)]
    if bad:
        raise LoadError(f"{source}: tensor names must be strings, got {bad[:3]}.")
    if layout == "auto":
        layout = detect_layout(state_dict.keys(), source, config)
    if layout == "circuitalg":
        if config is None:
            raise ConfigError(
                f"{source}: the circuitalg layout needs its config (the JSON stored beside the arrays); "
                "pass config=TransformerConfig(...) or a dict."
            )
        return _OwnReader(_as_config(config, source), TensorReader(state_dict, source))
    if layout == "transformer_lens":
        return _TLReader(state_dict, config, source)
    if layout in HF_LAYOUTS:
        return hf_reader(state_dict, layout, config, source)
    raise LoadError(f"{source}: unknown layout {layout!r}; use 'auto' or one of {LAYOUTS}.")


def convert_state_dict(
    state_dict: Mapping[str, Any], *, layout: str = "auto", config: Any = None, source: str = "state dict"
) -> tuple[TransformerConfig, dict[str, Any]]:
    """Convert ``state_dict`` to ``(config, canonical params)``; see the module docstring."""
    reader = state_dict_reader(state_dict, layout=layout, config=config, source=source)
    return reader.config, reader.read_all()


def _as_config(config: Any, source: str) -> TransformerConfig:
    if isinstance(config, TransformerConfig):
        return config
    if isinstance(config, Mapping):
        return TransformerConfig.from_dict(config, source=source)
    raise ConfigError(f"{source}: config must be a TransformerConfig or a dict, got {type(config).__name__}.")


# -- TransformerLens ------------------------------------------------------------------------


def _off(v: Any) -> bool:
    return v is None or v is False


def _softcap_off(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0)


#: TransformerLens config fields that change the computation but that circuitalg does not
#: implement (yet): each is accepted only at its neutral value, and refused otherwise.
_TL_NEUTRAL: dict[str, tuple[Any, str]] = {
    "positional_embedding_type": (lambda v: v in ("standard", "rotary"), "positional embeddings other than learned or rotary"),
    "clip_qkv": (lambda v: v is None, "clipped query/key/value"),
    "use_logn_attn": (_off, "log-n attention scaling"),
    "use_dynamic_ntk_rope": (_off, "dynamic NTK rotary scaling"),
    "use_yarn_rope": (_off, "YaRN rotary scaling"),
    "scale_attn_by_inverse_layer_idx": (_off, "attention scaled by the inverse layer index"),
    "post_embedding_ln": (_off, "a layer norm after the embedding"),
    "num_experts": (lambda v: v is None, "mixture-of-experts MLPs"),
    "relative_attention_max_distance": (lambda v: v is None, "relative attention biases"),
    "relative_attention_num_buckets": (lambda v: v is None, "relative attention biases"),
    "decoder_start_token_id": (lambda v: v is None, "encoder-decoder models"),
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
    "NTK_original_ctx_len", "parallel_attn_mlp", "rotary", "qk_norm", "post_norms", "attn_softcap", "final_softcap",
    "rotary_local", "qk_norm_scope", "pre_norms",
    "use_qk_norm", "use_normalization_before_and_after", "attn_scores_soft_cap", "output_logits_soft_cap",
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
    for ours, theirs in (("qk_norm", "use_qk_norm"), ("post_norms", "use_normalization_before_and_after")):
        if theirs in d:
            out[ours] = bool(d[theirs])
    for ours, theirs in (("attn_softcap", "attn_scores_soft_cap"), ("final_softcap", "output_logits_soft_cap")):
        if theirs in d and not _softcap_off(d[theirs]):  # TransformerLens writes -1 for "no cap"
            out[ours] = d[theirs]
    for key in ("parallel_attn_mlp", "qk_norm", "post_norms", "attn_softcap", "final_softcap", "rotary_local",
                "qk_norm_scope", "pre_norms"):  # circuitalg's names
        if key in d:
            out[key] = d[key]
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


class _TLReader(LayoutReader):
    """TransformerLens's layout (row vectors ``x @ W``): sizes from the tensors' shapes, the rest
    from the config given."""

    def __init__(self, sd: Mapping[str, Any], config: Any, source: str) -> None:
        fields = _tl_config_fields(config, source)
        V, D = tensor_shape(sd, "embed.W_E", 2, source)
        V_out = tensor_shape(sd, "unembed.W_U", 2, source)[1]
        _check_sizes(fields, {"d_vocab_out": V_out}, source)
        fields["d_vocab_out"] = V_out
        rotary = fields.get("rotary") is not None
        if rotary:  # no W_pos: the context length comes from the config
            if "n_ctx" not in fields:
                raise ConfigError(f"{source}: a rotary model has no pos_embed.W_pos to read n_ctx from; pass it in the config.")
            n_ctx = fields["n_ctx"]
        else:
            n_ctx, _ = tensor_shape(sd, "pos_embed.W_pos", 2, source)
        try:
            L = count_layers(sd.keys(), r"^blocks\.(\d+)\.")
        except LoadError as exc:
            raise LoadError(f"{source}: {exc}") from None
        if L == 0:
            raise LoadError(f"{source}: no 'blocks.{{l}}.attn.W_Q' tensors: not a transformer checkpoint.")
        H, _, dh = tensor_shape(sd, "blocks.0.attn.W_Q", 3, source)
        gqa = "blocks.0.attn._W_K" in sd  # TransformerLens stores shared key/value heads as _W_K, _W_V
        H_kv = tensor_shape(sd, "blocks.0.attn._W_K", 3, source)[0] if gqa else H
        _check_sizes(fields, {"n_kv_heads": H_kv}, source)
        if gqa:
            fields["n_kv_heads"] = H_kv
        has_mlp = "blocks.0.mlp.W_in" in sd
        d_mlp = tensor_shape(sd, "blocks.0.mlp.W_in", 2, source)[1] if has_mlp else None
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
                        "n_kv_heads", "gated_mlp", "d_vocab_out", "causal", "qk_norm", "post_norms", "attn_softcap",
                        "final_softcap", "rotary_local", "qk_norm_scope", "pre_norms")},
        )
        super().__init__(cfg, TensorReader(sd, source))
        self.rotary, self.n_ctx = rotary, n_ctx
        self.kv = "_" if gqa else ""  # TransformerLens stores shared key/value heads as _W_K, _W_V
        self.buffers = _TL_ROTARY_BUFFERS if rotary else _TL_BUFFERS

    def bias(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """A bias, or zeros when the state dict has none (a model without that bias)."""
        sd = self.get.sd
        return self.get(key, shape) if key in sd else np.zeros(shape, dtype=tensor_dtype(sd, "embed.W_E"))

    def embeddings(self) -> dict[str, Any]:
        c, get = self.config, self.get
        p: dict[str, Any] = {"W_E": get("embed.W_E", (c.d_vocab, c.d_model)).T}
        if not self.rotary:
            p["W_pos"] = get("pos_embed.W_pos", (self.n_ctx, c.d_model)).T
        p["W_U"] = get("unembed.W_U", (c.d_model, c.vocab_out)).T
        p["b_U"] = self.bias("unembed.b_U", (c.vocab_out,))
        return p

    def attention(self, layer: int, which: Collection[str] = ATTENTION_WEIGHTS) -> dict[str, Any]:
        c, get, kv = self.config, self.get, self.kv
        H, H_kv, D, dh = c.n_heads, c.kv_heads, c.d_model, c.d_head
        b = f"blocks.{layer}."
        p: dict[str, Any] = {}
        p[b + "attn.W_Q"] = get(b + "attn.W_Q", (H, D, dh)).transpose(0, 2, 1)
        p[b + "attn.b_Q"] = self.bias(b + "attn.b_Q", (H, dh))
        for w in ("K", "V"):
            p[b + "attn.W_" + w] = get(b + f"attn.{kv}W_" + w, (H_kv, D, dh)).transpose(0, 2, 1)
            p[b + "attn.b_" + w] = self.bias(b + f"attn.{kv}b_" + w, (H_kv, dh))
        p[b + "attn.W_O"] = get(b + "attn.W_O", (H, dh, D)).transpose(0, 2, 1)
        p[b + "attn.b_O"] = self.bias(b + "attn.b_O", (D,))
        if c.qk_norm:
            shapes = param_shapes(c)
            for s in ("q", "k"):
                p[b + f"attn.{s}_norm.w"] = get(b + f"attn.{s}_norm.w", shapes[b + f"attn.{s}_norm.w"])
        p.update(self.norms(b + "ln1"))
        return p

    def norms(self, ln: str) -> dict[str, Any]:
        c, get, D = self.config, self.get, self.config.d_model
        p: dict[str, Any] = {}
        if c.post_norms:
            p[ln + "_post.w"] = get(ln + "_post.w", (D,))
        if c.normalization in ("LN", "RMS") and c.pre_norms:
            p[ln + ".w"] = get(ln + ".w", (D,))
        if c.normalization == "LN":
            p[ln + ".b"] = get(ln + ".b", (D,))
        return p

    def mlp(self, layer: int) -> dict[str, Any]:
        c, get = self.config, self.get
        D, d_mlp = c.d_model, c.d_mlp
        b = f"blocks.{layer}."
        p = self.norms(b + "ln2")
        p[b + "mlp.W_in"] = get(b + "mlp.W_in", (D, d_mlp)).T  # type: ignore[arg-type]
        p[b + "mlp.b_in"] = self.bias(b + "mlp.b_in", (d_mlp,))  # type: ignore[arg-type]
        p[b + "mlp.W_out"] = get(b + "mlp.W_out", (d_mlp, D)).T  # type: ignore[arg-type]
        p[b + "mlp.b_out"] = self.bias(b + "mlp.b_out", (D,))
        if c.gated_mlp:
            # TransformerLens adds b_in after the gate product: W_out (act(g) * lin + b_in) + b_out,
            # which is W_out (act(g) * lin) + (b_out + W_out b_in): fold it into b_out, exactly
            p[b + "mlp.W_gate"] = get(b + "mlp.W_gate", (D, d_mlp)).T  # type: ignore[arg-type]
            p[b + "mlp.b_gate"] = np.zeros(d_mlp, dtype=p[b + "mlp.b_in"].dtype)  # type: ignore[arg-type]
            p[b + "mlp.b_out"] = p[b + "mlp.b_out"] + p[b + "mlp.W_out"] @ p[b + "mlp.b_in"]
            p[b + "mlp.b_in"] = np.zeros_like(p[b + "mlp.b_in"])
        return p

    def final_norm(self) -> dict[str, Any]:
        c, get, D = self.config, self.get, self.config.d_model
        p: dict[str, Any] = {}
        if c.normalization in ("LN", "RMS"):
            p["ln_final.w"] = get("ln_final.w", (D,))
        if c.normalization == "LN":
            p["ln_final.b"] = get("ln_final.b", (D,))
        return p


class _OwnReader(LayoutReader):
    """circuitalg's own layout: the canonical names, read as stored (the model checks them)."""

    def part(self, prefixes: tuple[str, ...], names: Collection[str] = ()) -> dict[str, Any]:
        sd = self.get.sd
        return {k: sd[k] for k in sd if k.startswith(prefixes) or k in names}

    def embeddings(self) -> dict[str, Any]:
        return self.part((), ("W_E", "W_pos", "W_U", "b_U"))

    def attention(self, layer: int, which: Collection[str] = ATTENTION_WEIGHTS) -> dict[str, Any]:
        b = f"blocks.{layer}."
        return self.part((b + "attn.", b + "ln1.", b + "ln1_post."))

    def mlp(self, layer: int) -> dict[str, Any]:
        b = f"blocks.{layer}."
        return self.part((b + "mlp.", b + "ln2.", b + "ln2_post."))

    def final_norm(self) -> dict[str, Any]:
        return self.part(("ln_final.",))

    def read_all(self) -> dict[str, Any]:
        """Every tensor as stored (unexpected names are refused by the model, with the config)."""
        return dict(self.get.sd)


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
