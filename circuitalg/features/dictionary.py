"""Sparse dictionaries as typed objects: a feature space, the hooks read and written, encoder and
decoder maps, biases and the activation exactly as the dictionary's library applies it.

Kinds (:class:`DictionaryKind`): sparse autoencoders (read and write one hook), per-layer
transcoders (MLP input -> MLP output, optionally with a linear skip map), cross-layer
transcoders (a :class:`DictionarySet` of per-layer members, member ``l`` reading layer ``l`` and
writing every layer ``>= l``) and crosscoders (one feature space reading and writing several
hooks). Weights are held in the column convention of every map in circuitalg: ``W_enc[i]`` is
``(F, d_i)`` (hook ``reads[i]`` -> features), ``W_dec[j]`` is ``(d_j, F)`` (features -> hook
``writes[j]``); libraries store ``W_enc (d, F)`` and ``W_dec (F, d)`` row-wise, and loaders
transpose at the door. Activations are rows ``(n_tokens, d)``, as the libraries hold them.

The forward computation (:meth:`Dictionary.forward`)::

    pre  = sum_i W_enc[i] (x_i - [b_dec[i] if pre_shift]) + b_enc
    f    = activation(pre)
    out_j = W_dec[j] f + b_dec[j]  (+ W_skip x_0 + b_skip for a skip transcoder's output)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, ShapeError
from circuitalg.features.activations import Activation
from circuitalg.features.hooks import Hook
from circuitalg.maps.nodes import Dense, as_float_array
from circuitalg.spaces import Space

__all__ = ["DictionaryKind", "Dictionary", "DictionarySet", "PREPROCESSING"]


class DictionaryKind(enum.Enum):
    """What a dictionary reconstructs."""

    SAE = "sae"
    TRANSCODER = "transcoder"
    SKIP_TRANSCODER = "skip_transcoder"
    CROSS_LAYER_TRANSCODER = "cross_layer_transcoder"
    CROSSCODER = "crosscoder"


#: model preprocessing a dictionary may have been trained under (TransformerLens
#: ``from_pretrained`` options), recorded from its files and resolved when it is bound to a model
PREPROCESSING = frozenset({"fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"})


#: the names of a model's own spaces, which a feature space must not take
_RESERVED = frozenset({"resid", "vocab", "vocab_out", "pos"})
_MODEL_SPACE = re.compile(r"^(L\d+H\d+|L\d+KV\d+|mlp\d+|(mlp_in|ln2_normalized|mlp_out|attn_out|z)\.\d+)$")


def _array_tuple(value: Any, what: str, ndim: int, dtype: Any) -> tuple[np.ndarray, ...]:
    items = [value] if isinstance(value, np.ndarray) else list(value)
    return tuple(as_float_array(v, f"{what}[{i}]", ndim=ndim, dtype=dtype) for i, v in enumerate(items))


@dataclass(frozen=True, eq=False)
class Dictionary:
    """A sparse dictionary with ``F`` features (see the module docstring for the computation).

    Parameters
    ----------
    name : str
        A label; the feature space is ``Space(name, F)`` and feature ``i`` prints as ``name#i``.
    kind : DictionaryKind
    reads, writes : tuple of Hook
        The hooks encoded from and decoded to, in the order of ``W_enc`` and ``W_dec``.
    W_enc : sequence of (F, d_i) arrays
        One encoder per read hook; their outputs add.
    b_enc : (F,) array
    W_dec : sequence of (d_j, F) arrays
        One decoder per written hook.
    b_dec : sequence of (d_j,) arrays
    activation : Activation
    pre_shift : bool
        Subtract ``b_dec`` from the input before encoding (SAELens ``apply_b_dec_to_input``);
        needs ``reads == writes``.
    W_skip : (d_out, d_in) array, optional
        A skip transcoder's linear map from the (single) read hook to the (single) written one.
    b_skip : (d_out,) array, optional
        Its bias, if the format has one.
    preprocessing : frozenset of str
        The model preprocessing the dictionary was trained under (a subset of
        :data:`PREPROCESSING`); binding to a model resolves it.
    dtype : numpy dtype
        float64 (default) or float32: every array is converted to it.
    meta : mapping
        The format's own configuration, as read (for writers and the user; never consulted by
        a computation).
    """

    name: str
    kind: DictionaryKind
    reads: tuple[Hook, ...]
    writes: tuple[Hook, ...]
    W_enc: tuple[np.ndarray, ...]
    b_enc: np.ndarray
    W_dec: tuple[np.ndarray, ...]
    b_dec: tuple[np.ndarray, ...]
    activation: Activation
    pre_shift: bool = False
    W_skip: np.ndarray | None = None
    b_skip: np.ndarray | None = None
    preprocessing: frozenset[str] = frozenset()
    dtype: Any = np.float64
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"Dictionary name must be a non-empty string, got {name!r}.")
        what = f"dictionary {name!r}"
        if name in _RESERVED or _MODEL_SPACE.match(name):
            raise InvalidArgumentError(
                f"{what}: the name is a model space's name ({name!r}); feature spaces are named after their "
                "dictionary, so give it another name (e.g. 'res8' or 'tc3')."
            )
        if not isinstance(self.kind, DictionaryKind):
            raise InvalidArgumentError(f"{what}: kind must be a DictionaryKind, got {self.kind!r}.")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype not in (np.float32, np.float64):
            raise InvalidArgumentError(f"{what}: dtype must be numpy.float32 or numpy.float64, got {self.dtype!r}.")
        set_ = object.__setattr__
        set_(self, "dtype", dtype)
        for role in ("reads", "writes"):
            hooks = tuple(getattr(self, role))
            if not hooks or not all(isinstance(h, Hook) for h in hooks):
                raise InvalidArgumentError(f"{what}: {role} must be a non-empty sequence of Hook, got {hooks!r}.")
            if len(set(hooks)) != len(hooks):
                raise InvalidArgumentError(f"{what}: {role} lists a hook twice: {[str(h) for h in hooks]}.")
            set_(self, role, hooks)
        if not isinstance(self.activation, Activation):
            raise InvalidArgumentError(f"{what}: activation must be a circuitalg.features Activation, got {self.activation!r}.")
        W_enc = _array_tuple(self.W_enc, f"{what} W_enc", 2, dtype)
        W_dec = _array_tuple(self.W_dec, f"{what} W_dec", 2, dtype)
        b_dec = _array_tuple(self.b_dec, f"{what} b_dec", 1, dtype)
        b_enc = as_float_array(self.b_enc, f"{what} b_enc", ndim=1, dtype=dtype)
        if len(W_enc) != len(self.reads):
            raise ShapeError(f"{what}: {len(W_enc)} encoders for {len(self.reads)} read hooks; give one W_enc per hook.")
        if len(W_dec) != len(self.writes) or len(b_dec) != len(self.writes):
            raise ShapeError(
                f"{what}: {len(W_dec)} decoders and {len(b_dec)} decoder biases for {len(self.writes)} written "
                "hooks; give one W_dec and one b_dec per hook."
            )
        F = b_enc.shape[0]
        for i, (h, W) in enumerate(zip(self.reads, W_enc)):
            if W.shape[0] != F:
                raise ShapeError(
                    f"{what}: W_enc[{i}] ({h}) has shape {W.shape}, expected ({F}, d) in the column convention "
                    "(features x hook); a library's (d, F) encoder is its transpose."
                )
        for j, (h, W, b) in enumerate(zip(self.writes, W_dec, b_dec)):
            if W.shape[1] != F or b.shape != (W.shape[0],):
                raise ShapeError(
                    f"{what}: W_dec[{j}] ({h}) has shape {W.shape} and b_dec[{j}] {b.shape}; expected (d, {F}) "
                    "and (d,) in the column convention (a library's (F, d) decoder is its transpose)."
                )
        self.activation.check(F, what)
        if self.pre_shift:
            if self.reads != self.writes:
                raise InvalidArgumentError(
                    f"{what}: pre_shift subtracts b_dec from the input, so it needs reads == writes "
                    f"(got reads {[str(h) for h in self.reads]}, writes {[str(h) for h in self.writes]})."
                )
            for i, (We, b) in enumerate(zip(W_enc, b_dec)):
                if We.shape[1] != b.shape[0]:
                    raise ShapeError(f"{what}: W_enc[{i}] reads {We.shape[1]} dims but b_dec[{i}] has {b.shape[0]}.")
        W_skip = self.W_skip
        if W_skip is not None:
            if len(self.reads) != 1 or len(self.writes) != 1:
                raise InvalidArgumentError(f"{what}: a skip map needs exactly one read and one written hook.")
            W_skip = as_float_array(W_skip, f"{what} W_skip", ndim=2, dtype=dtype)
            if W_skip.shape != (W_dec[0].shape[0], W_enc[0].shape[1]):
                raise ShapeError(
                    f"{what}: W_skip has shape {W_skip.shape}, expected (d_out, d_in) = "
                    f"{(W_dec[0].shape[0], W_enc[0].shape[1])} in the column convention."
                )
        b_skip = self.b_skip
        if b_skip is not None:
            if W_skip is None:
                raise InvalidArgumentError(f"{what}: b_skip given without W_skip.")
            b_skip = as_float_array(b_skip, f"{what} b_skip", ndim=1, dtype=dtype)
            if b_skip.shape != (W_skip.shape[0],):
                raise ShapeError(f"{what}: b_skip has shape {b_skip.shape}, expected ({W_skip.shape[0]},).")
        unknown = set(self.preprocessing) - PREPROCESSING
        if unknown:
            raise InvalidArgumentError(f"{what}: unknown preprocessing {sorted(unknown)}; known: {sorted(PREPROCESSING)}.")
        set_(self, "preprocessing", frozenset(self.preprocessing))
        set_(self, "W_enc", W_enc)
        set_(self, "W_dec", W_dec)
        set_(self, "b_dec", b_dec)
        set_(self, "b_enc", b_enc)
        set_(self, "W_skip", W_skip)
        set_(self, "b_skip", b_skip)
        set_(self, "meta", dict(self.meta))

    # -- sizes and spaces -------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        """``F``."""
        return int(self.b_enc.shape[0])

    @property
    def d_in(self) -> tuple[int, ...]:
        """The dimension of each read hook."""
        return tuple(int(W.shape[1]) for W in self.W_enc)

    @property
    def d_out(self) -> tuple[int, ...]:
        """The dimension of each written hook."""
        return tuple(int(W.shape[0]) for W in self.W_dec)

    @property
    def feature_space(self) -> Space:
        """``Space(name, F)``."""
        return Space(self.name, self.n_features)

    def encoder(self, i: int = 0) -> Dense:
        """The typed map ``W_enc[i]``: hook ``reads[i]``'s space -> the feature space."""
        h = self.reads[self._index(i, self.reads, "read")]
        W = self.W_enc[i]
        return Dense(W, h.space(W.shape[1]), self.feature_space, f"W_enc^{{{self.name}}}" + self._suffix(i, self.reads))

    def decoder(self, j: int = 0) -> Dense:
        """The typed map ``W_dec[j]``: the feature space -> hook ``writes[j]``'s space."""
        h = self.writes[self._index(j, self.writes, "written")]
        W = self.W_dec[j]
        return Dense(W, self.feature_space, h.space(W.shape[0]), f"W_dec^{{{self.name}}}" + self._suffix(j, self.writes))

    @staticmethod
    def _suffix(i: int, hooks: tuple[Hook, ...]) -> str:
        return "" if len(hooks) == 1 else f"_{{{hooks[i].layer}}}"

    def _index(self, i: Any, hooks: tuple[Hook, ...], role: str) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(hooks):
            raise InvalidArgumentError(
                f"dictionary {self.name!r}: {role} hook index {i!r} out of range 0..{len(hooks) - 1} "
                f"({[str(h) for h in hooks]})."
            )
        return int(i)

    # -- the computation ------------------------------------------------------------------
    def _inputs(self, x: Any) -> list[np.ndarray]:
        xs = [x] if len(self.reads) == 1 and not (isinstance(x, (list, tuple)) and len(x) == 1) else list(x)
        if len(self.reads) == 1 and isinstance(x, (list, tuple)) and len(x) == 1:
            xs = [x[0]]
        if len(xs) != len(self.reads):
            raise ShapeError(
                f"dictionary {self.name!r} reads {len(self.reads)} hooks ({[str(h) for h in self.reads]}); "
                f"pass one (n, d) array per hook, got {len(xs)}."
            )
        out = []
        n = None
        for i, (h, v, W) in enumerate(zip(self.reads, xs, self.W_enc)):
            a = np.asarray(v)
            if a.ndim != 2 or a.shape[1] != W.shape[1] or a.dtype.kind != "f":
                raise ShapeError(
                    f"dictionary {self.name!r}: input for {h} has {a.dtype} shape {a.shape}, expected "
                    f"(n_tokens, {W.shape[1]}) floats."
                )
            if n is not None and a.shape[0] != n:
                raise ShapeError(f"dictionary {self.name!r}: inputs have {n} and {a.shape[0]} rows; give each hook the same tokens.")
            n = a.shape[0]
            out.append(a.astype(self.dtype, copy=False))
        return out

    def pre_activations(self, x: Any) -> np.ndarray:
        """``sum_i (x_i - [b_dec_i]) W_enc[i]ᵀ + b_enc``: ``(n, F)``."""
        xs = self._inputs(x)
        pre = None
        for i, (a, W) in enumerate(zip(xs, self.W_enc)):
            if self.pre_shift:
                a = a - self.b_dec[i]
            term = a @ W.T
            pre = term if pre is None else pre + term
        return pre + self.b_enc  # type: ignore[operator]

    def encode(self, x: Any) -> np.ndarray:
        """The feature activations ``activation(pre)``: ``(n, F)``."""
        return self.activation(self.pre_activations(x))

    def decode(self, f: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        """``f W_dec[j]ᵀ + b_dec[j]`` for each written hook (an array when there is one)."""
        a = np.asarray(f)
        if a.ndim != 2 or a.shape[1] != self.n_features or a.dtype.kind != "f":
            raise ShapeError(
                f"dictionary {self.name!r}: feature activations have {a.dtype} shape {a.shape}, expected "
                f"(n_tokens, {self.n_features}) floats."
            )
        a = a.astype(self.dtype, copy=False)
        outs = tuple(a @ W.T + b for W, b in zip(self.W_dec, self.b_dec))
        return outs[0] if len(outs) == 1 else outs

    def forward(self, x: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        """The reconstruction (or the transcoder's output): decode(encode(x)), plus the skip map."""
        out = self.decode(self.encode(x))
        if self.W_skip is not None:
            (x0,) = self._inputs(x)
            out = out + x0 @ self.W_skip.T  # type: ignore[operator]
            if self.b_skip is not None:
                out = out + self.b_skip
        return out

    def __repr__(self) -> str:
        reads = ", ".join(str(h) for h in self.reads)
        writes = ", ".join(str(h) for h in self.writes)
        return (
            f"Dictionary({self.name!r}, {self.kind.value}, F={self.n_features}, reads [{reads}], writes [{writes}], "
            f"{type(self.activation).__name__}, {self.dtype.name})"
        )


@dataclass(frozen=True, eq=False)
class DictionarySet:
    """Dictionaries that act together: a cross-layer transcoder (member ``l`` reads layer ``l``
    and writes layers ``l..n-1``) or a set of per-layer transcoders replacing every MLP.

    Parameters
    ----------
    name : str
    members : sequence of Dictionary
        Ordered by the layer each reads; their names must differ.
    meta : mapping
        The format's configuration.
    """

    name: str
    members: tuple[Dictionary, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        members = tuple(self.members)
        if not members or not all(isinstance(m, Dictionary) for m in members):
            raise InvalidArgumentError(f"DictionarySet {self.name!r}: members must be a non-empty sequence of Dictionary.")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"DictionarySet {self.name!r}: member names repeat: {names}.")
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "meta", dict(self.meta))

    def __iter__(self):  # noqa: ANN204 - an iterator of members
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> Dictionary:
        return self.members[i]

    @property
    def kind(self) -> DictionaryKind:
        """The members' kind (all the same, or CROSSCODER when mixed)."""
        kinds = {m.kind for m in self.members}
        return kinds.pop() if len(kinds) == 1 else DictionaryKind.CROSSCODER

    def __repr__(self) -> str:
        return f"DictionarySet({self.name!r}, {len(self.members)} members, {self.kind.value})"

