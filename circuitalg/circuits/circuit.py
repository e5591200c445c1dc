"""One circuit type for paths, search, graph and report, and the one generator of head chains.

A :class:`Circuit` is a source (:class:`~circuitalg.model.ids.Source`), a chain of heads in
strictly increasing layers and a :class:`Sink`:

- ``Sink("unembed")``: the OV circuit ``W_U W_OV^hk ... W_OV^h1 S`` (vocab x source); with
  every source and chain these are the terms of the path expansion;
- ``Sink("k", head, other)``: the QK term ``S_otherᵀ W_QK^head P`` whose key side is the chain
  ``P = W_OV^hk ... W_OV^h1 S`` and whose query side is the bare source ``other``;
- ``Sink("q", head, other)``: ``Pᵀ W_QK^head S_other``, the chain on the query side.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

from circuitalg.circuits.diagnostics import TopTokens, top_tokens
from circuitalg.errors import InvalidArgumentError
from circuitalg.maps.nodes import LinearMap
from circuitalg.model.ids import HeadId, Source
from circuitalg.model.weights import Transformer

__all__ = ["Circuit", "Sink", "SINK_SIDES", "UNEMBED", "head_chains", "count_head_chains"]

#: Where a circuit can end: the unembedding, or the query or key side of a head's QK circuit.
SINK_SIDES = ("unembed", "q", "k")


@dataclasses.dataclass(frozen=True)
class Sink:
    """Where a circuit ends (see the module docstring).

    Attributes
    ----------
    side : {"unembed", "q", "k"}
    head : HeadId or None
        The head whose QK circuit the chain enters (None for the unembedding).
    other : Source or None
        The bare source on the other side of the QK term.
    """

    side: str
    head: HeadId | None = None
    other: Source | None = None

    def __post_init__(self) -> None:
        if self.side not in SINK_SIDES:
            raise InvalidArgumentError(f"Sink side {self.side!r}; use one of {SINK_SIDES}.")
        if (self.side == "unembed") != (self.head is None and self.other is None):
            raise InvalidArgumentError("Sink: a QK sink ('q' or 'k') needs head and other; 'unembed' takes neither.")

    @property
    def name(self) -> str:
        """``unembed`` or ``L1H2.k (query: embed)``."""
        if self.head is None:
            return "unembed"
        side = "query" if self.side == "k" else "key"
        return f"{self.head.name}.{self.side} ({side}: {self.other.name})"  # type: ignore[union-attr]


UNEMBED = Sink("unembed")


@dataclasses.dataclass(frozen=True)
class Circuit:
    """A source, a chain of heads in strictly increasing layers, and a sink.

    Attributes
    ----------
    source : Source
    heads : tuple of HeadId
        The chain, first head first.
    sink : Sink
    model : Transformer
        The model whose weights :attr:`weight` uses (its view: norm weights included).
    score : float
        The Frobenius norm of :attr:`weight` where a search computed it; NaN otherwise.
    """

    source: Source
    heads: tuple[HeadId, ...]
    sink: Sink
    model: Transformer = dataclasses.field(repr=False, compare=False, hash=False)
    score: float = dataclasses.field(default=math.nan, compare=False)

    @property
    def n_heads(self) -> int:
        """Heads in the circuit, a QK sink head included."""
        return len(self.heads) + (self.sink.head is not None)

    @property
    def name(self) -> str:
        """e.g. ``embed -> L0H1 -> L1H2.k (query: embed)`` or ``embed -> L0H3 -> unembed``."""
        return " -> ".join([self.source.name, *(h.name for h in self.heads), self.sink.name])

    def path(self) -> LinearMap:
        """The chain ``W_OV^hk ... W_OV^h1 S`` (resid x source), a lazy typed map."""
        m = self.model.source_map(self.source)
        for l, h in self.heads:
            m = self.model.head(l, h).ov @ m
        return m

    @property
    def weight(self) -> LinearMap:
        """The virtual weight, a lazy typed map (never materialised)."""
        if self.source.kind == "unembed_bias":
            return self.model.unembed_bias_map
        P = self.path()
        if self.sink.head is None:
            return self.model.W_U @ P
        qk = self.model.head(*self.sink.head).qk
        other = self.model.source_map(self.sink.other)  # type: ignore[arg-type]
        return other.T @ qk @ P if self.sink.side == "k" else P.T @ qk @ other

    @property
    def symbol(self) -> Any:
        """The sympy twin of :attr:`weight`."""
        return self.weight.symbol

    @property
    def roles(self) -> tuple[str, str]:
        """What the rows and columns of :attr:`weight` index: ``("query", "key")`` for QK
        circuits, ``("output", "input")`` for OV circuits into the unembedding."""
        return ("output", "input") if self.sink.head is None else ("query", "key")

    def top_tokens(self, k: int = 10, *, by: str = "value", max_rows: int | None = None) -> TopTokens:
        """The ``k`` largest entries of :attr:`weight`, labelled by role (query/key or
        output/input) with the model's tokens, token ids or positions; position pairs of a QK
        circuit are restricted to key <= query, and inside the window of a local layer
        (:func:`~circuitalg.circuits.diagnostics.top_tokens`)."""
        # a bare position-to-position QK term of a local layer: only pairs inside its window occur
        both_pos = self.sink.head is not None and self.source.kind == self.sink.other.kind == "pos"  # type: ignore[union-attr]
        causal = self.model.config.causal if both_pos else None
        bare = both_pos and not self.heads and causal
        window = self.model.config.window(self.sink.head.layer) if bare else None  # type: ignore[union-attr]
        return top_tokens(self.weight, k, vocab=self.model.vocab, by=by, roles=self.roles, causal=causal,
                          window=window, max_rows=max_rows)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record."""
        return {
            "name": self.name, "source": self.source.name, "heads": [h.name for h in self.heads],
            "sink": self.sink.side, "sink_head": None if self.sink.head is None else self.sink.head.name,
            "other_source": None if self.sink.other is None else self.sink.other.name,
            "score": self.score, "n_heads": self.n_heads,
        }

    def __str__(self) -> str:
        return self.name if math.isnan(self.score) else f"{self.name}  ||.||_F = {self.score:.6g}"


def head_chains(n_layers: int, n_heads: int, length: int, first_layer: int = 0) -> Iterator[tuple[HeadId, ...]]:
    """Every chain of ``length`` heads in strictly increasing layers from ``first_layer`` on,
    in lexicographic order (the empty chain for ``length`` 0)."""

    def rec(prefix: tuple[HeadId, ...], start: int) -> Iterator[tuple[HeadId, ...]]:
        if len(prefix) == length:
            yield prefix
            return
        for l in range(start, n_layers - (length - len(prefix)) + 1):
            for h in range(n_heads):
                yield from rec(prefix + (HeadId(l, h),), l + 1)

    if length >= 0:
        yield from rec((), first_layer)


def count_head_chains(n_layers: int, n_heads: int, length: int, first_layer: int = 0) -> int:
    """How many chains :func:`head_chains` yields: ``C(free layers, length) * n_heads**length``."""
    free = max(n_layers - first_layer, 0)
    return math.comb(free, length) * n_heads**length if length >= 0 else 0
