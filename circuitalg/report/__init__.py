"""The HTML report of ``circuitalg report``: one self-contained file with embedded PNG figures.

:func:`analyse` computes an :class:`Analysis` (every finding with its evidence); the figures
and the HTML read only that record. matplotlib is a core dependency.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import html
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import CircuitAlgError
from circuitalg.files import atomic_write

__all__ = ["Analysis", "analyse", "write_report"]


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What :func:`analyse` found: the results every figure, table and summary line reads.

    ``model`` is the analysed (layer-norm folded) model, ``original`` the one given; ``comp``
    and ``base`` map a composition kind to its scores and random-head baseline; ``prev``,
    ``induction`` and ``k_comp`` are the findings with their evidence
    (:mod:`circuitalg.circuits.findings`); ``top_ov`` and ``top_qk`` the token tables of the OV
    circuit of ``ov_head`` and of ``qk_circuit``; ``expansion`` and ``verification`` the
    symbolic identity shown at ``shown`` = (layers, heads); ``text`` the printed summary.
    """

    model: Any
    original: Any
    table: Any
    comp: dict[str, np.ndarray]
    base: dict[str, Any]
    search: Any
    graph: Any
    prev: Any
    induction: Any
    k_comp: Any
    copying: list[tuple[str, float]]
    expansion: Any
    verification: Any
    shown: tuple[int, int]
    top_ov: list[Any]
    ov_head: Any
    ov_why: str
    top_qk: list[Any]
    qk_circuit: Any
    text: str


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


class Stages:
    """Numbered stages that log their start and their wall time (``[i/n] name: 1.2 s``)."""

    def __init__(self, log: Callable[[str], None] | None, n: int) -> None:
        self.log, self.n, self.i, self.total = log or (lambda _m: None), n, 0, 0.0

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.i += 1
        label = f"[{self.i}/{self.n}] {name}"
        self.log(label)
        t = time.perf_counter()
        yield
        dt = time.perf_counter() - t
        self.total += dt
        self.log(f"{label}: {dt:.1f} s")


def analyse(model: Any, log: Callable[[str], None] | None = None) -> Analysis:
    """Everything the report shows (:class:`Analysis`; ``text`` is the printed summary).

    Every claim in ``text`` carries its evidence: heads are named only above the thresholds
    of :mod:`circuitalg.circuits.findings`, compositions only between an earlier and a later
    layer with a family-wise p-value over all such pairs, and otherwise the line says "none
    found" or "not applicable".
    """
    import circuitalg as ca
    from circuitalg.circuits import findings

    stage = Stages(log, 8)
    with stage("fold layer norms"):
        m = ca.fold_layer_norm(model)  # unchanged without layer norm
    c = m.config
    with stage("head diagnostics on repeated random tokens"):
        seq_len = max(2, min(20, c.n_ctx // 2))
        table = ca.head_table(m, ca.repeated_random_tokens(m, seq_len, 16, seed=0))
    with stage("composition scores and baselines"):
        comp = {k: ca.composition_scores(m, k) for k in "qkv"}
        base = {k: ca.composition_baseline(m, k) for k in "qkv"}
    with stage("exact top circuits"):
        search = ca.top_circuits(m, 10, min(2, c.n_layers + 1), ("unembed", "q", "k"))
    with stage("circuit graph"):
        graph = ca.CircuitGraph(m, base)

    prev = findings.previous_token_head(table)
    ind = findings.induction_head(table)
    pair = (prev.head, ind.head) if prev.head and ind.head and prev.head.layer < ind.head.layer else None
    k_comp = findings.composition_finding(comp["k"], base["k"], pair=pair)
    copying = [(ca.HeadId(int(l), int(h)).name, float(table.copying[l, h]))
               for l, h in zip(*np.nonzero(table.copying > 0.5))]
    with stage("symbolic identity of the path expansion"):
        # (1 + heads)^layers paths: prove the identity at a bounded size (it holds for all dimensions)
        shown_layers, shown_heads = min(c.n_layers, 3), min(c.n_heads, 2)
        expansion = ca.symbolic_expansion(shown_layers, shown_heads)
        verification = expansion.verify()
    with stage("top token mappings (exact, factored)"):
        # the OV circuit shown: the induction head's, else the strongest copier's
        if ind.head is not None:
            ov_head, ov_why = ind.head, "the induction head"
        else:
            scores = np.nan_to_num(table.copying, nan=-np.inf)
            l, h = np.unravel_index(int(np.argmax(scores)), scores.shape)
            ov_head = ca.HeadId(int(l), int(h))
            ov_why = ("the head with the largest copying score" if np.isfinite(scores).any()
                      else "copying is not defined with a separate output vocabulary")
        ov_circuit = m.W_U @ m.head(ov_head.layer, ov_head.head).ov @ m.W_E
        top_ov = ca.top_tokens(ov_circuit, 8, vocab=m, roles=("output", "input"))
        qk_circuit = next((cc for cc in search if cc.sink.head is not None), None)
        top_qk = qk_circuit.top_tokens(8) if qk_circuit is not None else []
    prev_line = str(prev)
    if prev.head is not None:
        source = "W_pos" if m.W_pos is not None else "rotary offsets"
        prev_line += f"; positional score from {source} {table.positional_prev_token[prev.head.layer, prev.head.head]:.3f}"
    ind_line = str(ind)
    if ind.head is not None:
        if np.isfinite(table.copying[ind.head.layer, ind.head.head]):
            ind_line += f"; copying score {table.copying[ind.head.layer, ind.head.head]:.3f}"
    lines = [
        f"model: {model!r}",
        *architecture_notes(c),
        prev_line,
        ind_line,
        (str(k_comp) + ("; rotary model: through W_QK(0)" if c.rotary is not None else ""))
        if k_comp is not None else findings.describe_missing_composition(c.n_layers),
        ("copying heads (score > 0.5): " + (", ".join(f"{n} {s:.2f}" for n, s in copying) or "none")
         if np.isfinite(table.copying).any() else
         "copying heads: not applicable (a separate output vocabulary: W_U W_OV W_E is not square)"),
        search.summary(),
        *[f"  {cc.score:10.4g}  {cc.name}   {cc.symbol}" for cc in search],
        f"path expansion identity verified: {verification.holds} ({verification.method}; general form at "
        f"{shown_layers} layers x {shown_heads} heads, symbolic dimensions)",
    ]
    stage.log(f"analysis done in {stage.total:.1f} s")
    return Analysis(
        model=m, original=model, table=table, comp=comp, base=base, search=search, graph=graph, prev=prev,
        induction=ind, k_comp=k_comp, copying=copying, expansion=expansion, verification=verification,
        shown=(shown_layers, shown_heads), top_ov=top_ov, ov_head=ov_head, ov_why=ov_why, top_qk=top_qk,
        qk_circuit=qk_circuit, text="\n".join(lines),
    )


def architecture_notes(c: Any) -> list[str]:
    """One line per architecture feature that changes what a weight-based number means (empty for
    a GPT-2-style model): what is frozen, folded or taken at a fixed offset."""
    notes = []
    if c.rotary is not None:
        r = c.rotary
        scaling = "" if r.scaling == "none" else f", {r.scaling} scaling"
        notes.append(
            f"rotary positions ({r.style} pairs, {r.dim} of {c.d_head} dims, base {r.base:g}{scaling}): QK circuits and "
            "Q/K-composition are taken at offset 0, W_QK(0) = W_Q^T W_K"
            + (f" (YaRN's factor {r.attention_factor:.3g}^2 on the rotated planes left out)" if r.attention_factor != 1 else "")
        )
    if c.n_kv_heads is not None:
        notes.append(f"grouped-query attention: {c.n_heads} query heads per layer read {c.n_kv_heads} key/value heads")
    if c.attn_windows is not None:
        local = [f"L{l}: {w}" for l, w in enumerate(c.attn_windows) if w is not None]
        notes.append("sliding-window layers (window): " + ", ".join(local))
    if c.qk_norm:
        notes.append("per-head q/k RMSNorms: weights folded into W_Q, W_K; their per-token scales are left out of "
                     "weight-based scores (frozen in path expansion)")
    if c.post_norms:
        notes.append("norms of each sublayer's output: weights folded into W_O and the MLP writers; their per-token "
                     "scales are left out of weight-based scores (frozen in path expansion)")
    if c.attn_softcap is not None:
        notes.append(f"attention scores soft-capped at {c.attn_softcap:g}: QK-circuit values are pre-cap scores")
    if c.final_softcap is not None:
        notes.append(f"logits soft-capped at {c.final_softcap:g}: path terms add up to the pre-cap logits")
    if not c.causal:
        notes.append("bidirectional attention: every query sees every key")
    return notes


def _figures(a: Analysis) -> dict[str, str]:
    plt = _plt()
    m, table = a.model, a.table
    c = m.config
    L, H = c.n_layers, c.n_heads
    labels = [hd.name for hd in m.head_weights.ids()]
    figs = {}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, k in zip(axes, "qkv"):
        s = a.comp[k].reshape(L * H, L * H)
        im = ax.imshow(s, cmap="viridis", vmin=0)
        b = a.base[k]
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

    square = m.W_U.codomain == m.W_E.domain  # no eigenvalues with a separate output vocabulary
    for head in m.heads() if square else ():
        lam = ca.eigenvalues(m.W_U @ head.ov @ m.W_E)
        axes[1].scatter(lam.real, lam.imag, s=8, label=head.name)
    axes[1].set_title("eigenvalues of each head's full OV circuit" if square else
                      "no eigenvalues: the output vocabulary differs from the input one")
    axes[1].axvline(0, color="k", lw=0.5)
    axes[1].legend(fontsize=6, ncol=2)
    figs["copying"] = _png(fig)

    from circuitalg.circuits.diagnostics import positional_pattern, rotary_offset_pattern

    pattern = positional_pattern if m.W_pos is not None else rotary_offset_pattern
    fig, axes = plt.subplots(L, H, figsize=(2.2 * H, 2.2 * L), squeeze=False)
    for head in m.heads():
        ax = axes[head.layer, head.index]
        ax.imshow(pattern(m, head, 32), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{head.name} ({table.positional_prev_token[head.key]:.2f})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("positional QK patterns (softmax over " + ("W_pos scores" if m.W_pos is not None else
                 "μᵀ W_QK(Δ) μ, μ the mean token embedding") + "; query rows, key columns)")
    figs["positional"] = _png(fig)

    import networkx as nx

    g = a.graph.nx
    edges = sorted(
        ((u, v, d) for u, v, d in g.edges(data=True) if g.nodes[u]["kind"] == "head" == g.nodes[v]["kind"]),
        key=lambda e: -e[2]["score"] / e[2]["baseline"],
    )[: max(6, L * H)]
    fig, ax = plt.subplots(figsize=(9, 5))
    pos = {}
    for node, d in g.nodes(data=True):
        layer = d["layer"]
        idx = d["index"] if d["kind"] == "head" else (0 if d["kind"] == "embed" else 1)
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
    t0 = time.perf_counter()
    log("[8/8] figures and HTML")
    figs = _figures(a)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    search = a.search
    circuits = _table(
        [[f"{cc.score:.4g}", cc.name, str(cc.symbol)] for cc in search],
        ["‖W‖_F", "circuit", "virtual weight"],
    )
    def entries(rows: list[Any]) -> str:
        if not rows:
            return "<p>(no QK circuit among the top circuits)</p>"
        return _table([[e.row_label, e.col_label, f"{e.value:+.4g}"] for e in rows],
                      [rows[0].row_role, rows[0].col_role, "weight"])

    positional = f'<img alt="positional patterns" src="{figs["positional"]}">'
    if a.model.W_pos is None:
        positional = (
            "<p>This model has rotary position embeddings and no W_pos. Each panel is the head's attention by "
            "offset alone: the causal softmax of μ<sup>T</sup> W_QK(Δ) μ with Δ = key − query and μ the mean token "
            "embedding (what the head would do if every token embedded as μ). Its QK circuits and Q/K-compositions "
            "are taken at offset 0, W_QK(0) = W_Q<sup>T</sup> W_K; head.qk_at(Δ) gives the form at other "
            "offsets.</p>" + positional
        )
    tokens = entries(a.top_ov)
    qk = entries(a.top_qk)
    heads = _table(
        [[r["head"], *(f"{r[f]:.3f}" for f in a.table.fields)] for r in a.table.records()],
        ["head", *a.table.fields],
    )
    v = a.verification
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>circuitalg report: {html.escape(model.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}} img{{max-width:100%}} pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style>
</head><body>
<h1>circuitalg report: {html.escape(model.name)}</h1>
<section id="summary"><h2>Summary</h2><pre>{html.escape(a.text)}</pre></section>
<section id="composition"><h2>Composition scores</h2><img alt="composition heatmaps" src="{figs["composition"]}"></section>
<section id="copying"><h2>Copying and eigenvalues</h2><img alt="copying scores and eigenvalues" src="{figs["copying"]}"></section>
<section id="positional"><h2>Positional QK patterns</h2>{positional}</section>
<section id="graph"><h2>Circuit graph</h2><img alt="circuit graph" src="{figs["graph"]}"></section>
<section id="circuits"><h2>Top circuits</h2><p>{html.escape(search.summary())}</p>{circuits}</section>
<section id="tokens"><h2>Top token mappings</h2><h3>OV circuit W_U W_OV W_E of {a.ov_head.name} ({a.ov_why})</h3>{tokens}
<h3>Strongest QK circuit{": " + html.escape(a.qk_circuit.name) if a.qk_circuit is not None else ""}</h3>
<p>Rows are queries and columns keys; position pairs are restricted to key &lt;= query (causal attention).</p>{qk}</section>
<section id="heads"><h2>Head table</h2>{heads}</section>
<section id="identity"><h2>Verified identity</h2><p>Path expansion of a {a.shown[0]}-layer attention-only
transformer with {a.shown[1]} heads per layer, over symbolic dimensions (method {html.escape(v.method)}): holds =
{v.holds}.</p><pre>{html.escape(str(a.expansion))}</pre></section>
</body></html>
"""
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(doc))
    log(f"[8/8] figures and HTML: {time.perf_counter() - t0:.1f} s")
    log(f"wrote {out / 'report.html'}")
    prev, ind, kc = a.prev, a.induction, a.k_comp
    summary = {
        "model": model.name,
        "previous_token_head": prev.head.name if prev.head else None,
        "prev_token_score": prev.score, "induction_head": ind.head.name if ind.head else None,
        "induction_score": None if ind.best is None else ind.score,
        "naming_threshold": prev.threshold,
        "k_composition": None if kc is None else {
            "writer": kc.writer.name, "reader": kc.reader.name, "score": kc.score, "z": kc.z,
            "family_p": kc.family_p, "n_pairs": kc.n_pairs, "significant": kc.significant, "chosen": kc.chosen,
        },
        "baseline_k": {"mean": a.base["k"].mean, "std": a.base["k"].std},
        "copying_heads": dict(a.copying),
        "induction_copying": None if ind.head is None else float(a.table.copying[ind.head.layer, ind.head.head]),
        "top_circuits": [cc.to_dict() for cc in search], "certificate": search.bound,
        "identity_verified": bool(v.holds), "report": str(out / "report.html"), "text": a.text,
    }
    return summary
