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

**Features.** With ``dictionaries`` (bound to the model) and a selection of their features
(``features`` or ``top_features``), each selected feature is a node ``{dictionary}#{index}``
(:class:`~circuitalg.model.ids.FeatureId`; attributes ``kind="feature"``, ``dictionary``,
``index``, ``layer``, ``hook`` and ``depth`` of what it reads, ``write_hook`` and
``write_depth`` of what it writes) that writes its decoder column ``d`` and reads with its
encoder row ``e`` (binding's norm map in it for MLP-input reads). Its edges are the existing
kinds, with the feature's vector as the writer's or the reader's map, and one new kind:

- feature -> head ``q``/``k``/``v``, -> MLP ``in``/``gate``, -> ``unembed`` ``out``: ``R d``
  for the reader map ``R`` (``W_QKᵀ d``, ``W_QK d``, ``W_OV d``, ``W_in d``, ``W_U d``);
- writer -> feature, kind ``enc``: ``e W`` for the writer's map ``W`` (``W_E``, ``W_pos``,
  ``W_OV``, ``W_out``);
- feature -> feature, kind ``enc``: the scalar ``e_t d_s`` through the stream alone, also
  stored signed as ``value``.

``norm`` is the Frobenius norm (``|e_t d_s|`` between features) and ``score`` the norm divided
by the product of the two maps' norms (the cosine ``e_t d_s / (‖e_t‖ ‖d_s‖)`` in absolute value
between features). Edges follow depth (:mod:`circuitalg.circuits.circuit`): a component
reading at depth ``r`` (a head of layer ``l``: ``l``; an MLP ``l + 0.5``, or ``l`` in a
parallel block; the unembedding ``n_layers``) reads a decoder written at depth ``<= r``; an
encoder reading at depth ``a`` reads writers at depth ``< a`` (heads ``l + 0.25``, MLPs
``l + 0.75``, embeddings first). A dictionary
with several hooks contributes the columns (rows) the other end sees, summed; between two
features ``Σ_{i,j: b_j < a_i} e_i d_j``, whose ``score`` divides by ``Σ_i ‖e_i‖ ‖Σ_{b_j < a_i}
d_j‖``. Only selected features become nodes: no feature-by-feature matrix is ever formed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path as FilePath
from typing import Any

import networkx as nx
import numpy as np

from circuitalg.circuits.circuit import FeatureVectors, as_feature_id, bound_dictionaries
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

__all__ = ["CircuitGraph", "EDGE_KINDS", "feature_logit_norms", "top_logit_features"]

#: Edge kinds: reads by a head's query, key and value sides, by an MLP (``in``; and ``gate`` for a
#: gated MLP's gate), by the unembedding, and by a feature's encoder (``enc``).
EDGE_KINDS = ("q", "k", "v", "in", "gate", "out", "enc")
_EXPORT_EDGE = ("kind", "norm", "score", "baseline", "baseline_std", "label")
_EXPORT_OPTIONAL = ("value",)  # feature -> feature edges only


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
    dictionaries : sequence of BoundDictionary, optional
        Dictionaries bound to ``model`` (:func:`circuitalg.features.binding.bind`; a bound
        dictionary set's tuple is accepted) whose selected features become nodes.
    features : mapping of dictionary name to indices, or sequence of FeatureId, optional
        The features to add (only these).
    top_features : int, optional
        Instead of ``features``: the ``top_features`` features of each dictionary with the
        largest logit effect ``‖W_U d‖`` (:func:`top_logit_features`).
    """

    def __init__(
        self, model: Transformer | None, baselines: dict[str, CompositionBaseline] | None = None, *,
        graph: nx.MultiDiGraph | None = None, dictionaries: Any = None, features: Any = None,
        top_features: int | None = None,
    ) -> None:
        self.model = model
        if graph is not None:
            self.nx = graph
            self.baselines = dict(baselines or {})
            self.dictionaries = bound_dictionaries(model, dictionaries, "CircuitGraph") if model is not None else {}
            return
        model = check_model(model)
        self.dictionaries = bound_dictionaries(model, dictionaries, "CircuitGraph")
        selected = _select_features(model, self.dictionaries, features, top_features)
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
        if selected:
            _add_features(self.nx, model, selected)

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
        return self._like(g)

    def _like(self, g: nx.MultiDiGraph) -> CircuitGraph:
        out = CircuitGraph(self.model, self.baselines, graph=g)
        out.dictionaries = self.dictionaries
        return out

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
        return self._like(g)

    def __repr__(self) -> str:
        return f"<CircuitGraph {self.nx.number_of_nodes()} nodes, {self.nx.number_of_edges()} edges>"

    # -- export -------------------------------------------------------------------------
    def _exportable(self) -> nx.MultiDiGraph:
        g = nx.MultiDiGraph(**{k: v for k, v in self.nx.graph.items() if isinstance(v, (str, int, float))})
        g.add_nodes_from(self.nx.nodes(data=True))
        for u, v, key, d in self.nx.edges(keys=True, data=True):
            extra = {k: d[k] for k in _EXPORT_OPTIONAL if k in d}
            g.add_edge(u, v, key=key, **{k: d[k] for k in _EXPORT_EDGE}, **extra)
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
    def read(cls, path: str | FilePath, model: Transformer | None = None, *, dictionaries: Any = None) -> CircuitGraph:
        """Read a graph written by :meth:`to_graphml` (``.graphml``) or :meth:`to_json` (``.json``).

        With ``model`` (the same model), each edge's lazy ``weight`` is rebuilt; a graph with
        feature nodes needs their ``dictionaries`` too (bound to ``model``).
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
        bound: dict[str, Any] = {}
        if model is not None:
            check_model(model)
            bound = bound_dictionaries(model, dictionaries, "CircuitGraph.read")
            reads = _reader_maps(model)
            writes = {_name(n): m for n, _, m, _ in _writers(model)}
            vectors = _node_features(path, g, bound)
            for u, v, key, d in g.edges(keys=True, data=True):
                try:
                    if u in vectors or v in vectors:
                        d["weight"] = _feature_weight(model, u, v, key, vectors, reads, writes)
                    else:
                        d["weight"] = reads[(v, key)] @ writes[u]
                except (KeyError, InvalidArgumentError):
                    raise LoadError(f"{path}: edge {u} -> {v} ({key}) does not exist in {model.name}.") from None
        out = cls(model, graph=g)
        out.dictionaries = bound
        return out


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


# -- features -------------------------------------------------------------------------------
def feature_logit_norms(bound: Any, *, block: int = 4096) -> np.ndarray:
    """``‖W_U d_f‖`` for every feature ``f`` of a bound dictionary (``d_f`` the sum of its decoder
    columns: the unembedding reads every written hook): ``(n_features,)``, float64, through the
    unembedding's triangular Gram factor ``R`` (``RᵀR = W_UᵀW_U``), ``block`` features at a time."""
    model = bound.model
    R = _stream_reader(model, UNEMBED, "out")
    dec = [bound.decoder_to_resid(j).array for j in range(len(bound.dictionary.writes))]
    F = bound.dictionary.n_features
    out = np.empty(F)
    for s in range(0, F, block):
        D = np.asarray(dec[0][:, s:s + block], dtype=np.float64)
        for W in dec[1:]:
            D = D + np.asarray(W[:, s:s + block], dtype=np.float64)
        out[s:s + block] = np.sqrt(np.sum((R @ D) ** 2, axis=0))
    return out


def top_logit_features(bound: Any, n: int) -> list[int]:
    """The ``n`` features of a bound dictionary with the largest logit effect
    :func:`feature_logit_norms` (the norm of their ``out`` edge), largest first, ties to the
    lower index."""
    v = feature_logit_norms(bound)
    order = np.argsort(-v, kind="stable")
    return [int(i) for i in order[:n]]


def _select_features(
    model: Transformer, bound: dict[str, Any], features: Any, top_features: Any
) -> list[FeatureVectors]:
    """The feature nodes to add, in order (dictionaries in the given order, indices as given)."""
    if features is not None and top_features is not None:
        raise InvalidArgumentError("CircuitGraph: pass features= or top_features=, not both.")
    if not bound:
        if features is not None or top_features is not None:
            raise InvalidArgumentError("CircuitGraph: features need dictionaries=[ca.features.bind(d, model), ...].")
        return []
    picks: list[tuple[str, int]] = []
    if top_features is not None:
        if isinstance(top_features, bool) or not isinstance(top_features, (int, np.integer)) or top_features < 1:
            raise InvalidArgumentError(f"CircuitGraph: top_features must be a positive integer, got {top_features!r}.")
        for name, b in bound.items():
            picks += [(name, i) for i in top_logit_features(b, int(top_features))]
    elif features is None:
        raise InvalidArgumentError(
            "CircuitGraph: dictionaries given without a selection; pass features={name: [indices]} or "
            "top_features=n (only selected features become nodes)."
        )
    elif isinstance(features, dict):
        for name, idx in features.items():
            if name not in bound:
                raise InvalidArgumentError(
                    f"CircuitGraph: features names dictionary {name!r}, not among the dictionaries given ({sorted(bound)})."
                )
            if isinstance(idx, (int, np.integer)):
                idx = [idx]
            picks += [(name, i) for i in idx]
    else:
        for x in features:
            f = as_feature_id(x)
            if f is None:
                raise InvalidArgumentError(
                    f"CircuitGraph: features must map dictionary names to indices or list ca.FeatureId, got {x!r}."
                )
            picks.append((f.dictionary, f.index))
    out: list[FeatureVectors] = []
    seen: set[tuple[str, int]] = set()
    for name, i in picks:
        if name not in bound:
            raise InvalidArgumentError(f"CircuitGraph: feature {name}#{i} names a dictionary not given ({sorted(bound)}).")
        fv = FeatureVectors(bound[name], i)
        if (name, fv.id.index) in seen:
            raise InvalidArgumentError(f"CircuitGraph: feature {fv.id.name} is selected twice.")
        seen.add((name, fv.id.index))
        out.append(fv)
    return out


def _read_depth(model: Transformer, node: Node) -> float:
    """Where a component reads the stream: a head of layer ``l`` at ``l``, an MLP at ``l + 0.5``,
    the unembedding at ``n_layers``."""
    if node == UNEMBED:
        return float(model.config.n_layers)
    if isinstance(node, HeadId):
        return float(node.layer)
    if model.config.parallel_attn_mlp:  # the MLP reads the stream its attention reads
        return float(node.layer)  # type: ignore[union-attr]
    return node.layer + 0.5  # type: ignore[union-attr]


def _write_depth(node: Node) -> float:
    """Where a component writes: embeddings first, a head of layer ``l`` at ``l + 0.25``, an MLP
    at ``l + 0.75``."""
    if node in (EMBED, POS):
        return -math.inf
    if isinstance(node, HeadId):
        return node.layer + 0.25
    return node.layer + 0.75  # type: ignore[union-attr]


def _node_of(name: str) -> Node:
    if name == UNEMBED:
        return UNEMBED
    try:
        return HeadId.parse(name)
    except InvalidArgumentError:
        return Source.parse(name)


def _feature_weight(
    model: Transformer, u: str, v: str, kind: str, vectors: dict[str, FeatureVectors],
    reads: dict[tuple[str, str], LinearMap], writes: dict[str, LinearMap],
) -> LinearMap:
    """The lazy weight of a feature edge ``u -> v`` (module docstring)."""
    if u in vectors and v in vectors:
        return vectors[v].direct_map(vectors[u])
    if u in vectors:
        return reads[(v, kind)] @ vectors[u].write_map(_read_depth(model, _node_of(v)))
    return vectors[v].read_map(_write_depth(_node_of(u))) @ writes[u]


def _node_features(path: Any, g: nx.MultiDiGraph, bound: dict[str, Any]) -> dict[str, FeatureVectors]:
    """The feature nodes of a graph read from ``path``, by name, from ``bound``."""
    out = {}
    for n, d in g.nodes(data=True):
        if d.get("kind") != "feature":
            continue
        name, index = d.get("dictionary"), d.get("index")
        if name not in bound:
            raise LoadError(
                f"{path}: node {n} is a feature of dictionary {name!r}; pass dictionaries=[...] with it (bound to the "
                "model) to rebuild its edges' weights."
            )
        try:
            out[n] = FeatureVectors(bound[name], int(index))
        except (InvalidArgumentError, TypeError, ValueError):
            raise LoadError(f"{path}: node {n}: feature index {index!r} is not in dictionary {name!r}.") from None
    return out


def _add_features(g: nx.MultiDiGraph, model: Transformer, selected: list[FeatureVectors]) -> None:
    """Add the selected features' nodes and edges to ``g`` (module docstring)."""
    nan = float("nan")
    hw = model.head_weights.float64()
    for fv in selected:
        reads, writes = fv.hooks
        g.add_node(
            fv.id.name, kind="feature", dictionary=fv.id.dictionary, index=fv.id.index,
            layer=_hook_layer(reads[0]), hook=",".join(reads), depth=min(a for a, _ in fv.reads),
            write_hook=",".join(writes), write_depth=fv.write_depth, label=fv.id.name,
        )

    def edge(u: str, v: str, kind: str, num2: float, den2: float, label: str, maps: Any = None, **extra: Any) -> None:
        norm = math.sqrt(max(num2, 0.0))
        den = math.sqrt(den2)
        g.add_edge(u, v, key=kind, kind=kind, norm=norm, score=norm / den if den > 0 else 0.0,
                   baseline=nan, baseline_std=nan, label=label, **extra)
        if maps is not None:
            g[u][v][kind].maps = maps

    readers = _readers(model)
    writers = _writers(model)
    r_norm2 = {(rnode, kind): _reader_value(model, rnode, kind, None) for rnode, kind, _, _, _ in readers}
    w_factor = {wnode: _factor(model, wnode, wmap) for wnode, _, wmap, _ in writers if not isinstance(wnode, HeadId)}
    w_norm2 = {wnode: float(np.sum(F**2)) for wnode, F in w_factor.items()}
    head_norm2 = np.einsum("lhij,lhij->lh", hw.gram("O"), hw.gram("V"))  # ‖W_O W_V‖_F² = <W_OᵀW_O, W_V W_Vᵀ>
    w_norm2.update({wnode: float(head_norm2[wnode.layer, wnode.head]) for wnode, *_ in writers if isinstance(wnode, HeadId)})
    for fv in selected:
        name = fv.id.name
        dec = f"dec^{{{name}}}"
        # the feature's decoder read by heads, MLPs and the unembedding
        for rnode, kind, _, rmap, rlabel in readers:
            depth = _read_depth(model, rnode)
            vec = fv.written(depth)
            if vec is None:
                continue
            num2 = _reader_value(model, rnode, kind, vec[:, None])
            den2 = float(vec @ vec) * r_norm2[(rnode, kind)]
            edge(name, _name(rnode), kind, num2, den2, f"{rlabel} {dec}", (rmap, fv.write_map(depth)))
        # writers read by the feature's encoder
        for wnode, _, wmap, wlabel in writers:
            depth = _write_depth(wnode)
            row = fv.read(depth)
            if row is None:
                continue
            if isinstance(wnode, HeadId):  # e W_O W_V, from the head's own factors
                y = row @ hw.W_O[wnode.layer, wnode.head]
                num2 = float(np.sum((y @ hw.W_V[wnode.layer, wnode.head]) ** 2))
            else:  # ‖e W‖ = ‖e F‖ for the writer's factor F (F Fᵀ = W Wᵀ)
                num2 = float(np.sum((row @ w_factor[wnode]) ** 2))
            edge(_name(wnode), name, "enc", num2, float(row @ row) * w_norm2[wnode], f"enc^{{{name}}} {wlabel}",
                 (fv.read_map(depth), wmap))
    # feature -> feature through the stream alone
    for t in selected:
        for s in selected:
            val = t.direct(s)
            if val is None:
                continue
            den = math.fsum(
                float(np.linalg.norm(r)) * float(np.linalg.norm(s.written(a, strict=True)))
                for a, r in t.reads if s.written(a, strict=True) is not None
            )
            edge(s.id.name, t.id.name, "enc", val * val, den * den, f"enc^{{{t.id.name}}} dec^{{{s.id.name}}}",
                 value=val)
            g[s.id.name][t.id.name]["enc"]["weight"] = t.direct_map(s)


def _hook_layer(hook_name: str) -> int:
    """The layer of a TransformerLens hook name ``blocks.L....``."""
    return int(hook_name.split(".")[1])


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
