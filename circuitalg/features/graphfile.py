"""circuit-tracer's graph files: the JSON its local viewer (and Neuronpedia's) opens.

:func:`write_circuit_tracer_json` writes an :class:`~circuitalg.features.attribution.AttributionGraph`
as circuit-tracer's ``create_graph_files`` does: the graph pruned by influence
(:meth:`AttributionGraph.prune`), nodes with circuit-tracer's ids and fields (``node_id``,
``feature``, ``layer``, ``ctx_idx``, ``feature_type``, ``influence`` = the node's cumulative
influence, ``activation``, ...), one link per kept edge (``source``, ``target``, ``weight`` from the
adjacency), the nodes left without a kept edge dropped (tokens and logits always kept), and
``metadata`` and ``qParams``. Constant nodes are not written: circuit-tracer's schema has none.
:func:`read_circuit_tracer_json` reads such a file back, checked.

Node ids are circuit-tracer's, collisions included: an error node's id ``0_{layer}_{pos}`` equals
the id of the layer-0 feature ``{layer}`` at the same position (circuit-tracer numbers them the
same way, and its viewer reads files with them). :meth:`AttributionGraph.to_networkx` keys nodes by
their records, never by these ids; the reader's :meth:`GraphFile.to_networkx` keys by id and so
merges such a pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, LoadError
from circuitalg.features.attribution import AttributionGraph, ErrorNode, FeatureNode, LogitNode, TokenNode

__all__ = ["GraphFile", "write_circuit_tracer_json", "read_circuit_tracer_json", "graph_file_dict", "NODE_FIELDS"]

#: a node's fields in circuit-tracer's order (its pydantic ``Node``), with their defaults
NODE_FIELDS: dict[str, Any] = {
    "node_id": None, "feature": None, "layer": None, "ctx_idx": None, "feature_type": None, "token_prob": 0.0,
    "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": None, "clerp": "", "influence": None,
    "activation": None,
}
_REQUIRED = ("node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId")


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _node(**kw: Any) -> dict:
    out = dict(NODE_FIELDS)
    out.update(kw)
    return out


def _process_token(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def graph_file_dict(graph: AttributionGraph, *, slug: str = "graph", scan: str | list[str] | None = None,
                    node_threshold: float = 0.8, edge_threshold: float = 0.98, prompt: str | None = None) -> dict:
    """The graph file as a dict (see the module docstring); ``scan`` names the transcoders (default
    the model's name), ``prompt`` the prompt's text (default its tokens joined)."""
    if getattr(graph, "saes", ()):
        raise InvalidArgumentError(
            f"write_circuit_tracer_json: this graph has residual-SAE nodes ({', '.join(graph.saes)}); circuit-tracer's graph-file schema has no such nodes. Build the "
            "graph without saes= for it (the SAE nodes stay in graph.nodes and graph.adjacency)."
        )
    if not isinstance(graph, AttributionGraph):
        raise InvalidArgumentError(f"graph_file_dict takes an AttributionGraph, got {type(graph).__name__}.")
    pr = graph.prune(node_threshold, edge_threshold)
    scores = pr.cumulative_scores
    nodes: dict[int, dict] = {}
    L = graph.n_layers
    for i in np.nonzero(pr.node_mask)[0].tolist():
        n = graph.nodes[i]
        if isinstance(n, FeatureNode):
            nodes[i] = _node(node_id=n.node_id, feature=_cantor(n.layer, n.index), layer=str(n.layer), ctx_idx=n.position,
                             feature_type="cross layer transcoder", jsNodeId=f"{n.layer}_{n.index}-0",
                             influence=float(scores[i]), activation=float(graph.activations[i]))
        elif isinstance(n, ErrorNode):
            nodes[i] = _node(node_id=n.node_id, feature=-1, layer=str(n.layer), ctx_idx=n.position,
                             feature_type="mlp reconstruction error", jsNodeId=f"{n.layer}_{n.position}-0",
                             influence=float(scores[i]))
        elif isinstance(n, TokenNode):
            nodes[i] = _node(node_id=n.node_id, feature=n.position, layer="E", ctx_idx=n.position, feature_type="embedding",
                             jsNodeId=f"E_{n.token}-{n.position}", influence=float(scores[i]))
        elif isinstance(n, LogitNode):
            p = float(graph.logit_probabilities[n.rank])
            nodes[i] = _node(node_id=n.node_id, feature=n.vocab_index, layer=str(L + 1), ctx_idx=n.position,
                             feature_type="logit", token_prob=p, is_target_logit=n.rank == 0,
                             jsNodeId=f"L_{n.vocab_index}-{n.position}", clerp=f'Output "{n.label}" (p={p:.3f})')
    dsts, srcs = np.nonzero(pr.edge_mask)
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(graph.adjacency[t, s])}
        for s, t in zip(srcs.tolist(), dsts.tolist()) if s in nodes and t in nodes
    ]
    connected = {e["source"] for e in links} | {e["target"] for e in links}
    used = [n for n in nodes.values() if n["node_id"] in connected or n["feature_type"] in ("embedding", "logit")]
    transcoder_list: list[str] = []
    if scan is None:
        scan = graph.model_name
    elif isinstance(scan, list):
        transcoder_list = [str(s) for s in scan]
        scan = "custom-" + "-".join(transcoder_list)
    tokens = [_process_token(t) for t in graph.token_labels] if graph.token_labels else [str(int(t)) for t in graph.tokens]
    metadata = {
        "slug": str(slug),
        "scan": str(scan),
        "transcoder_list": transcoder_list,
        "prompt_tokens": tokens,
        "prompt": "".join(graph.token_labels) if prompt is None else str(prompt),
        "node_threshold": float(node_threshold),
        "schema_version": 1,
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": used, "links": links}


def write_circuit_tracer_json(graph: AttributionGraph, path: Any, *, slug: str | None = None,
                              scan: str | list[str] | None = None, node_threshold: float = 0.8,
                              edge_threshold: float = 0.98, prompt: str | None = None, index: bool = False) -> dict:
    """Write ``graph`` as a circuit-tracer graph file at ``path`` (``slug`` default: the file's
    stem). With ``index``, also add it to ``graph-metadata.json`` in the same folder, the list
    circuit-tracer's local server reads. Returns the written dict."""
    path = Path(path)
    data = graph_file_dict(graph, slug=path.stem if slug is None else slug, scan=scan, node_threshold=node_threshold,
                           edge_threshold=edge_threshold, prompt=prompt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    if index:
        meta_path = path.parent / "graph-metadata.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {"graphs": []}
        graphs = [g for g in meta.get("graphs", []) if g.get("slug") != data["metadata"]["slug"]]
        graphs.append(data["metadata"])
        meta_path.write_text(json.dumps({"graphs": graphs}, indent=2, ensure_ascii=False), encoding="utf-8")
    return data


@dataclass(frozen=True)
class GraphFile:
    """A graph file as read: ``metadata``, ``qparams``, ``nodes`` (dicts with every field of
    :data:`NODE_FIELDS`) and ``links`` (``source``, ``target``, ``weight``)."""

    metadata: dict
    qparams: dict
    nodes: list
    links: list

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph`` keyed by ``node_id`` (node fields as attributes, ``weight`` on edges)."""
        import networkx as nx

        g = nx.DiGraph()
        for n in self.nodes:
            g.add_node(n["node_id"], **n)
        for e in self.links:
            g.add_edge(e["source"], e["target"], weight=e["weight"])
        return g


def read_circuit_tracer_json(path: Any) -> GraphFile:
    """Read a circuit-tracer graph file; :class:`LoadError` naming the file and field when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{path}: not a readable JSON graph file ({e}).") from e
    if not isinstance(data, dict):
        raise LoadError(f"{path}: expected a JSON object with metadata, qParams, nodes and links.")
    for key, kind in (("metadata", dict), ("qParams", dict), ("nodes", list), ("links", list)):
        if not isinstance(data.get(key), kind):
            raise LoadError(f"{path}: field {key!r} is missing or not a {kind.__name__}.")
    meta = data["metadata"]
    for key in ("slug", "scan", "prompt_tokens", "prompt"):
        if key not in meta:
            raise LoadError(f"{path}: metadata has no {key!r}.")
    nodes = []
    ids = set()
    for i, n in enumerate(data["nodes"]):
        if not isinstance(n, dict):
            raise LoadError(f"{path}: nodes[{i}] is not an object.")
        missing = [k for k in _REQUIRED if k not in n]
        if missing:
            raise LoadError(f"{path}: nodes[{i}] has no {missing} (circuit-tracer's Node needs {list(_REQUIRED)}).")
        if not isinstance(n["ctx_idx"], int) or not isinstance(n["feature"], int) or not isinstance(n["layer"], str):
            raise LoadError(f"{path}: nodes[{i}] ({n['node_id']!r}): ctx_idx and feature must be integers, layer a string.")
        full = dict(NODE_FIELDS)
        full.update(n)
        nodes.append(full)
        ids.add(n["node_id"])
    links = []
    for i, e in enumerate(data["links"]):
        if not isinstance(e, dict) or not all(k in e for k in ("source", "target", "weight")):
            raise LoadError(f"{path}: links[{i}] needs source, target and weight.")
        if e["source"] not in ids or e["target"] not in ids:
            raise LoadError(f"{path}: links[{i}] joins {e['source']!r} -> {e['target']!r}, not both among the nodes.")
        if not isinstance(e["weight"], (int, float)) or isinstance(e["weight"], bool):
            raise LoadError(f"{path}: links[{i}] weight is not a number.")
        links.append({"source": e["source"], "target": e["target"], "weight": float(e["weight"])})
    return GraphFile(dict(meta), dict(data["qParams"]), nodes, links)
