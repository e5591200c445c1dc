"""The graph of virtual weights between a model's components (a ``networkx.MultiDiGraph``).

Nodes: ``embed``, ``pos``, every head ``L{l}H{h}``, ``mlp{l}`` (models with MLPs) and
``unembed``. Edges run from each writer to each later reader, one per way of reading
(the edge key is its kind):

- into a head: ``q``, ``k``, ``v`` with virtual weights ``W_QKᵀ W``, ``W_QK W`` and
  ``W_OV W`` for the writer's map ``W`` (``W_E``, ``W_pos``, ``W_OV`` or ``W_out``);
- into an MLP: ``in`` (``W_in W``) and, for a gated MLP, ``gate`` (``W_gate W``); into the
  unembedding: ``out`` (``W_U W``).

Each edge carries ``weight`` (the lazy typed map, never materialised), ``norm`` (its
Frobenius norm), ``score`` (the norm divided by the product of the two factors' norms: the
composition score for head-to-head edges) and, for head-to-head edges, the random-matrix
``baseline`` (mean) and ``baseline_std`` of :func:`~circuitalg.circuits.composition.composition_baseline`
(NaN elsewhere). Weights are the model's view: norm weights are in them whether or not the
model was folded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path as FilePath
from typing import Any

import networkx as nx
import numpy as np

from circuitalg.circuits.composition import (
    COMPOSITION_KINDS,
    ZERO_FLOOR,
    CompositionBaseline,
    check_model,
    composition_baselines,
    composition_parts,
)
from circuitalg.errors import InvalidArgumentError, LoadError
from circuitalg.files import atomic_write
from circuitalg.linalg import gram_factor
from circuitalg.maps.nodes import LinearMap
from circuitalg.model.ids import EMBED, POS, HeadId, Source, layer_tag
from circuitalg.model.weights import Transformer

__all__ = ["CircuitGraph", "EDGE_KINDS"]

#: Edge kinds: reads by a head's query, key and value sides, by an MLP (``in``; and ``gate`` for a
#: gated MLP's gate), and by the unembedding.
EDGE_KINDS = ("q", "k", "v", "in", "gate", "out")
_EXPORT_EDGE = ("kind", "norm", "score", "baseline", "baseline_std", "label")


#: A graph node's typed id: a head, a source (embed, pos, mlp{l}) or the unembedding.
Node = HeadId | Source | str
UNEMBED = "unembed"


def _writers(model: Transformer) -> list[tuple[Node, int, LinearMap, str]]:
    """``(node, position, map, label)``; position orders reads and writes through the stream."""
    out: list[tuple[Node, int, LinearMap, str]] = [
        (s, -1, model.source_map(s), "W_E" if s == EMBED else "W_pos") for s in model.embedding_sources
    ]
    for layer in model.layers:
        for head in layer.heads:
            out.append((head.id, 2 * layer.index, head.ov, f"W_OV^{head.id.tag}"))
        if layer.mlp is not None:
            mlp = Source("mlp", layer.index)
            out.append((mlp, 2 * layer.index + 1, layer.mlp.writer, f"W_out^{layer_tag(layer.index)}"))
    return out


def _name(node: Node) -> str:
    return node if isinstance(node, str) else node.name


def _factor(model: Transformer, node: Node, m: LinearMap) -> np.ndarray:
    """``F`` (d_model x r) with ``F Fᵀ = W Wᵀ`` for writer map ``W``."""
    if node in (EMBED, POS):
        return np.asarray(gram_factor(model.source_map(node), "rows"), dtype=np.float64).T  # type: ignore[arg-type]
    if isinstance(node, Source):  # an MLP's writer, shortened to d_model columns when wider (cached factor)
        if m.shape[1] > m.shape[0]:
            return np.asarray(gram_factor(m, "rows"), dtype=np.float64).T  # type: ignore[arg-type]
        return np.asarray(m.array, dtype=np.float64)  # type: ignore[attr-defined]
    hw = model.head_weights.float64()
    W_V = hw.W_V[node.layer, node.head]
    w, U = np.linalg.eigh(W_V @ W_V.T)
    return hw.W_O[node.layer, node.head] @ (U * np.sqrt(np.clip(w, 0.0, None)))


class CircuitGraph:
    """The virtual-weight graph of ``model`` (see the module docstring); ``.nx`` is the networkx graph.

    Parameters
    ----------
    model : Transformer
    baselines : dict of kind -> CompositionBaseline, optional
        Defaults to :func:`composition_baseline` for ``q``, ``k``, ``v`` (seed 0).
    """

    def __init__(
        self, model: Transformer | None, baselines: dict[str, CompositionBaseline] | None = None, *,
        graph: nx.MultiDiGraph | None = None,
    ) -> None:
        self.model = model
        if graph is not None:
            self.nx = graph
            self.baselines = dict(baselines or {})
            return
        model = check_model(model)
        if baselines is not None and not (
            isinstance(baselines, dict)
            and all(k in COMPOSITION_KINDS and isinstance(v, CompositionBaseline) for k, v in baselines.items())
        ):
            raise InvalidArgumentError(
                f"CircuitGraph: baselines must map 'q'/'k'/'v' to ca.CompositionBaseline, got {baselines!r:.80}; "
                "make them with ca.composition_baseline(model, kind) or leave baselines out."
            )
        self.baselines = dict(baselines) if baselines else composition_baselines(model)
        self.nx = _build(model, self.baselines)

    # -- queries ------------------------------------------------------------------------
    def edges(self, kind: str | Iterable[str] | None = None, *, top: int | None = None) -> list[dict[str, Any]]:
        """Edge records ``{writer, reader, kind, norm, score, baseline, ...}``, highest score first."""
        kinds = _kinds(kind)
        recs = [
            {"writer": u, "reader": v, **{k: x for k, x in dict.items(d) if k != "weight"}}
            for u, v, d in self.nx.edges(data=True)
            if d["kind"] in kinds
        ]
        recs.sort(key=lambda r: (-r["score"], r["writer"], r["reader"], r["kind"]))
        return recs if top is None else recs[:top]

    def edge(self, writer: str, reader: str, kind: str) -> dict[str, Any]:
        """The attributes of one edge; :class:`InvalidArgumentError` if absent."""
        try:
            return self.nx.edges[writer, reader, kind]
        except KeyError:
            raise InvalidArgumentError(f"no {kind!r} edge {writer} -> {reader} in this graph.") from None

    def threshold(
        self, min_score: float | None = None, *, above_baseline: float | None = None,
        min_norm: float | None = None, kinds: str | Iterable[str] | None = None,
    ) -> CircuitGraph:
        """A graph with the same nodes and only the edges that pass every given test.

        ``above_baseline=r`` keeps head-to-head edges whose score is at least ``r`` times the
        baseline (and drops edges without a baseline).
        """
        ks = _kinds(kinds)
        g = _Graph(**self.nx.graph)
        g.add_nodes_from(self.nx.nodes(data=True))
        for u, v, key, d in self.nx.edges(keys=True, data=True):
            if d["kind"] not in ks:
                continue
            if min_score is not None and not d["score"] >= min_score:
                continue
            if min_norm is not None and not d["norm"] >= min_norm:
                continue
            if above_baseline is not None and not d["score"] >= above_baseline * d["baseline"]:
                continue  # NaN baselines fail this test
            _copy_edge(g, u, v, key, d)
        return CircuitGraph(self.model, self.baselines, graph=g)

    def subgraph(self, nodes: Iterable[str]) -> CircuitGraph:
        """The graph induced on ``nodes`` (a copy)."""
        nodes = list(nodes)
        missing = [n for n in nodes if n not in self.nx]
        if missing:
            raise InvalidArgumentError(f"nodes {missing} are not in this graph; nodes look like 'embed', 'L0H1', 'mlp0'.")
        g = _Graph(**self.nx.graph)
        g.add_nodes_from((n, self.nx.nodes[n]) for n in nodes)
        for u, v, key, d in self.nx.subgraph(nodes).edges(keys=True, data=True):
            _copy_edge(g, u, v, key, d)
        return CircuitGraph(self.model, self.baselines, graph=g)

    def __repr__(self) -> str:
        return f"<CircuitGraph {self.nx.number_of_nodes()} nodes, {self.nx.number_of_edges()} edges>"

    # -- export -------------------------------------------------------------------------
    def _exportable(self) -> nx.MultiDiGraph:
        g = nx.MultiDiGraph(**{k: v for k, v in self.nx.graph.items() if isinstance(v, (str, int, float))})
        g.add_nodes_from(self.nx.nodes(data=True))
        for u, v, key, d in self.nx.edges(keys=True, data=True):
            g.add_edge(u, v, key=key, **{k: d[k] for k in _EXPORT_EDGE})
        return g

    def to_graphml(self, path: str | FilePath) -> None:
        """Write GraphML (lazy maps are left out; :meth:`read` with the model re-attaches them)."""
        g = self._exportable()
        atomic_write(path, lambda tmp: nx.write_graphml(g, str(tmp)))

    def to_json(self, path: str | FilePath) -> None:
        """Write node-link JSON (networkx's ``node_link_data``)."""
        data = nx.node_link_data(self._exportable(), edges="edges")
        text = json.dumps(data, allow_nan=True, separators=(",", ":"))  # no indent: the C encoder
        atomic_write(path, lambda tmp: tmp.write_text(text))

    @classmethod
    def read(cls, path: str | FilePath, model: Transformer | None = None) -> CircuitGraph:
        """Read a graph written by :meth:`to_graphml` (``.graphml``) or :meth:`to_json` (``.json``).

        With ``model`` (the same model), each edge's lazy ``weight`` is rebuilt.
        """
        path = FilePath(path)
        if not path.is_file():
            raise LoadError(f"{path}: no such file.")
        try:
            if path.suffix == ".json":
                data = json.loads(path.read_text())
                g = nx.node_link_graph(data, directed=True, multigraph=True, edges="edges")
            elif path.suffix == ".graphml":
                g = nx.read_graphml(str(path), edge_key_type=str, force_multigraph=True)
            else:
                raise LoadError(f"{path}: unknown graph format {path.suffix!r}; use .graphml or .json.")
        except LoadError:
            raise
        except Exception as e:  # networkx/json/xml raise many types on corrupt files
            raise LoadError(f"{path}: not a readable circuit graph ({type(e).__name__}: {e}).") from e
        for u, v, key, d in g.edges(keys=True, data=True):
            missing = [k for k in _EXPORT_EDGE if k not in d]
            if missing:
                raise LoadError(f"{path}: edge {u} -> {v} ({key}) lacks {missing}; was it written by circuitalg?")
        if model is not None:
            check_model(model)
            reads = _reader_maps(model)
            writes = {_name(n): m for n, _, m, _ in _writers(model)}
            for u, v, key, d in g.edges(keys=True, data=True):
                try:
                    d["weight"] = reads[(v, key)] @ writes[u]
                except KeyError:
                    raise LoadError(f"{path}: edge {u} -> {v} ({key}) does not exist in {model.name}.") from None
        return cls(model, graph=g)


def _kinds(kind: str | Iterable[str] | None) -> tuple[str, ...]:
    ks = EDGE_KINDS if kind is None else ((kind,) if isinstance(kind, str) else tuple(kind))
    bad = [k for k in ks if k not in EDGE_KINDS]
    if bad:
        raise InvalidArgumentError(f"edge kinds {bad} are unknown; use {EDGE_KINDS}.")
    return ks


def _readers(model: Transformer) -> list[tuple[Node, str, int, LinearMap, str]]:
    """``(node, kind, position, map, label)`` of every read."""
    out: list[tuple[Node, str, int, LinearMap, str]] = []
    for layer in model.layers:
        for head in layer.heads:
            t = head.id.tag
            out += [
                (head.id, "q", 2 * layer.index, head.qk.T, f"W_QK^{t}ᵀ"),
                (head.id, "k", 2 * layer.index, head.qk, f"W_QK^{t}"),
                (head.id, "v", 2 * layer.index, head.ov, f"W_OV^{t}"),
            ]
        if layer.mlp is not None:
            mlp = Source("mlp", layer.index)
            out.append((mlp, "in", 2 * layer.index + 1, layer.mlp.W_in, f"W_in^{layer_tag(layer.index)}"))
            if layer.mlp.W_gate is not None:
                out.append((mlp, "gate", 2 * layer.index + 1, layer.mlp.W_gate, f"W_gate^{layer_tag(layer.index)}"))
    out.append((UNEMBED, "out", 2 * model.config.n_layers, model.W_U, "W_U"))
    return out


def _reader_maps(model: Transformer) -> dict[tuple[str, str], LinearMap]:
    """Reader maps by (node name, edge kind), for edges read back from files."""
    return {(_name(node), kind): m for node, kind, _, m, _ in _readers(model)}


def _stream_reader(model: Transformer, node: Node, kind: str) -> np.ndarray:
    """The triangular factor ``R`` (``RᵀR = WᵀW``) of a reader that is not a head: ``W_U``, or an
    MLP's ``W_in`` / ``W_gate`` (cached per leaf), so ``||W F|| = ||R F||``."""
    if node == UNEMBED:
        return np.asarray(gram_factor(model.W_U, "cols"), dtype=np.float64)
    mlp = model.mlp(node.layer)  # type: ignore[union-attr]
    return np.asarray(gram_factor(mlp.W_gate if kind == "gate" else mlp.W_in, "cols"), dtype=np.float64)  # type: ignore[arg-type]


def _reader_value(model: Transformer, node: Node, kind: str, F: np.ndarray | None) -> float:
    """``||R F||_F²`` for the reader map ``R`` of (node, kind); ``F=None`` gives ``||R||_F²``."""
    if node == UNEMBED or isinstance(node, Source):
        R = _stream_reader(model, node, kind)
        return float(np.sum(R**2 if F is None else (R @ F) ** 2))
    G, W = model.head_weights.float64().reader(kind)
    G, W = G[node.layer, node.head], W[node.layer, node.head]
    A = W if F is None else W @ F
    return float(np.sum(G * (A @ A.T)))


def _head_read_grams(hw: Any, kind: str, FF: np.ndarray, max_bytes: int = 64 << 20) -> np.ndarray:
    """``||R_h F_w||_F² = <R_hᵀR_h, F_w F_wᵀ>`` for every head ``h``'s reader map of ``kind`` and every
    writer Gram matrix ``FF[w] = F_w F_wᵀ`` (``(n_writers, d_model, d_model)``): ``(n_layers,
    n_heads, n_writers)``.

    The reader Gram matrices ``R_hᵀR_h = W_hᵀ G_h W_h`` (:meth:`HeadWeights.reader`) are formed a
    chunk of heads at a time (``max_bytes``) and contracted with every writer at once: per head
    ``d_model² (2 d_head + n_writers)`` multiply-adds instead of ``n_writers d_model² d_head``
    for products ``W_h F_w``. Values within the Gram route's error floor are recomputed by the
    caller from ``W_h F_w``."""
    G, W = hw.reader(kind)
    L, H, dh, D = W.shape
    X = FF.reshape(len(FF), D * D)
    Gf, Wf = G.reshape(L * H, dh, dh), W.reshape(L * H, dh, D)
    out = np.empty((L * H, len(FF)))
    step = max(1, max_bytes // (8 * D * D))
    M = np.empty((min(step, L * H), D, D))
    for s in range(0, L * H, step):
        n = min(step, L * H - s)
        for i in range(n):  # one BLAS call per head: several times faster than a stacked matmul
            np.matmul(Wf[s + i].T, Gf[s + i] @ Wf[s + i], out=M[i])
        out[s:s + n] = M[:n].reshape(n, D * D) @ X.T
    return out.reshape(L, H, len(FF))


def _stream_read_grams(
    model: Transformer, writers: list[Any], index: dict[Any, int], stacked: np.ndarray, stream_grams: np.ndarray
) -> np.ndarray:
    """``<RᵀR, F Fᵀ> = ||R F||_F²`` for every writer (rows, in ``writers``' order) and every reader
    that is not a head (columns: the rows of ``stream_grams``, each a flattened ``RᵀR``).

    The writers that are not heads have their ``F Fᵀ`` in ``stacked`` (row ``index[writer]``); they
    are multiplied with every reader's Gram matrix in one product. Then ``stacked`` is overwritten:
    it holds the heads' ``F Fᵀ`` (:func:`_factor`) a chunk at a time for the same product, so no
    memory is added. A product per pair would read every reader's ``d_model²`` Gram matrix once per
    writer. Values within the Gram route's error floor are recomputed by the caller from ``R F``."""
    D = model.config.d_model
    out = np.empty((len(writers), len(stream_grams)))
    if not len(stacked):  # no writer besides the heads (every model has W_E; kept for safety)
        stacked = np.empty((1, D, D))
    X = stacked.reshape(len(stacked), D * D)
    others = X @ stream_grams.T
    heads = []
    for i, (wnode, _, wmap, _) in enumerate(writers):
        if wnode in index:
            out[i] = others[index[wnode]]
        else:
            heads.append((i, wnode, wmap))
    step = len(stacked)
    for s in range(0, len(heads), step):
        chunk = heads[s:s + step]
        for j, (_, wnode, wmap) in enumerate(chunk):
            F = _factor(model, wnode, wmap)
            np.matmul(F, F.T, out=stacked[j])
        out[[i for i, _, _ in chunk]] = X[: len(chunk)] @ stream_grams.T
    return out


def _head_read_direct(hw: Any, kind: str, head: HeadId, F: np.ndarray) -> float:
    """``||R F||_F²`` for one head's reader of ``kind`` from ``W_h F`` (relative accuracy: used
    for values under the Gram route's error floor, so structural zeros stay zero)."""
    G, W = hw.reader(kind)
    A = W[head.layer, head.head] @ F
    return float(np.sum(G[head.layer, head.head] * (A @ A.T)))


def _build(model: Transformer, baselines: dict[str, CompositionBaseline]) -> nx.MultiDiGraph:
    c = model.config
    g = _Graph(model=model.name, n_layers=c.n_layers, n_heads=c.n_heads, d_model=c.d_model)
    g.add_node(EMBED.name, kind="embed", layer=-1, label="W_E")
    if POS in model.embedding_sources:
        g.add_node(POS.name, kind="pos", layer=-1, label="W_pos")
    for layer in model.layers:
        for head in layer.heads:
            g.add_node(head.name, kind="head", layer=layer.index, index=head.index, label=head.name)
        if layer.mlp is not None:
            mlp = Source("mlp", layer.index).name
            g.add_node(mlp, kind="mlp", layer=layer.index, label=mlp)
    g.add_node(UNEMBED, kind="unembed", layer=c.n_layers, label="W_U")

    writers = _writers(model)
    readers = _readers(model)
    # squared norms of every factor (cheap factored traces)
    others = [(n, m) for n, _, m, _ in writers if not isinstance(n, HeadId)]
    factors = {n: _factor(model, n, m) for n, m in others}
    w_norm2 = {n: float(np.sum((factors[n] if n in factors else _factor(model, n, m)) ** 2)) for n, _, m, _ in writers}
    r_norm2 = {(node, kind): _reader_value(model, node, kind, None) for node, kind, _, _, _ in readers}
    # head-to-head numerators in one batch per kind
    hw = model.head_weights.float64()
    head_numerator_sq = {k: composition_parts(hw, k).numerator_sq for k in COMPOSITION_KINDS}
    # readers that are not heads (MLPs, the unembedding): their Gram matrices RᵀR, so a writer's
    # value is <RᵀR, F Fᵀ> with F Fᵀ formed once per writer; values within the Gram route's error
    # floor are recomputed as ||R F||² (structural zeros stay zero)
    stream = {(n, k): _stream_reader(model, n, k) for n, k, _, _, _ in readers if not isinstance(n, HeadId)}
    sindex = {key: i for i, key in enumerate(stream)}
    stream_grams = np.empty((len(stream), c.d_model * c.d_model))  # RᵀR of each, flattened, filled in place
    for key, R in stream.items():
        np.matmul(R.T, R, out=stream_grams[sindex[key]].reshape(c.d_model, c.d_model))
    # writers that are not heads (embeddings, MLPs) into every head: through the writers' Gram
    # matrices F Fᵀ and the heads' reader Gram matrices, all pairs of a kind in one pass
    stacked = np.empty((len(others), c.d_model, c.d_model))  # filled in place: no list and stacked copy
    for i, (n, _) in enumerate(others):
        np.matmul(factors[n], factors[n].T, out=stacked[i])
    index = {n: i for i, (n, _) in enumerate(others)}
    into_heads = {k: _head_read_grams(hw, k, stacked) for k in COMPOSITION_KINDS}
    into_stream = _stream_read_grams(model, writers, index, stacked, stream_grams)  # overwrites stacked
    del stacked
    eps = np.finfo(np.float64).eps
    nan = float("nan")
    for wi, (wnode, wpos, wmap, wlabel) in enumerate(writers):
        F = factors.get(wnode)
        for rnode, kind, rpos, rmap, rlabel in readers:
            if wpos >= rpos:
                continue
            head_edge = isinstance(wnode, HeadId) and kind in COMPOSITION_KINDS
            if head_edge:
                num2 = float(head_numerator_sq[kind][wnode.layer, wnode.head, rnode.layer, rnode.head])  # type: ignore[union-attr]
            else:
                if isinstance(rnode, HeadId):
                    num2 = float(into_heads[kind][rnode.layer, rnode.head, index[wnode]])
                else:
                    num2 = float(into_stream[wi, sindex[(rnode, kind)]])
                floor = ZERO_FLOOR * eps * c.d_model * w_norm2[wnode] * r_norm2[(rnode, kind)]
                if num2 <= floor:  # within the Gram route's error: recompute (structural zeros stay zero)
                    if F is None:
                        F = _factor(model, wnode, wmap)
                    num2 = (_head_read_direct(hw, kind, rnode, F) if isinstance(rnode, HeadId)
                            else float(np.sum((stream[(rnode, kind)] @ F) ** 2)))
            den = math.sqrt(w_norm2[wnode] * r_norm2[(rnode, kind)])
            norm = math.sqrt(max(num2, 0.0))
            base = baselines.get(kind) if head_edge else None
            u, v = _name(wnode), _name(rnode)
            g.add_edge(
                u, v, key=kind, kind=kind, norm=norm, score=norm / den if den > 0 else 0.0,
                baseline=base.mean if base is not None else nan, baseline_std=base.std if base is not None else nan,
                label=f"{rlabel} {wlabel}",
            )
            g[u][v][kind].maps = (rmap, wmap)  # the weight map is composed when first read
    return g


def _copy_edge(g: nx.MultiDiGraph, u: str, v: str, key: str, d: dict[str, Any]) -> None:
    """Add edge ``(u, v, key)`` with ``d``'s attributes to ``g``, keeping a lazy weight lazy."""
    maps = getattr(d, "maps", None)
    g.add_edge(u, v, key=key, **{k: x for k, x in dict.items(d) if not (maps is not None and k == "weight")})
    if maps is not None and not dict.__contains__(d, "weight"):
        g[u][v][key].maps = maps
    elif maps is not None:
        dict.__setitem__(g[u][v][key], "weight", dict.__getitem__(d, "weight"))


class _EdgeAttrs(dict):
    """An edge's attributes. ``weight``, the lazy map ``reader @ writer``, is composed when first
    read (``d["weight"]``, ``d.get``, iteration, copies): a graph of a 30-layer model has over
    100,000 edges, most of which nobody reads."""

    __slots__ = ("maps",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.maps: tuple[LinearMap, LinearMap] | None = None

    def _compose(self) -> None:
        if self.maps is not None and not dict.__contains__(self, "weight"):
            dict.__setitem__(self, "weight", self.maps[0] @ self.maps[1])

    def __missing__(self, key: str) -> Any:
        if key == "weight" and self.maps is not None:
            self._compose()
            return dict.__getitem__(self, "weight")
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (key == "weight" and self.maps is not None)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __iter__(self) -> Any:
        self._compose()
        return dict.__iter__(self)

    def keys(self) -> Any:
        self._compose()
        return dict.keys(self)

    def items(self) -> Any:
        self._compose()
        return dict.items(self)

    def values(self) -> Any:
        self._compose()
        return dict.values(self)

    def __len__(self) -> int:
        return dict.__len__(self) + (1 if self.maps is not None and not dict.__contains__(self, "weight") else 0)


class _Graph(nx.MultiDiGraph):
    """A MultiDiGraph whose edge attributes compose their ``weight`` map lazily (:class:`_EdgeAttrs`)."""

    edge_attr_dict_factory = _EdgeAttrs
