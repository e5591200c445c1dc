"""The HTML report of ``circuitalg report``: one self-contained file with embedded PNG figures.

:func:`analyse` computes an :class:`Analysis` (every finding with its evidence); the figures,
the HTML sections, the CSV/JSON tables and the summary that :func:`write_report` writes read only
that record. matplotlib is a core dependency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg import runtime
from circuitalg.circuits.circuit import Circuit
from circuitalg.circuits.composition import CompositionBaseline, composition_baselines, composition_scores
from circuitalg.circuits.diagnostics import (
    FULL_OV_FAMILY,
    OV_FAMILY,
    HeadTable,
    TopTokens,
    head_table,
    positional_pattern,
    repeated_random_tokens,
    rotary_offset_pattern,
    top_tokens,
)
from circuitalg.circuits.enumerate import CircuitSearch, top_circuits
from circuitalg.circuits.findings import (
    FAMILY_ALPHA,
    CompositionFinding,
    CompositionPair,
    CompositionPairs,
    HeadFinding,
    composition_finding,
    composition_pairs,
    describe_missing_composition,
    induction_head,
    previous_token_head,
)
from circuitalg.circuits.graph import CircuitGraph
from circuitalg.errors import InvalidArgumentError, PrecisionWarning
from circuitalg.files import atomic_write
from circuitalg.linalg.accuracy import collect_precision_warnings, outside_stacklevel, tag_warning
from circuitalg.maps.nodes import LinearMap
from circuitalg.model.config import TransformerConfig
from circuitalg.model.ids import HeadId, layer_name
from circuitalg.model.transforms import fold_layer_norm
from circuitalg.model.weights import Transformer
from circuitalg.report import figures, page
from circuitalg.symbolic.expansion import SymbolicExpansion, symbolic_expansion
from circuitalg.symbolic.verification import Verification

__all__ = ["Analysis", "ReportOptions", "analyse", "write_report", "architecture_notes"]


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What the report covers.

    Attributes
    ----------
    layers : tuple of int, optional
        The layers whose heads the figures and tables show (default: all); the analysis itself
        (findings, significance over all pairs) always covers the whole model.
    top : int
        Entries in each top list: circuits, composition pairs, graph edges.
    seq_len : int, optional
        Length of the random sequence that is repeated for the induction / previous-token
        measurements (at most ``n_ctx // 2``; default ``min(20, n_ctx // 2)``).
    figures : bool
        Draw the figures (``False``: tables and files only, faster).
    progress_bar : bool
        Show a tqdm progress bar over the stages (for a terminal; the stage lines are logged
        either way).
    """

    layers: tuple[int, ...] | None = None
    top: int = 10
    seq_len: int | None = None
    figures: bool = True
    progress_bar: bool = False

    def check(self, model: Transformer) -> ReportOptions:
        """These options validated against ``model`` (an error names the option and its range), with
        ``seq_len`` filled in."""
        c = model.config
        if self.layers is not None:
            bad = [l for l in self.layers if not (isinstance(l, int) and 0 <= l < c.n_layers)]
            if bad or not self.layers:
                raise InvalidArgumentError(
                    f"--layers {list(self.layers)}: {model.name} has layers 0..{c.n_layers - 1}; give some of them.")
        if not (isinstance(self.top, int) and self.top >= 1):
            raise InvalidArgumentError(f"--top {self.top!r}: pass a positive integer.")
        if self.seq_len is None:
            if c.n_ctx < 2:
                raise InvalidArgumentError(f"{model.name}: n_ctx={c.n_ctx} leaves no room for a repeated sequence.")
            return dataclasses.replace(self, seq_len=min(20, c.n_ctx // 2))
        if not (isinstance(self.seq_len, int) and 1 <= self.seq_len and 2 * self.seq_len <= c.n_ctx):
            raise InvalidArgumentError(
                f"--seq-len {self.seq_len!r}: the repeated sequence is 2 x seq-len tokens, at most n_ctx={c.n_ctx}; "
                f"pass 1..{c.n_ctx // 2}.")
        return self

    def shown_layers(self, n_layers: int) -> list[int]:
        """The layers shown, sorted."""
        return sorted(set(self.layers)) if self.layers is not None else list(range(n_layers))


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What :func:`analyse` found: the results every figure, table and summary line reads.

    Attributes
    ----------
    model : Transformer
        The analysed model (layer norms folded, float64).
    original : Transformer
        The model given.
    table : HeadTable
        Every head's diagnostics, behavioural scores included.
    comp : dict of kind -> ndarray
        Composition scores ``(n_layers, n_heads, n_layers, n_heads)`` for ``q``, ``k``, ``v``.
    base : dict of kind -> CompositionBaseline
        The random-head baseline of each kind.
    search : CircuitSearch
        The exact top circuits.
    graph : CircuitGraph
    prev, induction : HeadFinding
        The named previous-token and induction heads, or why none is named.
    k_comp : CompositionFinding or None
        The K-composition of the named heads (else the strongest valid pair); None without
        valid pairs.
    copying : tuple of (str, float)
        Heads with a copying score above 0.5, in layer order.
    expansion : SymbolicExpansion
    verification : Verification
        The symbolic identity of the path expansion, shown at ``shown`` = (layers, heads).
    shown : (int, int)
    top_ov : TopTokens
        The token table of the OV circuit of ``ov_head``, chosen because ``ov_why``.
    ov_head : HeadId
    ov_why : str
    top_qk : TopTokens or None
        The token table of ``qk_circuit``, the strongest QK circuit among the top circuits
        (None when there is none).
    qk_circuit : Circuit or None
    text : str
        The printed summary.
    options : ReportOptions
    """

    model: Transformer
    original: Transformer
    table: HeadTable
    comp: dict[str, np.ndarray]
    base: dict[str, CompositionBaseline]
    search: CircuitSearch
    graph: CircuitGraph
    prev: HeadFinding
    induction: HeadFinding
    k_comp: CompositionFinding | None
    copying: tuple[tuple[str, float], ...]
    expansion: SymbolicExpansion
    verification: Verification
    shown: tuple[int, int]
    top_ov: TopTokens
    ov_head: HeadId
    ov_why: str
    top_qk: TopTokens | None
    qk_circuit: Circuit | None
    text: str
    options: ReportOptions = ReportOptions()


def _peak_rss_gib() -> float:
    """This process's peak resident set size in GiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def precision_summary(
    stage: str, caught: Sequence[PrecisionWarning], bounds_in: dict[str, str] | None = None
) -> str | None:
    """One sentence for the :class:`~circuitalg.errors.PrecisionWarning` s ``caught`` in report stage
    ``stage`` (None when there were none): per kind of result and family of maps, how many carry a
    relative error bound over the threshold and the largest, and where ``bounds_in`` (family ->
    place) says each family's bounds are listed."""
    if not caught:
        return None
    groups: dict[tuple[str, str], list[PrecisionWarning]] = {}
    for w in caught:  # a family's summary warning (total > 1) or one map's warning (total 1)
        family = getattr(w, "subject", "results") if getattr(w, "total", 1) > 1 else "maps"
        groups.setdefault((getattr(w, "what", "results"), family), []).append(w)
    parts, top = [], 0.0
    for (what, family), ws in groups.items():
        count = sum(getattr(w, "count", 1) for w in ws)
        rel = max(float(getattr(w, "relative", float("nan"))) for w in ws)
        top = max(top, rel)
        if family == "maps":
            parts.append(f"{what.replace('_', ' ')} of {count} map{'s' if count != 1 else ''} (up to {rel:.2g})")
        else:
            total = sum(getattr(w, "total", 0) for w in ws)
            where = (bounds_in or {}).get(family)
            parts.append(f"{what.replace('_', ' ')} of {count} of {total} {family} (up to {rel:.2g}"
                         + (f"; every head's bound in {where})" if where else ")"))
    return (f"report stage '{stage}': {'; '.join(parts)} carry a-priori relative error bounds above the "
            f"PrecisionWarning threshold (largest {top:.2g}). The bounds are worst cases, usually pessimistic "
            "by orders of magnitude (see circuitalg.linalg.accuracy).")


class Stages:
    """Numbered stages that log their start and their wall time (``[i/n] name: 1.2 s``), and
    summarise the :class:`~circuitalg.errors.PrecisionWarning` s of each stage in one
    (:func:`precision_summary`), pointing at the caller's line outside circuitalg."""

    def __init__(self, log: Callable[[str], None] | None, n: int, bar: bool = False) -> None:
        self.log, self.n, self.i, self.total = log or (lambda _m: None), n, 0, 0.0
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=n, unit="stage", leave=False, dynamic_ncols=True)

    @contextlib.contextmanager
    def __call__(self, name: str, bounds_in: dict[str, str] | None = None) -> Iterator[None]:
        self.i += 1
        label = f"[{self.i}/{self.n}] {name}"
        if self.bar is not None:
            self.bar.set_description(name)
        else:
            self.log(label)
        t = time.perf_counter()
        with collect_precision_warnings() as caught:
            yield
        text = precision_summary(name, caught, bounds_in)
        if text is not None:
            warnings.warn(tag_warning(PrecisionWarning(text), what="report stage", subject=name,
                                      count=sum(getattr(w, "count", 1) for w in caught),
                                      relative=max(float(getattr(w, "relative", float("nan"))) for w in caught)),
                          stacklevel=outside_stacklevel())
        dt = time.perf_counter() - t
        self.total += dt
        self.log(f"{label}: {dt:.1f} s (peak RSS so far {_peak_rss_gib():.2f} GiB)")
        if self.bar is not None:
            self.bar.update(1)
            if self.i == self.n:
                self.bar.close()


def analyse(
    model: Transformer, log: Callable[[str], None] | None = None, options: ReportOptions | None = None, *,
    stages: Stages | None = None,
) -> Analysis:
    """Everything the report shows (:class:`Analysis`; ``text`` is the printed summary).

    Every claim in ``text`` carries its evidence: heads are named only above the thresholds
    of :mod:`circuitalg.circuits.findings`, compositions only between an earlier and a later
    layer with a family-wise p-value over all such pairs, and otherwise the line says "none
    found" or "not applicable".
    """
    options = (options or ReportOptions()).check(model)
    stage = stages or Stages(log, 7, bar=options.progress_bar)
    with stage("fold layer norms"):
        # float64 numerics whatever the checkpoint's dtype (a float32 model converts exactly)
        m = fold_layer_norm(model, dtype=np.float64)
    c = m.config
    with stage("head diagnostics on repeated random tokens", bounds_in={
            FULL_OV_FAMILY: "heads.csv, column copying_bound", OV_FAMILY: "heads.csv, column copying_ov_bound"}):
        table = head_table(m, repeated_random_tokens(m, options.seq_len, 16, seed=0))
    with stage("composition scores and baselines"):
        comp = {k: composition_scores(m, k) for k in "qkv"}
        base = composition_baselines(m)
    with stage("exact top circuits"):
        search = top_circuits(m, options.top, min(2, c.n_layers + 1), ("unembed", "q", "k"))

    prev = previous_token_head(table)
    ind = induction_head(table)
    pair = (prev.head, ind.head) if prev.head and ind.head and prev.head.layer < ind.head.layer else None
    k_comp = composition_finding(comp["k"], base["k"], pair=pair)
    copying = tuple((HeadId(int(l), int(h)).name, float(table.copying[l, h]))
                    for l, h in zip(*np.nonzero(table.copying > 0.5)))
    with stage("symbolic identity of the path expansion"):
        # (1 + heads)^layers paths: prove the identity at a bounded size (it holds for all dimensions)
        shown = (min(c.n_layers, 3), min(c.n_heads, 2))
        expansion = symbolic_expansion(*shown)
        verification = expansion.verify()
    with stage("top token mappings (factored, certified)"):
        ov_head, ov_why = _shown_ov_head(table, ind)
        ov_circuit = m.W_U @ m.head(ov_head.layer, ov_head.head).ov @ m.W_E
        top_ov = top_tokens(ov_circuit, 8, vocab=m, roles=("output", "input"),
                            max_rows=token_scan_rows(ov_circuit, c.d_head))
        qk_circuit = next((cc for cc in search if cc.sink.head is not None), None)
        top_qk = (qk_circuit.top_tokens(8, max_rows=token_scan_rows(qk_circuit.weight, c.d_head)) if qk_circuit is not None
                  else None)
    with stage("circuit graph"):  # last: its cached MLP reader factors then add to no later stage's peak
        graph = CircuitGraph(m, base)
    stage.log(f"analysis done in {stage.total:.1f} s")
    found = Analysis(
        model=m, original=model, table=table, comp=comp, base=base, search=search, graph=graph, prev=prev,
        induction=ind, k_comp=k_comp, copying=copying, expansion=expansion, verification=verification,
        shown=shown, top_ov=top_ov, ov_head=ov_head, ov_why=ov_why, top_qk=top_qk,
        qk_circuit=qk_circuit, text="", options=options,
    )
    return dataclasses.replace(found, text=_summary_text(found))


def _shown_ov_head(table: HeadTable, induction: HeadFinding) -> tuple[HeadId, str]:
    """The head whose OV circuit the token tables show, and why: the induction head, else the
    strongest copier."""
    if induction.head is not None:
        return induction.head, "the induction head"
    scores = np.nan_to_num(table.copying, nan=-np.inf)
    l, h = np.unravel_index(int(np.argmax(scores)), scores.shape)
    why = ("the head with the largest copying score" if np.isfinite(scores).any()
           else "copying is not defined with a separate output vocabulary")
    return HeadId(int(l), int(h)), why


def _summary_text(a: Analysis) -> str:
    """The printed summary of an analysis: the model, each finding with its evidence, the top
    circuits with their certificate and the verified identity (``a.text``)."""
    m, table, prev, ind, k_comp = a.model, a.table, a.prev, a.induction, a.k_comp
    c = m.config
    prev_line = str(prev)
    if prev.head is not None:
        source = "W_pos" if m.W_pos is not None else "rotary offsets"
        prev_line += f"; positional score from {source} {table.positional_prev_token[prev.head.layer, prev.head.head]:.3f}"
    ind_line = str(ind)
    if ind.head is not None:
        if np.isfinite(table.copying[ind.head.layer, ind.head.head]):
            ind_line += f"; copying score {table.copying[ind.head.layer, ind.head.head]:.3f}"
    lines = [
        f"model: {a.original!r}",
        *architecture_notes(c),
        prev_line,
        ind_line,
        (str(k_comp) + ("; rotary model: through W_QK(0)" if c.rotary is not None else ""))
        if k_comp is not None else describe_missing_composition(c.n_layers),
        (copying_line(a.copying)
         if np.isfinite(table.copying).any() else
         "copying heads: not applicable (a separate output vocabulary: W_U W_OV W_E is not square)"),
        a.search.summary(),
        *[f"  {cc.score:10.4g}  {cc.name}   {cc.symbol}" for cc in a.search],
        f"path expansion identity verified: {a.verification.holds} ({a.verification.method}; general form at "
        f"{a.shown[0]} layers x {a.shown[1]} heads, symbolic dimensions)",
    ]
    return "\n".join(lines)


#: Entries a list in the printed summary names before it is cut to the strongest few.
SUMMARY_LIST_MAX = 8
#: How many of the strongest a cut list names.
SUMMARY_LIST_TOP = 5


def copying_line(copying: Sequence[tuple[str, float]]) -> str:
    """The summary's copying-heads line: every head when there are at most :data:`SUMMARY_LIST_MAX`
    (in layer order), else the count and the :data:`SUMMARY_LIST_TOP` strongest, with where the
    full list is."""
    if len(copying) <= SUMMARY_LIST_MAX:
        return "copying heads (score > 0.5): " + (", ".join(f"{n} {s:.2f}" for n, s in copying) or "none")
    strongest = sorted(copying, key=lambda ns: -ns[1])[:SUMMARY_LIST_TOP]
    return (f"{len(copying)} copying heads (score > 0.5); strongest: "
            + ", ".join(f"{n} {s:.2f}" for n, s in strongest) + "; all in heads.csv (column copying)")


def _layer_ranges(layers: list[int]) -> str:
    """``L0-L4, L6-L10, L12`` for sorted layer indices."""
    out, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        out.append(layer_name(layers[i]) if i == j else f"{layer_name(layers[i])}-{layer_name(layers[j])}")
        i = j + 1
    return ", ".join(out)


#: Multiply-adds the report spends on one token table's scan: the exact scan of a map with ``n``
#: rows, ``n`` columns and rank ``r`` costs up to ``n² r`` (a 262,144-token vocabulary at rank 256
#: is ~1.8e13, GPT-2-small's ~1.6e11), so the strongest rows are scanned within this budget and the table states
#: whether the result is still exact (``TopTokens.certificate``).
TOKEN_SCAN_MACS: int = 1 << 38


def token_scan_rows(m: LinearMap, rank: int) -> int:
    """How many rows of ``m`` (of rank at most ``rank``) the report's token scan may cover within
    :data:`TOKEN_SCAN_MACS`."""
    return max(1, TOKEN_SCAN_MACS // max(1, m.shape[1] * rank))


def architecture_notes(c: TransformerConfig) -> list[str]:
    """One line per architecture feature that changes what a weight-based number means (empty for
    a GPT-2-style model): what is frozen, folded or taken at a fixed offset."""
    notes = []
    if c.rotary is not None:
        r = c.rotary
        scaling = "" if r.scaling == "none" else f", {r.scaling} scaling"
        notes.append(
            f"rotary positions ({r.style} pairs, {r.dim} of {c.d_head} dims, base {r.base:g}{scaling}): QK circuits and "
            "Q/K-composition are taken at offset 0, W_QK(0) = W_Q^T W_K"
            + (f" ({'LongRoPE' if r.scaling == 'longrope' else 'YaRN'}'s attention factor {r.attention_factor:.3g}^2 on "
               "the rotated planes left out)" if r.attention_factor != 1 else "")
            + ("; LongRoPE: weight-based numbers use the short factors (the forward pass switches to the long ones "
               f"beyond {r.original_max_position_embeddings} tokens)" if r.scaling == "longrope" else "")
            + (f"; sliding-window layers rotate with base {c.rotary_local.base:g}"
               + ("" if c.rotary_local.scaling == "none" else f", {c.rotary_local.scaling} scaling")
               if getattr(c, "rotary_local", None) is not None and c.rotary_local != r else "")
        )
    if c.n_kv_heads is not None:
        notes.append(f"grouped-query attention: {c.n_heads} query heads per layer read {c.n_kv_heads} key/value heads")
    if c.attn_windows is not None:
        local = [(l, w) for l, w in enumerate(c.attn_windows) if w is not None]
        if len(local) <= SUMMARY_LIST_MAX:
            notes.append("sliding-window layers (window): " + ", ".join(f"{layer_name(l)}: {w}" for l, w in local))
        else:  # a long list: grouped by window size, layers as ranges
            groups = [f"window {w}: {_layer_ranges([l for l, x in local if x == w])}"
                      for w in sorted({w for _, w in local})]
            notes.append(f"sliding-window layers ({len(local)} of {c.n_layers}): " + "; ".join(groups))
    if not c.pre_norms:
        notes.append("no input norms: attention and MLPs read the residual stream itself (only the final norm's "
                     "weight is folded into W_U)")
    if c.qk_norm:
        scope = "per-head" if c.qk_norm_scope == "head" else "whole-projection (all heads together)"
        notes.append(f"{scope} q/k RMSNorms: weights folded into W_Q, W_K; their per-token scales are left out of "
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


def _composition_pairs(a: Analysis, layers: list[int]) -> dict[str, CompositionPairs]:
    """Every valid pair among ``layers`` for each kind, judged over all the model's valid pairs."""
    return {k: composition_pairs(a.comp[k], a.base[k], layers=layers) for k in "qkv"}


def _by_z(pairs: dict[str, CompositionPairs]) -> list[CompositionPair]:
    """The pairs of every kind, highest z first (then kind, writer and reader names)."""
    rows = [p for k in "qkv" for p in pairs[k].pairs]
    names = {h: h.name for h in {p.writer for p in rows} | {p.reader for p in rows}}  # each formatted once
    return sorted(rows, key=lambda p: (-p.z, p.kind, names[p.writer], names[p.reader]))


def write_report(
    model: Transformer, out: Path, log: Callable[[str], None] | None = None, options: ReportOptions | None = None
) -> dict[str, Any]:
    """Analyse ``model``; write ``out/report.html`` and beside it ``heads.csv``, ``composition.csv``,
    ``circuits.csv``, ``graph.json`` and ``summary.json``; return the JSON-ready summary.

    Runs in the caller's :class:`~circuitalg.runtime.Runtime` without NumPy's transparent-huge-page
    advice (the analysis makes many short-lived large arrays).
    """
    with dataclasses.replace(runtime.current(), hugepage_advice=False):
        log = log or (lambda _m: None)
        options = (options or ReportOptions()).check(model)
        stage = Stages(log, 8, bar=options.progress_bar)
        a = analyse(model, log, options, stages=stage)
        with stage("figures, tables and files"):
            summary = _write_outputs(a, model.name, Path(out))
        log(f"wrote {Path(out) / 'report.html'} (+ heads.csv, composition.csv, circuits.csv, graph.json, summary.json)")
        return summary


def _write_outputs(a: Analysis, name: str, out: Path) -> dict[str, Any]:
    """The page, the CSV/JSON files and the summary of an analysis."""
    layers = a.options.shown_layers(a.model.config.n_layers)
    out.mkdir(parents=True, exist_ok=True)
    pairs = _composition_pairs(a, layers)
    ranked = _by_z(pairs)
    figs = _figures(a, layers, pairs, ranked)
    doc = page.page(f"circuitalg report: {name}", _sections(a, layers, pairs, ranked, figs))
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(doc))
    _write_tables(a, out, ranked)
    summary = _summary(a, name, out, pairs)
    page.write_json(out / "summary.json", summary)
    return summary


def _figures(a: Analysis, layers: list[int], pairs: dict[str, CompositionPairs],
             ranked: list[CompositionPair]) -> dict[str, str]:
    """The figures drawn (PNG data URIs by section), none with ``--no-figures``."""
    o, m, table = a.options, a.model, a.table
    c = m.config
    figs: dict[str, str] = {}
    if not o.figures:
        return figs
    if c.n_layers >= 2:
        thresholds = {k: pairs[k].threshold for k in "qkv"}
        figs["composition"] = figures.composition_figure(a.comp, a.base, layers, thresholds)
        figs["graph"] = figures.graph_figure(ranked[: o.top], c.n_layers, c.n_heads)
    ev = table.ov_eigenvalues  # computed once, for the copying scores
    eigs = {lh: lam for lh, lam in ev.items() if lh[0] in layers} if ev is not None else None
    figs["copying"] = figures.copying_figure(table.copying, eigs, layers)
    pattern = positional_pattern if m.W_pos is not None else rotary_offset_pattern
    score = table.positional_prev_token
    order = sorted(((l, h) for l in layers for h in range(c.n_heads)), key=lambda lh: -score[lh])[:6]
    pats = {lh: pattern(m, m.head(*lh), min(24, c.n_ctx)) for lh in order}
    figs["positional"] = figures.positional_figure(score, pats, layers, m.W_pos is None)
    return figs


def _shown(a: Analysis, layers: list[int]) -> str:
    return "all layers" if a.options.layers is None else "layers " + ", ".join(map(str, layers))


def _sections(a: Analysis, layers: list[int], pairs: dict[str, CompositionPairs], ranked: list[CompositionPair],
              figs: dict[str, str]) -> list[tuple[str, str, str]]:
    """The page's sections, ``(id, heading, inner html)``."""
    o, m = a.options, a.model

    def img(key: str, alt: str) -> str:
        if key in figs:
            return f'<img alt="{alt}" src="{figs[key]}">'
        why = "--no-figures" if not o.figures else "one layer: no earlier -> later pairs"
        return f"<p>(figure not drawn: {why})</p>"

    def explain(key: str) -> str:
        return f'<p class="explain">{page.EXPLAIN[key]}</p>'

    circuits_rows = [[f"{cc.score:.4g}", cc.name, str(cc.symbol)] for cc in a.search]
    circuits_head = ["‖W‖_F", "circuit", "virtual weight"]
    head_rows = [[r["head"], *(f"{r[f]:.2g}" if f.endswith("_bound") else f"{r[f]:.3f}" for f in a.table.fields)]
                 for r in a.table.records() if r["layer"] in layers]
    positional_note = ""
    if m.W_pos is None:
        positional_note = ("<p>Rotary model: no W<sub>pos</sub>; attention by offset alone through W<sub>QK</sub>(Δ) = "
                           "W<sub>Q</sub><sup>T</sup> R(Δ) W<sub>K</sub>. QK circuits and Q/K-composition are taken at "
                           "offset 0.</p>")
    return [
        ("summary", "Summary", f"<pre>{html.escape(a.text)}</pre><p>Showing {_shown(a, layers)}. Files beside this "
         "page: heads.csv, composition.csv, circuits.csv, graph.json, summary.json.</p>"),
        ("composition", "Composition scores", explain("composition")
         + _composition_html(a, layers, pairs, ranked, img("composition", "composition heatmaps"))),
        ("graph", "Circuit graph", explain("graph") + img("graph", "circuit graph")),
        ("copying", "Copying and eigenvalues", explain("copying") + img("copying", "copying scores and eigenvalues")),
        ("positional", "Positional QK patterns", explain("positional") + positional_note
         + img("positional", "positional patterns")),
        ("circuits", "Top circuits", explain("circuits") + f"<p>{html.escape(a.search.summary())}</p>"
         + page.table_html(circuits_rows, circuits_head)),
        ("tokens", "Top token mappings", explain("tokens")
         + f"<h3>OV circuit W_U W_OV W_E of {a.ov_head.name} ({html.escape(a.ov_why)})</h3>" + _tokens_html(a.top_ov)
         + "<h3>Strongest QK circuit" + (": " + html.escape(a.qk_circuit.name) if a.qk_circuit is not None else "")
         + "</h3><p>Rows are queries and columns keys; position pairs are restricted to key &lt;= query.</p>"
         + _tokens_html(a.top_qk)),
        ("heads", "Head table", explain("heads") + page.table_html(head_rows, ["head", *a.table.fields])),
        ("identity", "Verified identity", _identity_html(a)),
    ]


def _composition_html(a: Analysis, layers: list[int], pairs: dict[str, CompositionPairs],
                      ranked: list[CompositionPair], figure: str) -> str:
    """The composition section: the family and its thresholds, the figure, the pairs highest by z."""
    n_pairs = pairs["k"].n_pairs
    top_pairs = ranked[: max(a.options.top, 10)]
    if n_pairs:
        intro = (f"<p>{n_pairs:,} earlier -> later pairs per kind; significant at family-wise "
                 f"{FAMILY_ALPHA:g} from score " + ", ".join(f"{k.upper()} {pairs[k].threshold:.4f}" for k in "qkv")
                 + f" ({', '.join(f'{pairs[k].n_significant} {k.upper()}' for k in 'qkv')} significant pairs in "
                 f"{_shown(a, layers)}). The {len(top_pairs)} highest by z below; all pairs in composition.csv.</p>")
    else:
        intro = "<p>Not applicable: a one-layer model has no earlier -> later pairs.</p>"
    table = page.table_html([[p.kind.upper(), p.writer.name, p.reader.name, f"{p.score:.4f}", f"{p.z:+.2f}",
                              "yes" if p.significant else "no"] for p in top_pairs],
                            ["kind", "writer", "reader", "score", "z (std above random)", "significant"])
    return intro + figure + table


def _tokens_html(top: TopTokens | None) -> str:
    """A token table with its certificate."""
    if not top:
        return "<p>(no QK circuit among the top circuits)</p>"
    return (f"<p>{html.escape(top.certificate())}</p>"
            + page.table_html([[e.row_label, e.col_label, f"{e.value:+.4g}"] for e in top],
                              [top[0].row_role, top[0].col_role, "weight"]))


def _identity_html(a: Analysis) -> str:
    """The verified path expansion, as MathML."""
    v, c = a.verification, a.model.config
    return (f'<p>Path expansion of a {a.shown[0]}-layer attention-only transformer with {a.shown[1]} heads per '
            f"layer, over symbolic dimensions: <b>the general form</b> at that size (the identity holds for every "
            f"size; this model has {c.n_layers} layers x {c.n_heads} heads, and MLPs, norms and biases enter as "
            f"frozen terms, see the path expansion in the API). Verified by {html.escape(v.method)}: "
            f"<b>{'holds' if v.holds else 'FAILS'}</b>.</p>"
            f'<div class="identity">{page.identity_mathml(a.expansion.product, a.expansion.expanded)}</div>')


def _write_tables(a: Analysis, out: Path, ranked: list[CompositionPair]) -> None:
    """heads.csv (every head), composition.csv (the shown pairs by z), circuits.csv and graph.json."""
    table = a.table
    page.write_csv(out / "heads.csv", [[r["head"], *(r[f] for f in table.fields)] for r in table.records()],
                   ["head", *table.fields])
    page.write_csv(out / "composition.csv", [[p.kind, p.writer.name, p.reader.name, p.score, p.z, p.significant]
                                             for p in ranked], ["kind", "writer", "reader", "score", "z", "significant"])
    page.write_csv(out / "circuits.csv", [[cc.score, cc.name, str(cc.symbol)] for cc in a.search],
                   ["score", "circuit", "virtual_weight"])
    a.graph.to_json(out / "graph.json")


def _summary(a: Analysis, name: str, out: Path, pairs: dict[str, CompositionPairs]) -> dict[str, Any]:
    """The JSON-ready summary (summary.json, and what ``circuitalg report --json`` prints)."""
    prev, ind, kc = a.prev, a.induction, a.k_comp
    return {
        "model": name,
        "previous_token_head": prev.head.name if prev.head else None,
        "prev_token_score": prev.score, "induction_head": ind.head.name if ind.head else None,
        "induction_score": None if ind.best is None else ind.score,
        "naming_threshold": prev.threshold,
        "k_composition": None if kc is None else {
            "writer": kc.writer.name, "reader": kc.reader.name, "score": kc.score, "z": kc.z,
            "family_p": kc.family_p, "n_pairs": kc.n_pairs, "significant": kc.significant, "chosen": kc.chosen,
        },
        "significant_pairs": {k: pairs[k].n_significant for k in "qkv"} if pairs["k"].n_pairs else None,
        "baseline_k": {"mean": a.base["k"].mean, "std": a.base["k"].std},
        "copying_heads": dict(a.copying),
        "induction_copying": None if ind.head is None else float(a.table.copying[ind.head.layer, ind.head.head]),
        "top_circuits": [cc.to_dict() for cc in a.search], "certificate": a.search.bound,
        "identity_verified": bool(a.verification.holds), "report": str(out / "report.html"), "text": a.text,
    }
