"""The HTML report of ``circuitalg report``: one self-contained file with embedded PNG figures.

Needs matplotlib (``pip install -e ".[viz]"``).
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import CircuitAlgError
from circuitalg.files import atomic_write

__all__ = ["analyse", "write_report"]


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CircuitAlgError("the report needs matplotlib: pip install matplotlib") from e
    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def analyse(model: Any, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Everything the report shows, as plain data (``text`` is the printed summary)."""
    import circuitalg as ca

    log = log or (lambda _m: None)
    steps = 6
    t0 = time.time()
    m = ca.fold_layer_norm(model)  # unchanged without layer norm
    c = m.config
    log(f"[1/{steps}] head diagnostics on repeated random tokens")
    seq_len = max(2, min(20, c.n_ctx // 2))
    table = ca.head_table(m, ca.repeated_random_tokens(m, seq_len, 16, seed=0))
    log(f"[2/{steps}] composition scores and baselines")
    comp = {k: ca.composition_scores(m, k) for k in "qkv"}
    base = {k: ca.composition_baseline(m, k) for k in "qkv"}
    log(f"[3/{steps}] exact top circuits")
    search = ca.top_circuits(m, 10, min(2, c.n_layers + 1), ("unembed", "q", "k"))
    log(f"[4/{steps}] circuit graph")
    graph = ca.CircuitGraph(m, base)
    H = c.n_heads

    def name(i: int) -> str:
        return f"L{i // H}H{i % H}"

    prev = int(np.argmax(table.prev_token))
    ind = int(np.argmax(table.induction))
    copying = [(f"L{l}H{h}", float(table.copying[l, h])) for l, h in zip(*np.nonzero(table.copying > 0.5))]
    k_pair = float(comp["k"][prev // H, prev % H, ind // H, ind % H]) if prev // H < ind // H else 0.0
    log(f"[5/{steps}] symbolic identity of the path expansion")
    # (1 + heads)^layers paths: prove the identity at a bounded size (it holds for all dimensions)
    shown_layers, shown_heads = min(c.n_layers, 3), min(c.n_heads, 2)
    expansion = ca.symbolic_expansion(shown_layers, shown_heads)
    verification = expansion.verify()
    ind_head = m.head(ind // H, ind % H)
    top_ov = ca.top_tokens(m.W_U @ ind_head.ov @ m.W_E, 8, vocab=m)
    top_qk = ca.top_tokens(search[0].weight, 8, vocab=m) if search.circuits and search[0].kind != "unembed" else []
    lines = [
        f"model: {model!r}",
        f"previous-token head: {name(prev)} (attention to the previous token {table.prev_token.flat[prev]:.3f}, "
        f"positional score from W_pos {table.positional_prev_token.flat[prev]:.3f})",
        f"induction head: {name(ind)} (induction score on repeated random tokens {table.induction.flat[ind]:.3f}, "
        f"copying score {table.copying.flat[ind]:.3f})",
        f"K-composition {name(prev)} -> {name(ind)}: {k_pair:.3f} (random baseline {base['k'].mean:.3f} ± "
        f"{base['k'].std:.3f}, {((k_pair - base['k'].mean) / base['k'].std) if base['k'].std else 0:+.1f} std)",
        "copying heads (score > 0.5): " + (", ".join(f"{n} {s:.2f}" for n, s in copying) or "none"),
        search.summary(),
        *[f"  {cc.score:10.4g}  {cc.name}   {cc.symbol}" for cc in search],
        f"path expansion identity verified: {verification.holds} ({verification.method})",
    ]
    log(f"analysis done in {time.time() - t0:.1f} s")
    return {
        "model": m, "original": model, "table": table, "comp": comp, "base": base, "search": search, "graph": graph,
        "prev": name(prev), "induction": name(ind), "k_pair": k_pair, "copying": copying, "expansion": expansion,
        "verification": verification, "shown": (shown_layers, shown_heads), "top_ov": top_ov, "top_qk": top_qk, "text": "\n".join(lines),
    }


def _figures(a: dict[str, Any]) -> dict[str, str]:
    plt = _plt()
    m, table = a["model"], a["table"]
    c = m.config
    L, H = c.n_layers, c.n_heads
    labels = [f"L{l}H{h}" for l in range(L) for h in range(H)]
    figs = {}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, k in zip(axes, "qkv"):
        s = a["comp"][k].reshape(L * H, L * H)
        im = ax.imshow(s, cmap="viridis", vmin=0)
        b = a["base"][k]
        ax.set_title(f"{k.upper()}-composition (baseline {b.mean:.3f} ± {b.std:.3f})")
        ax.set_xticks(range(L * H), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(L * H), labels, fontsize=7)
        ax.set_xlabel("reader")
        ax.set_ylabel("writer")
        cb = fig.colorbar(im, ax=ax, shrink=0.8)
        cb.ax.axhline(b.mean, color="red", lw=2)
    figs["composition"] = _png(fig)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    x = np.arange(L * H)
    axes[0].bar(x - 0.2, table.copying.ravel(), 0.4, label="full OV circuit W_U W_OV W_E")
    axes[0].bar(x + 0.2, table.copying_ov.ravel(), 0.4, label="W_OV")
    axes[0].set_xticks(x, labels, rotation=90, fontsize=7)
    axes[0].set_title("copying score Σλ / Σ|λ|")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].legend(fontsize=8)
    import circuitalg as ca

    for head in m.heads():
        lam = ca.eigenvalues(m.W_U @ head.ov @ m.W_E)
        axes[1].scatter(lam.real, lam.imag, s=8, label=head.name)
    axes[1].set_title("eigenvalues of each head's full OV circuit")
    axes[1].axvline(0, color="k", lw=0.5)
    axes[1].legend(fontsize=6, ncol=2)
    figs["copying"] = _png(fig)

    from circuitalg.circuits.diagnostics import positional_pattern

    fig, axes = plt.subplots(L, H, figsize=(2.2 * H, 2.2 * L), squeeze=False)
    for head in m.heads():
        ax = axes[head.layer, head.index]
        ax.imshow(positional_pattern(m, head, 32), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{head.name} ({table.positional_prev_token[head.key]:.2f})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("positional QK patterns (softmax over W_pos scores; query rows, key columns)")
    figs["positional"] = _png(fig)

    import networkx as nx

    g = a["graph"].nx
    edges = sorted(
        ((u, v, d) for u, v, d in g.edges(data=True) if u.startswith("L") and v.startswith("L")),
        key=lambda e: -e[2]["score"] / e[2]["baseline"],
    )[: max(6, L * H)]
    fig, ax = plt.subplots(figsize=(9, 5))
    pos = {}
    for node, d in g.nodes(data=True):
        layer = d["layer"]
        idx = int(node.split("H")[1]) if d["kind"] == "head" else (0 if node == "embed" else 1)
        pos[node] = (idx, layer)
    sub = nx.MultiDiGraph()
    sub.add_nodes_from(g.nodes)
    colors = {"q": "tab:blue", "k": "tab:red", "v": "tab:green"}
    for u, v, d in edges:
        sub.add_edge(u, v)
        ratio = d["score"] / d["baseline"]
        nx.draw_networkx_edges(g, pos, edgelist=[(u, v)], ax=ax, edge_color=colors[d["kind"]],
                               width=1 + 2 * max(0.0, ratio - 1), arrows=True, connectionstyle="arc3,rad=0.1")
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color="lightgrey", node_size=500)
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
    ax.set_title("strongest head-to-head edges (width ~ score / baseline; blue Q, red K, green V)")
    ax.set_ylabel("layer")
    figs["graph"] = _png(fig)
    return figs


def _table(rows: list[list[Any]], head: list[str]) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def write_report(model: Any, out: Path, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Analyse ``model``, write ``out/report.html`` and return a JSON-ready summary."""
    log = log or (lambda _m: None)
    a = analyse(model, log)
    log("[6/6] figures and HTML")
    figs = _figures(a)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    search = a["search"]
    circuits = _table(
        [[f"{cc.score:.4g}", cc.name, str(cc.symbol)] for cc in search],
        ["‖W‖_F", "circuit", "virtual weight"],
    )
    tokens = _table([[str(e.col_token), str(e.row_token), f"{e.value:+.4g}"] for e in a["top_ov"]],
                    ["attended token", "promoted token", "logit weight"])
    qk = _table([[str(e.row_token), str(e.col_token), f"{e.value:+.4g}"] for e in a["top_qk"]],
                ["query token", "key token", "score weight"]) if a["top_qk"] else "<p>(top circuit is an OV circuit)</p>"
    heads = _table(
        [[r["head"], *(f"{r[f]:.3f}" for f in a["table"].fields)] for r in a["table"].records()],
        ["head", *a["table"].fields],
    )
    v = a["verification"]
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>circuitalg report: {html.escape(model.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}} img{{max-width:100%}} pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style>
</head><body>
<h1>circuitalg report: {html.escape(model.name)}</h1>
<section id="summary"><h2>Summary</h2><pre>{html.escape(a["text"])}</pre></section>
<section id="composition"><h2>Composition scores</h2><img alt="composition heatmaps" src="{figs["composition"]}"></section>
<section id="copying"><h2>Copying and eigenvalues</h2><img alt="copying scores and eigenvalues" src="{figs["copying"]}"></section>
<section id="positional"><h2>Positional QK patterns</h2><img alt="positional patterns" src="{figs["positional"]}"></section>
<section id="graph"><h2>Circuit graph</h2><img alt="circuit graph" src="{figs["graph"]}"></section>
<section id="circuits"><h2>Top circuits</h2><p>{html.escape(search.summary())}</p>{circuits}</section>
<section id="tokens"><h2>Top token mappings</h2><h3>OV circuit of the induction head {a["induction"]}</h3>{tokens}
<h3>Top circuit</h3>{qk}</section>
<section id="heads"><h2>Head table</h2>{heads}</section>
<section id="identity"><h2>Verified identity</h2><p>Path expansion of a {a["shown"][0]}-layer attention-only
transformer with {a["shown"][1]} heads per layer, over symbolic dimensions (method {html.escape(v.method)}): holds =
{v.holds}.</p><pre>{html.escape(str(a["expansion"]))}</pre></section>
</body></html>
"""
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(doc))
    log(f"wrote {out / 'report.html'}")
    summary = {
        "model": model.name, "previous_token_head": a["prev"], "induction_head": a["induction"],
        "k_composition": a["k_pair"], "baseline_k": {"mean": a["base"]["k"].mean, "std": a["base"]["k"].std},
        "induction_score": float(np.max(a["table"].induction)), "prev_token_score": float(np.max(a["table"].prev_token)),
        "copying_heads": dict(a["copying"]),
        "induction_copying": float(a["table"].copying.flat[int(np.argmax(a["table"].induction))]),
        "top_circuits": [cc.to_dict() for cc in search], "identity_verified": bool(v.holds),
        "report": str(out / "report.html"), "text": a["text"],
    }
    return summary
