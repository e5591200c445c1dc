"""One circuit type for paths, search, graph and report, and the one generator of head chains.

A :class:`Circuit` is a source (:class:`~circuitalg.model.ids.Source`), a chain of heads in
strictly increasing layers and a :class:`Sink`:

- ``Sink("unembed")``: the OV circuit ``W_U W_OV^hk ... W_OV^h1 S`` (vocab x source); with
  every source and chain these are the terms of the path expansion;
- ``Sink("k", head, other)``: the QK term ``S_otherᵀ W_QK^head P`` whose key side is the chain
  ``P = W_OV^hk ... W_OV^h1 S`` and whose query side is the bare source ``other``;
- ``Sink("q", head, other)``: ``Pᵀ W_QK^head S_other``, the chain on the query side;
- ``Sink("feature", feature=t)``: the encoder row of feature ``t`` of a bound dictionary,
  ``e_t P`` (a scalar when the source is a feature too).

Features (:class:`~circuitalg.model.ids.FeatureId`) of dictionaries bound to the model
(:func:`circuitalg.features.binding.bind`) are sources, sinks and the bare side of QK sinks
through their residual-stream vectors (:class:`FeatureVectors`): a feature writes its decoder
column ``d_s`` at its written hook's depth and reads with its encoder row ``e_t`` (binding's
norm map included for MLP-input reads) at its read hook's depth (:attr:`Hook.depth`). A
component that reads at depth ``r`` (a head of layer ``l``: ``r = l``; an MLP: ``l + 0.5``; the
unembedding: ``n_layers``) sees a decoder written at depth ``b <= r``: a dictionary at
``blocks.l.hook_resid_pre`` writes the stream that layer ``l``'s heads read. A feature's encoder
reading at depth ``a`` sees writers at depth ``< a`` (a head of layer ``l`` writes at
``l + 0.25``, an MLP at ``l + 0.75``, the embeddings before everything), and a decoder at
depth ``b < a``: two dictionaries at one hook have no virtual weight between them. A
dictionary with several written (read) hooks contributes the sum of the columns (rows) the
other end sees: ``Σ_{i,j: b_j < a_i} e_i d_j`` between two features. In a parallel block
(``parallel_attn_mlp``) the MLP reads the stream its attention reads, so an MLP-input hook
reads at depth ``l + 0.1``, before the attention's output (as in
:mod:`circuitalg.features.circuits`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from circuitalg.circuits.diagnostics import TopTokens, top_tokens
from circuitalg.errors import InvalidArgumentError
from circuitalg.maps.nodes import Dense, LinearMap
from circuitalg.features.binding import BoundDictionary
from circuitalg.model.ids import FeatureId, HeadId, Source
from circuitalg.model.weights import Transformer
from circuitalg.spaces import Space

__all__ = [
    "Circuit", "Sink", "SINK_SIDES", "UNEMBED", "FEATURE_SIDE", "FeatureVectors", "bound_dictionaries", "feature_vectors",
    "as_feature_id",
    "head_chains", "count_head_chains",
]

#: Where a circuit can end: the unembedding, or the query or key side of a head's QK circuit.
SINK_SIDES = ("unembed", "q", "k")
#: The side of a :class:`Sink` at a feature's encoder row.
FEATURE_SIDE = "feature"


def bound_dictionaries(model: Transformer, dictionaries: Any, where: str) -> dict[str, Any]:
    """``{name: BoundDictionary}`` of ``dictionaries`` (bound dictionaries, or the tuples
    :func:`~circuitalg.features.binding.bind` returns for a dictionary set), each bound to
    ``model``; names must differ. ``where`` names the caller in error messages."""
    if dictionaries is None:
        return {}
    if isinstance(dictionaries, BoundDictionary):
        dictionaries = [dictionaries]
    out: dict[str, Any] = {}

    def add(b: Any) -> None:
        if isinstance(b, (tuple, list)):
            for x in b:
                add(x)
            return
        if not isinstance(b, BoundDictionary):
            raise InvalidArgumentError(
                f"{where}: dictionaries must be bound dictionaries (ca.features.bind(dictionary, model)), "
                f"got {type(b).__name__}."
            )
        if b.model is not model:
            raise InvalidArgumentError(
                f"{where}: dictionary {b.name!r} is bound to {b.model.name}, not to the model given ({model.name}); "
                "bind it to this model with ca.features.bind(dictionary, model)."
            )
        if b.name in out:
            raise InvalidArgumentError(f"{where}: two dictionaries are named {b.name!r}; feature ids need distinct names.")
        out[b.name] = b

    try:
        items = list(dictionaries)
    except TypeError:
        raise InvalidArgumentError(
            f"{where}: dictionaries must be a sequence of bound dictionaries, got {type(dictionaries).__name__}."
        ) from None
    for b in items:
        add(b)
    return out


def _depth_tag(x: float) -> str:
    return f"{x:g}"


class FeatureVectors:
    """One feature's vectors in the residual stream (float64): the decoder column it writes at
    each written hook's depth, and the encoder row (through binding's read map) it reads with at
    each read hook's depth. See the module docstring for which depths see which.

    Parameters
    ----------
    bound : BoundDictionary
    index : int
        The feature, ``0 <= index < n_features``.
    """

    def __init__(self, bound: Any, index: Any) -> None:
        d = bound.dictionary
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < d.n_features:
            raise InvalidArgumentError(
                f"feature index {index!r} of dictionary {d.name!r} is out of range 0..{d.n_features - 1}."
            )
        index = int(index)
        self.id = FeatureId(d.name, index)
        self.resid: Space = bound.model.resid_space
        self.space = Space(self.id.name, 1)
        self.writes = tuple(
            (bound.write_depth(j), np.asarray(bound.decoder_to_resid(j).array[:, index], dtype=np.float64))
            for j in range(len(d.writes))
        )
        parallel = bound.model.config.parallel_attn_mlp
        self.reads = tuple(
            (h.layer + 0.1 if parallel and h.kind.name in ("MLP_IN", "MLP_NORMALIZED") else bound.read_depth(i),
             np.asarray(bound.encoder_from_resid(i).array[index], dtype=np.float64))
            for i, h in enumerate(d.reads)
        )
        self.hooks = (tuple(h.hook_name for h in d.reads), tuple(h.hook_name for h in d.writes))
        self._maps: dict[tuple[Any, ...], Dense] = {}  # one leaf per subset of hooks, shared by every edge

    @property
    def write_depth(self) -> float:
        """The first depth it writes at."""
        return min(b for b, _ in self.writes)

    @property
    def read_depth(self) -> float:
        """The last depth it reads at."""
        return max(a for a, _ in self.reads)

    def written(self, depth: float, *, strict: bool = False) -> np.ndarray | None:
        """The sum of its decoder columns written at depth ``<= depth`` (``< depth`` if
        ``strict``): what a reader at ``depth`` sees; None when it sees none."""
        vs = [v for b, v in self.writes if (b < depth if strict else b <= depth)]
        return None if not vs else (vs[0] if len(vs) == 1 else np.sum(vs, axis=0))

    def read(self, depth: float) -> np.ndarray | None:
        """The sum of its encoder rows read at depth ``> depth``: how it reads a writer at
        ``depth``; None when none reads it."""
        rs = [r for a, r in self.reads if a > depth]
        return None if not rs else (rs[0] if len(rs) == 1 else np.sum(rs, axis=0))

    def direct(self, source: FeatureVectors) -> float | None:
        """``Σ_{i,j: b_j < a_i} e_i · d_j``: how this feature reads ``source``'s decoder through
        the stream alone; None when no read hook comes after a written one."""
        terms = [float(r @ v) for a, r in self.reads for b, v in source.writes if b < a]
        return None if not terms else math.fsum(terms)

    def write_map(self, depth: float, *, strict: bool = False) -> Dense:
        """:meth:`written` as a typed map ``Space(name, 1) -> resid``."""
        seen = tuple(j for j, (b, _) in enumerate(self.writes) if (b < depth if strict else b <= depth))
        if not seen:
            raise InvalidArgumentError(f"feature {self.id.name} writes nothing a reader at depth {depth:g} sees.")
        key = ("dec", seen)
        if key not in self._maps:
            v = self.written(depth, strict=strict)
            sub = "" if len(seen) == len(self.writes) else f"_{{{'<' if strict else '<='}{_depth_tag(depth)}}}"
            self._maps[key] = Dense(v[:, None], self.space, self.resid, f"dec^{{{self.id.name}}}{sub}")  # type: ignore[index]
        return self._maps[key]

    def read_map(self, depth: float) -> Dense:
        """:meth:`read` as a typed map ``resid -> Space(name, 1)``."""
        seen = tuple(i for i, (a, _) in enumerate(self.reads) if a > depth)
        if not seen:
            raise InvalidArgumentError(f"feature {self.id.name} reads nothing written at depth {depth:g}.")
        key = ("enc", seen)
        if key not in self._maps:
            r = self.read(depth)
            sub = "" if len(seen) == len(self.reads) else f"_{{>{_depth_tag(depth)}}}"
            self._maps[key] = Dense(r[None, :], self.resid, self.space, f"enc^{{{self.id.name}}}{sub}")  # type: ignore[index]
        return self._maps[key]

    def direct_map(self, source: FeatureVectors) -> LinearMap:
        """:meth:`direct` as a lazy map ``Space(source, 1) -> Space(self, 1)``: ``e_t d_s``, or the
        sum over read hooks of ``e_i`` times the decoders written before it."""
        terms = []
        for i, (a, r) in enumerate(self.reads):
            if source.written(a, strict=True) is None:
                continue
            key = ("row", (i,))
            if key not in self._maps:
                sub = "" if len(self.reads) == 1 else f"_{{{_depth_tag(a)}}}"
                self._maps[key] = Dense(r[None, :], self.resid, self.space, f"enc^{{{self.id.name}}}{sub}")
            terms.append(self._maps[key] @ source.write_map(a, strict=True))
        if not terms:
            raise InvalidArgumentError(f"feature {self.id.name} reads nothing {source.id.name} writes before it.")
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out


def as_feature_id(x: Any) -> FeatureId | None:
    """``x`` as a :class:`FeatureId` if it is one (or a named tuple with the same fields,
    ``dictionary`` and ``index``), else None."""
    if isinstance(x, FeatureId):
        return x
    if isinstance(x, tuple) and getattr(x, "_fields", None) == FeatureId._fields:
        return FeatureId(*x)
    return None


def feature_vectors(dictionaries: Mapping[str, Any], fid: Any, where: str) -> FeatureVectors:
    """The :class:`FeatureVectors` of ``fid`` (a FeatureId) among ``dictionaries``."""
    given, fid = fid, as_feature_id(fid)
    if fid is None:
        raise InvalidArgumentError(f"{where}: expected a ca.FeatureId, got {given!r}.")
    b = dictionaries.get(fid.dictionary)
    if b is None:
        raise InvalidArgumentError(
            f"{where}: feature {fid.name} names dictionary {fid.dictionary!r}, which is not among the dictionaries "
            f"given ({sorted(dictionaries) or 'none'}); pass dictionaries=[ca.features.bind(d, model), ...]."
        )
    return FeatureVectors(b, fid.index)


@dataclasses.dataclass(frozen=True)
class Sink:
    """Where a circuit ends (see the module docstring).

    Attributes
    ----------
    side : {"unembed", "q", "k", "feature"}
    head : HeadId or None
        The head whose QK circuit the chain enters (None for the unembedding and features).
    other : Source or FeatureId or None
        The bare source on the other side of the QK term.
    feature : FeatureId or None
        The feature whose encoder row reads the chain (side ``"feature"`` only).
    """

    side: str
    head: HeadId | None = None
    other: Source | FeatureId | None = None
    feature: FeatureId | None = None

    def __post_init__(self) -> None:
        if self.side == FEATURE_SIDE:
            if not isinstance(self.feature, FeatureId) or self.head is not None or self.other is not None:
                raise InvalidArgumentError("Sink: a 'feature' sink needs feature=ca.FeatureId(...) and takes no head or other.")
            return
        if self.side not in SINK_SIDES:
            raise InvalidArgumentError(f"Sink side {self.side!r}; use one of {SINK_SIDES + (FEATURE_SIDE,)}.")
        if (self.side == "unembed") != (self.head is None and self.other is None) or self.feature is not None:
            raise InvalidArgumentError("Sink: a QK sink ('q' or 'k') needs head and other; 'unembed' takes neither.")

    @property
    def name(self) -> str:
        """``unembed``, ``L1H2.k (query: embed)`` or a feature's name (``res8#12``)."""
        if self.feature is not None:
            return self.feature.name
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
    source : Source or FeatureId
    heads : tuple of HeadId
        The chain, first head first.
    sink : Sink
    model : Transformer
        The model whose weights :attr:`weight` uses (its view: norm weights included).
    score : float
        The Frobenius norm of :attr:`weight` where a search computed it; NaN otherwise.
    dictionaries : mapping of str to BoundDictionary
        The dictionaries of the features it starts or ends at, by name (empty without features).
    """

    source: Source | FeatureId
    heads: tuple[HeadId, ...]
    sink: Sink
    model: Transformer = dataclasses.field(repr=False, compare=False, hash=False)
    score: float = dataclasses.field(default=math.nan, compare=False)
    dictionaries: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def n_heads(self) -> int:
        """Heads in the circuit, a QK sink head included."""
        return len(self.heads) + (self.sink.head is not None)

    @property
    def name(self) -> str:
        """e.g. ``embed -> L0H1 -> L1H2.k (query: embed)`` or ``embed -> L0H3 -> unembed``."""
        return " -> ".join([self.source.name, *(h.name for h in self.heads), self.sink.name])

    def _feature(self, fid: FeatureId) -> FeatureVectors:
        return feature_vectors(self.dictionaries, fid, f"circuit {self.name}")

    def _read_depth(self) -> float:
        """Where the first reader of the source sits: the first head's layer, else the sink's."""
        if self.heads:
            return float(self.heads[0].layer)
        if self.sink.head is not None:
            return float(self.sink.head.layer)
        return float(self.model.config.n_layers)  # the unembedding (feature sinks: see weight)

    def _source_map(self, s: Source | FeatureId, depth: float) -> LinearMap:
        if isinstance(s, FeatureId):
            return self._feature(s).write_map(depth)
        return self.model.source_map(s)

    def path(self) -> LinearMap:
        """The chain ``W_OV^hk ... W_OV^h1 S`` (resid x source), a lazy typed map (for a feature
        source ``S`` is the decoder column its first reader sees)."""
        m = self._source_map(self.source, self._read_depth())
        for l, h in self.heads:
            m = self.model.head(l, h).ov @ m
        return m

    @property
    def weight(self) -> LinearMap:
        """The virtual weight, a lazy typed map (never materialised)."""
        if isinstance(self.source, Source) and self.source.kind == "unembed_bias":
            return self.model.unembed_bias_map
        if self.sink.feature is not None:
            t = self._feature(self.sink.feature)
            if not self.heads and isinstance(self.source, FeatureId):
                return t.direct_map(self._feature(self.source))
            writer_depth = self.heads[-1].layer + 0.25 if self.heads else -math.inf
            if not self.heads:
                return t.read_map(writer_depth) @ self.model.source_map(self.source)  # type: ignore[arg-type]
            return t.read_map(writer_depth) @ self.path()
        P = self.path()
        if self.sink.head is None:
            return self.model.W_U @ P
        qk = self.model.head(*self.sink.head).qk
        other = self._source_map(self.sink.other, float(self.sink.head.layer))  # type: ignore[arg-type]
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
        kinds = (getattr(self.source, "kind", None), getattr(self.sink.other, "kind", None))
        both_pos = self.sink.head is not None and kinds == ("pos", "pos")
        causal = self.model.config.causal if both_pos else None
        bare = both_pos and not self.heads and causal
        window = self.model.config.window(self.sink.head.layer) if bare else None  # type: ignore[union-attr]
        return top_tokens(self.weight, k, vocab=self.model.vocab, by=by, roles=self.roles, causal=causal,
                          window=window, max_rows=max_rows)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (with ``sink_feature`` for a feature sink)."""
        out = {
            "name": self.name, "source": self.source.name, "heads": [h.name for h in self.heads],
            "sink": self.sink.side, "sink_head": None if self.sink.head is None else self.sink.head.name,
            "other_source": None if self.sink.other is None else self.sink.other.name,
            "score": self.score, "n_heads": self.n_heads,
        }
        if self.sink.feature is not None:
            out["sink_feature"] = self.sink.feature.name
        return out

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
