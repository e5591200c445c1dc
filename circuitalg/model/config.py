"""The configuration of a transformer: sizes and architecture choices, validated once."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from circuitalg.errors import ConfigError, InvalidArgumentError
from circuitalg.model.rotary import Rotary

__all__ = ["TransformerConfig", "NORMALIZATIONS", "ACTIVATIONS", "require_config"]

#: ``"LN"``: layer norm with weight and bias; ``"LNPre"``: layer norm whose weight and bias
#: were folded into the next weights (centre and scale only); ``"RMS"``: RMSNorm with a weight
#: (no centring, no bias); ``"RMSPre"``: RMSNorm with its weight folded (scale only);
#: ``None``: no normalisation.
NORMALIZATIONS = ("LN", "LNPre", "RMS", "RMSPre", None)
#: MLP activations the reference forward pass implements (``gelu_new`` is GPT-2's tanh form,
#: ``silu`` is SwiGLU's gate).
ACTIVATIONS = ("gelu_new", "gelu", "relu", "silu")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes and architecture of a GPT-2-style transformer.

    Parameters
    ----------
    n_layers, n_heads, d_model, d_head, d_vocab, n_ctx : int
        Sizes; ``n_ctx`` is the number of learned positions.
    d_mlp : int or None
        MLP hidden width; ``None`` for attention-only models.
    normalization : {"LN", "LNPre", "RMS", "RMSPre", None}
        Pre-norm layer norm (or RMSNorm) before each attention, MLP and the unembedding.
    act_fn : {"gelu_new", "gelu", "relu"} or None
        MLP activation: required with ``d_mlp`` (never guessed); ``None`` exactly when there is no MLP.
    attn_scale : float, optional
        Attention scores are ``q·k / attn_scale``; default ``sqrt(d_head)``.
    ln_eps : float
        Layer-norm epsilon (``1e-5`` in GPT-2).
    attn_windows : tuple of (int or None), optional
        Local (sliding-window) attention, one entry per layer: a query at position ``i`` attends
        to keys ``j`` with ``i - w < j <= i`` (GPT-Neo's local layers); ``None`` entries (and
        ``attn_windows=None``) are global causal attention.
    rotary : Rotary or dict, optional
        Rotary position embeddings (:class:`~circuitalg.model.rotary.Rotary`); ``None`` means
        learned positions ``W_pos`` (GPT-2). Rotary models have no ``W_pos``; ``n_ctx`` is then
        the context length.
    rotary_local : Rotary or dict, optional
        The rotary embedding of the sliding-window layers (those with an ``attn_windows`` entry),
        when it differs from ``rotary`` (Gemma 3: local base 10k, global base 1M with the global
        scaling); ``None``: every layer uses ``rotary``. See :meth:`layer_rotary`.
    parallel_attn_mlp : bool
        Attention and MLP read the same residual stream and add to it together (GPT-NeoX, GPT-J):
        ``x + attn(ln1(x)) + mlp(ln2(x))``.
    n_kv_heads : int, optional
        Key/value heads per layer (grouped-query attention; ``n_heads`` must be a multiple):
        query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``. ``None``: one per
        query head.
    gated_mlp : bool
        A gated MLP (SwiGLU, GeGLU): ``W_out (act(W_gate x + b_gate) * (W_in x + b_in)) + b_out``.
    d_vocab_out : int, optional
        The size of a separate output vocabulary (``W_U`` is ``d_vocab_out x d_model``; e.g. the
        answers of an algorithmic task); ``None``: the input vocabulary.
    causal : bool
        Causal attention (every query sees only earlier keys); ``False`` for bidirectional
        attention (every query sees every key).
    qk_norm : bool
        RMSNorm of queries and keys, applied (after the biases) before the rotary embedding, with
        weights ``attn.q_norm.w`` / ``attn.k_norm.w``. The typed maps fold the weights
        (``diag(w_q) W_Q``); the per-token scales are frozen like layer-norm scales
        (``Cache.q_scale``, ``Cache.k_scale``).
    qk_norm_scope : {"head", "all"}
        What a q/k norm normalises: ``"head"``, each head's ``d_head`` vector, with one weight of
        shape ``(d_head,)`` shared by the heads of a layer (Qwen3, Gemma 3); ``"all"``, the whole
        projection of all heads together (OLMo 2), with weights of shape ``(n_heads, d_head)`` and
        ``(n_kv_heads, d_head)``; its one per-token scale is cached for every head.
    pre_norms : bool
        Norms before each attention and MLP (``ln1``, ``ln2``); ``False`` for models whose
        sublayers read the raw residual stream and normalise only their outputs (OLMo 2:
        ``post_norms`` without pre-norms). The final norm is present whenever ``normalization`` is.
    post_norms : bool
        RMSNorms of each sublayer's output before it is added to the stream (Gemma 2's
        ``post_attention_layernorm`` and ``post_feedforward_layernorm``), weights ``ln1_post.w``
        and ``ln2_post.w``; the typed maps fold the weights into ``W_O`` and the MLP's writer,
        the per-token scales are frozen (``Cache.ln1_post_scale``, ``Cache.ln2_post_scale``).
    attn_softcap, final_softcap : float, optional
        Soft-capping ``c · tanh(s / c)`` of the attention scores (after scaling, before the mask)
        and of the logits (Gemma 2). The attention cap acts inside the frozen patterns; path
        terms add up to the *pre-cap* logits (``Cache.logits_precap``).
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int | None = None
    normalization: str | None = "LN"
    act_fn: str | None = None
    attn_scale: float = 0.0
    ln_eps: float = 1e-5
    attn_windows: tuple[int | None, ...] | None = None
    rotary: Rotary | None = None
    rotary_local: Rotary | None = None
    parallel_attn_mlp: bool = False
    n_kv_heads: int | None = None
    gated_mlp: bool = False
    d_vocab_out: int | None = None
    causal: bool = True
    qk_norm: bool = False
    qk_norm_scope: str = "head"
    pre_norms: bool = True
    post_norms: bool = False
    attn_softcap: float | None = None
    final_softcap: float | None = None

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx"):
            object.__setattr__(self, name, _check_size(name, getattr(self, name)))
        if self.d_mlp is not None:
            object.__setattr__(self, "d_mlp", _check_size("d_mlp", self.d_mlp))
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"config normalization={self.normalization!r} is not supported; use one of {NORMALIZATIONS}."
            )
        if self.d_mlp is None and self.act_fn is not None:
            raise ConfigError(
                f"config act_fn={self.act_fn!r} given for an attention-only model (d_mlp=None); "
                "set d_mlp or drop act_fn."
            )
        if self.d_mlp is not None:
            if self.act_fn is None:
                raise ConfigError(
                    f"config d_mlp={self.d_mlp} needs act_fn, one of {ACTIVATIONS}; circuitalg does not guess "
                    "the MLP activation (GPT-2 uses 'gelu_new')."
                )
            if self.act_fn not in ACTIVATIONS:
                raise ConfigError(
                    f"config act_fn={self.act_fn!r} is not supported; use one of {ACTIVATIONS}."
                )
        scale = self.attn_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ConfigError(f"config attn_scale={scale!r} must be a positive finite number.")
        if scale == 0:
            object.__setattr__(self, "attn_scale", math.sqrt(self.d_head))
        elif scale < 0:
            raise ConfigError(f"config attn_scale={scale!r} must be positive.")
        else:
            object.__setattr__(self, "attn_scale", float(scale))
        eps = self.ln_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < 1):
            raise ConfigError(f"config ln_eps={eps!r} must be a number in [0, 1).")
        object.__setattr__(self, "ln_eps", float(eps))
        windows = self.attn_windows
        if windows is not None:
            if isinstance(windows, (str, bytes)) or not isinstance(windows, (list, tuple)) or len(windows) != self.n_layers:
                raise ConfigError(
                    f"config attn_windows={windows!r} must list one window (a positive integer, or None for global "
                    f"attention) per layer: {self.n_layers} entries."
                )
            checked = tuple(None if w is None else _check_size("attn_windows entry", w) for w in windows)
            object.__setattr__(self, "attn_windows", None if all(w is None for w in checked) else checked)
        if self.rotary is not None:
            rotary = Rotary.from_dict(self.rotary)
            if rotary.dim > self.d_head:
                raise ConfigError(f"config rotary dim={rotary.dim} exceeds d_head={self.d_head}.")
            object.__setattr__(self, "rotary", rotary)
        if self.rotary_local is not None:
            local = Rotary.from_dict(self.rotary_local)
            if self.rotary is None or self.attn_windows is None:
                raise ConfigError(
                    "config rotary_local is the rotary embedding of the sliding-window layers: it needs rotary (the "
                    "other layers') and attn_windows (which layers slide)."
                )
            if local.dim > self.d_head:
                raise ConfigError(f"config rotary_local dim={local.dim} exceeds d_head={self.d_head}.")
            object.__setattr__(self, "rotary_local", None if local == self.rotary else local)
        for flag in ("parallel_attn_mlp", "gated_mlp", "causal", "qk_norm", "post_norms", "pre_norms"):
            object.__setattr__(self, flag, _check_flag(flag, getattr(self, flag)))
        for flag in ("parallel_attn_mlp", "gated_mlp"):
            if getattr(self, flag) and self.d_mlp is None:
                raise ConfigError(f"config {flag}=true needs MLPs (d_mlp); attention-only models have none.")
        if self.n_kv_heads is not None:
            kv = _check_size("n_kv_heads", self.n_kv_heads)
            if self.n_heads % kv:
                raise ConfigError(f"config n_heads={self.n_heads} is not a multiple of n_kv_heads={kv}.")
            object.__setattr__(self, "n_kv_heads", None if kv == self.n_heads else kv)
        if self.d_vocab_out is not None:
            out = _check_size("d_vocab_out", self.d_vocab_out)
            object.__setattr__(self, "d_vocab_out", None if out == self.d_vocab else out)
        if self.qk_norm_scope not in ("head", "all"):
            raise ConfigError(
                f"config qk_norm_scope={self.qk_norm_scope!r}; use 'head' (each head's d_head vector) or 'all' (the "
                "whole projection of all heads)."
            )
        for flag in ("qk_norm", "post_norms"):
            if getattr(self, flag) and self.normalization not in ("RMS", "RMSPre"):
                raise ConfigError(
                    f"config {flag}=true is implemented for RMSNorm models (normalization 'RMS' or 'RMSPre'), "
                    f"not normalization={self.normalization!r}."
                )
        if not self.pre_norms and self.normalization not in ("RMS", "RMSPre"):
            raise ConfigError(
                f"config pre_norms=false (sublayers without input norms) is implemented for RMSNorm models "
                f"(normalization 'RMS' or 'RMSPre'), not normalization={self.normalization!r}."
            )
        for cap in ("attn_softcap", "final_softcap"):
            v = getattr(self, cap)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    raise ConfigError(f"config {cap}={v!r} must be a positive finite number or None (no cap).")
                object.__setattr__(self, cap, float(v))
        if not self.causal and self.attn_windows is not None:
            raise ConfigError("config causal=false with attn_windows: windowed bidirectional attention is not implemented.")

    @property
    def vocab_out(self) -> int:
        """The size of the output vocabulary (``d_vocab`` unless ``d_vocab_out`` is set)."""
        return self.d_vocab if self.d_vocab_out is None else self.d_vocab_out

    @property
    def kv_heads(self) -> int:
        """Key/value heads per layer (``n_heads`` without grouped-query attention)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head that query head ``head`` reads."""
        return head // (self.n_heads // self.kv_heads)

    @property
    def centred_norm(self) -> bool:
        """True for LayerNorm (which centres), False for RMSNorm and no normalisation."""
        return self.normalization in ("LN", "LNPre")

    @property
    def learned_positions(self) -> bool:
        """True when positions enter through a learned ``W_pos`` (no rotary embedding)."""
        return self.rotary is None

    def window(self, layer: int) -> int | None:
        """The attention window of ``layer`` (``None``: global causal attention)."""
        return None if self.attn_windows is None else self.attn_windows[layer]

    def layer_rotary(self, layer: int) -> Rotary | None:
        """The rotary embedding of ``layer``: ``rotary_local`` on sliding-window layers when set,
        else ``rotary`` (``None``: learned positions)."""
        if self.rotary_local is not None and self.window(layer) is not None:
            return self.rotary_local
        return self.rotary

    @property
    def has_pre_norms(self) -> bool:
        """True when norms (with weights or folded) sit before each attention and MLP."""
        return self.normalization is not None and self.pre_norms

    @property
    def attn_only(self) -> bool:
        """True when the model has no MLPs."""
        return self.d_mlp is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict that :meth:`from_dict` reads back."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> TransformerConfig:
        """Build a config from a dict, rejecting unknown keys (``attn_only`` is accepted and checked)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a JSON object of config fields, got {type(d).__name__}.")
        d = dict(d)
        attn_only = d.pop("attn_only", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ConfigError(f"{source}: unknown config keys {unknown}; known keys are {sorted(fields)}.")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.name not in d
        )
        if missing:
            raise ConfigError(f"{source}: missing config keys {missing}.")
        try:
            cfg = cls(**d)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if attn_only is not None and bool(attn_only) != cfg.attn_only:
            raise ConfigError(
                f"{source}: attn_only={attn_only!r} contradicts d_mlp={cfg.d_mlp!r}."
            )
        return cfg


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"config {name}={value!r} must be a positive integer.")
    if not 1 <= value <= 10_000_000:
        raise ConfigError(f"config {name}={value} is outside [1, 10_000_000].")
    return int(value)


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"config {name}={value!r} must be true or false.")
    return bool(value)


def require_config(config: Any, what: str) -> TransformerConfig:
    """``config`` if it is a :class:`TransformerConfig`, else :class:`InvalidArgumentError`."""
    if not isinstance(config, TransformerConfig):
        raise InvalidArgumentError(
            f"{what} takes a ca.TransformerConfig, got {type(config).__name__}; build one with "
            "ca.TransformerConfig(n_layers=..., ...) or use model.config."
        )
    return config
