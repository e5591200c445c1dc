"""The report's page: HTML (sortable tables, one explanation per metric, the identity as MathML,
all offline) and the same tables as CSV and JSON files beside it."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from circuitalg.files import atomic_write

__all__ = ["table_html", "write_csv", "write_json", "mathml", "identity_mathml", "page", "SORT_SCRIPT", "EXPLAIN"]

#: Click a column header to sort by it (numbers numerically); no network, no library.
SORT_SCRIPT = """<script>
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var rows = Array.from(body.rows), asc = th.dataset.dir !== "asc";
    table.querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = asc ? "asc" : "desc";
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    rows.sort(function (a, b) {
      var x = a.cells[idx].textContent, y = b.cells[idx].textContent, nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
</script>"""

STYLE = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:auto;padding:1em;line-height:1.4}
table{border-collapse:collapse;margin:0.6em 0;display:block;overflow-x:auto;max-width:100%}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;white-space:nowrap}
th{background:#f0f0f0;cursor:pointer;user-select:none} th[data-dir=asc]::after{content:" \\25B2"}
th[data-dir=desc]::after{content:" \\25BC"} img{max-width:100%;height:auto;display:block}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;white-space:pre-wrap} p.explain{color:#333;max-width:60em}
math{font-size:1.1em} .identity{overflow-x:auto;padding:0.5em 0} nav a{margin-right:1em}"""

#: One short explanation per metric, shown under its section.
EXPLAIN = {
    "composition": (
        "Composition score of writer head A and later reader head B: ‖R<sub>B</sub> W<sub>OV</sub><sup>A</sup>‖<sub>F</sub> / "
        "(‖R<sub>B</sub>‖<sub>F</sub> ‖W<sub>OV</sub><sup>A</sup>‖<sub>F</sub>) with R<sub>B</sub> = W<sub>QK</sub><sup>B</sup>"
        "<sup>T</sup> (Q), W<sub>QK</sub><sup>B</sup> (K) or W<sub>OV</sub><sup>B</sup> (V) (Elhage et al., 2021). "
        "Colour: standard deviations above the same score between random Gaussian heads of this model's shapes. A pair is "
        "significant when the largest score over all earlier -> later pairs would be that large with probability below "
        "the family-wise level (Šidák over the fitted tail of the random baseline); ringed cells pass that threshold."
    ),
    "copying": (
        "Copying score Σ Re λ / Σ |λ| over the eigenvalues of the full OV circuit W<sub>U</sub> W<sub>OV</sub> W<sub>E</sub> "
        "(above the rounding floor): 1 when the head copies the token it attends to into the logits, -1 when it "
        "suppresses it. The eigenvalues come from the d<sub>head</sub> x d<sub>head</sub> matrix W<sub>V</sub> "
        "(W<sub>E</sub> W<sub>U</sub>) W<sub>O</sub>; no vocab x vocab matrix is built."
    ),
    "positional": (
        "Attention a head gives by position alone, from the weights: the causal softmax of the positional QK scores "
        "(W<sub>pos</sub> for learned positions; for rotary models μ<sup>T</sup> W<sub>QK</sub>(Δ) μ with μ the mean "
        "token embedding). The score is the mean attention to the previous position. Weight-based: no text is run."
    ),
    "graph": (
        "The strongest head-to-head edges of the virtual-weight graph, by standard deviations above the random "
        "baseline (the same numbers as the composition table). The full graph, with embedding, MLP and unembedding "
        "edges, is in graph.json."
    ),
    "circuits": (
        "Exact top circuits by Frobenius norm of their virtual weight (a path from a source through a chain of heads "
        "into the logits or into a head's query or key). The certificate bounds every circuit the search did not "
        "evaluate."
    ),
    "tokens": (
        "The largest entries of a vocab x vocab circuit, found from its factored SVD without building it "
        "(rows scanned strongest first, screened in blocks with norm bounds, ranked in float64). Each table says "
        "whether it is exact; for very large vocabularies the scan covers the strongest rows within a fixed budget "
        "and states a bound on every entry of the rows it left."
    ),
    "heads": (
        "Per-head diagnostics. induction / prev_token: attention measured on repeated random tokens (the token after "
        "the previous occurrence; the previous position). copying / copying_ov: as above for W<sub>U</sub> W<sub>OV</sub> "
        "W<sub>E</sub> and W<sub>OV</sub>. effective ranks: entropy effective rank of the singular values. "
        "copying_bound / copying_ov_bound: the a-priori error bound of the eigenvalues those scores sum, relative to "
        "the largest eigenvalue magnitude (a worst case; above 6.1e-6 in float64, fewer than two thirds of the digits "
        "are guaranteed, and the report's one precision warning for this stage counts those heads)."
    ),
}


def table_html(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    """A sortable HTML table."""
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f'<table class="sortable"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def write_csv(path: Path, rows: Sequence[Sequence[Any]], head: Sequence[str]) -> None:
    """``rows`` under ``head`` as CSV (written atomically)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    w.writerows(rows)
    text = buf.getvalue()
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (NaN written as null)."""
    text = json.dumps(_nan_to_none(data), indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def identity_mathml(product: Any, expanded: Any) -> str:
    """``product = term₁ + term₂ + ...`` as a block MathML table, one path term per row."""
    import sympy

    terms = list(sympy.Add.make_args(expanded))
    rows = [f"<mtr><mtd>{mathml(product)}</mtd><mtd><mo>=</mo></mtd><mtd>{mathml(terms[0])}</mtd></mtr>"]
    rows += [f"<mtr><mtd></mtd><mtd><mo>+</mo></mtd><mtd>{mathml(t)}</mtd></mtr>" for t in terms[1:]]
    return f'<math display="block"><mtable columnalign="right center left">{"".join(rows)}</mtable></math>'


def mathml(expr: Any) -> str:
    """``expr`` (a sympy matrix expression of the path expansion) as presentation MathML, with
    Kronecker products written ``⊗`` and layer.head superscripts without braces."""
    import sympy

    body = sympy.mathml(expr, printer="presentation")
    body = body.replace("<mi>kroneckerproduct</mi>", "").replace("<mo>,</mo>", "<mo>&#x2297;</mo>")
    body = re.sub(r"<mi>\{([^<]*)\}</mi>", r"<mn>\1</mn>", body)
    return body


def page(title: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The HTML document: ``sections`` are ``(id, heading, inner html)``."""
    nav = "".join(f'<a href="#{sid}">{html.escape(heading)}</a>' for sid, heading, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(heading)}</h2>{inner}</section>'
                   for sid, heading, inner in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}"
            f"{SORT_SCRIPT}</body></html>\n")
