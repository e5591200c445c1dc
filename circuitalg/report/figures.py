"""The report's figures, drawn to stay readable from 2 x 4 heads to 30 x 9 and 12 x 12 and beyond.

Every figure has labelled axes and a labelled colour scale; per-head axes are labelled by
layer (one tick per layer, thinned when there are many) rather than by head, and per-head
legends are replaced by colour scales. Composition heatmaps show only valid (earlier ->
later layer) pairs, on one colour scale for Q, K and V (standard deviations above the random-
head baseline), with the pairs significant at the family-wise level marked. Each function
returns a PNG data URI.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from circuitalg.circuits.composition import CompositionBaseline
from circuitalg.circuits.findings import CompositionPair, earlier_to_later
from circuitalg.errors import CircuitAlgError
from circuitalg.model.ids import HeadId, layer_name

__all__ = ["plt", "composition_figure", "copying_figure", "positional_figure", "graph_figure", "graph_layout", "edge_curvatures", "z_scores"]


def plt() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot

        # sizes readable when a figure is scaled to a 900 px page
        pyplot.rcParams.update({"font.size": 12, "axes.titlesize": 12, "axes.labelsize": 12, "xtick.labelsize": 11,
                                "ytick.labelsize": 11, "legend.fontsize": 11})
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CircuitAlgError("the report needs matplotlib: pip install matplotlib") from e
    return pyplot


def png(fig: Any, dpi: int = 100) -> str:
    """The figure as a base64 PNG data URI (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _layer_ticks(ax: Any, layers: Sequence[int], H: int, axis: str) -> None:
    """One tick per layer block (thinned to at most 10 labels), grid lines between blocks."""
    n = len(layers)
    step = max(1, int(np.ceil(n / 10)))
    centres = [i * H + (H - 1) / 2 for i in range(0, n, step)]
    labels = [layer_name(layers[i]) for i in range(0, n, step)]
    bounds = [i * H - 0.5 for i in range(1, n)]
    if axis == "x":
        ax.set_xticks(centres, labels, rotation=90 if n > 8 else 0)
        for b in bounds:
            ax.axvline(b, color="0.85", lw=0.4)
    else:
        ax.set_yticks(centres, labels)
        for b in bounds:
            ax.axhline(b, color="0.85", lw=0.4)


def z_scores(comp: np.ndarray, base: CompositionBaseline) -> np.ndarray:
    """``(score - mean) / std`` of the random-head baseline for valid pairs, NaN elsewhere."""
    std = base.std if base.std > 0 else 1.0
    return np.where(earlier_to_later(comp.shape), (comp - base.mean) / std, np.nan)


def composition_figure(comp: dict[str, np.ndarray], base: dict[str, CompositionBaseline], layers: Sequence[int],
                       thresholds: dict[str, float]) -> str:
    """Q-, K- and V-composition of valid pairs among ``layers``, one colour scale (z), significant
    pairs (score >= ``thresholds[kind]``) ringed."""
    pyplot = plt()
    sel = np.asarray(layers)
    H = comp["q"].shape[1]
    zs = {k: z_scores(comp[k], base[k])[np.ix_(sel, np.arange(H), sel, np.arange(H))] for k in "qkv"}
    finite = np.concatenate([z[np.isfinite(z)] for z in zs.values()])
    zmax = float(max(4.0, np.abs(finite).max())) if finite.size else 4.0
    n = len(sel) * H
    side = 3.2
    fig, axes = pyplot.subplots(1, 3, figsize=(3 * side + 1.6, side + 0.9), constrained_layout=True)
    cmap = pyplot.get_cmap("RdBu_r").with_extremes(bad="0.93")
    im = None
    for ax, k in zip(axes, "qkv"):
        z = zs[k].reshape(n, n)
        im = ax.imshow(z, cmap=cmap, vmin=-zmax, vmax=zmax, interpolation="nearest", aspect="equal")
        sig = comp[k][np.ix_(sel, np.arange(H), sel, np.arange(H))].reshape(n, n) >= thresholds[k]
        sig &= np.isfinite(z)
        rows, cols = np.nonzero(sig)
        if rows.size:
            ax.scatter(cols, rows, s=18 if n <= 60 else 8, facecolors="none", edgecolors="k", linewidths=0.8)
        ax.set_title(f"{k.upper()}-composition: {rows.size} significant")
        _layer_ticks(ax, list(sel), H, "x")
        _layer_ticks(ax, list(sel), H, "y")
        ax.set_xlabel("reader (later layer)")
        ax.set_ylabel("writer")
    cb = fig.colorbar(im, ax=list(axes), shrink=0.85, pad=0.01)
    cb.set_label("z: std above random heads")
    return png(fig)


def copying_figure(copying: np.ndarray, eigs: dict[tuple[int, int], np.ndarray] | None, layers: Sequence[int]) -> str:
    """Copying scores as a layer x head map, and every selected head's full-OV eigenvalues in the
    complex plane coloured by layer (equal aspect)."""
    pyplot = plt()
    sel = np.asarray(layers)
    H = copying.shape[1]
    cp = copying[sel]
    fig, axes = pyplot.subplots(1, 2, figsize=(10, min(5.5, max(3.4, 0.3 * len(sel) + 1.8))), constrained_layout=True,
                                gridspec_kw={"width_ratios": [1.1, 1], "wspace": 0.12})
    cmap = pyplot.get_cmap("RdBu_r").with_extremes(bad="0.93")
    im = axes[0].imshow(cp, cmap=cmap, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    if H <= 8 and len(sel) <= 25:  # numbers only where a cell is wide enough for "-0.00" (about 0.5 in)
        for (i, h), v in np.ndenumerate(cp):
            if np.isfinite(v):
                axes[0].text(h, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                             color="white" if abs(v) > 0.6 else "black")
    step = max(1, int(np.ceil(len(sel) / 24)))
    axes[0].set_yticks(range(0, len(sel), step), [layer_name(sel[i]) for i in range(0, len(sel), step)])
    hstep = max(1, int(np.ceil(H / 16)))
    axes[0].set_xticks(range(0, H, hstep), [str(h) for h in range(0, H, hstep)])
    axes[0].set_xlabel("head")
    axes[0].set_ylabel("layer")
    axes[0].set_title("copying score of the full OV circuit")
    fig.colorbar(im, ax=axes[0], shrink=0.9, pad=0.02).set_label("Σ Re λ / Σ |λ|")
    ax = axes[1]
    if eigs:
        norm = pyplot.Normalize(vmin=float(sel.min()), vmax=float(max(sel.max(), sel.min() + 1)))
        sc = None
        for (l, _h), lam in eigs.items():
            sc = ax.scatter(lam.real, lam.imag, s=6, c=np.full(len(lam), l), cmap="viridis", norm=norm, alpha=0.7)
        ax.axhline(0, color="0.6", lw=0.5)
        ax.axvline(0, color="0.6", lw=0.5)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("Re λ")
        ax.set_ylabel("Im λ")
        ax.set_title("eigenvalues of each W_U W_OV W_E (above rounding)")
        if sc is not None:
            fig.colorbar(sc, ax=ax, shrink=0.9).set_label("layer")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "no eigenvalues: the output vocabulary\ndiffers from the input one",
                ha="center", va="center")
    return png(fig)


def positional_figure(score: np.ndarray, patterns: dict[tuple[int, int], np.ndarray], layers: Sequence[int],
                      rotary: bool) -> str:
    """The weight-based previous-token score of every head (layer x head map) and the positional
    patterns of the strongest heads (query rows, key columns)."""
    pyplot = plt()
    sel = np.asarray(layers)
    H = score.shape[1]
    k = len(patterns)
    fig = pyplot.figure(figsize=(10, min(5.5, max(4.2, 0.3 * len(sel) + 2.0))), constrained_layout=True)
    grid = fig.add_gridspec(2, 1 + max(1, (k + 1) // 2), width_ratios=[2.2] + [1] * max(1, (k + 1) // 2),
                            wspace=0.15)
    ax = fig.add_subplot(grid[:, 0])
    im = ax.imshow(score[sel], cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    step = max(1, int(np.ceil(len(sel) / 24)))
    ax.set_yticks(range(0, len(sel), step), [layer_name(sel[i]) for i in range(0, len(sel), step)])
    hstep = max(1, int(np.ceil(H / 16)))
    ax.set_xticks(range(0, H, hstep), [str(h) for h in range(0, H, hstep)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("positional previous-token score")
    fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02).set_label("previous-token score")
    for i, ((l, h), p) in enumerate(patterns.items()):
        a = fig.add_subplot(grid[i % 2, 1 + i // 2])
        a.imshow(p, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        a.set_title(f"{HeadId(l, h).name} ({score[l, h]:.2f})")
        a.set_xlabel("key position")
        a.set_ylabel("query position")
        a.tick_params(labelsize=8)
    fig.suptitle("attention by " + ("offset, through W_QK(Δ) with the mean token embedding" if rotary else
                                    "position alone, through W_pos"))
    return png(fig)


#: Curvatures tried for a graph edge (matplotlib's ``arc3`` ``rad``), in order of preference.
EDGE_RADS = (0.15, -0.15, 0.3, -0.3, 0.5, -0.5, 0.75, -0.75)
#: An edge whose curve stays this far (inches) from every other drawn head is not mistaken for
#: one through that head.
EDGE_CLEARANCE = 0.2


def _arc_points(a: np.ndarray, b: np.ndarray, rad: float, n: int = 33) -> np.ndarray:
    """Points of matplotlib's ``arc3`` curve from ``a`` to ``b`` (display-like coordinates): the
    quadratic Bezier curve whose control point is ``rad`` times ``|b - a|`` off the midpoint."""
    d = b - a
    c = (a + b) / 2 + rad * np.array([d[1], -d[0]])
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * c + t**2 * b


def edge_curvatures(pairs: Sequence[tuple[tuple[int, int], tuple[int, int]]], n_layers: int, n_heads: int,
                    scale: tuple[float, float]) -> list[float]:
    """An ``arc3`` curvature for each ``(writer, reader)`` edge of the graph figure (``(layer, head)``
    ids; ``scale``: inches per layer and per head), so that no edge passes near a head it does not
    join: the first of :data:`EDGE_RADS` whose curve stays inside the plot (layers ``-0.7 ..
    n_layers - 0.3``, heads ``-0.7 .. n_heads - 0.3``) and keeps :data:`EDGE_CLEARANCE` from every
    other head of ``pairs``, else the curve inside the plot that keeps the most. Edges between the
    same two heads (several kinds of composition) get different curvatures."""
    sx, sy = scale
    pos = {n: np.array([n[0] * sx, -n[1] * sy]) for pair in pairs for n in pair}  # head 0 on top
    lo, hi = np.array([-0.7 * sx, -(n_heads - 0.3) * sy]), np.array([(n_layers - 0.3) * sx, 0.7 * sy])
    out: list[float] = []
    taken: dict[tuple[tuple[int, int], tuple[int, int]], set[float]] = {}
    for w, r in pairs:
        others = np.array([p for n, p in pos.items() if n not in (w, r)]).reshape(-1, 2)
        free = [rad for rad in EDGE_RADS if rad not in taken.get((w, r), set())] or list(EDGE_RADS)
        best, best_gap = free[0], -np.inf
        for rad in free:
            pts = _arc_points(pos[w], pos[r], rad)
            if np.any(pts < lo) or np.any(pts > hi):
                continue  # the curve would leave the plot
            gap = (float(np.sqrt(((pts[:, None, :] - others[None]) ** 2).sum(-1)).min()) if len(others) else np.inf)
            if gap >= EDGE_CLEARANCE:
                best = rad
                break
            if gap > best_gap:
                best, best_gap = rad, gap
        out.append(best)
        taken.setdefault((w, r), set()).add(best)
    return out


def graph_layout(n_layers: int, n_heads: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """The graph figure's size in inches and its scale, inches per layer and per head (the plot
    takes about 80% of the figure)."""
    size = (max(6.0, min(10.0, 0.45 * n_layers + 3)), max(4.0, min(8.0, 0.35 * n_heads + 2.5)))
    return size, (0.8 * size[0] / max(n_layers, 1), 0.8 * size[1] / max(n_heads, 1))


def graph_figure(edges: Sequence[CompositionPair], n_layers: int, n_heads: int) -> str:
    """The given head-to-head edges (writer -> reader compositions), heads laid out by layer (x)
    and index (y), labelled; colour by composition kind, width by z, dashed when not
    significant. Each edge is curved away from the heads it does not join (:func:`edge_curvatures`)."""
    pyplot = plt()
    from matplotlib.lines import Line2D

    size, scale = graph_layout(n_layers, n_heads)
    fig, ax = pyplot.subplots(figsize=size, constrained_layout=True)
    xs, ys = np.meshgrid(np.arange(n_layers), np.arange(n_heads))
    ax.scatter(xs.ravel(), ys.ravel(), s=6, color="0.8", zorder=1)
    colors = {"q": "tab:blue", "k": "tab:red", "v": "tab:green"}
    used: set[tuple[int, int]] = set()
    zmax = max([e.z for e in edges], default=1.0)
    pairs = [(e.writer, e.reader) for e in edges]
    rads = edge_curvatures(pairs, n_layers, n_heads, scale)
    for e, ((l1, h1), (l2, h2)), rad in zip(edges, pairs, rads):
        used |= {(l1, h1), (l2, h2)}
        ax.annotate("", xy=(l2, h2), xytext=(l1, h1), zorder=2,
                    arrowprops=dict(arrowstyle="-|>", color=colors[e.kind], alpha=0.85,
                                    linestyle="-" if e.significant else (0, (4, 3)),
                                    lw=0.8 + 2.5 * max(0.0, e.z) / max(zmax, 1e-9),
                                    connectionstyle=f"arc3,rad={rad}", shrinkA=5, shrinkB=5))
    for l, h in used:
        ax.scatter([l], [h], s=45, color="k", zorder=3)
        ax.text(l + 0.1, h - 0.22, HeadId(l, h).name, ha="left", va="bottom", fontsize=9, zorder=4,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    ax.set_xlim(-0.7, n_layers - 0.3)
    ax.set_ylim(n_heads - 0.3, -0.7)
    step = max(1, int(np.ceil(n_layers / 20)))
    ax.set_xticks(range(0, n_layers, step))
    hstep = max(1, int(np.ceil(n_heads / 16)))
    ax.set_yticks(range(0, n_heads, hstep))
    ax.set_xlabel("layer")
    ax.set_ylabel("head")
    handles = [Line2D([0], [0], color=c, lw=2, label=f"{k.upper()}-composition") for k, c in colors.items()]
    handles += [Line2D([0], [0], color="k", lw=1.5, label="significant"),
                Line2D([0], [0], color="k", lw=1.5, linestyle=(0, (4, 3)), label="not significant")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    n_sig = sum(1 for e in edges if e.significant)
    ax.set_title(f"the {len(edges)} strongest head-to-head edges by z ({n_sig} significant; width ~ z)")
    return png(fig)
