"""Typed ids of model components, formatted and parsed in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from circuitalg.errors import InvalidArgumentError

__all__ = ["HeadId", "GroupId", "FeatureId", "layer_name", "layer_tag", "Source", "SOURCE_KINDS", "EMBED", "POS"]

_HEAD_NAME = re.compile(r"^L(\d+)H(\d+)$")


class HeadId(NamedTuple):
    """Attention head ``head`` of layer ``layer``; printed ``L{layer}H{head}`` (e.g. ``L1H2``).

    A named tuple, so it unpacks as ``l, h = head_id`` and equals ``(l, h)``.
    """

    layer: int
    head: int

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    @property
    def tag(self) -> str:
        """The LaTeX superscript of this head's maps: ``{1.2}`` (``W_Q^{1.2}``)."""
        return f"{{{self.layer}.{self.head}}}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> HeadId:
        """``"L1H2"`` -> ``HeadId(1, 2)``."""
        m = _HEAD_NAME.match(name) if isinstance(name, str) else None
        if m is None:
            raise InvalidArgumentError(f"{name!r} is not a head name; heads are named like 'L1H2' (layer 1, head 2).")
        return cls(int(m.group(1)), int(m.group(2)))


class GroupId(NamedTuple):
    """Key/value group ``group`` of layer ``layer`` under grouped-query attention (the heads of a
    group share ``W_K`` and ``W_V``); printed ``L{layer}KV{group}``, tagged ``{layer.kv group}``
    so that ``W_K^{0.kv1}`` (group 1) never reads as head 1's ``W_Q^{0.1}``."""

    layer: int
    group: int

    @property
    def name(self) -> str:
        return f"L{self.layer}KV{self.group}"

    @property
    def tag(self) -> str:
        return f"{{{self.layer}.kv{self.group}}}"

    def __str__(self) -> str:
        return self.name


class FeatureId(NamedTuple):
    """Feature ``index`` of the dictionary named ``dictionary``; printed ``{dictionary}#{index}``
    (e.g. ``res8#1234``): the one formatter of feature labels.

    A named tuple, so it unpacks as ``name, i = feature_id``.
    """

    dictionary: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.dictionary}#{self.index}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> FeatureId:
        """``"res8#1234"`` -> ``FeatureId("res8", 1234)`` (the last ``#`` separates the index)."""
        dictionary, sep, index = name.rpartition("#") if isinstance(name, str) else ("", "", "")
        if not sep or not dictionary or not index.isdigit() or not index.isascii():
            raise InvalidArgumentError(
                f"{name!r} is not a feature name; features are named like 'res8#1234' (dictionary res8, feature 1234)."
            )
        return cls(dictionary, int(index))


def layer_name(layer: int) -> str:
    """``L{layer}``: a layer in tables and figures."""
    return f"L{layer}"


def layer_tag(layer: int) -> str:
    """The LaTeX superscript of a layer's maps: ``{3}`` (``W_in^{3}``)."""
    return f"{{{layer}}}"


#: The kinds of source a path starts from (a :class:`Source`'s ``kind``).
SOURCE_KINDS = ("embed", "pos", "attn_bias", "mlp", "unembed_bias")
_LAYERED = ("attn_bias", "mlp")
_SOURCE_NAME = re.compile(r"^(embed|pos|unembed_bias)$|^(attn_bias|mlp)(\d+)$")


@dataclass(frozen=True, order=True)
class Source:
    """Where a residual-stream term comes from: the token embedding (``embed``), the positional
    embedding (``pos``), layer ``l``'s attention bias (``attn_bias``: ``b_O + Σ_h W_O^h b_V^h``),
    layer ``l``'s MLP output (``mlp``) or the unembedding bias (``unembed_bias``).
    Printed ``embed``, ``pos``, ``attn_bias{l}``, ``mlp{l}``, ``unembed_bias``."""

    kind: str
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise InvalidArgumentError(f"Source kind {self.kind!r}; use one of {SOURCE_KINDS}.")
        if (self.kind in _LAYERED) != (self.layer is not None):
            raise InvalidArgumentError(
                f"Source {self.kind!r}: {'a layer is required' if self.kind in _LAYERED else 'takes no layer'}."
            )

    @property
    def name(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}{self.layer}"

    @property
    def entry_layer(self) -> int:
        """The first layer that reads this source (0 for the embeddings)."""
        return 0 if self.layer is None else self.layer + 1

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> Source:
        """``"mlp3"`` -> ``Source("mlp", 3)``; ``"embed"`` -> ``Source("embed")``."""
        m = _SOURCE_NAME.match(name) if isinstance(name, str) else None
        if m is None:
            raise InvalidArgumentError(
                f"{name!r} is not a source name; sources are named embed, pos, attn_bias{{l}}, mlp{{l}}, unembed_bias."
            )
        return cls(m.group(1)) if m.group(1) else cls(m.group(2), int(m.group(3)))


EMBED, POS = Source("embed"), Source("pos")
