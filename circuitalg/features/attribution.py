"""Attribution graphs on a prompt: the local replacement model with frozen nonlinearities, exact.

The model is run on the prompt; every transcoder's features are read from the real activations at
its read hook; attention patterns and norm scales are frozen at their real values; each MLP is
replaced by its transcoder's features, the transcoder's biases, its linear skip map (a skip
transcoder) and an error node (the MLP's real output minus the transcoder's reconstruction, per
layer and position). The replacement is then linear in the residual stream, and reproduces the
model's logits exactly. An edge is the direct linear effect of a source node on a later target
node through the residual stream, every head's frozen-pattern OV map and the skip maps (the MLP
itself is cut: every multi-step path through an MLP runs through a feature or error node):
circuit-tracer's adjacency, computed here with the algebra (decoders, OV maps, encoders) in
float64 instead of by backward passes.

Nodes, in circuit-tracer's order (:attr:`AttributionGraph.nodes`): the active features by
(layer, position, index), the error nodes layer-major (``layer * n_pos + position``), one token
node per position (``W_E[token]``, without the positional embedding) and the target logits by
probability; with residual-stream SAEs (``saes``, :func:`attribute` states their model), their
feature nodes follow the transcoders' features and their error nodes the transcoders' error nodes,
and the stream is cut at each SAE's hook as the MLPs are by transcoders. circuit-tracer has no bias
nodes, so a feature's incoming edges do not sum to its pre-activation; here the constants are nodes too (:attr:`AttributionGraph.constants`, origins in
:data:`CONSTANT_ORIGINS`), with their own edges (:attr:`AttributionGraph.constant_adjacency`), so
that for every feature node the incoming edges (from nodes and constants) sum to its
pre-activation, and for every logit node to its (demeaned) logit (before final soft-capping, where a model caps its logits).

QK attribution (:meth:`AttributionGraph.qk_attribution`): a head's pre-softmax score on a (query,
key) pair split into terms over pairs of the same sources (and the query and key biases), with the
frozen norm and q/k-norm scales and the rotary rotations applied; the terms sum to the score.
:meth:`AttributionGraph.qk_feature_attribution` aggregates them over the prompt: each source's share
of a head's scores through its queries and through its keys, summed over the (query, key) pairs
weighted by the frozen pattern.

The edges are computed in waves (on a causal model, the targets at one position, whatever their
layer): one descent from the last layer carries every target's read vector back, each joining
where it reads, over exactly the positions up to the wave's; the wave's rows are split between the
runtime's workers (:mod:`circuitalg.runtime`).

Position 0 (``zero_positions`` positions from the start) is treated as circuit-tracer treats it:
its features are not nodes and its error nodes are zero. What the MLP wrote there (its real output
less the transcoder's decoder bias and skip map) is the constant node ``mlp_frozen`` of that layer
and position, so completeness still holds; likewise an SAE has no nodes there, its input less its
decoder bias being the constant ``sae_frozen``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from circuitalg import runtime
from circuitalg.errors import ConfigError, InvalidArgumentError
from circuitalg.features.binding import BoundDictionary, bind
from circuitalg.features.coactivation import hook_activations
from circuitalg.features.dictionary import Dictionary, DictionarySet
from circuitalg.features.hooks import HookKind
from circuitalg.model.forward import check_tokens, run_batch
from circuitalg.model.ids import HeadId
from circuitalg.model.weights import Transformer, require_model

__all__ = [
    "FeatureNode", "ErrorNode", "SAEFeatureNode", "SAEErrorNode", "TokenNode", "LogitNode", "ConstantNode", "CONSTANT_ORIGINS", "LogitTarget",
    "AttributionGraph", "QKAttribution", "QKFeatureAttribution", "PruneResult", "attribute", "normalize_matrix", "compute_influence",
    "compute_node_influence", "compute_edge_influence", "find_threshold", "prune_graph", "influence_matrix",
]

#: what a constant node carries (:class:`ConstantNode` ``origin``):
#:
#: - ``pos``: the positional embedding ``W_pos[:, p]`` at position ``p`` (learned positions)
#: - ``attn_bias``: layer ``l``'s ``b_O + Σ_h W_O^h b_V^h`` (``b_V`` as stored), at every position
#:   (the frozen pattern rows sum to 1)
#: - ``ln1_bias``: layer ``l``'s input-norm bias through the value and output maps, ``Σ_h W_O^h W_V^h b``
#: - ``ln2_bias``: layer ``l``'s MLP-input norm bias, read by the transcoder's encoder
#:   (``W_enc b``) and by its skip map (``W_skip b``)
#: - ``enc_bias``: the transcoder's encoder bias (less ``W_enc b_dec`` under ``pre_shift``)
#: - ``dec_bias``: the decoder biases of the transcoders writing layer ``l``'s MLP output
#: - ``skip_bias``: a skip transcoder's ``b_skip``
#: - ``mlp_frozen``: the MLP output at a zeroed position ``p`` (no feature or error nodes there, as in
#:   circuit-tracer), less the decoder bias and the skip map
#: - ``ln_final_bias``: the final norm's bias through the unembedding (``W_U b``)
#: - ``unembed_bias``: ``b_U``
#: - ``q_bias``, ``k_bias``: a head's query and key biases (sources of :class:`QKAttribution` only)
#: - ``sae_enc_bias``, ``sae_dec_bias``: SAE ``layer``'s (its index in ``saes``) encoder bias (less
#:   ``W_enc b_dec`` under ``pre_shift``) and decoder bias (written at every position)
#: - ``sae_frozen``: SAE ``layer``'s input at a zeroed position ``p`` less its decoder bias (no
#:   feature or error nodes there)
CONSTANT_ORIGINS = ("pos", "attn_bias", "ln1_bias", "ln2_bias", "enc_bias", "dec_bias", "skip_bias", "mlp_frozen",
                    "ln_final_bias", "unembed_bias", "q_bias", "k_bias", "sae_enc_bias", "sae_dec_bias", "sae_frozen")


@dataclass(frozen=True, order=True)
class FeatureNode:
    """An active feature: ``index`` of the transcoder reading layer ``layer``, at ``position``."""

    layer: int
    position: int
    index: int

    @property
    def node_id(self) -> str:
        """circuit-tracer's id ``{layer}_{index}_{position}``."""
        return f"{self.layer}_{self.index}_{self.position}"


@dataclass(frozen=True, order=True)
class ErrorNode:
    """The transcoder error of layer ``layer``'s MLP at ``position``."""

    layer: int
    position: int

    @property
    def node_id(self) -> str:
        """circuit-tracer's id ``0_{layer}_{position}``."""
        return f"0_{self.layer}_{self.position}"


@dataclass(frozen=True, order=True)
class SAEFeatureNode:
    """An active feature ``index`` of residual-stream SAE ``sae`` (its index in ``saes``) at ``position``."""

    sae: int
    position: int
    index: int

    @property
    def node_id(self) -> str:
        """``S{sae}_{index}_{position}`` (circuit-tracer has no such nodes)."""
        return f"S{self.sae}_{self.index}_{self.position}"


@dataclass(frozen=True, order=True)
class SAEErrorNode:
    """The error of residual-stream SAE ``sae`` (its index in ``saes``) at ``position``: its input
    less its reconstruction."""

    sae: int
    position: int

    @property
    def node_id(self) -> str:
        """``S{sae}_E_{position}`` (circuit-tracer has no such nodes)."""
        return f"S{self.sae}_E_{self.position}"


@dataclass(frozen=True, order=True)
class TokenNode:
    """The token embedding ``W_E[token]`` at ``position``."""

    position: int
    token: int

    @property
    def node_id(self) -> str:
        """circuit-tracer's id ``E_{token}_{position}``."""
        return f"E_{self.token}_{self.position}"


@dataclass(frozen=True, order=True)
class LogitNode:
    """Target ``rank`` (0: the most probable): ``vocab_index`` is the token id, or ``d_vocab + rank``
    for a target given as coefficients (a logit difference), as circuit-tracer numbers them."""

    rank: int
    vocab_index: int
    label: str
    position: int
    n_layers: int

    @property
    def node_id(self) -> str:
        """circuit-tracer's id ``{n_layers + 1}_{vocab_index}_{position}``."""
        return f"{self.n_layers + 1}_{self.vocab_index}_{self.position}"


@dataclass(frozen=True, order=True)
class ConstantNode:
    """A constant term (see :data:`CONSTANT_ORIGINS`) of ``layer`` and ``position`` where it has them.

    Node records are frozen dataclasses: two nodes are equal only when of the same kind."""

    origin: str
    layer: int | None = None
    position: int | None = None

    @property
    def node_id(self) -> str:
        """``C_{origin}[_{layer}][_p{position}]`` (circuit-tracer has no such nodes)."""
        s = f"C_{self.origin}"
        if self.layer is not None:
            s += f"_{self.layer}"
        if self.position is not None:
            s += f"_p{self.position}"
        return s


@dataclass(frozen=True)
class LogitTarget:
    """A target given by coefficients over the vocabulary: the node's value is ``Σ_v c_v logit_v``
    (e.g. ``{a: 1, b: -1}`` for the logit difference ``a - b``), weighted ``weight`` in pruning.

    Parameters
    ----------
    label : str
    coefficients : mapping of token id to float
    weight : float
    """

    label: str
    coefficients: Mapping[int, float]
    weight: float = 1.0


class PruneResult(NamedTuple):
    """circuit-tracer's pruning: boolean node and edge masks and each node's cumulative influence
    (pass the thresholds to the graph writers; they prune the graph themselves)."""

    node_mask: np.ndarray
    edge_mask: np.ndarray
    cumulative_scores: np.ndarray

    def __repr__(self) -> str:
        return (f"PruneResult({int(self.node_mask.sum())} of {self.node_mask.size} nodes, "
                f"{int(self.edge_mask.sum())} edges kept)")


# -- circuit-tracer's influence and pruning, in numpy -------------------------------------------

def normalize_matrix(matrix: np.ndarray) -> np.ndarray:
    """``|A|`` with each row divided by its sum (sums below 1e-10 clamped to 1e-10)."""
    a = np.abs(matrix)
    return a / np.maximum(a.sum(axis=1, keepdims=True), 1e-10)


def compute_influence(A: np.ndarray, logit_weights: np.ndarray, max_iter: int = 1000) -> np.ndarray:
    """``w (A + A² + ...)`` by the power series, until a term is exactly zero (``A`` is nilpotent
    on a graph whose edges go from earlier to later nodes)."""
    current = logit_weights @ A
    influence = current.copy()
    it = 0
    while current.any():
        if it >= max_iter:
            raise InvalidArgumentError(f"influence did not converge after {it} iterations; is the graph acyclic?")
        current = current @ A
        influence += current
        it += 1
    return influence


def compute_node_influence(adjacency: np.ndarray, logit_weights: np.ndarray) -> np.ndarray:
    """Each node's indirect influence on the weighted logits: ``w ((I - Â)^-1 - I)``, ``Â`` the
    normalised adjacency."""
    return compute_influence(normalize_matrix(adjacency), logit_weights)


def compute_edge_influence(pruned: np.ndarray, logit_weights: np.ndarray) -> np.ndarray:
    """Each edge's influence: ``Â[t, s] (influence[t] + w[t])`` on the normalised pruned matrix."""
    normalized = normalize_matrix(pruned)
    influence = compute_influence(normalized, logit_weights) + logit_weights
    return normalized * influence[:, None]


def find_threshold(scores: np.ndarray, threshold: float) -> float:
    """The score above which the largest scores hold ``threshold`` of the total (circuit-tracer's
    rule: the first sorted score where the cumulative fraction reaches ``threshold``)."""
    s = np.sort(np.asarray(scores).ravel())[::-1]
    cum = np.cumsum(s) / np.sum(s)
    i = int(np.searchsorted(cum, threshold, side="left"))
    return s[min(i, len(cum) - 1)]


def influence_matrix(adjacency: np.ndarray) -> np.ndarray:
    """The indirect-influence matrix ``(I - Â)^-1 - I`` of the normalised adjacency ``Â`` (dense;
    entry ``[t, s]``: the total normalised influence of ``s`` on ``t`` over paths of length >= 1)."""
    A = normalize_matrix(np.asarray(adjacency, dtype=np.float64))
    n = A.shape[0]
    eye = np.eye(n)
    return np.linalg.solve(eye - A, eye) - eye


def prune_graph(adjacency: np.ndarray, logit_weights: np.ndarray, n_features: int, n_tokens: int, n_logits: int,
                node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """circuit-tracer's ``prune_graph`` on an adjacency in its node order (features, errors, tokens,
    logits): nodes by indirect influence, then edges by influence on the pruned matrix, then nodes
    left without outgoing (features, errors) or incoming (features) edges, until nothing changes.
    Tokens and logits are always kept."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise InvalidArgumentError(f"{name} must be between 0.0 and 1.0, got {v!r}.")
    node_influence = compute_node_influence(adjacency, logit_weights)
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    keep = n_logits + n_tokens
    node_mask[-keep:] = True
    pruned = adjacency.copy()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    edge_scores = compute_edge_influence(pruned, logit_weights)
    edge_mask = edge_scores >= find_threshold(edge_scores.ravel(), edge_threshold)
    old = node_mask.copy()
    node_mask[:-keep] &= edge_mask[:, :-keep].any(0)
    node_mask[:n_features] &= edge_mask[:n_features].any(1)
    while not np.array_equal(node_mask, old):
        old[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-keep] &= edge_mask[:, :-keep].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)
    order = np.argsort(-node_influence, kind="stable")
    cum = np.cumsum(node_influence[order]) / np.sum(node_influence)
    scores = np.zeros_like(node_influence)
    scores[order] = cum
    return PruneResult(node_mask, edge_mask, scores)


# -- the frozen linear model --------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Transcoder:
    """One member, as the attribution reads it."""

    dictionary: Dictionary
    layer: int  # the layer whose MLP input it reads
    writes: tuple[int, ...]  # the MLP outputs it writes (layers)
    R: np.ndarray  # (d, d): hook = R x / s + c on the stream the MLP reads
    c: np.ndarray  # (d,)
    scaled: bool  # whether the hook divides by ln2's scale


class _Frozen:
    """The replacement model on one prompt, linear in the residual stream: frozen patterns and norm
    scales, the MLPs cut (except skip maps)."""

    def __init__(self, model: Transformer, cache: Any, members: list[_Transcoder]) -> None:
        c = model.config
        self.model = model
        self.L, self.seq, self.d = c.n_layers, cache.seq, c.d_model
        self.parallel = bool(c.parallel_attn_mlp)
        self.centred = c.centred_norm
        f64 = np.float64
        hw = model.head_weights
        self.W_V = np.asarray(hw.W_V, dtype=f64)  # (L, H, dh, d)
        self.W_O = np.asarray(hw.W_O, dtype=f64)  # (L, H, d, dh)
        self.H, self.dh = self.W_V.shape[1], self.W_V.shape[2]
        self.pattern = np.asarray(cache.pattern, dtype=f64)  # (L, H, q, k)
        self.s1 = None if cache.ln1_scale is None else np.asarray(cache.ln1_scale, dtype=f64)
        self.s2 = None if cache.ln2_scale is None else np.asarray(cache.ln2_scale, dtype=f64)
        self.sf = None if cache.ln_final_scale is None else np.asarray(cache.ln_final_scale, dtype=f64)
        self.q_scale = None if cache.q_scale is None else np.asarray(cache.q_scale, dtype=f64)
        self.k_scale = None if cache.k_scale is None else np.asarray(cache.k_scale, dtype=f64)
        # the attention output's own norm (post_norms; its weight is in the view's W_O and b_O)
        self.s_post = None if cache.ln1_post_scale is None else np.asarray(cache.ln1_post_scale, dtype=f64)
        self.skips: dict[int, tuple[np.ndarray, _Transcoder]] = {}
        for m in members:
            if m.dictionary.W_skip is not None:
                self.skips[m.layer] = (np.asarray(m.dictionary.W_skip, dtype=f64) @ m.R, m)
        # the stacked maps for the whole layer at once
        self.W_O_cat = self.W_O.transpose(0, 2, 1, 3).reshape(self.L, self.d, self.H * self.dh)  # (L, d, H dh)
        self.W_V_cat = self.W_V.reshape(self.L, self.H * self.dh, self.d)  # (L, H dh, d)
        self.set_work_dtype(np.dtype(f64))

    def set_work_dtype(self, dtype: np.dtype) -> None:
        """The dtype of the adjoint maps (:meth:`attn_T`, :meth:`skip_T`): copies where it is not float64."""
        def cast(a: Any) -> Any:
            return None if a is None else np.asarray(a, dtype=dtype)

        self.work = dtype
        self.w_O_cat, self.w_V_cat, self.w_pattern = cast(self.W_O_cat), cast(self.W_V_cat), cast(self.pattern)
        self.w_s1, self.w_s2, self.w_post = cast(self.s1), cast(self.s2), cast(self.s_post)
        self.w_skips = {l: cast(M) for l, (M, _) in self.skips.items()}

    def centre(self, g: np.ndarray) -> np.ndarray:
        return g - g.mean(axis=-1, keepdims=True) if self.centred else g

    # backward (adjoint) maps on gradients G: (n, seq, d)
    def attn_T(self, l: int, G: np.ndarray) -> np.ndarray:
        """The adjoint of layer ``l``'s frozen attention on gradients ``G`` ``(n, P, d)`` over the
        first ``P`` positions (causal attention: later positions neither read nor are read), in the
        working dtype."""
        n, P, d = G.shape
        H, dh = self.H, self.dh
        if self.w_post is not None:
            G = G / self.w_post[l, :P][None, :, None]
        U = G.reshape(n * P, d) @ self.w_O_cat[l]  # (n P, H dh): every head's W_Oᵀ g
        U = np.ascontiguousarray(U.reshape(n, P, H, dh).transpose(2, 1, 0, 3)).reshape(H, P, n * dh)
        Y = np.matmul(self.w_pattern[l, :, :P, :P].transpose(0, 2, 1), U)  # (H, P keys, n dh): Aᵀ per head
        del U
        Y = np.ascontiguousarray(Y.reshape(H, P, n, dh).transpose(2, 1, 0, 3)).reshape(n * P, H * dh)
        out = (Y @ self.w_V_cat[l]).reshape(n, P, d)
        del Y
        if self.w_s1 is not None:
            out /= self.w_s1[l, :P][None, :, None]
            if self.centred:
                out -= out.mean(axis=-1, keepdims=True)
        return out

    def skip_T(self, l: int, G: np.ndarray) -> np.ndarray | None:
        M = self.w_skips.get(l)
        if M is None:
            return None
        P = G.shape[1]
        out = G @ M  # (n, P, d): M is (d, d) on the stream
        # only a skip map that reads behind ln2 (MLP_IN, MLP_NORMALIZED) sees its frozen scale; one
        # that reads the stream itself (resid_mid) does not
        if self.w_s2 is not None and self.skips[l][1].scaled:
            out /= self.w_s2[l, :P][None, :, None]
        return out

    # forward maps on states X: (seq, d)
    def attn_fwd(self, l: int, X: np.ndarray, head: int | None = None) -> np.ndarray:
        xn = X
        if self.s1 is not None:
            xn = self.centre(X) / self.s1[l][:, None]
        heads = range(self.H) if head is None else (head,)
        out = np.zeros_like(X)
        for h in heads:
            v = xn @ self.W_V[l, h].T
            out += (self.pattern[l, h] @ v) @ self.W_O[l, h].T
        if self.s_post is not None:
            out /= self.s_post[l][:, None]
        return out

    def skip_fwd(self, l: int, X: np.ndarray) -> np.ndarray:
        if l not in self.skips:
            return np.zeros_like(X)
        M, m = self.skips[l]
        out = X @ M.T
        if self.s2 is not None and m.scaled:
            out = out / self.s2[l][:, None]
        return out


@dataclass(frozen=True, eq=False)
class QKAttribution:
    """One head's attention score on one (query, key) pair, split over source pairs (build it with
    :meth:`AttributionGraph.qk_attribution`): ``score = Σ_{a,b} query_vectors[a] · key_vectors[b] /
    attn_scale``.

    Attributes
    ----------
    layer, head, query, key : int
    sources : tuple
        The graph's nodes, then its constants, then ``ConstantNode("q_bias", layer)`` and
        ``ConstantNode("k_bias", layer)``.
    query_vectors, key_vectors : (n_sources, d_head) float64 arrays
        Each source's share of the (normed, rotated) query at ``query`` and key at ``key``.
    attn_scale : float
    """

    layer: int
    head: int
    query: int
    key: int
    sources: tuple = field(repr=False)
    query_vectors: np.ndarray = field(repr=False)
    key_vectors: np.ndarray = field(repr=False)
    attn_scale: float = field(repr=False)

    @property
    def score(self) -> float:
        """The pre-softmax score (before soft-capping)."""
        return float(self.query_vectors.sum(0) @ self.key_vectors.sum(0) / self.attn_scale)

    def terms(self) -> np.ndarray:
        """``(n_sources, n_sources)``: ``terms[a, b]`` the score term of query source ``a`` and key source ``b``."""
        return self.query_vectors @ self.key_vectors.T / self.attn_scale

    def query_shares(self) -> np.ndarray:
        """Each source's share of the score through the query (the rows of :meth:`terms` summed)."""
        return self.query_vectors @ self.key_vectors.sum(0) / self.attn_scale

    def key_shares(self) -> np.ndarray:
        """Each source's share of the score through the key (the columns of :meth:`terms` summed)."""
        return self.key_vectors @ self.query_vectors.sum(0) / self.attn_scale

    def top_terms(self, k: int = 10) -> list:
        """The ``k`` largest terms by magnitude: ``(query source, key source, value)``."""
        qa = np.nonzero(np.any(self.query_vectors != 0, axis=1))[0]
        ka = np.nonzero(np.any(self.key_vectors != 0, axis=1))[0]
        T = self.query_vectors[qa] @ self.key_vectors[ka].T / self.attn_scale
        flat = np.argsort(-np.abs(T), axis=None, kind="stable")[:k]
        return [(self.sources[qa[f // T.shape[1]]], self.sources[ka[f % T.shape[1]]], float(T.flat[f])) for f in flat]


@dataclass(frozen=True, eq=False)
class QKFeatureAttribution:
    """Which sources one head's queries and keys read, over a prompt's (query, key) pairs weighted
    by the head's pattern (build it with :meth:`AttributionGraph.qk_feature_attribution`, which
    states the definition): ``query.sum() == key.sum() == total``.

    Attributes
    ----------
    layer, head : int
    queries : tuple of int
        The query positions summed over.
    sources : tuple
        As :attr:`QKAttribution.sources`.
    query, key : (n_sources,) float64 arrays
        Each source's share of ``total`` through the query and through the key.
    total : float
        ``Σ_i Σ_j A_ij s_ij``.
    """

    layer: int
    head: int
    queries: tuple = field(repr=False)
    sources: tuple = field(repr=False)
    query: np.ndarray = field(repr=False)
    key: np.ndarray = field(repr=False)
    total: float = 0.0

    def top(self, side: str = "query", k: int = 10, *, features_only: bool = True) -> list:
        """The ``k`` sources with the largest shares by magnitude on ``side`` (``"query"`` or
        ``"key"``): ``(source, share)``; ``features_only`` keeps :class:`FeatureNode` sources only."""
        if side not in ("query", "key"):
            raise InvalidArgumentError(f"top: side must be 'query' or 'key', got {side!r}.")
        v = self.query if side == "query" else self.key
        idx = np.arange(len(self.sources))
        if features_only:
            idx = np.array([i for i, s in enumerate(self.sources) if isinstance(s, FeatureNode)], dtype=np.int64)
        order = idx[np.argsort(-np.abs(v[idx]), kind="stable")][:k]
        return [(self.sources[i], float(v[i])) for i in order]


@dataclass(frozen=True, eq=False)
class AttributionGraph:
    """An attribution graph on one prompt (build it with :func:`attribute`).

    Attributes
    ----------
    model_name : str
    tokens : (n_pos,) int array
    nodes : tuple
        :class:`FeatureNode` ..., :class:`ErrorNode` ... (layer-major), :class:`TokenNode` ...,
        :class:`LogitNode` ...: circuit-tracer's order. With SAEs: :class:`SAEFeatureNode` ... (by
        SAE, in forward order, position and index) after the :class:`FeatureNode` s and
        :class:`SAEErrorNode` ... (SAE-major, in forward order) after the :class:`ErrorNode` s.
    adjacency : (n_nodes, n_nodes) float64 (or float32) array
        ``adjacency[target, source]``: the direct effect of ``source`` on ``target`` (rows of
        features and logits are filled; a feature source's column carries its activation).
    constants : tuple of ConstantNode
    constant_adjacency : (n_nodes, n_constants) float64 array
        The constants' edges into the same targets.
    values : (n_nodes,) float64 array
        What each target's incoming edges sum to: a feature's pre-activation, a logit target's
        (demeaned) logit, before final soft-capping; NaN for errors and tokens (no incoming edges).
    activations : (n_transcoder_features,) float64 array
        The active transcoder features' activations (equal to their pre-activations).
    active_features : (n_transcoder_features, 3) int array
        ``(layer, position, index)`` of each :class:`FeatureNode`.
    dictionaries : tuple of str
        The name of the transcoder read at each layer (``""`` where there is none).
    logit_probabilities : (n_logits,) float64 array
        The targets' probabilities (their weights in pruning).
    demeaned : bool
        Whether logit targets are demeaned over the vocabulary (circuit-tracer's convention).
    zero_positions : int
        The leading positions with no feature nodes and zero error nodes.
    n_layers : int
    token_labels : tuple of str
        The prompt's tokens as strings (the model's vocabulary, else the ids).
    saes : tuple of str
        The residual-stream SAEs' names, in the order given to :func:`attribute` (``()``: none).
    sae_features : (n_sae_features, 3) int array
        ``(sae, position, index)`` of each :class:`SAEFeatureNode`, in node order.
    sae_activations : (n_sae_features,) float64 array
        Their activations (equal to their pre-activations).
    """

    model_name: str
    tokens: np.ndarray
    nodes: tuple
    adjacency: np.ndarray
    constants: tuple
    constant_adjacency: np.ndarray
    values: np.ndarray
    activations: np.ndarray
    active_features: np.ndarray
    dictionaries: tuple
    logit_probabilities: np.ndarray
    demeaned: bool
    zero_positions: int
    n_layers: int
    token_labels: tuple = ()
    saes: tuple = ()
    sae_features: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    sae_activations: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _frozen: Any = field(default=None, repr=False, compare=False)
    _sources: Any = field(default=None, repr=False, compare=False)
    _backprop: Any = field(default=None, repr=False, compare=False)

    # -- sizes --------------------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_features(self) -> int:
        """Feature nodes: the transcoders' and the SAEs'."""
        return int(self.active_features.shape[0]) + int(self.sae_features.shape[0])

    @property
    def n_errors(self) -> int:
        """Error nodes: the transcoders' and the SAEs'."""
        return (self.n_layers + len(self.saes)) * self.n_pos

    @property
    def n_logits(self) -> int:
        return int(self.logit_probabilities.shape[0])

    @property
    def logit_nodes(self) -> tuple:
        return self.nodes[-self.n_logits:]

    def index(self, node: Any) -> int:
        """The row/column of ``node`` in :attr:`adjacency`."""
        i = self._index_map.get(node)
        if i is None:
            raise InvalidArgumentError(f"{node!r} is not a node of this graph.")
        return i

    @property
    def _index_map(self) -> dict:
        m = self.__dict__.get("_imap")
        if m is None:
            m = {n: i for i, n in enumerate(self.nodes)}
            object.__setattr__(self, "_imap", m)
        return m

    # -- checks ---------------------------------------------------------------------------------
    def completeness_error(self) -> np.ndarray:
        """``|Σ incoming edges - value| / max(1, |value|)`` per feature and logit node."""
        # by slices, not an index array: a copy of the feature rows would be as large as the adjacency
        n, f, k = len(self.nodes), self.n_features, self.n_logits
        total = np.r_[self.adjacency[:f].sum(axis=1, dtype=np.float64), self.adjacency[n - k:].sum(axis=1, dtype=np.float64)]
        total += np.r_[self.constant_adjacency[:f].sum(axis=1), self.constant_adjacency[n - k:].sum(axis=1)]
        v = np.r_[self.values[:f], self.values[n - k:]]
        return np.abs(total - v) / np.maximum(1.0, np.abs(v))

    def adjacency_sparse(self) -> Any:
        """:attr:`adjacency` as a ``scipy.sparse.csr_array`` (its nonzero entries)."""
        import scipy.sparse as sp

        return sp.csr_array(self.adjacency)

    def full_adjacency(self) -> np.ndarray:
        """``(n_nodes + n_constants)²``: :attr:`adjacency` with the constants appended as sources
        (after the logits)."""
        n, k = len(self.nodes), len(self.constants)
        A = np.zeros((n + k, n + k))
        A[:n, :n] = self.adjacency
        A[:n, n:] = self.constant_adjacency
        return A

    # -- pruning ----------------------------------------------------------------------------------
    def logit_weights(self) -> np.ndarray:
        """``(n_nodes,)``: the targets' probabilities on the logit rows, zeros elsewhere."""
        w = np.zeros(len(self.nodes))
        w[-self.n_logits:] = self.logit_probabilities
        return w

    def node_influence(self) -> np.ndarray:
        """circuit-tracer's ``compute_node_influence`` (constants are not nodes there)."""
        return compute_node_influence(self.adjacency, self.logit_weights())

    def influence_matrix(self) -> np.ndarray:
        """The indirect-influence matrix ``(I - Â)^-1 - I`` (dense; see :func:`influence_matrix`)."""
        return influence_matrix(self.adjacency)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        """circuit-tracer's ``prune_graph`` on :attr:`adjacency` (constants are left out, as
        circuit-tracer has none)."""
        return prune_graph(self.adjacency, self.logit_weights(), self.n_features, self.n_pos, self.n_logits,
                           node_threshold, edge_threshold)

    # -- the per-head split --------------------------------------------------------------------------
    def edge_by_head(self, target: Any, source: Any) -> dict:
        """The edge ``source -> target`` split by the first attention head on each path:
        ``{None: through the residual stream and skip maps only, HeadId(l, h): through head (l, h)
        first, ...}`` (the values sum to the edge). ``target`` and ``source`` are nodes or indices."""
        t = int(target) if isinstance(target, (int, np.integer)) else self.index(target)
        s = int(source) if isinstance(source, (int, np.integer)) else self.index(source)
        if self.saes:
            raise InvalidArgumentError("edge_by_head: not available on a graph with SAE nodes.")
        fz: _Frozen = self._frozen
        srcs = self._sources
        tnode = self.nodes[t]
        if isinstance(tnode, (ErrorNode, TokenNode)):
            raise InvalidArgumentError("error and token nodes have no incoming edges.")
        snode = self.nodes[s]
        if isinstance(snode, LogitNode):
            raise InvalidArgumentError("logit nodes have no outgoing edges.")
        writes = srcs.writes(snode, s)  # list of (station, layer, (seq, d) array)
        read_station, read_layer, pos, vec = srcs.read(tnode, t)
        parts: dict = {}
        for station, layer, V in writes:
            for key, val in _propagate_split(fz, station, layer, V, read_station, read_layer, pos, vec).items():
                parts[key] = parts.get(key, 0.0) + val
        return parts

    # -- QK attribution -------------------------------------------------------------------------------
    def qk_attribution(self, layer: int, head: int, query: int, key: int) -> QKAttribution:
        """Head (``layer``, ``head``)'s attention score of ``query`` on ``key`` (before soft-capping and
        the softmax), split over pairs of sources: every node and constant of the graph writes into
        the residual stream that the head reads at both positions, and the query's and key's biases
        (``q_bias``, ``k_bias``) are sources too; the frozen input-norm and q/k-norm scales and the
        rotary rotations are applied. The terms sum to the score exactly."""
        fz: _Frozen = self._frozen
        model = fz.model
        c = model.config
        for name, v, n in (("layer", layer, self.n_layers), ("head", head, fz.H), ("query", query, self.n_pos),
                           ("key", key, self.n_pos)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < n:
                raise InvalidArgumentError(f"qk_attribution: {name} {v!r} is out of range 0..{n - 1}.")
        l, h, i, j = int(layer), int(head), int(query), int(key)
        if c.causal and j > i:
            raise InvalidArgumentError(f"qk_attribution: key {j} is after query {i}; causal attention never reads it.")
        Q = self._qk_side(l, h, "q", [i])[0]
        Kv = self._qk_side(l, h, "k", [j])[0]
        return QKAttribution(l, h, i, j, self._qk_sources(l), Q, Kv, float(c.attn_scale))

    def qk_feature_attribution(self, layer: int, head: int, queries: Sequence[int] | None = None) -> QKFeatureAttribution:
        """Which sources a head's queries and keys read most over the prompt, weighted by its pattern.

        With ``s_ij`` the pre-softmax score of query ``i`` on key ``j`` (before soft-capping) split as
        in :meth:`qk_attribution` (``s_ij = Σ_{a,b} q_a(i) · k_b(j) / attn_scale``, ``q(i) = Σ_a
        q_a(i)``, ``k(j) = Σ_b k_b(j)``) and ``A_ij`` the frozen pattern:

        - ``query[a] = Σ_i Σ_j A_ij q_a(i) · k(j) / attn_scale``: source ``a``'s share through the query,
        - ``key[b] = Σ_i Σ_j A_ij q(i) · k_b(j) / attn_scale``: source ``b``'s share through the key,

        over the queries ``i`` in ``queries`` (default: the positions after :attr:`zero_positions`)
        and the keys ``j`` they attend to. Both sum to ``total = Σ_i Σ_j A_ij s_ij``, the queries'
        pattern-weighted scores (each query's expected score under its own attention)."""
        fz: _Frozen = self._frozen
        c = fz.model.config
        for name, v, n in (("layer", layer, self.n_layers), ("head", head, fz.H)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < n:
                raise InvalidArgumentError(f"qk_feature_attribution: {name} {v!r} is out of range 0..{n - 1}.")
        l, h = int(layer), int(head)
        if queries is None:
            qs = list(range(min(self.zero_positions, self.n_pos - 1), self.n_pos))
        else:
            qs = []
            for v in queries:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < self.n_pos:
                    raise InvalidArgumentError(f"qk_feature_attribution: query {v!r} is out of range 0..{self.n_pos - 1}.")
                qs.append(int(v))
            if not qs:
                raise InvalidArgumentError("qk_feature_attribution: queries is empty.")
        qs = sorted(set(qs))
        W = fz.pattern[l, h][qs]  # (n_queries, n_pos): each query's weights on the keys
        ks = [k for k in range(self.n_pos) if np.any(W[:, k] != 0)]
        Wk = W[:, ks]
        Q = self._qk_side(l, h, "q", qs)  # (n_queries, n_sources, d_head)
        K = self._qk_side(l, h, "k", ks)  # (n_keys, n_sources, d_head)
        scale = float(c.attn_scale)
        k_tot = K.sum(axis=1)  # (n_keys, d_head)
        q_tot = Q.sum(axis=1)
        kbar = Wk @ k_tot  # (n_queries, d_head): each query's pattern-weighted key
        qbar = Wk.T @ q_tot  # (n_keys, d_head): each key's pattern-weighted query
        query = np.einsum("isd,id->s", Q, kbar) / scale
        key = np.einsum("jsd,jd->s", K, qbar) / scale
        total = float(np.einsum("id,id->", q_tot, kbar) / scale)
        return QKFeatureAttribution(l, h, tuple(qs), self._qk_sources(l), query, key, total)

    def _qk_sources(self, l: int) -> tuple:
        return tuple(self.nodes) + tuple(self.constants) + (ConstantNode("q_bias", l), ConstantNode("k_bias", l))

    def _qk_side(self, l: int, h: int, side: str, positions: Sequence[int]) -> np.ndarray:
        """``(len(positions), n_sources, d_head)``: each source's share of head (``l``, ``h``)'s
        (normed, rotated) query (``side="q"``) or key at each position; sources as :meth:`_qk_sources`."""
        fz: _Frozen = self._frozen
        model = fz.model
        c = model.config
        hw = model.head_weights
        g = c.kv_head(h)
        N, C = len(self.nodes), len(self.constants)
        if side == "q":
            W, b, scales = hw.W_Q[l, h], hw.b_Q[l, h], None if fz.q_scale is None else fz.q_scale[l, h]
        else:
            W, b, scales = hw.W_K[l, h], hw.b_K[l, h], None if fz.k_scale is None else fz.k_scale[l, g]
        W = np.array(W, dtype=np.float64)  # (d_head, d): each row a functional of the stream
        b = np.array(b, dtype=np.float64)
        dh = W.shape[0]
        Ms, biases = [], []
        for pos in positions:
            M = W if fz.s1 is None else fz.centre(W) / fz.s1[l, pos]
            bias = b
            if scales is not None:
                M, bias = M / scales[pos], bias / scales[pos]
            Ms.append(M)
            biases.append(bias)
        n = len(positions)
        out_n, out_c = np.zeros((n * dh, N)), np.zeros((n * dh, C))
        self._backprop(np.vstack(Ms), np.repeat(np.asarray(positions, dtype=np.int64), dh), "pre", l, out_n, out_c)
        V = np.zeros((n, N + C + 2, dh))
        V[:, :N] = out_n.reshape(n, dh, N).transpose(0, 2, 1)
        V[:, N:N + C] = out_c.reshape(n, dh, C).transpose(0, 2, 1)
        V[:, N + C + (0 if side == "q" else 1)] = np.array(biases)
        del out_n, out_c
        rot = c.layer_rotary(l)
        if rot is not None:
            V = rot.apply(V.transpose(1, 0, 2), np.asarray(positions), self.n_pos).transpose(1, 0, 2)
        return V

    # -- export -------------------------------------------------------------------------------------
    def to_networkx(self, *, prune: PruneResult | None = None, constants: bool = False) -> Any:
        """A ``networkx.DiGraph`` keyed by the node records (attributes: ``node_id``, circuit-tracer's
        id, ``kind``, ``layer``, ``position``, ``activation`` or ``value``) with an edge ``source ->
        target`` and its ``weight`` for every nonzero entry (or every kept edge of ``prune``);
        ``constants`` adds the constant nodes and their edges. (Keys are the records, not the ids:
        circuit-tracer's ids repeat, a layer-0 feature ``0_{i}_{p}`` and the error node of layer
        ``i`` at ``p`` both being ``0_{i}_{p}``.)"""
        import networkx as nx

        g = nx.DiGraph()
        keep = np.ones(len(self.nodes), dtype=bool) if prune is None else prune.node_mask
        for i, n in enumerate(self.nodes):
            if not keep[i]:
                continue
            attrs: dict[str, Any] = {"node_id": n.node_id, "kind": type(n).__name__.replace("Node", "").lower()}
            if isinstance(n, FeatureNode):
                attrs.update(layer=n.layer, position=n.position, activation=float(self.activations[i]))
            elif isinstance(n, ErrorNode):
                attrs.update(layer=n.layer, position=n.position)
            elif isinstance(n, SAEFeatureNode):
                k = i - self.active_features.shape[0]
                attrs.update(kind="sae_feature", sae=n.sae, position=n.position, activation=float(self.sae_activations[k]))
            elif isinstance(n, SAEErrorNode):
                attrs.update(kind="sae_error", sae=n.sae, position=n.position)
            elif isinstance(n, TokenNode):
                attrs.update(layer=None, position=n.position)
            else:
                attrs.update(layer=self.n_layers, position=n.position, value=float(self.values[i]),
                             probability=float(self.logit_probabilities[n.rank]))
            g.add_node(n, **attrs)
        mask = self.adjacency != 0 if prune is None else prune.edge_mask & (self.adjacency != 0)
        ts, ss = np.nonzero(mask)
        for t, s in zip(ts.tolist(), ss.tolist()):
            if keep[t] and keep[s]:
                g.add_edge(self.nodes[s], self.nodes[t], weight=float(self.adjacency[t, s]))
        if constants:
            for j, c in enumerate(self.constants):
                g.add_node(c, node_id=c.node_id, kind="constant", layer=c.layer, position=c.position)
                for t in np.nonzero(self.constant_adjacency[:, j])[0].tolist():
                    if keep[t]:
                        g.add_edge(c, self.nodes[t], weight=float(self.constant_adjacency[t, j]))
        return g

    def __repr__(self) -> str:
        return (f"AttributionGraph({self.model_name!r}: {self.n_pos} positions, {self.n_features} features, "
                f"{self.n_errors} errors, {self.n_logits} logits, {len(self.constants)} constants)")


# -- sources and targets -------------------------------------------------------------------------

class _Sources:
    """Where each node writes and how each target reads (for the per-head split)."""

    def __init__(self, fz: _Frozen, members: dict[int, _Transcoder], activations: np.ndarray, errors: np.ndarray,
                 token_vectors: np.ndarray, reads: np.ndarray) -> None:
        self.fz = fz
        self.members = members
        self.activations = activations
        self.errors = errors  # (L, seq, d)
        self.token_vectors = token_vectors  # (seq, d)
        self.reads = reads  # (n_nodes, d): each target's read vector

    def writes(self, node: Any, row: int) -> list:
        fz = self.fz
        out = []

        def at(p: int, v: np.ndarray) -> np.ndarray:
            V = np.zeros((fz.seq, fz.d))
            V[p] = v
            return V

        if isinstance(node, FeatureNode):
            m = self.members[node.layer]
            for j, wl in enumerate(m.writes):
                v = self.activations[row] * np.asarray(m.dictionary.W_dec[j][:, node.index], dtype=np.float64)
                out.append(("post", wl, at(node.position, v)))
        elif isinstance(node, ErrorNode):
            out.append(("post", node.layer, at(node.position, self.errors[node.layer, node.position])))
        elif isinstance(node, TokenNode):
            out.append(("pre", 0, at(node.position, self.token_vectors[node.position])))
        return out

    def read(self, node: Any, row: int) -> tuple:
        fz = self.fz
        if isinstance(node, FeatureNode):
            return ("pre" if fz.parallel else "mid"), node.layer, node.position, self.reads[row]
        return "post", fz.L - 1, node.position, self.reads[row]


def _place(fz: _Frozen, station: str, layer: int) -> tuple[int, int]:
    """A station as ``(layer, stage)``: stage 0 the stream entering ``layer``, 1 after its attention
    (sequential blocks); ``post_l`` is ``(l + 1, 0)``, and in parallel blocks so is ``mid_l``."""
    if station == "pre":
        return (layer, 0)
    if station == "mid" and not fz.parallel:
        return (layer, 1)
    return (layer + 1, 0)


def _propagate_split(fz: _Frozen, station: str, layer: int, V: np.ndarray, read_station: str, read_layer: int,
                     pos: int, vec: np.ndarray) -> dict:
    """Push ``V`` written at (``station``, ``layer``) forward through the frozen model, tracking the
    first head of each path, and read ``vec · X[pos]`` at (``read_station``, ``read_layer``)."""
    here = _place(fz, station, layer)
    stop = _place(fz, read_station, read_layer)
    if here > stop:
        return {None: 0.0}
    comps: dict = {None: V.copy()}
    while here < stop:
        l, stage = here
        if stage == 0:
            attn: dict = {}
            for key, X in comps.items():
                if key is None:
                    for h in range(fz.H):
                        attn[HeadId(l, h)] = fz.attn_fwd(l, X, h)
                else:
                    attn[key] = fz.attn_fwd(l, X)
            if fz.parallel:
                comps = {k: X + fz.skip_fwd(l, X) for k, X in comps.items()}
                here = (l + 1, 0)
            else:
                here = (l, 1)
            for k, Y in attn.items():
                comps[k] = comps[k] + Y if k in comps else Y
        else:
            comps = {k: X + fz.skip_fwd(l, X) for k, X in comps.items()}
            here = (l + 1, 0)
    return {k: float(X[pos] @ vec) for k, X in comps.items()}


# -- the entry point ------------------------------------------------------------------------------

def _members(transcoders: Any, model: Transformer) -> list[Dictionary]:
    if isinstance(transcoders, BoundDictionary):
        transcoders = transcoders.dictionary  # binding is done here anyway, against this model
    if isinstance(transcoders, (Dictionary, DictionarySet)):
        items = [transcoders]
    elif isinstance(transcoders, (list, tuple)):
        items = [t.dictionary if isinstance(t, BoundDictionary) else t for t in transcoders]
    else:
        raise InvalidArgumentError(
            f"attribute takes transcoders as a Dictionary, a DictionarySet or a sequence of them, got "
            f"{type(transcoders).__name__}."
        )
    out: list[Dictionary] = []
    for d in items:
        if isinstance(d, DictionarySet):
            out += list(d.members)
        elif isinstance(d, Dictionary):
            out.append(d)
        else:
            raise InvalidArgumentError(f"attribute: {d!r} is not a Dictionary or DictionarySet.")
    return out


def _sae_points(saes: Any, model: Transformer) -> list[tuple[int, Dictionary, str, int]]:
    """The residual-stream SAEs checked, as ``(index in saes, dictionary, station, layer)`` in forward
    order; the station is where the descent cuts the stream (``resid_pre`` of layer ``l > 0`` is
    ``post`` of ``l - 1``)."""
    if saes is None:
        return []
    if isinstance(saes, Dictionary) or not isinstance(saes, (list, tuple)):
        raise InvalidArgumentError(f"attribute: saes must be a sequence of Dictionary, got {type(saes).__name__}.")
    c = model.config
    out: list[tuple[int, Dictionary, str, int]] = []
    seen: dict = {}
    kinds = (HookKind.RESID_PRE, HookKind.RESID_MID, HookKind.RESID_POST)
    for i, d in enumerate(saes):
        if not isinstance(d, Dictionary):
            raise InvalidArgumentError(f"attribute: saes[{i}] is {type(d).__name__}, not a Dictionary.")
        what = f"attribute: SAE {d.name!r}"
        if len(d.reads) != 1 or len(d.writes) != 1 or d.reads[0] != d.writes[0] or d.reads[0].kind not in kinds:
            raise ConfigError(f"{what} reads {d.reads} and writes {d.writes}; an SAE for attribution reads and writes one "
                              "residual-stream hook (hook_resid_pre, hook_resid_mid or hook_resid_post).")
        if d.W_skip is not None:
            raise ConfigError(f"{what} has a skip map; a residual-stream SAE has none.")
        if "center_writing_weights" in d.preprocessing:
            raise ConfigError(f"{what} was trained with center_writing_weights; attribution reads the model as it is.")
        bind(d, model)
        h = d.reads[0]
        if h.kind is HookKind.RESID_MID and c.parallel_attn_mlp:
            raise ConfigError(f"{what} reads {h}; a model with parallel blocks has no hook_resid_mid.")
        if h.kind is HookKind.RESID_PRE:
            point = ("pre", 0) if h.layer == 0 else ("post", h.layer - 1)
        elif h.kind is HookKind.RESID_MID:
            point = ("mid", h.layer)
        else:
            point = ("post", h.layer)
        if point in seen:
            raise ConfigError(f"attribute: SAEs {seen[point]!r} and {d.name!r} read the same point of the residual stream; "
                              "give one SAE per point.")
        seen[point] = d.name
        out.append((i, d, point[0], point[1]))

    def depth(t: tuple) -> int:
        return -1 if t[2] == "pre" else 2 * t[3] + (0 if t[2] == "mid" else 1)

    return sorted(out, key=depth)


def _read_map(model: Transformer, d: Dictionary) -> _Transcoder:
    c = model.config
    what = f"attribute: dictionary {d.name!r}"
    if len(d.reads) != 1:
        raise ConfigError(f"{what} reads {len(d.reads)} hooks; a transcoder reads one MLP input.")
    h = d.reads[0]
    l = h.layer
    if "center_writing_weights" in d.preprocessing:
        raise ConfigError(f"{what} was trained with center_writing_weights; attribution reads the model as it is.")
    writes = []
    for w in d.writes:
        if w.kind is not HookKind.MLP_OUT or w.layer < l:
            raise ConfigError(
                f"{what} writes {w}; a transcoder writes MLP outputs (blocks.L.hook_mlp_out) of its own layer or later ones."
            )
        writes.append(w.layer)
    kind = h.kind
    if kind is HookKind.MLP_IN and "fold_ln" in d.preprocessing:
        kind = HookKind.MLP_NORMALIZED
    stream = HookKind.RESID_PRE if c.parallel_attn_mlp else HookKind.RESID_MID
    eye = np.eye(c.d_model)
    zero = np.zeros(c.d_model)
    if kind is stream:
        return _Transcoder(d, l, tuple(writes), eye, zero, False)
    if kind not in (HookKind.MLP_IN, HookKind.MLP_NORMALIZED):
        raise ConfigError(
            f"{what} reads {h}; a transcoder reads the MLP's input (mlp.hook_in, ln2.hook_normalized or "
            f"{stream.value})."
        )
    if model.layers[l].ln2 is None:
        return _Transcoder(d, l, tuple(writes), eye, zero, False)
    P = eye - 1.0 / c.d_model if c.centred_norm else eye
    if kind is HookKind.MLP_IN:
        w, b = model.stored_norm(l, "ln2")
        w = np.asarray(w, dtype=np.float64)
        return _Transcoder(d, l, tuple(writes), w[:, None] * P, zero if b is None else np.asarray(b, dtype=np.float64),
                           True)
    return _Transcoder(d, l, tuple(writes), P, zero, True)


def _select_logits(logits: np.ndarray, max_logits: int, probability: float) -> np.ndarray:
    """circuit-tracer's salient logits: the top ``max_logits`` by probability, cut after the first
    whose cumulative probability reaches ``probability``."""
    x = logits - logits.max()
    p = np.exp(x)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:max_logits]
    cum = np.cumsum(p[order])
    cutoff = int(np.searchsorted(cum, probability, side="left")) + 1
    return order[:cutoff]


def attribute(
    model: Any,
    transcoders: Any,
    tokens: Any,
    *,
    max_logits: int = 10,
    logit_probability: float = 0.95,
    targets: Sequence[Any] | None = None,
    demean_logits: bool = True,
    zero_positions: int = 1,
    batch_size: int | None = None,
    progress: Any = None,
    dtype: Any = np.float64,
    saes: Sequence[Dictionary] | None = None,
) -> AttributionGraph:
    """The attribution graph of ``model`` with ``transcoders`` replacing its MLPs on ``tokens``.

    Parameters
    ----------
    model : Transformer
        With its norms as stored (a transcoder reading ``mlp.hook_in`` needs ``ln2``'s weight).
    transcoders : Dictionary, DictionarySet or sequence of them
        Per-layer transcoders, skip transcoders, or a cross-layer transcoder's members (at most one
        per layer; a layer without one has its whole MLP output in its error nodes, so an empty
        sequence gives a graph of errors, tokens and logits, plus ``saes``' nodes). Bound
        dictionaries are accepted (their dictionaries are bound to ``model`` again). An
        attention-only model has no MLP to replace: its error nodes are zero.
    tokens : sequence of int
    max_logits, logit_probability : int, float
        With ``targets=None``: the most probable next tokens at the last position, at most
        ``max_logits``, up to the first whose cumulative probability reaches ``logit_probability``
        (circuit-tracer's rule).
    targets : sequence of int or LogitTarget, optional
        The targets instead: token ids (weighted by their probability) or :class:`LogitTarget`.
    demean_logits : bool
        Targets are logits minus their mean over the vocabulary (circuit-tracer's convention);
        ``False``: the logits themselves. Both are exact; the node values say which.
    zero_positions : int
        The leading positions whose features and errors are not nodes (circuit-tracer: 1); what the
        MLPs wrote there is the constant ``mlp_frozen``.
    batch_size : int, optional
        Targets propagated together (memory ``batch_size * n_pos * d_model`` floats, a few times
        over); default: as many as fit in about 64 MiB. On a causal model the targets go in waves,
        one per position (whatever their layer), each cut into batches.
    progress : callable, optional
        Called as ``progress(done, total)`` after each batch of targets (rows of the adjacency).
    dtype : numpy dtype
        The dtype of the edge computation and of :attr:`AttributionGraph.adjacency`: float64 (the
        default, exact to rounding) or float32 (half the memory of the adjacency and fewer bytes
        moved; edges then carry float32 rounding, errors of order 1e-6 relative to the largest edge
        into the same target, as circuit-tracer's). Activations, values and constants' edges stay
        float64.
    saes : sequence of Dictionary, optional
        Residual-stream SAEs (each reading and writing one hook ``hook_resid_pre``,
        ``hook_resid_mid`` (not on parallel blocks) or ``hook_resid_post``; at most one per point
        of the stream), as extra nodes. At each SAE's hook the stream at every position is replaced
        by ``W_dec f + b_dec + e``: ``f = encode(x)`` its features on the real stream ``x`` and
        ``e = x - W_dec f - b_dec`` its error, so the logits are unchanged. Its active features
        (:class:`SAEFeatureNode`) are targets (their incoming edges the direct effects of earlier
        nodes on ``W_enc x``, plus the constant ``sae_enc_bias``) and sources; its error nodes
        (:class:`SAEErrorNode`, one per position) and its decoder bias (the constant
        ``sae_dec_bias``) are sources. The stream is cut there as the MLPs are by transcoders:
        every path from an earlier source to a later target runs through the SAE's nodes. At the
        ``zero_positions`` the SAE has no nodes; its input less ``b_dec`` there is the constant
        ``sae_frozen``. ``None`` or empty: no SAE nodes (the graph is then circuit-tracer's).
        :meth:`AttributionGraph.edge_by_head` is not available on a graph with SAE nodes.

    Returns
    -------
    AttributionGraph
    """
    model = require_model(model, "attribute")
    c = model.config
    tok = check_tokens(tokens, model)
    if isinstance(zero_positions, bool) or not isinstance(zero_positions, (int, np.integer)) or zero_positions < 0:
        raise InvalidArgumentError(f"attribute: zero_positions must be a non-negative integer, got {zero_positions!r}.")
    n0 = int(zero_positions)
    if n0 > tok.shape[0]:
        raise InvalidArgumentError(f"attribute: zero_positions={n0} exceeds the prompt's {tok.shape[0]} tokens.")
    for label, v in (("max_logits", max_logits), ("batch_size", batch_size)):
        if v is None and label == "batch_size":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InvalidArgumentError(f"attribute: {label} must be a positive integer, got {v!r}.")
    if not isinstance(logit_probability, (int, float, np.floating)) or not 0 < float(logit_probability) <= 1:
        raise InvalidArgumentError(f"attribute: logit_probability must be in (0, 1], got {logit_probability!r}.")
    try:
        work = np.dtype(dtype)
    except TypeError as e:
        raise InvalidArgumentError(f"attribute: dtype must be float64 or float32, got {dtype!r}.") from e
    if work not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidArgumentError(f"attribute: dtype must be float64 or float32, got {dtype!r}.")
    dicts = _members(transcoders, model)
    for d in dicts:
        bind(d, model)  # hooks, dimensions and preprocessing checked against the model
    members = [_read_map(model, d) for d in dicts]
    by_layer: dict[int, _Transcoder] = {}
    for m in members:
        if m.layer in by_layer:
            raise ConfigError(
                f"attribute: {by_layer[m.layer].dictionary.name!r} and {m.dictionary.name!r} both read layer {m.layer}; "
                "give one transcoder per layer."
            )
        if m.dictionary.W_skip is not None and m.writes != (m.layer,):
            raise ConfigError(f"attribute: {m.dictionary.name!r} has a skip map but writes {m.writes}; a skip map writes its own layer.")
        by_layer[m.layer] = m
    sae_list = _sae_points(saes, model)
    f64 = np.float64
    logits_b, cache_b = run_batch(model, tok[None])
    cache = cache_b.first()
    logits = np.asarray(logits_b[0], dtype=f64)
    precap = logits if cache.logits_precap is None else np.asarray(cache.logits_precap, dtype=f64)
    L, seq, D = c.n_layers, tok.shape[0], c.d_model
    fz = _Frozen(model, cache, members)
    # an attention-only model has no MLP to replace: its error nodes are zero, and its graph runs
    # from tokens (and residual SAEs' nodes) through the frozen attention to the logits
    mlp_out = np.zeros((L, seq, D)) if cache.mlp_out is None else np.asarray(cache.mlp_out, dtype=f64)

    # -- features ------------------------------------------------------------------------------
    feats = []  # (layer, pos, idx, activation)
    recon = np.zeros((L, seq, D))
    dec_bias = np.zeros((L, D))
    skip_out = np.zeros((L, seq, D))  # the full skip output (linear part + W_skip c + b_skip)
    for l in sorted(by_layer):
        m = by_layer[l]
        d = m.dictionary
        x = np.asarray(hook_activations(model, cache_b, d.reads[0], fold_ln="fold_ln" in d.preprocessing)[0], dtype=f64)
        pre = np.asarray(d.pre_activations(x), dtype=f64)
        act = np.asarray(d.activation(pre), dtype=f64)
        for j, wl in enumerate(m.writes):
            Wd = np.asarray(d.W_dec[j], dtype=f64)
            recon[wl] += act @ Wd.T  # every position's real features (zeroed positions included)
            dec_bias[wl] += np.asarray(d.b_dec[j], dtype=f64)
        if d.W_skip is not None:
            so = x @ np.asarray(d.W_skip, dtype=f64).T
            if d.b_skip is not None:
                so = so + np.asarray(d.b_skip, dtype=f64)
            skip_out[l] = so
        act_nodes = act.copy()
        act_nodes[:n0] = 0
        ps, idx = np.nonzero(act_nodes)
        if ps.size and not np.allclose(act[ps, idx], pre[ps, idx], rtol=0, atol=0):
            raise ConfigError(
                f"attribute: {d.name!r}'s activation changes the value of an active feature (not pre * mask); "
                "attribution needs a feature's activation to equal its pre-activation."
            )
        feats += [(l, int(p), int(i), float(act[p, i])) for p, i in zip(ps, idx)]
    feats.sort(key=lambda t: t[:3])
    n_f = len(feats)
    active = np.array([f[:3] for f in feats], dtype=np.int64).reshape(n_f, 3)
    activations = np.array([f[3] for f in feats], dtype=f64)
    # errors: the MLP's real output minus the reconstruction (features of every position)
    errors = mlp_out - recon - dec_bias[:, None, :] - skip_out
    # zeroed positions: features' and error's share of the MLP output is the mlp_frozen constant
    frozen0 = np.zeros((L, n0, D))
    if n0:
        frozen0 = mlp_out[:, :n0] - dec_bias[:, None, :] - skip_out[:, :n0]
        errors[:, :n0] = 0
    # residual-stream SAEs: features from the real stream; the error completes the reconstruction
    S = len(sae_list)
    sae_feats = []  # (order k, pos, idx, activation)
    sae_errors = np.zeros((S, seq, D))
    sae_frozen0 = np.zeros((S, n0, D))
    for k, (si, d, _, _) in enumerate(sae_list):
        x = np.asarray(hook_activations(model, cache_b, d.reads[0])[0], dtype=f64)
        pre = np.asarray(d.pre_activations(x), dtype=f64)
        act = np.asarray(d.activation(pre), dtype=f64)
        bd = np.asarray(d.b_dec[0], dtype=f64)
        sae_errors[k] = x - act @ np.asarray(d.W_dec[0], dtype=f64).T - bd
        if n0:
            sae_frozen0[k] = x[:n0] - bd
            sae_errors[k, :n0] = 0
        act_nodes = act.copy()
        act_nodes[:n0] = 0
        ps, idx = np.nonzero(act_nodes)
        if ps.size and not np.array_equal(act[ps, idx], pre[ps, idx]):
            raise ConfigError(
                f"attribute: SAE {d.name!r}'s activation changes the value of an active feature (not pre * mask); "
                "attribution needs a feature's activation to equal its pre-activation."
            )
        sae_feats += [(k, int(p), int(i), float(act[p, i])) for p, i in zip(ps, idx)]
    n_sf = len(sae_feats)
    sae_active = np.array([f[:3] for f in sae_feats], dtype=np.int64).reshape(n_sf, 3)  # order k, not index si
    sae_acts = np.array([f[3] for f in sae_feats], dtype=f64)

    # -- logit targets ------------------------------------------------------------------------------
    V_out = c.vocab_out
    W_U = np.asarray(model.W_U.array, dtype=f64)  # (V, d), the view (final norm weight folded)
    b_U_view = np.asarray(model.b_U, dtype=f64)
    b_U_raw = np.asarray(model.params["b_U"], dtype=f64)
    p_last = logits[-1] - logits[-1].max()
    probs = np.exp(p_last)
    probs /= probs.sum()
    coeffs, labels, vidx, weights = [], [], [], []
    if targets is None:
        for t in _select_logits(logits[-1], int(max_logits), float(logit_probability)):
            cv = np.zeros(V_out)
            cv[t] = 1.0
            coeffs.append(cv)
            labels.append(_token_label(model, int(t)))
            vidx.append(int(t))
            weights.append(float(probs[t]))
    else:
        for r, t in enumerate(targets):
            cv = np.zeros(V_out)
            if isinstance(t, LogitTarget):
                for k, v in t.coefficients.items():
                    if not 0 <= int(k) < V_out:
                        raise InvalidArgumentError(f"attribute: target {t.label!r} names token {k}, outside 0..{V_out - 1}.")
                    cv[int(k)] += float(v)
                coeffs.append(cv)
                labels.append(t.label)
                vidx.append(V_out + r)
                weights.append(float(t.weight))
            elif isinstance(t, (int, np.integer)) and not isinstance(t, bool) and 0 <= t < V_out:
                cv[int(t)] = 1.0
                coeffs.append(cv)
                labels.append(_token_label(model, int(t)))
                vidx.append(int(t))
                weights.append(float(probs[int(t)]))
            else:
                raise InvalidArgumentError(f"attribute: target {t!r} is not a token id in 0..{V_out - 1} or a LogitTarget.")
        if not coeffs:
            raise InvalidArgumentError("attribute: targets is empty.")
        if len(set(vidx)) != len(vidx):
            raise InvalidArgumentError(f"attribute: targets name a token twice ({vidx}); each logit node is one target.")
    C = np.array(coeffs)  # (n_logits, V)
    if demean_logits:
        C = C - C.sum(axis=1, keepdims=True) / V_out
    n_log = C.shape[0]
    logit_values = C @ precap[-1]
    logit_read = C @ W_U  # (n_logits, d) on the final norm's output
    if fz.sf is not None:
        logit_read = fz.centre(logit_read) / fz.sf[-1]

    # -- nodes ----------------------------------------------------------------------------------
    feature_nodes = [FeatureNode(f[0], f[1], f[2]) for f in feats]
    sae_nodes = [SAEFeatureNode(sae_list[k][0], p, i) for k, p, i in sae_active.tolist()]
    error_nodes = [ErrorNode(l, p) for l in range(L) for p in range(seq)]
    sae_error_nodes = [SAEErrorNode(t[0], p) for t in sae_list for p in range(seq)]
    token_nodes = [TokenNode(p, int(tok[p])) for p in range(seq)]
    logit_nodes = [LogitNode(r, vidx[r], labels[r], seq - 1, L) for r in range(n_log)]
    nodes = tuple(feature_nodes + sae_nodes + error_nodes + sae_error_nodes + token_nodes + logit_nodes)
    N = len(nodes)
    sf0 = n_f  # the SAE features' rows
    err0 = n_f + n_sf
    serr0 = err0 + L * seq
    tok0, log0 = serr0 + S * seq, serr0 + (S + 1) * seq

    constants: list[ConstantNode] = []
    const_index: dict = {}

    def const(origin: str, layer: int | None = None, position: int | None = None) -> int:
        key = ConstantNode(origin, layer, position)
        if key not in const_index:
            const_index[key] = len(constants)
            constants.append(key)
        return const_index[key]

    # constant writes into the stream: (station, layer) -> list of (const col, (seq, d) array)
    const_writes: dict = {}

    def write(station: str, layer: int, col: int, V: np.ndarray) -> None:
        const_writes.setdefault((station, layer), []).append((col, V))

    hw = model.head_weights
    if model.W_pos is not None:
        W_pos = np.asarray(model.W_pos.array, dtype=f64)
        for p in range(seq):
            V = np.zeros((seq, D))
            V[p] = W_pos[:, p]
            write("pre", 0, const("pos", None, p), V)
    for l in range(L):
        bV_view = np.asarray(hw.b_V[l], dtype=f64)  # (H, dh)
        raw_key = f"blocks.{l}.attn.b_V"
        bV_raw = np.asarray(model.params[raw_key], dtype=f64)
        bV_raw = bV_raw[np.asarray(hw.kv_head[l])] if bV_raw.shape[0] != bV_view.shape[0] else bV_raw
        WO = fz.W_O[l]
        b_O = np.asarray(hw.b_O[l], dtype=f64)
        ab = b_O + np.einsum("hmd,hd->m", WO, bV_raw)
        ln1b = np.einsum("hmd,hd->m", WO, bV_view - bV_raw)
        post = np.ones(seq) if fz.s_post is None else 1.0 / fz.s_post[l]  # the output norm's frozen scale
        write("mid", l, const("attn_bias", l), post[:, None] * ab)
        if np.any(ln1b != 0):
            write("mid", l, const("ln1_bias", l), post[:, None] * ln1b)
    for l in range(L):
        m = by_layer.get(l)
        if any(l in mm.writes for mm in members):
            write("post", l, const("dec_bias", l), np.broadcast_to(dec_bias[l], (seq, D)))
        if m is not None and m.dictionary.W_skip is not None:
            Ws = np.asarray(m.dictionary.W_skip, dtype=f64)
            if np.any(m.c != 0):
                write("post", l, const("ln2_bias", l), np.broadcast_to(Ws @ m.c, (seq, D)))
            if m.dictionary.b_skip is not None:
                write("post", l, const("skip_bias", l), np.broadcast_to(np.asarray(m.dictionary.b_skip, dtype=f64), (seq, D)))
        for p in range(n0):
            V = np.zeros((seq, D))
            V[p] = frozen0[l, p]
            write("post", l, const("mlp_frozen", l, p), V)
    # the SAEs' constant sources, written where each cuts the stream: k -> list of (const col, (seq, d) array)
    sae_consts: dict = {}
    for k, (si, d, _, _) in enumerate(sae_list):
        sae_consts[k] = [(const("sae_dec_bias", si), np.broadcast_to(np.asarray(d.b_dec[0], dtype=f64), (seq, D)))]
        for p in range(n0):
            V = np.zeros((seq, D))
            V[p] = sae_frozen0[k, p]
            sae_consts[k].append((const("sae_frozen", si, p), V))
    # direct constants of targets (not through the stream)
    direct: list[tuple[int, int, float]] = []  # (row, const col, value)

    # target read vectors (rows of ``reads``) and values
    reads = np.zeros((N, D))
    values = np.full(N, np.nan)
    values[:n_f] = activations
    enc_rows: dict[int, np.ndarray] = {}  # layer -> its feature rows (a contiguous range)
    for l in sorted(by_layer):
        rows = np.nonzero(active[:, 0] == l)[0]
        if not rows.size:
            continue
        enc_rows[l] = rows
        m = by_layer[l]
        d = m.dictionary
        We = np.asarray(d.W_enc[0], dtype=f64)
        idx, pos = active[rows, 2], active[rows, 1]
        E = We[idx] @ m.R
        if m.scaled:
            E /= fz.s2[l, pos][:, None]
        reads[rows] = E
        b_enc = np.asarray(d.b_enc, dtype=f64)
        if d.pre_shift:
            b_enc = b_enc - We @ np.asarray(d.b_dec[0], dtype=f64)
        if np.any(m.c != 0):
            col = const("ln2_bias", l)
            direct += [(int(r), col, float(v)) for r, v in zip(rows, We[idx] @ m.c)]
        col = const("enc_bias", l)
        direct += [(int(r), col, float(v)) for r, v in zip(rows, b_enc[idx])]
    sae_rows: dict[int, np.ndarray] = {}  # order k -> its feature rows
    values[sf0:sf0 + n_sf] = sae_acts
    for k, (si, d, _, _) in enumerate(sae_list):
        rows = sf0 + np.nonzero(sae_active[:, 0] == k)[0]
        if not rows.size:
            continue
        sae_rows[k] = rows
        We = np.asarray(d.W_enc[0], dtype=f64)
        idx = sae_active[rows - sf0, 2]
        reads[rows] = We[idx]  # the SAE reads the stream itself
        b_enc = np.asarray(d.b_enc, dtype=f64)
        if d.pre_shift:
            b_enc = b_enc - We @ np.asarray(d.b_dec[0], dtype=f64)
        col = const("sae_enc_bias", si)
        direct += [(int(r), col, float(v)) for r, v in zip(rows, b_enc[idx])]
    reads[log0:log0 + n_log] = logit_read
    values[log0:log0 + n_log] = logit_values
    for r in range(n_log):
        direct.append((log0 + r, const("unembed_bias"), float(C[r] @ b_U_raw)))
        if np.any(b_U_view != b_U_raw):
            direct.append((log0 + r, const("ln_final_bias"), float(C[r] @ (b_U_view - b_U_raw))))

    # the features written into each MLP output, per position: (columns, (n, d) vectors a W_dec[:, i])
    fw: dict = {}
    for l, rows in enc_rows.items():
        d = by_layer[l].dictionary
        idx, pos = active[rows, 2], active[rows, 1]
        for j, wl in enumerate(by_layer[l].writes):
            Vd = (np.asarray(d.W_dec[j], dtype=f64)[:, idx] * activations[rows]).T  # (n, d)
            for p in np.unique(pos):
                sel = pos == p
                cols, vs = fw.get((wl, int(p)), (np.zeros(0, dtype=np.int64), np.zeros((0, D))))
                fw[(wl, int(p))] = (np.r_[cols, rows[sel]], np.vstack([vs, Vd[sel]]))
    token_vectors = np.asarray(model.W_E.array, dtype=f64)[:, tok].T  # (seq, d)
    # the SAE features written at each SAE's point, per position: (k, p) -> (columns, (n, d) vectors a W_dec[:, i])
    sfw: dict = {}
    for k, rows in sae_rows.items():
        Wd = np.asarray(sae_list[k][1].W_dec[0], dtype=f64)
        loc = rows - sf0
        pos = sae_active[loc, 1]
        Vd = (Wd[:, sae_active[loc, 2]] * sae_acts[loc]).T
        for p in np.unique(pos):
            sel = pos == p
            sfw[(k, int(p))] = (rows[sel], Vd[sel])

    # -- edges: propagate the targets' read vectors back through the frozen model (the adjoint) ----------
    n_c = len(constants)
    fz.set_work_dtype(work)
    A = np.zeros((N, N), dtype=work)
    Cadj = np.zeros((N, n_c))
    causal = bool(c.causal)
    # sources in the working dtype: features per (layer, position) as a column slice where contiguous
    fw_w = {}
    for key, (cols, vs) in fw.items():
        contiguous = cols.size and np.array_equal(cols, np.arange(cols[0], cols[0] + cols.size))
        fw_w[key] = (slice(int(cols[0]), int(cols[0]) + cols.size) if contiguous else cols, vs.astype(work))
    del fw
    errors_w = errors.astype(work)
    token_w = token_vectors.astype(work)
    # each station's constant writes stacked: (columns, (seq, d, m) array), read by one product
    const_w = {key: (np.array([col for col, _ in items]), np.stack([np.asarray(V, dtype=work) for _, V in items], axis=-1))
               for key, items in const_writes.items()}
    del const_writes
    sfw_w = {key: (slice(int(cols[0]), int(cols[0]) + cols.size), vs.astype(work)) for key, (cols, vs) in sfw.items()}
    sae_err_w = sae_errors.astype(work)
    sae_const_w = {k: (np.array([col for col, _ in items]), np.stack([np.asarray(V, dtype=work) for _, V in items], axis=-1))
                   for k, items in sae_consts.items()}
    cut_at = {(st, l): k for k, (_, _, st, l) in enumerate(sae_list)}

    def entry(station: str, layer: int) -> int:
        """When a target read at (``station``, ``layer``) joins the descent from the last layer; the
        features of SAE ``k`` (station ``"sae"``, layer ``k``) join just after its cut, the other
        targets at the same point (reading its reconstruction) just before."""
        if station == "sae":
            return entry(sae_list[layer][2], sae_list[layer][3]) + 1
        if station == "pre":
            return 4 * L if layer == 0 else 4 * (L - layer)
        if station == "post":
            return 4 * (L - 1 - layer)
        return 4 * (L - 1 - layer) + 2

    def collect(G: np.ndarray, st: str, l: int, on: np.ndarray, oc: np.ndarray) -> None:
        """Add the direct effects of the sources written at (``st``, ``l``) on the gradients ``G``
        ``(n, P, d)`` into ``on`` (n, N) and ``oc`` (n, n_c)."""
        n, P, _ = G.shape
        if st == "post":
            for p in range(P):
                hit = fw_w.get((l, p))
                if hit is not None:
                    cols, vs = hit
                    # in this order BLAS takes the strided G[:, p] as it is (the other order copies it)
                    on[:, cols] += (vs @ G[:, p, :].T).T
            on[:, err0 + l * seq: err0 + l * seq + P] += np.einsum("npd,pd->np", G, errors_w[l, :P])
        if st == "pre" and l == 0:
            on[:, tok0: tok0 + P] += np.einsum("npd,pd->np", G, token_w[:P])
        hit = const_w.get((st, l))
        if hit is not None:
            cols, Vs = hit
            oc[:, cols] += G.reshape(n, P * D) @ Vs[:P].reshape(P * D, -1)

    def cut(G: np.ndarray, k: int, on: np.ndarray, oc: np.ndarray) -> None:
        """SAE ``k``'s point: the direct effects of its sources (features, errors, constants) on the
        gradients ``G`` (n, P, d) into ``on`` and ``oc``; then ``G`` is zeroed (nothing earlier
        reaches a later target but through them)."""
        n, P, _ = G.shape
        for p in range(P):
            hit = sfw_w.get((k, p))
            if hit is not None:
                cols, vs = hit
                on[:, cols] += (vs @ G[:, p, :].T).T
        on[:, serr0 + k * seq: serr0 + k * seq + P] += np.einsum("npd,pd->np", G, sae_err_w[k, :P])
        cols, Vs = sae_const_w[k]
        oc[:, cols] += G.reshape(n, P * D) @ Vs[:P].reshape(P * D, -1)
        G[:] = 0

    def propagate_one(injections: list) -> tuple:
        """The direct effects of every source on functionals of the stream: ``injections`` a list of
        (station, layer, R (n_i, d), positions (n_i,)). All are carried down together from the last
        layer, each joining where it reads; returns (nodes (n, N), constants (n, n_c), slices), the
        rows of injection ``i`` being ``slices[i]``."""
        order = sorted(range(len(injections)), key=lambda i: entry(injections[i][0], injections[i][1]))
        sizes = [len(injections[i][3]) for i in order]
        starts = np.cumsum([0] + sizes)
        n = int(starts[-1])
        if n == 0:
            return np.zeros((0, N), dtype=work), np.zeros((0, n_c)), {i: slice(0, 0) for i in order}
        tpos = np.concatenate([np.asarray(injections[i][3], dtype=np.int64) for i in order])
        # causal attention: positions after the last target's are never on a path to it
        P = int(tpos.max()) + 1 if causal else seq
        G = np.zeros((n, P, D), dtype=work)
        G[np.arange(n), tpos] = np.concatenate([np.asarray(injections[i][2], dtype=work) for i in order])
        on = np.zeros((n, N), dtype=work)
        oc = np.zeros((n, n_c))
        keys = [entry(injections[i][0], injections[i][1]) for i in order]
        k, j = 0, 0

        def admit(key: int) -> int:
            nonlocal j
            while j < len(order) and keys[j] <= key:
                j += 1
            return int(starts[j])

        def point(station: str, layer: int, k: int) -> int:
            """The SAE cut at (``station``, ``layer``), if any, on the rows admitted so far, then
            its own features admitted."""
            s_k = cut_at.get((station, layer))
            if s_k is None:
                return k
            if k:
                cut(G[:k], s_k, on[:k], oc[:k])
            return admit(entry("sae", s_k))

        for l in range(L - 1, -1, -1):
            k = admit(4 * (L - 1 - l))
            k = point("post", l, k)
            skip_in = None
            if k:
                collect(G[:k], "post", l, on[:k], oc[:k])
                skip_in = fz.skip_T(l, G[:k])
                if skip_in is not None and not fz.parallel:
                    G[:k] += skip_in
            k_skip = k
            k = admit(4 * (L - 1 - l) + 2)
            k = point("mid", l, k)
            if k:
                collect(G[:k], "mid", l, on[:k], oc[:k])
                G[:k] += fz.attn_T(l, G[:k])
                if skip_in is not None and fz.parallel:
                    G[:k_skip] += skip_in
            del skip_in
        k = admit(4 * L)
        k = point("pre", 0, k)
        collect(G[:k], "pre", 0, on[:k], oc[:k])
        slices = {i: slice(int(starts[r]), int(starts[r + 1])) for r, i in enumerate(order)}
        return on, oc, slices

    rt = runtime.current()

    def propagate(injections: list) -> list:
        """:func:`propagate_one` on the injections' rows split into interleaved parts (row ``r`` of
        each injection in part ``r mod W``), one per worker of the runtime, each on one BLAS thread
        (the per-position products are small: BLAS's own threads cost more than they gain).
        Returns ``[(W, (nodes, constants, slices)) ...]``, part ``w`` holding rows ``w::W``."""
        n = sum(len(inj[3]) for inj in injections)
        W = max(1, min(rt.threads, n // 32))
        if W == 1:
            return [(1, propagate_one(injections))]
        parts = [[(st, l, R[w::W], tp[w::W]) for st, l, R, tp in injections] for w in range(W)]
        done = rt.map(lambda lo, hi: [propagate_one(parts[w]) for w in range(lo, hi)], W)
        return [(W, r) for chunk in done for r in chunk]

    def backprop(R: np.ndarray, tpos: np.ndarray, station: str, Lt: int, out_nodes: np.ndarray,
                 out_consts: np.ndarray) -> None:
        """Add to ``out_nodes`` (n, N) and ``out_consts`` (n, n_c) the direct effects of every
        source on the functionals ``R`` (n, d) of the stream at (``station``, ``Lt``), positions
        ``tpos``."""
        for w, (W, (on, oc, _)) in enumerate(propagate([(station, Lt, np.asarray(R), np.asarray(tpos))])):
            out_nodes[w::W] += on
            out_consts[w::W] += oc

    # targets in waves: (causal) those at one position together, whatever their layer, so that each
    # wave's gradients span exactly the positions up to its own, and the products are large
    stations: list[tuple[str, int, np.ndarray]] = []
    for l in sorted(enc_rows):
        stations.append(("pre" if fz.parallel else "mid", l, np.asarray(enc_rows[l], dtype=np.int64)))
    for k in sorted(sae_rows):
        stations.append(("sae", k, np.asarray(sae_rows[k], dtype=np.int64)))
    stations.append(("post", L - 1, np.arange(log0, log0 + n_log, dtype=np.int64)))
    row_pos = np.zeros(N, dtype=np.int64)
    row_pos[:n_f] = active[:, 1]
    row_pos[sf0:sf0 + n_sf] = sae_active[:, 1]
    row_pos[log0:] = seq - 1
    waves = [np.arange(seq)] if not causal else [np.array([p]) for p in range(seq)]
    total, done = sum(len(s[2]) for s in stations), 0
    for wave in reversed(waves):
        P = int(wave.max()) + 1 if causal else seq
        cap = batch_size if batch_size is not None else max(1, int((64 << 20) // (work.itemsize * P * D)))
        parts = []  # (station, layer, rows) of this wave, from the last layer down
        for station, Lt, rows in reversed(stations):
            sel = rows[np.isin(row_pos[rows], wave)]
            if sel.size:
                parts.append((station, Lt, sel))
        chunk: list = []
        size = 0
        pending = list(parts)
        while pending or chunk:
            if pending and size < cap:
                station, Lt, rows = pending.pop(0)
                take = rows[: cap - size]
                if take.size < rows.size:
                    pending.insert(0, (station, Lt, rows[take.size:]))
                chunk.append((station, Lt, take))
                size += take.size
                continue
            inj = [(st, Lt, reads[rows], row_pos[rows]) for st, Lt, rows in chunk]
            results = propagate(inj)
            for w, (W, (on, oc, slices)) in enumerate(results):
                for i, (_, _, rows) in enumerate(chunk):
                    A[rows[w::W]] = on[slices[i]]
                    Cadj[rows[w::W]] += oc[slices[i]]
            del results
            done += size
            chunk, size = [], 0
            if progress is not None:
                progress(done, total)
    for r, col, v in direct:
        Cadj[r, col] += v
    sources = _Sources(fz, by_layer, activations, errors, token_vectors, reads)
    return AttributionGraph(
        model_name=model.name,
        tokens=tok,
        nodes=nodes,
        adjacency=A,
        constants=tuple(constants),
        constant_adjacency=Cadj,
        values=values,
        activations=activations,
        active_features=active,
        dictionaries=tuple(by_layer[l].dictionary.name if l in by_layer else "" for l in range(L)),
        logit_probabilities=np.array(weights, dtype=f64),
        demeaned=bool(demean_logits),
        zero_positions=n0,
        n_layers=L,
        token_labels=tuple(model.vocab[int(t)] if model.vocab is not None else str(int(t)) for t in tok),
        saes=tuple(d.name for d in saes) if sae_list else (),
        sae_features=np.c_[np.array([sae_list[k][0] for k in sae_active[:, 0]], dtype=np.int64).reshape(n_sf, 1),
                           sae_active[:, 1:]].reshape(n_sf, 3),
        sae_activations=sae_acts,
        _frozen=fz,
        _sources=sources,
        _backprop=backprop,
    )


def _token_label(model: Transformer, t: int) -> str:
    if model.vocab is not None and model.config.d_vocab_out is None and 0 <= t < len(model.vocab):
        return model.vocab[t]
    return str(t)
