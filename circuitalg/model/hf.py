"""Hugging Face checkpoints: ``config.json`` and state-dict layouts per family.

Each family reads its ``config.json`` into circuitalg config fields (:func:`hf_config`; keys the
file leaves out take transformers' documented defaults; the family comes from ``model_type``, or
from ``architectures`` when that is absent), and its key table, a
:class:`~circuitalg.model.statedict.LayoutReader` (:func:`hf_reader`), maps its tensors
(``nn.Linear`` weights are ``(out, in)``, already the column layout; GPT-2's ``Conv1D`` is
``(in, out)``) to circuitalg's canonical parameters part by part (embeddings, each layer's
attention and MLP, the final norm), reading each tensor when a part asks for it.

Tied embeddings may be stored under either name of the pair (``model.embed_tokens.weight`` or
``lm_head.weight``; GPT-2's ``transformer.wte.weight`` or ``lm_head.weight``; GPT-NeoX's
``gpt_neox.embed_in.weight`` or ``embed_out.weight``): ``safetensors.torch.save_model`` keeps
one of them, transformers loads either. Multimodal Gemma 3 checkpoints (``model_type``
``gemma3``) are read as their text tower (``text_config``; tensors under ``language_model.`` or
``model.language_model.``); the vision tower and projector are not read.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from circuitalg.errors import ConfigError, LoadError
from circuitalg.model.config import TransformerConfig
from circuitalg.model.statedict import (
    ATTENTION_WEIGHTS,
    LayoutReader,
    RenamedSource,
    TensorReader,
    as_array,
    read_rows,
    tensor_dtype,
    tensor_shape,
)

__all__ = ["HF_MODEL_TYPES", "HF_LAYOUTS", "hf_config", "hf_reader", "convert_hf"]

_HF_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_HF_NEO_BUFFERS = re.compile(r"^h\.\d+\.attn\.attention\.(bias|masked_bias)$")
_HF_GPTJ_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias|embed_positions)$|^embed_positions$")
_HF_LLAMA_BUFFERS = re.compile(r"^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.\w*inv_freq$")
#: The parts of a multimodal Gemma 3 checkpoint that are not its text tower (never read).
_HF_VISION = re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\.")
_HF_NEOX_BUFFERS = re.compile(r"^gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$|^gpt_neox\.rotary_emb\.inv_freq$")
_HF_ACT = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


#: The Hugging Face architectures circuitalg reads, by ``config.json`` ``model_type``, with
#: their state-dict layout.
HF_MODEL_TYPES = {
    "gpt2": "hf_gpt2", "gpt_neo": "hf_gpt_neo", "gpt_neox": "hf_gpt_neox", "gptj": "hf_gptj",
    "llama": "hf_llama", "mistral": "hf_llama", "qwen2": "hf_llama", "qwen3": "hf_llama", "gemma2": "hf_llama",
    "gemma3_text": "hf_llama", "gemma3": "hf_llama", "olmo2": "hf_llama", "phi3": "hf_llama",
}
#: transformers' model classes (``config.json`` ``architectures``) by family, for configs without
#: ``model_type``.
_HF_ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2", "GPTNeoForCausalLM": "gpt_neo", "GPTNeoXForCausalLM": "gpt_neox",
    "GPTJForCausalLM": "gptj", "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text", "Gemma3ForConditionalGeneration": "gemma3", "Olmo2ForCausalLM": "olmo2",
    "Phi3ForCausalLM": "phi3",
}
#: Families whose RMSNorm multiplies by ``1 + w`` and whose embeddings are scaled by sqrt(d_model).
_GEMMA = ("gemma2", "gemma3_text")
#: Llama-layout families: which projections carry biases (q/k/v, o, MLP), from the config or fixed.
_LLAMA_BIASES = {
    "llama": lambda d: (bool(d.get("attention_bias", False)), bool(d.get("attention_bias", False)),
                        bool(d.get("mlp_bias", False))),
    "mistral": lambda d: (False, False, False),
    "qwen2": lambda d: (True, False, False),
    "qwen3": lambda d: (bool(d.get("attention_bias", False)), bool(d.get("attention_bias", False)), False),
    "gemma2": lambda d: (bool(d.get("attention_bias", False)), bool(d.get("attention_bias", False)), False),
    "gemma3_text": lambda d: (bool(d.get("attention_bias", False)), bool(d.get("attention_bias", False)), False),
    "olmo2": lambda d: (bool(d.get("attention_bias", False)), bool(d.get("attention_bias", False)), False),
    "phi3": lambda d: (False, False, False),
}
#: Defaults of transformers' config classes that differ from Llama's, by family.
_LLAMA_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": {"tie_word_embeddings": True, "rms_norm_eps": 1e-6, "sliding_window": 4096},
    "gemma3_text": {"tie_word_embeddings": True, "rms_norm_eps": 1e-6, "sliding_window": 4096, "head_dim": 256,
                    "num_key_value_heads": 4},
    "olmo2": {"tie_word_embeddings": False, "rms_norm_eps": 1e-5},
    "phi3": {"tie_word_embeddings": False, "rms_norm_eps": 1e-5},
}


def hf_model_type(d: Any) -> str | None:
    """The family a ``config.json`` dict describes: its ``model_type``, else the family of its first
    ``architectures`` entry that circuitalg knows; ``None`` when it names neither."""
    if not isinstance(d, Mapping):
        return None
    if isinstance(d.get("model_type"), str):
        return d["model_type"]
    archs = d.get("architectures")
    if isinstance(archs, list):
        for a in archs:
            if a in _HF_ARCHITECTURES:
                return _HF_ARCHITECTURES[a]
    return None


def text_config(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The config of the language model a ``config.json`` dict describes, with its ``model_type``
    resolved (:func:`hf_model_type`): for a multimodal Gemma 3 checkpoint its ``text_config`` (as
    ``gemma3_text``, tying its embeddings as the outer config says), else ``d`` itself."""
    model_type = hf_model_type(d)
    out = dict(d)
    if model_type == "gemma3":
        inner = d.get("text_config") or {}
        if not isinstance(inner, Mapping):
            raise ConfigError(f"{source}: text_config={inner!r} must be a JSON object (the language model's config).")
        out = {**inner, "model_type": "gemma3_text"}
        out["tie_word_embeddings"] = d.get("tie_word_embeddings", inner.get("tie_word_embeddings", True))
        if out.get("final_logit_softcapping") is not None:
            raise ConfigError(
                f"{source}: text_config.final_logit_softcapping={out['final_logit_softcapping']!r} in a multimodal "
                "Gemma 3 config: transformers' Gemma3ForConditionalGeneration does not apply it (its Gemma3ForCausalLM "
                "does), so the checkpoint computes two different things; set it to null, as Google's Gemma 3 has it."
            )
    elif model_type is not None:
        out["model_type"] = model_type
    return out


def hf_config(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """circuitalg config fields from a Hugging Face ``config.json`` dict (GPT-2 or GPT-Neo).

    Keys the file leaves out take the documented defaults of transformers' own config class
    (what transformers itself would run), except ``model_type``, which says what the file
    describes and is required.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: config.json must hold a JSON object, got {type(d).__name__}.")
    if hf_model_type(d) is None:
        raise ConfigError(
            f"{source}: config.json has no model_type (and no architectures entry circuitalg knows), so circuitalg "
            "cannot tell which architecture it describes; add \"model_type\": \"gpt2\" if it is a GPT-2 checkpoint."
        )
    d = text_config(d, source)
    model_type = d["model_type"]
    if model_type not in HF_MODEL_TYPES:
        raise ConfigError(
            f"{source}: model_type={model_type!r}; circuitalg reads Hugging Face checkpoints of model_type "
            f"{sorted(HF_MODEL_TYPES)}."
        )
    act_key = {"gpt2": "activation_function", "gpt_neo": "activation_function", "gptj": "activation_function",
               "gemma2": "hidden_activation", "gemma3_text": "hidden_activation"}.get(model_type, "hidden_act")
    act = d.get(act_key, {"gpt_neox": "gelu", "gpt2": "gelu_new", "gpt_neo": "gelu_new", "gptj": "gelu_new",
                          "gemma2": "gelu_pytorch_tanh", "gemma3_text": "gelu_pytorch_tanh"}.get(model_type, "silu"))
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
) -> tuple[TransformerConfig, RenamedSource, _Stored | None]:
    """``(config, tensors without the "transformer." prefix, lm_head or None)``; a multimodal
    checkpoint's text tower with its keys as a text-only model's (``model.``, ``lm_head.``). Only
    names are looked at: every tensor is read when a part asks for it."""
    if config is None:
        raise ConfigError(
            f"{source}: a Hugging Face state dict needs its config.json (the number of heads cannot be "
            "read from the weights); pass config=json.load(open('config.json')) or load the directory."
        )
    if isinstance(config, TransformerConfig):
        cfg = config
    else:
        found = hf_model_type(config)
        if found is not None and found != model_type and not (found, model_type) == ("gemma3", "gemma3_text"):
            raise ConfigError(
                f"{source}: the tensors are a {model_type} checkpoint but config.json says "
                f"model_type={found!r}; pass the config these weights were saved with."
            )
        cfg = TransformerConfig.from_dict(hf_config(config, source), source=source)
    if cfg.d_mlp is None:
        raise ConfigError(f"{source}: {model_type} has MLPs; the config given has d_mlp=None.")
    names: dict[str, str] = {}
    lm_head = None
    multimodal = any(k.startswith(("model.language_model.", "language_model.")) for k in sd)
    for key in sd:
        k = key
        if multimodal:  # a vision-language checkpoint: its text tower only
            if _HF_VISION.match(k):
                continue
            for old, new in (("model.language_model.", "model."), ("language_model.model.", "model."),
                             ("language_model.lm_head.", "lm_head.")):
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
        if k == "lm_head.weight":
            lm_head = _Stored(sd, key)
        elif k.startswith("transformer."):
            names[k[len("transformer."):]] = key
        else:
            names[k] = key
    return cfg, RenamedSource(sd, names), lm_head


@dataclasses.dataclass(frozen=True)
class _Stored:
    """One tensor of a state dict (``sd[key]``), read when asked for."""

    sd: Mapping[str, Any]
    key: str

    def read(self) -> np.ndarray:
        return as_array(self.sd[self.key])

    def rows(self, start: int, stop: int) -> np.ndarray:
        return read_rows(self.sd, self.key, start, stop)

    def shape(self) -> tuple[int, ...]:
        return tensor_shape(self.sd, self.key)

    def dtype(self) -> np.dtype:
        return tensor_dtype(self.sd, self.key)


def _tied(config: Any, tied_by_default: bool) -> bool:
    """``tie_word_embeddings`` of a config.json dict (its family's default when absent)."""
    return bool(config.get("tie_word_embeddings", tied_by_default)) if isinstance(config, Mapping) else tied_by_default


class _HFReader(LayoutReader):
    """What the Hugging Face families share: the state dict with ``transformer.`` stripped,
    ``lm_head`` apart, and the embedding pair (tied embeddings may be stored under either name:
    ``save_model`` keeps one name of a tied pair)."""

    #: the embedding's name, and whether the family ties ``lm_head`` to it when config.json is silent
    embed_key = "wte.weight"
    tied_by_default = True

    def __init__(self, config: TransformerConfig, flat: RenamedSource, lm_head: _Stored | None, tie_config: Any,
                 source: str) -> None:
        super().__init__(config, TensorReader(flat, source))
        self.lm_head, self.tie_config, self.source = lm_head, tie_config, source

    def vocabulary_tensors(self) -> tuple[_Stored, _Stored | None]:
        """The stored tensors of ``W_E``'s rows and of ``W_U`` (None: ``W_U`` is ``W_E``'s rows, tied)."""
        sd = self.get.sd
        if self.embed_key in sd:
            if self.lm_head is not None:
                return _Stored(sd, self.embed_key), self.lm_head
            if not _tied(self.tie_config, self.tied_by_default):
                raise LoadError(f"{self.source}: missing tensor 'lm_head.weight' (the config does not tie the embeddings).")
            return _Stored(sd, self.embed_key), None
        if self.lm_head is not None and _tied(self.tie_config, self.tied_by_default):
            return self.lm_head, None
        raise LoadError(f"{self.source}: missing tensor {self.embed_key!r}; the checkpoint is incomplete or not this layout.")

    def tied_pair(self) -> tuple[np.ndarray, np.ndarray]:
        """``(embedding rows, W_U)`` (both vocab x d_model), read and shape-checked."""
        shape = (self.config.d_vocab, self.config.d_model)
        embed, unembed = self.vocabulary_tensors()
        W_E = self.get(self.embed_key, shape) if embed.sd is self.get.sd else _checked(embed.read(), shape, self.source)
        return W_E, W_E if unembed is None else _checked(unembed.read(), W_E.shape, self.source)

    @functools.cached_property
    def dtype(self) -> np.dtype:
        """The embedding's dtype: the dtype of the zeros that stand for biases the checkpoint lacks."""
        return self.vocabulary_tensors()[0].dtype()

    def zeros(self, *shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=self.dtype)


def _checked(W: np.ndarray, shape: tuple[int, ...], source: str) -> np.ndarray:
    """``lm_head.weight`` (``W``), or :class:`LoadError` when it is not of ``shape``."""
    if W.shape != shape:
        raise LoadError(f"{source}: tensor 'lm_head.weight' has shape {W.shape}, expected {shape}.")
    return W


class _GPT2Reader(_HFReader):
    """GPT-2: fused ``c_attn`` (Conv1D, ``x @ W = [q | k | v]``), learned positions, LayerNorm."""

    buffers = _HF_BUFFERS
    linear = False  # Conv1D stores (in, out); nn.Linear (out, in)

    def embeddings(self) -> dict[str, Any]:
        """``W_E``, ``W_pos``, ``W_U`` (``lm_head``, or tied to ``wte``) and a zero ``b_U`` (no bias)."""
        c = self.config
        W_E, W_U = self.tied_pair()
        p: dict[str, Any] = {"W_E": W_E.T, "W_pos": self.get("wpe.weight", (c.n_ctx, c.d_model)).T, "W_U": W_U}
        p["b_U"] = np.zeros(c.d_vocab, dtype=W_E.dtype)  # these models' unembeddings have no bias
        return p

    def attention(self, layer: int, which: Collection[str] = ATTENTION_WEIGHTS) -> dict[str, Any]:
        c, get = self.config, self.get
        D, H, dh = c.d_model, c.n_heads, c.d_head
        h, b = f"h.{layer}.", f"blocks.{layer}."
        W = get(h + "attn.c_attn.weight", (D, 3 * D))  # x @ W = [q | k | v]
        bias = get(h + "attn.c_attn.bias", (3 * D,))
        p: dict[str, Any] = {}
        for i, name in enumerate(("Q", "K", "V")):
            w = W[:, i * D:(i + 1) * D]  # (D, H*dh), columns grouped by head
            p[b + "attn.W_" + name] = w.reshape(D, H, dh).transpose(1, 2, 0)
            p[b + "attn.b_" + name] = bias[i * D:(i + 1) * D].reshape(H, dh)
        W_proj = get(h + "attn.c_proj.weight", (D, D))  # z_concat @ W_proj, rows grouped by head
        p[b + "attn.W_O"] = W_proj.reshape(H, dh, D).transpose(0, 2, 1)
        p[b + "attn.b_O"] = get(h + "attn.c_proj.bias", (D,))
        p.update(self.layer_norm(h + "ln_1", b + "ln1"))
        return p

    def layer_norm(self, theirs: str, ours: str) -> dict[str, Any]:
        D = self.config.d_model
        return {ours + ".w": self.get(theirs + ".weight", (D,)), ours + ".b": self.get(theirs + ".bias", (D,))}

    def mlp(self, layer: int) -> dict[str, Any]:
        """Layer norm 2 and the GELU MLP (Conv1D weights, or nn.Linear with :attr:`linear`)."""
        c, get = self.config, self.get
        D, d_mlp = c.d_model, c.d_mlp
        h, b = f"h.{layer}.", f"blocks.{layer}."
        p = self.layer_norm(h + "ln_2", b + "ln2")
        if self.linear:  # nn.Linear stores (out, in): already the column layout
            p[b + "mlp.W_in"] = get(h + "mlp.c_fc.weight", (d_mlp, D))
            p[b + "mlp.W_out"] = get(h + "mlp.c_proj.weight", (D, d_mlp))
        else:  # Conv1D stores (in, out)
            p[b + "mlp.W_in"] = get(h + "mlp.c_fc.weight", (D, d_mlp)).T
            p[b + "mlp.W_out"] = get(h + "mlp.c_proj.weight", (d_mlp, D)).T
        p[b + "mlp.b_in"] = get(h + "mlp.c_fc.bias", (d_mlp,))
        p[b + "mlp.b_out"] = get(h + "mlp.c_proj.bias", (D,))
        return p

    def final_norm(self) -> dict[str, Any]:
        return self.layer_norm("ln_f", "ln_final")


def _hf_rotary(d: Mapping[str, Any], d_head: int, source: str) -> dict[str, Any]:
    """Rotary settings from a config.json in either form: transformers 5.x ``rope_parameters``
    (``rope_theta``, ``partial_rotary_factor``, ``rope_type``...) or 4.x top-level keys
    (``rope_theta``/``rotary_emb_base``, ``partial_rotary_factor``/``rotary_pct``, ``rope_scaling``).
    Per-layer-type parameters (5.x ``{"full_attention": ..., "sliding_attention": ...}``) give the
    full-attention layers' embedding; :func:`_hf_rotary_local` gives the sliding layers'."""
    params = d.get("rope_parameters")
    if isinstance(params, Mapping) and "full_attention" in params:
        params = params["full_attention"]
    if params is None:
        params = {
            "rope_theta": d.get("rope_theta", d.get("rotary_emb_base", _default_theta(d))),
            "partial_rotary_factor": d.get("partial_rotary_factor", d.get("rotary_pct", 1.0)),
            **(d.get("rope_scaling") or {}),
        }
    return _rotary_fields(d, params, d_head, source)


def _default_theta(d: Mapping[str, Any]) -> float:
    """transformers' default ``rope_theta`` (Gemma 3: 1M on its global layers)."""
    return 1_000_000.0 if d.get("model_type") == "gemma3_text" else 10000.0


def _hf_rotary_local(d: Mapping[str, Any], d_head: int, source: str) -> dict[str, Any] | None:
    """The rotary settings of the sliding-window layers where they differ by layer type (Gemma 3:
    5.x ``rope_parameters["sliding_attention"]``, 4.x ``rope_local_base_freq``, unscaled), else None."""
    params = d.get("rope_parameters")
    if isinstance(params, Mapping) and "sliding_attention" in params:
        local = params["sliding_attention"]
        if local is None:
            return None
        if not isinstance(local, Mapping):
            raise ConfigError(f"{source}: rope_parameters['sliding_attention']={local!r} must be a JSON object.")
        return _rotary_fields(d, local, d_head, source)
    if d.get("model_type") == "gemma3_text":  # 4.x: the global theta and scaling at the top, the local base apart
        fraction = d.get("partial_rotary_factor", 1.0)
        return _rotary_fields(d, {"rope_theta": d.get("rope_local_base_freq", 10000.0),
                                  "partial_rotary_factor": fraction}, d_head, source)
    return None


def _rotary_fields(d: Mapping[str, Any], params: Any, d_head: int, source: str) -> dict[str, Any]:
    """circuitalg :class:`Rotary` fields from one dict of rope parameters (``params``) of config ``d``."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"{source}: rope_parameters={params!r} must be a JSON object.")
    kind = params.get("rope_type", params.get("type", "default"))
    if d.get("model_type") == "phi3":  # transformers' Phi3Config reads su and yarn as longrope
        kind = "longrope" if kind in ("su", "yarn") else kind
        if kind not in ("default", "longrope"):
            raise ConfigError(
                f"{source}: rope_type={kind!r}; transformers' Phi-3 implements default and longrope (su, yarn) only."
            )
    fraction = params.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    out: dict[str, Any] = {"dim": int(d_head * fraction), "base": params.get("rope_theta", _default_theta(d)),
                           "style": "half"}
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
    elif kind == "longrope":  # transformers' _compute_longrope_parameters and longrope_frequency_update
        short, long = params.get("short_factor"), params.get("long_factor")
        # Phi-3 keeps the pretraining length at the top level, and transformers prefers it there
        original = d.get("original_max_position_embeddings", params.get("original_max_position_embeddings"))
        if original is None:
            original = d.get("max_position_embeddings")
        if short is None or long is None or original is None:
            raise ConfigError(
                f"{source}: rope_type='longrope' needs short_factor, long_factor and original_max_position_embeddings."
            )
        factor = params.get("factor")
        if factor is None:
            factor = d.get("max_position_embeddings", original) / original
        attention = params.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
        out.update(scaling="longrope", freq_factors=tuple(short), long_factors=tuple(long),
                   original_max_position_embeddings=original, attention_factor=float(attention))
    elif kind == "dynamic":
        pass  # dynamic NTK changes the frequencies only beyond max_position_embeddings (= n_ctx): unscaled within
    elif kind != "default":
        raise ConfigError(
            f"{source}: rope_type={kind!r} is not supported: circuitalg implements default, linear, llama3, yarn, "
            "longrope and dynamic rotary embeddings."
        )
    if params.get("freq_factors") is not None:  # per-plane divisors (what GGUF's rope_freqs tensor holds)
        if kind == "longrope":
            raise ConfigError(f"{source}: freq_factors with rope_type='longrope' (which has its own) is ambiguous.")
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


def _hf_llama_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, OLMo 2, Phi-3: RMSNorm, rotary (half-split),
    grouped-query attention, a gated MLP (SwiGLU; GeGLU in Gemma), no learned positions; sliding
    windows (Mistral and Phi-3 on every layer, Qwen2/3's ``layer_types`` or ``use_sliding_window``,
    Gemma's alternating layers or ``sliding_window_pattern``); Qwen3's and Gemma 3's per-head q/k
    norms, OLMo 2's over the whole projection; Gemma's sandwich norms, OLMo 2's post-norms
    without pre-norms; Gemma 2's soft-capping; ``query_pre_attn_scalar``; Gemma 3's local and
    global rotary embeddings; Phi-3's LongRoPE."""
    model_type = d["model_type"]
    d = {**_LLAMA_DEFAULTS.get(model_type, {}), **d}
    out = _sizes(d, {"n_layers": "num_hidden_layers", "n_heads": "num_attention_heads", "d_model": "hidden_size",
                     "d_vocab": "vocab_size", "n_ctx": "max_position_embeddings", "d_mlp": "intermediate_size"}, source)
    head_dim = d.get("head_dim")
    out["d_head"] = (head_dim if head_dim is not None
                     else _head_size(out["d_model"], out["n_heads"], ("hidden_size", "num_attention_heads"), source))
    kv = d.get("num_key_value_heads")
    out["n_kv_heads"] = out["n_heads"] if kv is None else kv
    gemma = model_type in _GEMMA
    out["act_fn"] = _HF_ACT[d.get("hidden_activation", "gelu_pytorch_tanh") if gemma else d.get("hidden_act", "silu")]
    out["gated_mlp"] = True
    out["qk_norm"] = model_type in ("qwen3", "gemma3_text", "olmo2")
    if model_type == "olmo2":  # OLMo 2 normalises each sublayer's output only, and q/k over all heads at once
        out.update(qk_norm_scope="all", pre_norms=False, post_norms=True)
    if gemma:
        if d.get("use_bidirectional_attention"):
            raise ConfigError(f"{source}: use_bidirectional_attention=true (with sliding windows) is not implemented.")
        out["post_norms"] = True
        out["attn_scale"] = math.sqrt(d.get("query_pre_attn_scalar", 256))
        if model_type == "gemma2":
            out["attn_softcap"] = d.get("attn_logit_softcapping", 50.0)
            out["final_softcap"] = d.get("final_logit_softcapping", 30.0)
        else:
            if d.get("attn_logit_softcapping") is not None:
                raise ConfigError(
                    f"{source}: attn_logit_softcapping={d['attn_logit_softcapping']!r} in a Gemma 3 config: "
                    "transformers' Gemma 3 ignores it (Gemma 3 dropped attention soft-capping), so circuitalg cannot "
                    "tell whether the weights were trained with it; set it to null to run the model as transformers does."
                )
            out["final_softcap"] = d.get("final_logit_softcapping")
    out["ln_eps"] = d.get("rms_norm_eps", 1e-6)
    out["normalization"] = "RMS"
    out["rotary"] = _hf_rotary(d, out["d_head"], source)
    window = d.get("sliding_window", None)
    types = d.get("layer_types")
    if gemma and types is None:  # before layer_types: every pattern-th layer global (Gemma 2: every second)
        pattern = d.get("sliding_window_pattern", 2 if model_type == "gemma2" else 6)
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            raise ConfigError(f"{source}: sliding_window_pattern={pattern!r} must be a positive integer.")
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(out["n_layers"])]
    if model_type in ("mistral", "phi3"):
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
        local = _hf_rotary_local(d, out["d_head"], source)
        if local is not None:
            out["rotary_local"] = local
    return out


class _LlamaReader(_HFReader):
    """Llama-layout families (:func:`_hf_llama_fields`): separate or fused (Phi-3) projections,
    grouped-query attention, q/k norms, Gemma's ``1 + w`` norms and scaled embeddings."""

    buffers = _HF_LLAMA_BUFFERS
    embed_key = "model.embed_tokens.weight"

    def __init__(self, sd: Mapping[str, Any], config: Any, source: str) -> None:
        d = text_config(config, source) if isinstance(config, Mapping) else {}
        model_type = d.get("model_type", "llama")
        family = model_type if model_type in _LLAMA_BIASES else "llama"
        c, flat, lm_head = _hf_parts(sd, d if isinstance(config, Mapping) else config, source, family)
        super().__init__(c, flat, lm_head, d or config, source)
        self.tied_by_default = _LLAMA_DEFAULTS.get(family, {}).get("tie_word_embeddings", False)
        self.qkv_bias, self.o_bias, self.mlp_bias = _LLAMA_BIASES[family](d)
        self.gemma = family in _GEMMA
        if self.gemma:
            norms = (("input_layernorm", "ln1"), ("pre_feedforward_layernorm", "ln2"),
                     ("post_attention_layernorm", "ln1_post"), ("post_feedforward_layernorm", "ln2_post"))
        elif not c.pre_norms:  # OLMo 2: norms of the sublayers' outputs only
            norms = (("post_attention_layernorm", "ln1_post"), ("post_feedforward_layernorm", "ln2_post"))
        else:
            norms = (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2"))
        self.norms = norms

    def norm(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A norm weight (Gemma's RMSNorm multiplies by ``1 + w``)."""
        w = self.get(key, (self.config.d_model,) if shape is None else shape)
        return 1.0 + w if self.gemma else w

    def embeddings(self) -> dict[str, Any]:
        W_E, W_U = self.tied_pair()
        # Gemma scales the embeddings by sqrt(d_model) (folded into W_E; the tied W_U is unscaled)
        p: dict[str, Any] = {"W_E": self._scaled(W_E).T, "W_U": W_U}
        p["b_U"] = np.zeros(self.config.d_vocab, dtype=W_E.dtype)
        return p

    def _scaled(self, E: np.ndarray) -> np.ndarray:
        return E * np.asarray(math.sqrt(self.config.d_model), dtype=E.dtype) if self.gemma else E

    def attention(self, layer: int, which: Collection[str] = ATTENTION_WEIGHTS) -> dict[str, Any]:
        c, get = self.config, self.get
        D, H, H_kv, dh = c.d_model, c.n_heads, c.kv_heads, c.d_head
        h, b = f"model.layers.{layer}.", f"blocks.{layer}."
        a = h + "self_attn."
        sizes = {"Q": H * dh, "K": H_kv * dh, "V": H_kv * dh}
        if a + "qkv_proj.weight" in get.sd:  # Phi-3: one fused projection, rows [q | k | v]
            fused = get(a + "qkv_proj.weight", (sum(sizes.values()), D))
            starts = {"Q": 0, "K": sizes["Q"], "V": sizes["Q"] + sizes["K"]}
            proj = {s: fused[starts[s]:starts[s] + n] for s, n in sizes.items()}
        else:
            proj = {s: get(a + f"{s.lower()}_proj.weight", (n, D)) for s, n in sizes.items() if s in which}
        p: dict[str, Any] = {}
        for name, n in (("Q", H), ("K", H_kv), ("V", H_kv)):  # nn.Linear (out, in): rows grouped by head
            if name not in proj:
                continue
            p[b + "attn.W_" + name] = proj[name].reshape(n, dh, D)
            p[b + "attn.b_" + name] = (get(a + f"{name.lower()}_proj.bias", (n * dh,)).reshape(n, dh) if self.qkv_bias
                                       else self.zeros(n, dh))
        if "O" in which:
            p[b + "attn.W_O"] = get(a + "o_proj.weight", (D, H * dh)).reshape(D, H, dh).transpose(1, 0, 2)
            p[b + "attn.b_O"] = get(a + "o_proj.bias", (D,)) if self.o_bias else self.zeros(D)
        for s, n in (("q", H), ("k", H_kv)):
            if not c.qk_norm or s.upper() not in proj:
                continue
            if c.qk_norm_scope == "all":  # OLMo 2: one weight entry per head and dimension
                p[b + f"attn.{s}_norm.w"] = get(a + f"{s}_norm.weight", (n * dh,)).reshape(n, dh)
            else:  # Qwen3, Gemma 3: one RMSNorm weight over d_head for all query heads, one for all key heads
                p[b + f"attn.{s}_norm.w"] = self.norm(a + f"{s}_norm.weight", (dh,))
        reads = {"ln1"} if proj else set()
        for theirs, ours in self.norms:
            if ours in reads or (ours == "ln1_post" and "O" in which):
                p[b + ours + ".w"] = self.norm(h + theirs + ".weight")
        return p

    def mlp(self, layer: int) -> dict[str, Any]:
        c, get = self.config, self.get
        D, d_mlp = c.d_model, c.d_mlp
        h, b = f"model.layers.{layer}.", f"blocks.{layer}."
        p: dict[str, Any] = {}
        for theirs, ours in self.norms:
            if ours in ("ln2", "ln2_post"):
                p[b + ours + ".w"] = self.norm(h + theirs + ".weight")
        m = h + "mlp."
        if m + "gate_up_proj.weight" in get.sd:  # Phi-3: one fused projection, rows [gate | up]
            fused = get(m + "gate_up_proj.weight", (2 * d_mlp, D))  # type: ignore[operator]
            mats = {"W_gate": fused[:d_mlp], "W_in": fused[d_mlp:]}
        else:
            mats = {ours: get(m + theirs + ".weight", (d_mlp, D)) for ours, theirs in  # type: ignore[arg-type]
                    (("W_gate", "gate_proj"), ("W_in", "up_proj"))}
        mats["W_out"] = get(m + "down_proj.weight", (D, d_mlp))  # type: ignore[arg-type]
        for ours, theirs in (("W_gate", "gate_proj"), ("W_in", "up_proj"), ("W_out", "down_proj")):
            p[b + "mlp." + ours] = mats[ours]
            bias_shape = (mats[ours].shape[0],)
            p[b + "mlp." + ours.replace("W_", "b_")] = (get(m + theirs + ".bias", bias_shape) if self.mlp_bias
                                                        else self.zeros(*bias_shape))
        return p

    def final_norm(self) -> dict[str, Any]:
        return {"ln_final.w": self.norm("model.norm.weight")}

    def vocabulary_tied(self) -> bool:
        return self.vocabulary_tensors()[1] is None and not self.gemma

    def _vocabulary_tensor(self, unembed: bool) -> _Stored:
        shape = (self.config.d_vocab, self.config.d_model)
        embed, lm_head = self.vocabulary_tensors()
        t = lm_head if unembed and lm_head is not None else embed
        if t.shape() != shape:
            raise LoadError(f"{self.source}: tensor {t.key!r} has shape {t.shape()}, expected {shape}.")
        return t

    def embedding_rows(self, start: int, stop: int) -> np.ndarray:
        return self._scaled(self._vocabulary_tensor(False).rows(start, stop))

    def unembedding_rows(self, start: int, stop: int) -> np.ndarray:
        return self._vocabulary_tensor(True).rows(start, stop)  # a tied W_U is the unscaled embedding


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


class _GPTNeoReader(_GPT2Reader):
    """GPT-Neo: GPT-2's block with separate q/k/v projections (nn.Linear, no biases)."""

    buffers = _HF_NEO_BUFFERS
    linear = True

    def attention(self, layer: int, which: Collection[str] = ATTENTION_WEIGHTS) -> dict[str, Any]:
        c, get = self.config, self.get
        D, H, dh = c.d_model, c.n_heads, c.d_head
        h, b = f"h.{layer}.", f"blocks.{layer}."
        a = h + "attn.attention."
        p: dict[str, Any] = {}
        for name in ("Q", "K", "V"):  # nn.Linear (out, in): rows grouped by head; GPT-Neo has no q/k/v bias
            W = get(a + f"{name.lower()}_proj.weight", (D, D))
            p[b + "attn.W_" + name] = W.reshape(H, dh, D)
            p[b + "attn.b_" + name] = np.zeros((H, dh), dtype=W.dtype)
        W_out = get(a + "out_proj.weight", (D, D))  # (out, in): columns grouped by head
        p[b + "attn.W_O"] = W_out.reshape(D, H, dh).transpose(1, 0, 2)
        p[b + "attn.b_O"] = get(a + "out_proj.bias", (D,))
        p.update(self.layer_norm(h + "ln_1", b + "ln1"))
        return p


class _GPTNeoXReader(_GPT2Reader):
    """GPT-NeoX (Pythia): fused per-head q/k/v, an untied ``embed_out`` (no ``lm_head``)."""

    buffers = _HF_NEOX_BUFFERS
    embed_key = "gpt_neox.embed_in.weight"

    def __init__(self, config: TransformerConfig, flat: RenamedSource, lm_head: _Stored | None, tie_config: Any,
                 source: str) -> None:
        super().__init__(config, flat, None, tie_config, source)  # embed_out is the unembedding; lm_head is not read
        self.biased = not (isinstance(tie_config, Mapping) and tie_config.get("attention_bias") is False)

    def embeddings(self) -> dict[str, Any]:
        c, get = self.config, self.get
        V, D = c.d_vocab, c.d_model
        tied = _tied(self.tie_config, False)
        if tied and self.embed_key not in get.sd and "embed_out.weight" in get.sd:
            W_E = get("embed_out.weight", (V, D))  # a tied pair saved under its second name
        else:
            W_E = get(self.embed_key, (V, D))
        p: dict[str, Any] = {"W_E": W_E.T}
        if "embed_out.weight" in get.sd:
            p["W_U"] = get("embed_out.weight", (V, D))
        elif tied:
            p["W_U"] = W_E
        else:
            raise LoadError(f"{self.source}: missing tensor 'embed_out.weight' (GPT-NeoX's unembedding is not tied).")
        p["b_U"] = np.zeros(V, dtype=W_E.dtype)  # embed_out has no bias
        return p

    def attention(self, layer: int, which: Collection[str] = ATTENTION_WEIGHTS) -> dict[str, Any]:
        c, get = self.config, self.get
        D, H, dh = c.d_model, c.n_heads, c.d_head
        h, b = f"gpt_neox.layers.{layer}.", f"blocks.{layer}."
        qkv = get(h + "attention.query_key_value.weight", (3 * D, D)).reshape(H, 3, dh, D)  # per head: q, k, v rows
        qkv_b = (get(h + "attention.query_key_value.bias", (3 * D,)) if self.biased
                 else np.zeros(3 * D, dtype=qkv.dtype)).reshape(H, 3, dh)
        p: dict[str, Any] = {}
        for i, name in enumerate(("Q", "K", "V")):
            p[b + "attn.W_" + name] = qkv[:, i]
            p[b + "attn.b_" + name] = qkv_b[:, i]
        p[b + "attn.W_O"] = get(h + "attention.dense.weight", (D, D)).reshape(D, H, dh).transpose(1, 0, 2)
        p[b + "attn.b_O"] = get(h + "attention.dense.bias", (D,)) if self.biased else np.zeros(D, dtype=qkv.dtype)
        p.update(self.layer_norm(h + "input_layernorm", b + "ln1"))
        return p

    def mlp(self, layer: int) -> dict[str, Any]:
        c, get = self.config, self.get
        D, d_mlp = c.d_model, c.d_mlp
        h, b = f"gpt_neox.layers.{layer}.", f"blocks.{layer}."
        p = self.layer_norm(h + "post_attention_layernorm", b + "ln2")
        p[b + "mlp.W_in"] = get(h + "mlp.dense_h_to_4h.weight", (d_mlp, D))  # type: ignore[arg-type]
        p[b + "mlp.b_in"] = get(h + "mlp.dense_h_to_4h.bias", (d_mlp,))  # type: ignore[arg-type]
        p[b + "mlp.W_out"] = get(h + "mlp.dense_4h_to_h.weight", (D, d_mlp))  # type: ignore[arg-type]
        p[b + "mlp.b_out"] = get(h + "mlp.dense_4h_to_h.bias", (D,))
        return p

    def final_norm(self) -> dict[str, Any]:
        return self.layer_norm("gpt_neox.final_layer_norm", "ln_final")


class _GPTJReader(_GPT2Reader):
    """GPT-J: separate q/k/v projections without biases, one layer norm feeding attention and MLP,
    a biased ``lm_head``."""

    buffers = _HF_GPTJ_BUFFERS
    tied_by_default = False

    def embeddings(self) -> dict[str, Any]:
        W_E, W_U = self.tied_pair()
        return {"W_E": W_E.T, "W_U": W_U, "b_U": self.get("lm_head.bias", (self.config.d_vocab,))}  # a biased lm_head

    def attention(self, layer: int, which: Collection[str] = ATTENTION_WEIGHTS) -> dict[str, Any]:
        c, get = self.config, self.get
        D, H, dh = c.d_model, c.n_heads, c.d_head
        h, b = f"h.{layer}.", f"blocks.{layer}."
        p: dict[str, Any] = {}
        for name in ("Q", "K", "V"):
            p[b + "attn.W_" + name] = get(h + f"attn.{name.lower()}_proj.weight", (D, D)).reshape(H, dh, D)
            p[b + "attn.b_" + name] = self.zeros(H, dh)
        p[b + "attn.W_O"] = get(h + "attn.out_proj.weight", (D, D)).reshape(D, H, dh).transpose(1, 0, 2)
        p[b + "attn.b_O"] = self.zeros(D)
        p.update(self.layer_norm(h + "ln_1", b + "ln1"))  # one layer norm feeds both the attention and the MLP
        return p

    def mlp(self, layer: int) -> dict[str, Any]:
        c, get = self.config, self.get
        D, d_mlp = c.d_model, c.d_mlp
        h, b = f"h.{layer}.", f"blocks.{layer}."
        p = self.layer_norm(h + "ln_1", b + "ln2")
        p[b + "mlp.W_in"] = get(h + "mlp.fc_in.weight", (d_mlp, D))  # type: ignore[arg-type]
        p[b + "mlp.b_in"] = get(h + "mlp.fc_in.bias", (d_mlp,))  # type: ignore[arg-type]
        p[b + "mlp.W_out"] = get(h + "mlp.fc_out.weight", (D, d_mlp))  # type: ignore[arg-type]
        p[b + "mlp.b_out"] = get(h + "mlp.fc_out.bias", (D,))
        return p


def _hf_family(reader: type[_HFReader], model_type: str) -> Callable[[Mapping[str, Any], Any, str], LayoutReader]:
    def make(sd: Mapping[str, Any], config: Any, source: str) -> LayoutReader:
        c, flat, lm_head = _hf_parts(sd, config, source, model_type)
        return reader(c, flat, lm_head, config, source)
    return make


#: The state-dict layouts of the Hugging Face families: layout -> the reader of
#: ``(state dict, config, source)``.
HF_LAYOUTS: dict[str, Callable[[Mapping[str, Any], Any, str], LayoutReader]] = {
    "hf_gpt2": _hf_family(_GPT2Reader, "gpt2"), "hf_gpt_neo": _hf_family(_GPTNeoReader, "gpt_neo"),
    "hf_gpt_neox": _hf_family(_GPTNeoXReader, "gpt_neox"), "hf_gptj": _hf_family(_GPTJReader, "gptj"),
    "hf_llama": _LlamaReader,
}


def hf_reader(sd: Mapping[str, Any], layout: str, config: Any, source: str) -> LayoutReader:
    """The :class:`~circuitalg.model.statedict.LayoutReader` of a Hugging Face state dict of
    ``layout`` (one of :data:`HF_LAYOUTS`): its tensors are read part by part, when asked for."""
    return HF_LAYOUTS[layout](sd, config, source)


def convert_hf(
    sd: Mapping[str, Any], layout: str, config: Any, source: str
) -> tuple[TransformerConfig, dict[str, Any]]:
    """Convert a Hugging Face state dict of ``layout`` (one of :data:`HF_LAYOUTS`)."""
    reader = hf_reader(sd, layout, config, source)
    return reader.config, reader.read_all()
