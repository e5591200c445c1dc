"""A short text summary of an attribution graph: its targets, completeness, pruning and top paths.

A path runs from a token node to a logit node through at most ``max_hops`` edges of the
adjacency (so through at most ``max_hops - 1`` feature or error nodes). Its value is the product,
over its edges ``s -> t``, of the *normalised* edge weight ``A[t, s] / Σ_u |A[t, u]|``: the
edge's signed share of everything the target receives from the graph's nodes (constants are not
counted, as in circuit-tracer's influence). These are the entries of circuit-tracer's normalised
adjacency ``Â`` with their signs kept: the absolute values of all paths' products from every node
summed give each node's influence, so a path's ``|value|`` is its share of the target's influence.
:func:`top_paths` finds the ``k`` paths of largest ``|value|`` exactly (every path of up to
``max_hops`` edges is considered; none is skipped by a heuristic).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from circuitalg.errors import InvalidArgumentError
from circuitalg.features.attribution import AttributionGraph, ErrorNode, FeatureNode, LogitNode, TokenNode

__all__ = ["GraphPath", "top_paths", "path_value", "node_label", "summarise", "MAX_HOPS"]

#: the longest paths :func:`top_paths` enumerates (edges)
MAX_HOPS = 3

# rows of |A| normalised in blocks of this many (the intermediate arrays are block x n_nodes)
_BLOCK = 256


class GraphPath(NamedTuple):
    """A path: node indices from the token node to the logit node, and its value (the product of
    the normalised edge weights, signed)."""

    nodes: tuple
    value: float


def _row_sums(A: np.ndarray) -> np.ndarray:
    # circuit-tracer's normalisation: sums below 1e-10 clamped to 1e-10
    return np.maximum(np.abs(A).sum(axis=1), 1e-10)


def _topk_flat(values: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the ``k`` largest ``|values|`` (any order)."""
    a = np.abs(values).ravel()
    if a.size <= k:
        return np.arange(a.size)
    return np.argpartition(-a, k - 1)[:k]


def top_paths(graph: AttributionGraph, k: int = 5, *, target: int = 0, max_hops: int = MAX_HOPS) -> list[GraphPath]:
    """The ``k`` paths from token nodes to logit node ``target`` (its rank: 0 is the most probable)
    of largest ``|value|`` over at most ``max_hops`` edges (1 to :data:`MAX_HOPS`), largest first;
    paths of value 0 are left out. See the module docstring for the value.

    Exact: for three edges ``tok -> a -> b -> t``, each ``a`` keeps its ``k`` strongest token edges
    (a path through a token outside them is beaten by ``k`` paths through the same ``a`` and ``b``),
    and for each of those ``k`` ranks the ``k`` best ``(b, a)`` pairs are taken, in blocks of ``b``.
    """
    if getattr(graph, "saes", ()):
        raise InvalidArgumentError(
            f"top_paths: this graph has residual-SAE nodes ({', '.join(graph.saes)}); the summary does not label them yet. Build the "
            "graph without saes= for it (the SAE nodes stay in graph.nodes and graph.adjacency)."
        )
    if not isinstance(graph, AttributionGraph):
        raise InvalidArgumentError(f"top_paths takes an AttributionGraph, got {type(graph).__name__}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidArgumentError(f"top_paths: k must be a positive integer, got {k!r}.")
    if isinstance(max_hops, bool) or not isinstance(max_hops, (int, np.integer)) or not 1 <= max_hops <= MAX_HOPS:
        raise InvalidArgumentError(f"top_paths: max_hops must be 1..{MAX_HOPS}, got {max_hops!r}.")
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < graph.n_logits:
        raise InvalidArgumentError(f"top_paths: target must be a logit rank in 0..{graph.n_logits - 1}, got {target!r}.")
    k = int(k)
    A = graph.adjacency
    n = A.shape[0]
    t = n - graph.n_logits + int(target)
    tok0 = graph.n_features + graph.n_errors
    toks = np.arange(tok0, tok0 + graph.n_pos)
    sums = _row_sums(A)
    row_t = A[t] / sums[t]  # normalised edges into the target
    cands: list[GraphPath] = []
    # one edge: token -> target
    for j in toks.tolist():
        cands.append(GraphPath((j, t), float(row_t[j])))
    if max_hops >= 2:
        # T[a, :]: normalised edges from the tokens into every node a
        T = A[:, toks] / sums[:, None]
    if max_hops >= 2:
        two = row_t[:, None] * T  # (a, token)
        for f in _topk_flat(two, k).tolist():
            a, j = divmod(f, len(toks))
            cands.append(GraphPath((int(toks[j]), a, t), float(two[a, j])))
    if max_hops >= 3:
        kk = min(k, len(toks))
        best_j = np.argsort(-np.abs(T), axis=1, kind="stable")[:, :kk]  # (n, kk): each a's strongest tokens
        best_v = np.take_along_axis(T, best_j, axis=1)  # (n, kk)
        bs = np.nonzero(row_t)[0]
        for r in range(kk):
            found: list[tuple[float, int, int]] = []
            for b0 in range(0, bs.size, _BLOCK):
                bb = bs[b0: b0 + _BLOCK]
                W = (row_t[bb] / sums[bb])[:, None] * A[bb] * best_v[:, r][None, :]  # (block b, a)
                for f in _topk_flat(W, k).tolist():
                    i, a = divmod(f, n)
                    found.append((float(W[i, a]), int(bb[i]), a))
            found.sort(key=lambda x: -abs(x[0]))
            for v, b, a in found[:k]:
                cands.append(GraphPath((int(toks[best_j[a, r]]), a, b, t), v))
    cands = [p for p in cands if p.value != 0.0]
    # ties broken by the path's nodes, so the order does not depend on the search's
    cands.sort(key=lambda p: (-abs(p.value), p.nodes))
    return cands[:k]


def path_value(graph: AttributionGraph, nodes: Any) -> float:
    """The value of the path through node indices ``nodes`` (first the source): the product of
    its normalised edge weights."""
    A = graph.adjacency
    sums = _row_sums(A)
    v = 1.0
    for s, t in zip(nodes[:-1], nodes[1:]):
        v *= A[t, s] / sums[t]
    return float(v)


def node_label(graph: AttributionGraph, i: int) -> str:
    """A node in a line of text: ``token 'x'@3``, ``L12 #41@3 (act 2.1)``, ``error L2@3``,
    ``logit ' Paris' (p 0.41)``."""
    node = graph.nodes[i]
    if isinstance(node, TokenNode):
        label = graph.token_labels[node.position] if graph.token_labels else str(node.token)
        return f"token {label!r}@{node.position}"
    if isinstance(node, FeatureNode):
        return f"L{node.layer} #{node.index}@{node.position} (act {graph.activations[i]:.3g})"
    if isinstance(node, ErrorNode):
        return f"error L{node.layer}@{node.position}"
    if isinstance(node, LogitNode):
        return f"logit {node.label!r} (p {graph.logit_probabilities[node.rank]:.3g})"
    return str(node)


def summarise(graph: AttributionGraph, k: int = 5, *, prompt: str | None = None, node_threshold: float = 0.8,
              edge_threshold: float = 0.98, max_hops: int = MAX_HOPS, prune: Any = None) -> str:
    """A few lines: the prompt, the target logits with their probabilities, the largest completeness
    error, the node counts before and after pruning (``graph.prune(node_threshold,
    edge_threshold)``, or ``prune`` when given) and the ``k`` top paths to the most probable target
    (:func:`top_paths`), each as ``token 'x'@3 -> L12 #41@3 (act 2.1) -> logit ' Paris' (p 0.41): 0.123``.
    """
    if not isinstance(graph, AttributionGraph):
        raise InvalidArgumentError(f"summarise takes an AttributionGraph, got {type(graph).__name__}.")
    lines = []
    text = prompt if prompt is not None else "".join(graph.token_labels)
    lines.append(f"prompt: {text!r} ({graph.n_pos} tokens: {list(int(t) for t in graph.tokens)})")
    kind = "demeaned logits" if graph.demeaned else "logits"
    targets = ", ".join(f"{n.label!r} (p {graph.logit_probabilities[n.rank]:.3g})" for n in graph.logit_nodes)
    lines.append(f"targets ({kind}): {targets}")
    err = graph.completeness_error()
    lines.append(f"completeness: incoming edges + constants = value, max relative error {float(err.max()):.2e} "
                 f"over {err.size} feature and logit nodes")
    pr = graph.prune(node_threshold, edge_threshold) if prune is None else prune
    n_f, n_e, n_t = graph.n_features, graph.n_errors, graph.n_pos
    m = np.asarray(pr.node_mask)
    kept = [int(m[:n_f].sum()), int(m[n_f:n_f + n_e].sum()), int(m[n_f + n_e:n_f + n_e + n_t].sum()),
            int(m[n_f + n_e + n_t:].sum())]
    lines.append(f"nodes: {n_f} features, {n_e} errors, {n_t} tokens, {graph.n_logits} logits; after pruning "
                 f"(node {node_threshold:g}, edge {edge_threshold:g}): {kept[0]} features, {kept[1]} errors, "
                 f"{kept[2]} tokens, {kept[3]} logits; {int(np.asarray(pr.edge_mask).sum())} edges kept")
    paths = top_paths(graph, k, max_hops=max_hops)
    lines.append(f"top paths to {node_label(graph, len(graph.nodes) - graph.n_logits)}, at most {max_hops} edges "
                 "(product of normalised edge weights A[t,s] / sum_u |A[t,u]|, signed):")
    if not paths:
        lines.append("  (none: no token reaches the target)")
    for p in paths:
        lines.append("  " + " -> ".join(node_label(graph, i) for i in p.nodes) + f": {p.value:.6g}")
    return "\n".join(lines)
