"""An offline HTML view of an attribution graph: one self-contained file (inline SVG, script and
data; nothing is fetched), nodes laid out by layer and position, edges by weight, and a details
panel for the clicked node (its activation, top logit tokens and strongest inputs and outputs).

Layout: one row per layer (token embeddings at the bottom, the logit targets at the top), one
column per position, as wide as its fullest row; within a (layer, position) cell the features by
decreasing activation, then the error node. Edges are drawn from source to target with width and
opacity by ``|weight|`` relative to the largest drawn edge, blue when positive and red when
negative. Features are circles, error nodes grey squares, tokens green rectangles with their
strings, logits orange diamonds; token strings are drawn with newlines and tabs as arrows and a blank
one as open boxes, and quoted (JSON) in the details panel.

Opening the page with the URL fragment ``#selftest`` runs a check inside the page: it clicks the
first feature node (else the first node) and writes a JSON summary (node count, the details
panel's text, the resources the page loaded, every error caught) into ``<pre id="selftest">``, for a headless browser's
``--dump-dom`` to read.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError
from circuitalg.features.attribution import AttributionGraph, ErrorNode, FeatureNode, LogitNode, PruneResult, TokenNode
from circuitalg.files import atomic_write

__all__ = ["write_attribution_html", "attribution_html", "view_data", "page_node_count"]

#: drawing sizes (pixels): horizontal slot per node, vertical gap per row, margins, the logit row's
#: height above the top margin (room for its labels)
SLOT, ROW, MARGIN, TOP = 16, 64, 40, 70


def _label(graph: AttributionGraph, node: Any) -> str:
    if isinstance(node, FeatureNode):
        return f"L{node.layer} F{node.index} @{node.position}"
    if isinstance(node, ErrorNode):
        return f"L{node.layer} error @{node.position}"
    if isinstance(node, TokenNode):
        tok = graph.token_labels[node.position] if node.position < len(graph.token_labels) else str(node.token)
        return f"{tok!r} @{node.position}"
    if isinstance(node, LogitNode):
        return f"logit {node.label!r}"
    return str(node)


def _kind(node: Any) -> str:
    return type(node).__name__.replace("Node", "").lower()


def _dictionaries(graph: AttributionGraph, model: Any, transcoders: Any) -> tuple[Any, dict]:
    """The model and ``{layer: Dictionary}`` for the features' logit effects: the ones given, else
    the ones the graph was built with (``(None, {})`` when neither is at hand)."""
    from circuitalg.features.dictionary import Dictionary, DictionarySet

    if transcoders is None:
        srcs = getattr(graph, "_sources", None)
        fz = getattr(graph, "_frozen", None)
        if srcs is None or fz is None:
            return None, {}
        return (model if model is not None else fz.model), {l: m.dictionary for l, m in srcs.members.items()}
    if model is None:
        fz = getattr(graph, "_frozen", None)
        if fz is None:
            raise InvalidArgumentError("write_attribution_html: transcoders given without the model they belong to.")
        model = fz.model
    items = [transcoders] if isinstance(transcoders, (Dictionary, DictionarySet)) else list(transcoders)
    out: dict = {}
    for d in items:
        for m in (d.members if isinstance(d, DictionarySet) else [d]):
            if not isinstance(m, Dictionary):
                raise InvalidArgumentError(f"write_attribution_html: {m!r} is not a Dictionary.")
            out[m.reads[0].layer] = m
    return model, out


def _top_logits(graph: AttributionGraph, shown: np.ndarray, model: Any, dicts: dict, k: int) -> dict:
    """``{node row: [[token string, direct logit effect], ...]}`` for the shown feature nodes."""
    from circuitalg.features.binding import bind
    from circuitalg.features.circuits import top_feature_logits

    out: dict = {}
    if model is None or k <= 0:
        return out
    by_layer: dict[int, list[int]] = {}
    for i in shown.tolist():
        n = graph.nodes[i]
        if isinstance(n, FeatureNode) and n.layer in dicts:
            by_layer.setdefault(n.layer, []).append(i)
    for layer, rows in by_layer.items():
        idx = sorted({graph.nodes[i].index for i in rows})
        fl = top_feature_logits(bind(dicts[layer], model), k=min(k, int(model.config.vocab_out)), features=idx)
        per = {int(f): [[fl.vocab[t] if fl.vocab is not None else str(int(t)), float(v)]
                        for t, v in zip(fl.tokens[j].tolist(), fl.values[j].tolist())]
               for j, f in enumerate(fl.features.tolist())}
        for i in rows:
            out[i] = per[graph.nodes[i].index]
    return out


def view_data(graph: AttributionGraph, *, prune: tuple[float, float] | PruneResult | None = (0.8, 0.98),
              model: Any = None, transcoders: Any = None, top_tokens: int = 5, top_edges: int = 8,
              max_edges: int = 20000) -> dict:
    """The page's data: nodes with their layout and details, and the drawn edges.

    Parameters are those of :func:`write_attribution_html`.

    Returns
    -------
    dict
        ``nodes``: one dict per shown node (``row`` in the graph, ``kind``, ``layer``, ``position``,
        ``index``, ``label``, ``x``, ``y``, ``activation`` or ``value``, ``influence``, ``logits``,
        ``inputs``, ``outputs``); ``edges``: ``[source, target, weight]`` in indices of ``nodes``;
        ``width``, ``height``, ``row_height``, ``top`` (the logit row's y), ``meta``.
    """
    if getattr(graph, "saes", ()):
        raise InvalidArgumentError(
            f"write_attribution_html: this graph has residual-SAE nodes ({', '.join(graph.saes)}); the HTML view does not draw them yet. Build the "
            "graph without saes= for it (the SAE nodes stay in graph.nodes and graph.adjacency)."
        )
    if not isinstance(graph, AttributionGraph):
        raise InvalidArgumentError(f"write_attribution_html takes an AttributionGraph, got {type(graph).__name__}.")
    for name, v in (("top_tokens", top_tokens), ("top_edges", top_edges), ("max_edges", max_edges)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise InvalidArgumentError(f"write_attribution_html: {name} must be a non-negative integer, got {v!r}.")
    N = len(graph.nodes)
    A = graph.adjacency
    if prune is None:
        pr = None
        keep = np.ones(N, dtype=bool)
        emask = A != 0
    else:
        if isinstance(prune, PruneResult):
            pr = prune
        else:
            try:
                nt, et = (float(x) for x in prune)
            except (TypeError, ValueError):
                raise InvalidArgumentError(
                    f"write_attribution_html: prune must be (node_threshold, edge_threshold), a PruneResult or None, "
                    f"got {prune!r}.") from None
            pr = graph.prune(nt, et)
        keep = np.asarray(pr.node_mask, dtype=bool)
        emask = np.asarray(pr.edge_mask, dtype=bool) & (A != 0)
    # errors and tokens have no edges into them; an error node with no kept edge out is noise
    for i, n in enumerate(graph.nodes):
        if keep[i] and isinstance(n, ErrorNode) and not emask[:, i].any():
            keep[i] = False
    shown = np.nonzero(keep)[0]
    page_index = {int(i): j for j, i in enumerate(shown.tolist())}
    influence = graph.node_influence() if pr is None else None
    model, dicts = _dictionaries(graph, model, transcoders)
    logits = _top_logits(graph, shown, model, dicts, int(top_tokens))

    # layout: rows (token row 0, layer l at l + 1, logits at n_layers + 1), columns by position
    L, P = graph.n_layers, graph.n_pos
    cells: dict[tuple[int, int], list[int]] = {}
    for i in shown.tolist():
        n = graph.nodes[i]
        row = 0 if isinstance(n, TokenNode) else L + 1 if isinstance(n, LogitNode) else n.layer + 1
        cells.setdefault((row, n.position), []).append(i)

    def order(i: int) -> tuple:
        n = graph.nodes[i]
        if isinstance(n, FeatureNode):
            return (0, -float(graph.activations[i]), n.index)
        if isinstance(n, LogitNode):
            return (0, n.rank, 0)
        return (1, 0.0, 0)

    width = np.ones(P, dtype=np.int64)
    for (row, p), members in cells.items():
        members.sort(key=order)
        width[p] = max(width[p], len(members))
    x0 = MARGIN + SLOT * np.r_[0, np.cumsum(width)[:-1]] + 2 * SLOT * np.arange(P)
    xy: dict[int, tuple[float, float]] = {}
    for (row, p), members in cells.items():
        left = x0[p] + SLOT * (width[p] - len(members)) / 2.0
        for j, i in enumerate(members):
            xy[i] = (float(left + SLOT * (j + 0.5)), float(TOP + ROW * (L + 1 - row)))
    total_w = float(x0[-1] + SLOT * width[-1] + MARGIN) if P else 2.0 * MARGIN
    total_h = float(TOP + MARGIN + ROW * (L + 1) + 40)

    def strongest(vec: np.ndarray, k: int) -> list:
        nz = np.nonzero(vec)[0]
        if not nz.size or k == 0:
            return []
        top = nz[np.argsort(-np.abs(vec[nz]), kind="stable")[:k]]
        return [[_label(graph, graph.nodes[int(s)]), float(vec[s]), page_index.get(int(s), -1)] for s in top]

    cum = pr.cumulative_scores if pr is not None else None
    nodes = []
    for i in shown.tolist():
        n = graph.nodes[i]
        d: dict[str, Any] = {"row": int(i), "kind": _kind(n), "id": n.node_id, "label": _label(graph, n),
                             "position": int(n.position), "x": xy[i][0], "y": xy[i][1]}
        if isinstance(n, FeatureNode):
            d.update(layer=n.layer, index=n.index, activation=float(graph.activations[i]),
                     dictionary=graph.dictionaries[n.layer] if n.layer < len(graph.dictionaries) else "")
        elif isinstance(n, ErrorNode):
            d.update(layer=n.layer)
        elif isinstance(n, TokenNode):
            d.update(token=int(n.token), text=graph.token_labels[n.position] if n.position < len(graph.token_labels)
                     else str(n.token))
        else:
            d.update(value=float(graph.values[i]), probability=float(graph.logit_probabilities[n.rank]),
                     text=n.label)
        if cum is not None:
            d["influence"] = float(cum[i])
        elif influence is not None:
            d["influence"] = float(influence[i])
        if i in logits:
            d["logits"] = logits[i]
        d["inputs"] = strongest(A[i], int(top_edges))
        d["outputs"] = strongest(A[:, i], int(top_edges))
        nodes.append(d)

    sub = emask[np.ix_(shown, shown)]
    ts, ss = np.nonzero(sub)
    w = A[shown[ts], shown[ss]]
    if w.size > max_edges:
        top = np.argsort(-np.abs(w), kind="stable")[:max_edges]
        ts, ss, w = ts[top], ss[top], w[top]
    edges = [[int(s), int(t), float(x)] for s, t, x in zip(ss.tolist(), ts.tolist(), w.tolist())]
    meta = {"model": graph.model_name, "n_layers": L, "n_pos": P, "tokens": list(graph.token_labels),
            "n_nodes_graph": N, "n_features_graph": graph.n_features, "demeaned": bool(graph.demeaned),
            "pruned": pr is not None, "edges_dropped": int(sub.sum()) - len(edges)}
    return {"nodes": nodes, "edges": edges, "width": total_w, "height": total_h, "row_height": ROW,
            "top": TOP, "meta": meta, "cumulative": cum is not None}


STYLE = """body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh;overflow:hidden}
#graph{flex:1;overflow:auto;background:#fcfcfc} #side{width:340px;border-left:1px solid #ccc;padding:0.7em;
overflow:auto;font-size:13px} h1{font-size:16px;margin:0 0 0.4em 0} table{border-collapse:collapse;width:100%}
td{padding:1px 4px;border-bottom:1px solid #eee} td.num{text-align:right;font-family:monospace}
.node{cursor:pointer} .node.sel>*{stroke:#000;stroke-width:2.5px} .rowlabel{font-size:11px;fill:#666}
.tok{font-size:11px;fill:#222} .edge{fill:none} svg.focus .edge{opacity:0.04} svg.focus .edge.on{opacity:0.9}
a.jump{color:#0645ad;cursor:pointer} .legend span{display:inline-block;margin-right:0.8em}
#errors{color:#b00;white-space:pre-wrap} #selftest{display:none}"""

#: Written before anything else runs: every uncaught error and console.error lands in #errors.
ERROR_HOOK = """<script>
window.__errors = [];
function __report(msg) {
  window.__errors.push(String(msg));
  var e = document.getElementById("errors");
  if (e) { e.textContent = window.__errors.join("\\n"); }
}
window.addEventListener("error", function (ev) { __report("error: " + ev.message + " at " + ev.lineno); });
window.addEventListener("unhandledrejection", function (ev) { __report("rejection: " + ev.reason); });
(function () {
  var orig = console.error;
  console.error = function () { __report("console.error: " + Array.prototype.join.call(arguments, " ")); orig.apply(console, arguments); };
})();
</script>"""

SCRIPT = r"""<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("graph-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var svg = document.getElementById("svg");
  svg.setAttribute("width", data.width);
  svg.setAttribute("height", data.height);
  svg.setAttribute("viewBox", "0 0 " + data.width + " " + data.height);
  function el(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function fmt(x) { return (x === undefined || x === null) ? "" : (Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0)) ? x.toExponential(3) : x.toFixed(4); }
  // a token string drawn visibly: newlines and tabs as arrows, a blank one as open boxes
  function vis(s) {
    s = String(s).replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
    return s.trim() === "" ? s.replace(/ /g, "\u2423") : s;
  }
  function esc(s) { var d = document.createElement("span"); d.textContent = String(s); return d.innerHTML; }
  // row labels
  var rows = el("g", {}, svg), L = data.meta.n_layers, M = data.top, R = data.row_height;
  for (var r = 0; r <= L + 1; r++) {
    var y = M + R * (L + 1 - r);
    var t = el("text", {x: 2, y: y + 4, "class": "rowlabel"}, rows);
    t.textContent = r === 0 ? "emb" : r === L + 1 ? "logit" : "L" + (r - 1);
    el("line", {x1: 30, x2: data.width, y1: y, y2: y, stroke: "#eee"}, rows);
  }
  // edges under nodes
  var maxw = 0;
  data.edges.forEach(function (e) { maxw = Math.max(maxw, Math.abs(e[2])); });
  var eg = el("g", {}, svg), edgeEls = [], incident = data.nodes.map(function () { return []; });
  data.edges.forEach(function (e, k) {
    var s = data.nodes[e[0]], t = data.nodes[e[1]], rel = maxw > 0 ? Math.abs(e[2]) / maxw : 0;
    var my = (s.y + t.y) / 2;
    var p = el("path", {d: "M" + s.x + "," + s.y + " C" + s.x + "," + my + " " + t.x + "," + my + " " + t.x + "," + t.y,
      "class": "edge", stroke: e[2] >= 0 ? "#2166ac" : "#b2182b", "stroke-width": (0.3 + 3.5 * rel).toFixed(2),
      "stroke-opacity": (0.08 + 0.8 * rel).toFixed(3)}, eg);
    edgeEls.push(p);
    incident[e[0]].push(k);
    incident[e[1]].push(k);
  });
  // nodes
  var ng = el("g", {}, svg), nodeEls = [];
  data.nodes.forEach(function (n, i) {
    var g = el("g", {"class": "node " + n.kind, "data-index": i, transform: "translate(" + n.x + "," + n.y + ")"}, ng);
    if (n.kind === "feature") {
      el("circle", {r: 5, fill: "#6a51a3", stroke: "#fff"}, g);
    } else if (n.kind === "error") {
      el("rect", {x: -5, y: -5, width: 10, height: 10, fill: "#999", stroke: "#fff"}, g);
    } else if (n.kind === "token") {
      el("rect", {x: -6, y: -6, width: 12, height: 12, rx: 2, fill: "#41ab5d", stroke: "#fff"}, g);
      var tt = el("text", {x: 0, y: 0, "class": "tok", transform: "translate(-3,11) rotate(40)"}, g);
      tt.textContent = vis(n.text);
    } else {
      el("path", {d: "M0,-7 L7,0 L0,7 L-7,0 Z", fill: "#f16913", stroke: "#fff"}, g);
      var lt = el("text", {x: 0, y: 0, "class": "tok", transform: "translate(3,-10) rotate(-40)"}, g);
      lt.textContent = vis(n.text);
    }
    var title = el("title", {}, g);
    title.textContent = n.label;
    g.addEventListener("click", function () { select(i); });
    nodeEls.push(g);
  });
  function rowsTable(list) {
    if (!list || !list.length) { return "<p>none</p>"; }
    return "<table>" + list.map(function (x) {
      var name = x[2] >= 0 ? '<a class="jump" data-index="' + x[2] + '">' + esc(x[0]) + "</a>" : esc(x[0]);
      return "<tr><td>" + name + '</td><td class="num">' + fmt(x[1]) + "</td></tr>";
    }).join("") + "</table>";
  }
  var selected = -1;
  function select(i) {
    var n = data.nodes[i];
    if (selected >= 0) {
      nodeEls[selected].classList.remove("sel");
      incident[selected].forEach(function (k) { edgeEls[k].classList.remove("on"); });
    }
    selected = i;
    nodeEls[i].classList.add("sel");
    svg.classList.add("focus");
    incident[i].forEach(function (k) { edgeEls[k].classList.add("on"); });
    var h = "<h2 id='d-title'>" + esc(n.label) + "</h2><table>";
    var f = [["kind", n.kind], ["id", n.id], ["layer", n.layer], ["position", n.position], ["feature", n.index],
             ["dictionary", n.dictionary], ["token", n.text === undefined ? undefined : JSON.stringify(n.text)], ["activation", fmt(n.activation)],
             ["value", fmt(n.value)], ["probability", fmt(n.probability)], [data.cumulative ? "influence (cumulative)" : "influence", fmt(n.influence)]];
    f.forEach(function (kv) { if (kv[1] !== undefined && kv[1] !== "") { h += "<tr><td>" + kv[0] + '</td><td class="num">' + esc(kv[1]) + "</td></tr>"; } });
    h += "</table>";
    if (n.logits) { h += "<h3>top logit tokens (W<sub>U</sub> dec)</h3>" + rowsTable(n.logits.map(function (x) { return [JSON.stringify(x[0]), x[1], -1]; })); }
    if (n.kind === "feature" || n.kind === "logit") { h += "<h3>strongest inputs</h3>" + rowsTable(n.inputs); }
    if (n.kind !== "logit") { h += "<h3>strongest outputs</h3>" + rowsTable(n.outputs); }
    var d = document.getElementById("details");
    d.innerHTML = h;
    d.querySelectorAll("a.jump").forEach(function (a) {
      a.addEventListener("click", function () { select(parseInt(a.getAttribute("data-index"), 10)); });
    });
  }
  svg.addEventListener("click", function (ev) {
    if (ev.target === svg && selected >= 0) {
      nodeEls[selected].classList.remove("sel");
      incident[selected].forEach(function (k) { edgeEls[k].classList.remove("on"); });
      svg.classList.remove("focus");
      selected = -1;
    }
  });
  document.getElementById("fit").addEventListener("click", function () {
    var fit = svg.getAttribute("width") !== "100%";
    svg.setAttribute("width", fit ? "100%" : data.width);
    svg.setAttribute("height", fit ? "100%" : data.height);
  });
  var m = data.meta;
  document.getElementById("summary").textContent = m.model + ": " + data.nodes.length + " of " + m.n_nodes_graph +
    " nodes, " + data.edges.length + " edges" + (m.pruned ? " (pruned)" : "") +
    (m.edges_dropped ? ", " + m.edges_dropped + " weaker edges not drawn" : "") + "; logits " + (m.demeaned ? "demeaned" : "as they are") + ".";
  if (location.hash === "#selftest") {
    var pick = 0;
    for (var j = 0; j < data.nodes.length; j++) { if (data.nodes[j].kind === "feature") { pick = j; break; } }
    var res = {nodes: document.querySelectorAll("#svg g.node").length, edges: document.querySelectorAll("#svg path.edge").length,
               kinds: {}, clicked: -1, details: "", errors: null};
    document.querySelectorAll("#svg g.node").forEach(function (g) {
      var k = g.getAttribute("class").split(" ")[1];
      res.kinds[k] = (res.kinds[k] || 0) + 1;
    });
    if (data.nodes.length) {
      nodeEls[pick].dispatchEvent(new MouseEvent("click", {bubbles: true}));
      res.clicked = pick;
      res.details = document.getElementById("details").textContent;
      res.selected = document.querySelectorAll("#svg g.node.sel").length;
    }
    // what the page fetched, plus what it references but may not have finished fetching yet (a
    // failed request can reach the performance timeline after this runs): both, deduplicated
    var seen = {};
    res.resources = [];
    performance.getEntriesByType("resource").map(function (e) { return e.name; })
      .concat(Array.prototype.map.call(document.querySelectorAll("[src],link[href]"), function (el) {
        return el.src || el.href; }))
      .forEach(function (u) { if (u && !seen[u]) { seen[u] = true; res.resources.push(u); } });
    res.errors = window.__errors.slice();
    document.getElementById("selftest").textContent = JSON.stringify(res);
  }
})();
</script>"""


def attribution_html(data: dict, title: str) -> str:
    """The page for ``data`` (:func:`view_data`)."""
    # no "<" at all inside the <script> element ("</script" ends it, "<!--" with "<script" changes
    # how the parser finds its end); JSON reads the escapes back
    blob = (json.dumps(data, allow_nan=False, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    legend = ('<p class="legend"><span style="color:#6a51a3">● feature</span>'
              '<span style="color:#999">■ error</span>'
              '<span style="color:#41ab5d">■ token</span><span style="color:#f16913">◆ logit</span>'
              '<span style="color:#2166ac">— positive</span><span style="color:#b2182b">— negative</span></p>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>{ERROR_HOOK}'
            f"<style>{STYLE}</style></head><body>"
            f'<div id="graph"><svg id="svg"></svg></div>'
            f'<div id="side"><h1>{html.escape(title)}</h1><p id="summary"></p>{legend}'
            '<button id="fit">fit / full size</button>'
            f'<div id="details"><p>Click a node.</p></div><div id="errors"></div><pre id="selftest"></pre></div>'
            f'<script type="application/json" id="graph-data">{blob}</script>{SCRIPT}</body></html>\n')


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def write_attribution_html(
    graph: AttributionGraph, path: str | Path, *, prune: tuple[float, float] | PruneResult | None = (0.8, 0.98),
    title: str | None = None, top_tokens: int = 5, model: Any = None, transcoders: Any = None, top_edges: int = 8,
    max_edges: int = 20000,
) -> Path:
    """Write ``graph`` as one self-contained HTML page (no network access).

    Parameters
    ----------
    graph : AttributionGraph
    path : path
    prune : (node_threshold, edge_threshold), PruneResult or None
        Show the nodes and edges circuit-tracer's pruning keeps (:meth:`AttributionGraph.prune`);
        ``None``: every node and nonzero edge. Error nodes with no drawn edge are left out.
    title : str, optional
        Default: the model's name and the prompt.
    top_tokens : int
        Each shown feature's top tokens by direct logit effect ``W_U dec`` (0: none).
    model, transcoders : optional
        Where the features' decoders come from; default: those the graph was built with.
    top_edges : int
        Strongest inputs and outputs listed per node (over the whole graph, pruned or not).
    max_edges : int
        At most this many edges drawn (the strongest by ``|weight|``).

    Returns
    -------
    Path
    """
    data = _finite(view_data(graph, prune=prune, model=model, transcoders=transcoders, top_tokens=top_tokens,
                             top_edges=top_edges, max_edges=max_edges))
    if title is None:
        title = f"{graph.model_name}: {''.join(graph.token_labels)!r}"
    text = attribution_html(data, str(title))
    out = Path(path)
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out


def page_node_count(data: dict) -> dict:
    """Nodes of each kind in :func:`view_data`'s output."""
    out: dict = {}
    for n in data["nodes"]:
        out[n["kind"]] = out.get(n["kind"], 0) + 1
    return out

