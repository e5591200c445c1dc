"""Binding a dictionary to a model: its hooks checked against the model, and its encoders and
decoders as typed maps from and to the model's residual stream.

Weight-based numbers between features are products of maps; a dictionary that reads the MLP's
input reads the residual stream through the MLP's input norm, so the norm is a map on that path:
``N = diag(w) P / s`` (``w`` the norm weight, ``P = I - 11ᵀ/d`` the centring of a LayerNorm or
the identity for RMSNorm, ``s`` the per-token scale). The scale depends on the token: it is frozen
at a value the user states (``norm_scale``, default 1, the convention of every weight-based
number in circuitalg, e.g. a head's OV map, which carries its input norm's weight but not its
scale). The norm's bias adds a constant, not a map, and is left out of weight-based numbers.

Model preprocessing the dictionary was trained under (:attr:`Dictionary.preprocessing`) is
resolved here, never assumed: under ``fold_ln`` a TransformerLens ``mlp.hook_in`` is the
normalised input *before* the weight (the weight is folded into ``W_in``), and under
``center_writing_weights`` the stream a dictionary saw is the centred ``P x``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from circuitalg.errors import ConfigError, InvalidArgumentError, ShapeError
from circuitalg.features.dictionary import Dictionary, DictionarySet
from circuitalg.features.hooks import OUTPUT_KINDS, Hook, HookKind
from circuitalg.maps.nodes import Dense
from circuitalg.model.weights import Transformer, require_model

__all__ = ["BoundDictionary", "bind", "hook_dim"]


def hook_dim(model: Transformer, hook: Hook) -> int:
    """The dimension of ``hook``'s activations in ``model``."""
    c = model.config
    if hook.kind is HookKind.ATTN_Z:
        return c.n_heads * c.d_head
    return c.d_model


@dataclass(frozen=True, eq=False)
class BoundDictionary:
    """A dictionary read into a model (build it with :func:`bind`).

    Attributes
    ----------
    dictionary : Dictionary
    model : Transformer
    norm_scale : float
        The frozen per-token scale of the norm between the residual stream and a hook read
        behind one (MLP input hooks); 1 unless stated.
    notes : tuple of str
        What binding resolved or froze, in words (printed by reports).
    post_norm_scale : float
        The frozen scale of the post-norm a decoder writes through (a dictionary whose
        ``meta["before_post_norm"]`` says it writes a block's output before the model's post-norm);
        1 unless stated.
    """

    dictionary: Dictionary
    model: Transformer
    norm_scale: float = 1.0
    notes: tuple[str, ...] = ()
    post_norm_scale: float = 1.0
    _memo: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.dictionary.name

    def _read_matrix(self, i: int) -> np.ndarray | None:
        """The matrix of the map resid -> hook ``reads[i]`` (None: the identity)."""
        d = self.dictionary
        h = d.reads[i]
        m = self.model
        c = m.config
        centred = c.normalization in ("LN", "LNPre")
        kind = h.kind
        if kind is HookKind.MLP_IN and "fold_ln" in d.preprocessing:
            kind = HookKind.MLP_NORMALIZED  # TransformerLens folded the weight into W_in
        if h.on_residual:
            if "center_writing_weights" in d.preprocessing:
                return np.eye(c.d_model) - 1.0 / c.d_model
            return None
        if kind in (HookKind.MLP_IN, HookKind.MLP_NORMALIZED):
            if not c.has_pre_norms:
                return np.eye(c.d_model)  # no input norm: the MLP reads the stream itself
            N = np.eye(c.d_model) - 1.0 / c.d_model if centred else np.eye(c.d_model)
            if kind is HookKind.MLP_IN:
                w, _ = m.stored_norm(h.layer, "ln2")  # present: checked by bind
                N = np.asarray(w, dtype=np.float64)[:, None] * N
            return N / self.norm_scale
        raise ConfigError(
            f"dictionary {d.name!r} reads {h}, which is not a linear function of the residual stream at "
            "weight level (it is an attention or MLP output): its virtual weights from earlier features "
            "run through a head's value map or an MLP, not through the stream."
        )

    def encoder_from_resid(self, i: int = 0) -> Dense:
        """``W_enc[i] N``: the residual stream -> the features (``N`` the map to hook ``reads[i]``,
        see the module docstring), one leaf."""
        key = ("enc", i)
        if key not in self._memo:
            d = self.dictionary
            enc = d.encoder(i)
            R = self._read_matrix(i)
            if R is None:
                arr, name = enc.array, enc.name
            else:
                arr = enc.array.astype(np.float64) @ R if d.dtype == np.float64 else (enc.array @ R.astype(d.dtype))
                name = f"{enc.name} N^{{{d.reads[i].layer}}}"
            self._memo[key] = Dense(arr, self.model.resid_space, d.feature_space, name)
        return self._memo[key]

    def decoder_to_resid(self, j: int = 0) -> Dense:
        """``W_dec[j]`` as a map features -> the residual stream (hooks on the stream and the
        attention/MLP outputs, which are added to it as they are)."""
        key = ("dec", j)
        if key not in self._memo:
            d = self.dictionary
            h = d.writes[j]
            if not (h.on_residual or h.kind in OUTPUT_KINDS):
                raise ConfigError(
                    f"dictionary {d.name!r} writes {h}, which is not added to the residual stream; only "
                    "decoders into the stream or into an attention/MLP output have virtual weights through it."
                )
            dec = d.decoder(j)
            arr, name = dec.array, dec.name
            if d.meta.get("before_post_norm") and h.kind in OUTPUT_KINDS and self.model.config.post_norms:
                # the decoder writes the block's output before its post-norm (circuit-tracer's
                # mlp.hook_out, sparsify's module outputs): the stream receives diag(w) out / s
                norm = "ln2_post" if h.kind is HookKind.MLP_OUT else "ln1_post"
                w = np.asarray(self.model.stored_norm(h.layer, norm)[0], dtype=arr.dtype)
                arr = w[:, None] * arr / arr.dtype.type(self.post_norm_scale)
                name = f"G^{{{h.layer}}} {name}"
            self._memo[key] = Dense(arr, d.feature_space, self.model.resid_space, name)
        return self._memo[key]

    def read_depth(self, i: int = 0) -> float:
        """Where ``reads[i]`` sits along the stream (see :attr:`Hook.depth`)."""
        return self.dictionary.reads[i].depth

    def write_depth(self, j: int = 0) -> float:
        """Where ``writes[j]`` sits along the stream."""
        return self.dictionary.writes[j].depth

    def __repr__(self) -> str:
        return f"BoundDictionary({self.dictionary!r} on {self.model.name}, norm_scale={self.norm_scale:g})"


def _check(d: Dictionary, model: Transformer) -> tuple[str, ...]:
    c = model.config
    notes = []
    for role, hooks, dims in (("reads", d.reads, d.d_in), ("writes", d.writes, d.d_out)):
        for h, dim in zip(hooks, dims):
            if h.layer >= c.n_layers:
                raise ConfigError(
                    f"dictionary {d.name!r} {role} {h}, but {model.name} has {c.n_layers} layers (0..{c.n_layers - 1}); "
                    "is it a dictionary for another model?"
                )
            want = hook_dim(model, h)
            if dim != want:
                raise ShapeError(
                    f"dictionary {d.name!r} {role} {h} with {dim} dims, but {model.name}'s {h.kind.name} has {want} "
                    f"(d_model={c.d_model}); is it a dictionary for another model?"
                )
            if h.kind in (HookKind.MLP_IN, HookKind.MLP_NORMALIZED, HookKind.MLP_OUT) and c.d_mlp is None:
                raise ConfigError(f"dictionary {d.name!r} {role} {h}, but {model.name} is attention-only.")
    if "center_writing_weights" in d.preprocessing:
        if c.normalization not in ("LN", "LNPre"):
            raise ConfigError(
                f"dictionary {d.name!r} was trained with center_writing_weights, which TransformerLens applies only "
                f"behind LayerNorm; {model.name} has normalization={c.normalization!r}. Is it for another model?"
            )
        notes.append("reads the centred residual stream P x (trained with center_writing_weights)")
    for h in d.reads:
        if h.kind is not HookKind.MLP_IN or not c.has_pre_norms:
            continue
        if "fold_ln" in d.preprocessing:
            notes.append(f"{h} under fold_ln: reads the normalised MLP input before ln2's weight")
        elif model.stored_norm(h.layer, "ln2")[0] is None:
            raise ConfigError(
                f"dictionary {d.name!r} reads {h} (the MLP input after ln2's weight), but {model.name} has its "
                f"norms folded (normalization={c.normalization!r}): the weight is inside W_in and cannot be "
                "separated again. Bind the dictionary to the unfolded model (ca.load(path) without fold=True)."
            )
        else:
            notes.append(f"{h}: reads the MLP input after ln2's weight")
    if d.meta.get("before_post_norm") and c.post_norms and any(h.kind in OUTPUT_KINDS for h in d.writes):
        notes.append("writes before the post-norm: decoders pass through its weight G = diag(w) / s")
    return tuple(notes)


def bind(d: Dictionary | DictionarySet, model: Any, *, norm_scale: float = 1.0, post_norm_scale: float = 1.0) -> Any:
    """Read ``d`` into ``model``: check its hooks (layer, dimension, preprocessing) and return a
    :class:`BoundDictionary` (a tuple of them for a :class:`DictionarySet`).

    Parameters
    ----------
    d : Dictionary or DictionarySet
    model : Transformer
    norm_scale : float
        The frozen scale of the norm before any hook read behind one (see the module docstring).
    post_norm_scale : float
        The frozen scale of the post-norm after a decoder that writes before it (post-norm
        models such as Gemma 2; see :class:`BoundDictionary`).

    Raises
    ------
    ShapeError
        A hook's dimension differs from the model's.
    ConfigError
        A hook or a recorded preprocessing step does not fit the model (the message says what to do).
    """
    model = require_model(model, "bind")
    s, g = float(norm_scale), float(post_norm_scale)
    for label, v, given in (("norm_scale", s, norm_scale), ("post_norm_scale", g, post_norm_scale)):
        if not np.isfinite(v) or v <= 0:
            raise InvalidArgumentError(f"bind: {label} must be a positive finite number, got {given!r}.")
    if isinstance(d, DictionarySet):
        return tuple(bind(m, model, norm_scale=s, post_norm_scale=g) for m in d)
    if not isinstance(d, Dictionary):
        raise InvalidArgumentError(f"bind takes a Dictionary or DictionarySet, got {type(d).__name__}.")
    notes = _check(d, model)
    if s != 1.0:
        notes = notes + (f"norm scale frozen at {s:g}",)
    if g != 1.0:
        notes = notes + (f"post-norm scale frozen at {g:g}",)
    return BoundDictionary(d, model, s, notes, g)

