"""The report's terminal summary and warnings at scale: one PrecisionWarning per stage that counts the
heads over the threshold (their bounds in heads.csv), and long lists cut to the strongest with a count."""

from __future__ import annotations

import csv
import re
import warnings

import numpy as np

import circuitalg as ca
from circuitalg.linalg.accuracy import warn_rtol
from circuitalg.report import SUMMARY_LIST_MAX, SUMMARY_LIST_TOP, ReportOptions, copying_line, write_report
from model_helpers import random_model


def _set_cores(model: ca.Transformer, cores: dict[tuple[int, int], np.ndarray]) -> ca.Transformer:
    """A copy of the (norm-free) ``model`` whose listed heads have full-OV core ``W_V W_E W_U W_O = core``
    (``W_O = pinv(W_V W_E W_U) core``), so the nonzero spectrum of ``W_U W_OV W_E`` is ``core``'s."""
    params = {k: np.array(v) for k, v in model.params.items()}
    M = params["W_E"] @ params["W_U"]
    for (l, h), core in cores.items():
        A = params[f"blocks.{l}.attn.W_V"][h] @ M
        params[f"blocks.{l}.attn.W_O"][h] = np.linalg.pinv(A) @ core
    return ca.Transformer(model.config, params, name=model.name)


def _report(model: ca.Transformer, out) -> tuple[list[warnings.WarningMessage], list[dict[str, str]], dict]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        summary = write_report(model, out, options=ReportOptions(figures=False))
    rows = list(csv.DictReader((out / "heads.csv").open()))
    return [r for r in rec if issubclass(r.category, ca.PrecisionWarning)], rows, summary


def _non_normal(eigs: list[float], coupling: float) -> np.ndarray:
    """Upper-triangular with these eigenvalues and a strong superdiagonal: ill-conditioned eigenvectors."""
    return np.diag(eigs) + np.diag(np.full(len(eigs) - 1, coupling), 1)


def test_imprecise_heads_give_one_summary_warning_per_stage_with_the_tables_count_and_maximum(tmp_path) -> None:
    base = random_model(n_layers=3, n_heads=4, d_model=16, d_head=4, d_vocab=13, seed=3)
    # bounds of about 6e-5 to 2e-4 of the largest eigenvalue, above the warning threshold (much
    # stronger coupling puts every eigenvalue under the noise floor: a circuit that is zero to
    # rounding, which does not warn)
    planted = {(0, 1): _non_normal([1.0, 0.9, 0.8, 0.7], 25.0), (1, 3): _non_normal([1.0, 0.8, 0.6, 0.4], 60.0),
               (2, 0): _non_normal([2.0, 1.9, 1.8, 1.7], 40.0)}
    model = _set_cores(base, planted)
    caught, rows, _ = _report(model, tmp_path)
    tol = warn_rtol(np.float64)
    # independently of the warning: which heads the table flags, and the largest bound
    full = {r["head"]: float(r["copying_bound"]) for r in rows}
    ov = {r["head"]: float(r["copying_ov_bound"]) for r in rows}
    flagged = sorted(h for h, b in full.items() if b > tol)
    assert flagged == sorted(ca.HeadId(l, h).name for l, h in planted)  # exactly the planted heads
    n_ov = sum(b > tol for b in ov.values())
    stages = [w.message.subject for w in caught]
    assert len(stages) == len(set(stages)), stages  # at most one warning per stage
    head_stage = [w.message for w in caught if w.message.subject.startswith("head diagnostics")]
    assert len(head_stage) == 1
    w = head_stage[0]
    assert w.count == len(flagged) + n_ov
    top = max(b for b in [*full.values(), *ov.values()] if b > tol)
    assert w.relative == top
    text = str(w)
    assert f"eigenvalues of {len(flagged)} of 12 heads' full OV circuits W_U W_OV W_E (up to {max(full.values()):.2g}; " \
           "every head's bound in heads.csv, column copying_bound)" in text
    assert f"(largest {top:.2g})" in text
    assert (f"of {n_ov} of 12 heads' W_OV" in text) == (n_ov > 0)
    # it points at this file (the caller's line), not into circuitalg or contextlib
    assert [r.filename for r in caught if r.message is w] == [__file__]
    # the page explains the columns with the threshold the report (always float64) uses, and shows them
    page = (tmp_path / "report.html").read_text()
    assert f"{tol:.2g}" == "6.1e-06" and "relative to the largest eigenvalue magnitude (a worst case; above 6.1e-6" in page
    assert ">copying_bound<" in page and ">copying_ov_bound<" in page


def test_a_clean_model_reports_without_precision_warnings(tmp_path) -> None:
    model = random_model(n_layers=3, n_heads=4, d_model=16, d_head=4, d_vocab=13, seed=3)
    caught, rows, _ = _report(model, tmp_path)
    assert caught == []
    assert max(float(r["copying_bound"]) for r in rows) < warn_rtol(np.float64)


def test_the_printed_copying_list_is_cut_to_the_strongest_with_the_tables_count(tmp_path) -> None:
    base = random_model(n_layers=3, n_heads=4, d_model=16, d_head=4, d_vocab=13, seed=5)
    # copying score (3 - s) / (3 + s) for core diag(1, 1, 1, -s): distinct scores, 10 of 12 heads above 0.5
    s_values = np.linspace(0.05, 1.15, 12)
    cores = {divmod(i, 4): np.diag([1.0, 1.0, 1.0, -s]) for i, s in enumerate(s_values)}
    model = _set_cores(base, cores)
    _, rows, summary = _report(model, tmp_path)
    copying = {r["head"]: float(r["copying"]) for r in rows}
    above = {h: c for h, c in copying.items() if c > 0.5}
    assert len(above) > SUMMARY_LIST_MAX
    line = next(t for t in summary["text"].splitlines() if "copying heads" in t)
    m = re.fullmatch(r"(\d+) copying heads \(score > 0\.5\); strongest: (.*); all in heads\.csv \(column copying\)", line)
    assert m is not None, line
    assert int(m.group(1)) == len(above)
    named = [part.split()[0] for part in m.group(2).split(", ")]
    assert named == sorted(above, key=lambda h: -above[h])[:SUMMARY_LIST_TOP]
    for part in m.group(2).split(", "):
        head, value = part.split()
        assert float(value) == round(copying[head], 2)
    assert len(summary["copying_heads"]) == len(above)  # summary.json keeps the whole list


def test_short_copying_lists_are_printed_whole() -> None:
    heads = [(f"L0H{i}", 0.9 - 0.01 * i) for i in range(SUMMARY_LIST_MAX)]
    assert copying_line(heads) == "copying heads (score > 0.5): " + ", ".join(f"{n} {s:.2f}" for n, s in heads)
    assert copying_line([]) == "copying heads (score > 0.5): none"


def test_summarised_eigenvalue_warnings_match_the_loop() -> None:
    """eigenvalues_with_bounds: the loop's values, one warning instead of one per map, counting the maps whose
    own eigenvalues() warns."""
    x = ca.Space("x", 4)
    maps = [ca.Dense(_non_normal([1.0, 0.9, 0.8, 0.7], c), x, x, f"M{i}") for i, c in enumerate([0.0, 80.0, 1.0, 200.0])]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        loop = [m.eigenvalues() for m in maps]
    per_map = [r for r in rec if issubclass(r.category, ca.PrecisionWarning)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        vals, rel = ca.linalg.eigenvalues_with_bounds(maps, what="test maps")
    summary = [r for r in rec if issubclass(r.category, ca.PrecisionWarning)]
    for a, b in zip(vals, loop):
        np.testing.assert_array_equal(a, b)
    assert len(per_map) == 2 and len(summary) == 1
    assert summary[0].message.count == 2 and summary[0].message.total == 4
    assert summary[0].message.relative == rel.max()
    assert "eigenvalues of 2 of 4 test maps" in str(summary[0].message)
    assert summary[0].filename == __file__


def test_the_command_prints_the_stage_summary_as_one_progress_line(tmp_path, capsys) -> None:
    from circuitalg.cli import main

    base = random_model(n_layers=3, n_heads=4, d_model=16, d_head=4, d_vocab=13, seed=3)
    model = _set_cores(base, {(1, 2): _non_normal([1.0, 0.9, 0.8, 0.7], 25.0)})
    path = ca.save(model, tmp_path / "m.safetensors")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert main(["report", str(path), "--out", str(tmp_path / "r"), "--no-figures"]) == 0
    assert [r for r in rec if issubclass(r.category, ca.PrecisionWarning)] == []  # shown, not left to Python
    err = capsys.readouterr().err
    lines = [t for t in err.splitlines() if "PrecisionWarning" in t]
    assert len(lines) == 1, err
    assert lines[0].startswith("[circuitalg] PrecisionWarning: report stage 'head diagnostics on repeated random tokens': "
                               "eigenvalues of 1 of 12 heads' full OV circuits")
    rows = list(csv.DictReader((tmp_path / "r" / "heads.csv").open()))
    flagged = [r["head"] for r in rows if float(r["copying_bound"]) > warn_rtol(np.float64)]
    assert flagged == ["L1H2"]


def test_long_sliding_window_lists_are_printed_as_ranges_and_local_rotary_bases_are_named() -> None:
    import dataclasses

    from circuitalg.report import architecture_notes

    cfg = ca.zoo.load("attn2l").config
    rotary = {"dim": 16, "base": 1e6}
    windows = tuple(None if (l + 1) % 6 == 0 else (512 if l < 12 else 256) for l in range(18))
    c = dataclasses.replace(cfg, n_layers=18, attn_windows=windows, rotary=rotary, rotary_local={"dim": 16, "base": 1e4})
    notes = architecture_notes(c)
    assert "sliding-window layers (15 of 18): window 256: L12-L16; window 512: L0-L4, L6-L10" in notes
    assert [n for n in notes if n.startswith("rotary")][0].endswith("; sliding-window layers rotate with base 10000")
    short = dataclasses.replace(cfg, n_layers=4, attn_windows=(5, None, 5, None))
    assert "sliding-window layers (window): L0: 5, L2: 5" in architecture_notes(short)
    assert not any("rotate with base" in n for n in architecture_notes(dataclasses.replace(c, rotary_local=None)))


def test_a_stage_summarises_its_maps_warnings_in_one_and_lets_other_warnings_through() -> None:
    from circuitalg.report import Stages

    x = ca.Space("x", 4)
    maps = [ca.Dense(_non_normal([1.0, 0.9, 0.8, 0.7], c), x, x, f"M{i}") for i, c in enumerate([80.0, 1.0, 200.0])]
    with warnings.catch_warnings(record=True) as alone:
        warnings.simplefilter("always")
        for m in maps:
            m.eigenvalues()
    expected = [r.message.relative for r in alone]
    assert len(expected) == 2
    stage = Stages(None, 1)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with stage("some stage"):
            for m in maps:
                m.eigenvalues()
            warnings.warn("unrelated", UserWarning)
    precision = [r for r in rec if issubclass(r.category, ca.PrecisionWarning)]
    assert [str(r.message) for r in rec if r.category is UserWarning] == ["unrelated"]
    assert len(precision) == 1 and precision[0].filename == __file__
    w = precision[0].message
    assert (w.subject, w.count, w.relative) == ("some stage", 2, max(expected))
    assert str(w).startswith(f"report stage 'some stage': eigenvalues of 2 maps (up to {max(expected):.2g}) carry")


def test_the_summary_counts_each_map_against_its_own_dtypes_threshold() -> None:
    """A float32 map whose bound lies between float64's and float32's thresholds is not counted; a float64
    map over float64's is."""
    x = ca.Space("x", 4)
    maps = [ca.Dense(_non_normal([1.0, 0.9, 0.8, 0.7], 60.0), x, x, "A64"),
            ca.Dense(_non_normal([1.0, 0.9, 0.8, 0.7], 0.5).astype(np.float32), x, x, "A32")]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _, rel = ca.linalg.eigenvalues_with_bounds(maps, what="mixed maps")
    assert rel[0] > warn_rtol(np.float64) and warn_rtol(np.float64) < rel[1] < warn_rtol(np.float32)
    summary = [r.message for r in rec if issubclass(r.category, ca.PrecisionWarning)]
    assert len(summary) == 1 and summary[0].count == 1 and summary[0].relative == rel[0]
    assert "eigenvalues of 1 of 2 mixed maps" in str(summary[0]) and "their dtypes' u^(1/3)" in str(summary[0])
