"""The ``circuitalg`` command: ``report``, ``circuits``, ``scores`` and ``info``.

MODEL is a zoo name (``circuitalg info --list`` shows them) or a path that
:func:`circuitalg.load` reads. Every analysis reads the norm-weighted maps (the model's view), so
folding changes no number; ``report``, ``scores`` and ``circuits`` load checkpoints folded
(``fold=True``) only so that the reading weights are held once.

Exit codes: 0 success, 2 bad options, 3 unknown model or unreadable file, 4 another
circuitalg error (the message says what and how to fix it), 130 interrupted (Ctrl-C; files are
written atomically, so no partial file is left).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg import __version__, zoo
from circuitalg.circuits.composition import composition_baseline, composition_scores, valid_pairs
from circuitalg.circuits.enumerate import top_circuits
from circuitalg.circuits.findings import FAMILY_ALPHA, composition_pairs
from circuitalg.errors import CircuitAlgError, ConfigError, InvalidArgumentError, LoadError
from circuitalg.model.io import load
from circuitalg.model.weights import Transformer
from circuitalg.report import ReportOptions, write_report
from circuitalg.runtime import Runtime

EXIT_USAGE, EXIT_MODEL, EXIT_ERROR, EXIT_INTERRUPTED = 2, 3, 4, 130
DEFAULT_MODEL = "attn2l"


def progress(msg: str) -> None:
    """One progress line on stderr (stdout stays clean for --json)."""
    print(f"[circuitalg] {msg}", file=sys.stderr, flush=True)


def _bar_safe(log: Any) -> Any:
    """``log`` for use while a tqdm bar is on the terminal: lines go above the bar."""

    def write(msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"[circuitalg] {msg}", file=sys.stderr)

    return write


def _warning_line(log: Any) -> Any:
    """A ``warnings.showwarning`` that writes ``Category: message`` through ``log`` (a progress line,
    without the Python file and line a library warning names, which on the command line is the
    interpreter's own)."""

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        log(f"{category.__name__}: {message}")

    return show


def resolve_model(spec: str, dtype: Any = np.float64, fold: bool = False) -> Transformer:
    """A zoo name or a checkpoint path -> Transformer (LoadError / InvalidArgumentError otherwise);
    ``dtype`` and ``fold`` (fold the layer norms while loading) apply to checkpoints (zoo models
    load as shipped)."""
    if spec in zoo.list():
        return zoo.load(spec)
    path = Path(spec)
    if not path.exists():
        raise LoadError(f"{spec!r} is neither a zoo model ({', '.join(zoo.list())}) nor an existing file.")
    return load(path, dtype=dtype, fold=fold)


def info(model: Transformer) -> dict[str, Any]:
    c = model.config
    out = {
        "name": model.name,
        "config": c.to_dict(),
        "n_parameters": int(sum(np.size(v) for v in model.params.values())),
        "has_vocab": model.vocab is not None,
    }
    if model.name in zoo.list():
        out["card"] = zoo.card(model.name)
    return out


def scores(model: Transformer, kind: str, top: int) -> dict[str, Any]:
    c = model.config
    n_pairs = valid_pairs(c.n_layers, c.n_heads)
    base = composition_baseline(model, kind)
    out: dict[str, Any] = {
        "kind": kind, "n_pairs": n_pairs,
        "qk_offset": 0 if c.rotary is not None and kind in "qk" else None,
        "baseline": {"mean": base.mean, "std": base.std, "quantile_99": base.quantile_99},
        "significance": "family-wise p of the maximum over all earlier->later pairs (Sidak over an exponential "
                        "tail fitted to the random-head baseline above its 95th percentile)",
    }
    if n_pairs == 0:
        out.update(top=[], scores=[], threshold=None,
                   note=f"{c.n_layers} layer: no head reads a head of an earlier layer, so there is no composition.")
        return out
    s = composition_scores(model, kind)
    pairs = composition_pairs(s, base, alpha=FAMILY_ALPHA)
    ranked = [{"writer": p.writer.name, "reader": p.reader.name, "score": p.score, "z": p.z,
               "family_p": pairs.family_p(p), "significant": p.significant} for p in pairs.pairs[:top]]
    out.update(top=ranked, scores=s.tolist(), threshold=pairs.threshold)
    return out


def circuits(model: Transformer, top: int, max_heads: int, sinks: list[str]) -> dict[str, Any]:
    res = top_circuits(model, top, max_heads, sinks)
    return {"summary": res.summary(), "visited": res.visited, "evaluated": res.evaluated, "total": res.total,
            "bound": res.bound, "circuits": [dict(c.to_dict(), symbol=str(c.symbol)) for c in res]}


def _positive(option: str, lowest: int = 1) -> Any:
    """An argparse type: an integer >= ``lowest``, or an error that names ``option``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be an integer, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{option} must be >= {lowest}, got {value}")
        return value

    return parse


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with each option's default, except where the default is None (the help says what it means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def _layer_list(text: str) -> tuple[int, ...]:
    """An argparse type for ``--layers``: comma-separated layers and ranges (``0-3,7``)."""
    out: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (1, 0)
        if low > high:
            raise argparse.ArgumentTypeError(
                f"--layers must list layers or ranges such as 0-3,7 (non-negative, low-high), got {text!r}")
        out.extend(range(low, high + 1))
    return tuple(sorted(set(out)))


def _unwritable(out: Path) -> str | None:
    """Why the report cannot be written into folder ``out`` (None when it can), checked before any analysis."""
    if out.exists() and not out.is_dir():
        return "is a file; pass a folder"
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=float))


def _parser() -> argparse.ArgumentParser:
    """The command's argument parser: ``report``, ``circuits``, ``scores`` and ``info``."""
    fmt = _DefaultsFormatter
    ap = argparse.ArgumentParser(prog="circuitalg", description="Weight-based circuit analysis of transformers.")
    ap.add_argument("--version", action="version", version=f"circuitalg {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="analyse a model, print a summary and write DIR/report.html", formatter_class=fmt)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="zoo name or checkpoint path")
    p.add_argument("--out", default="circuitalg-report", help="output folder (created if missing)")
    p.add_argument("--layers", type=_layer_list, default=None,
                   help="layers whose heads the figures and tables show, e.g. 0-3,7 (default: all)")
    p.add_argument("--top", type=_positive("--top"), default=10, help="entries per top list (circuits, pairs, edges)")
    p.add_argument("--seq-len", type=_positive("--seq-len"), default=None,
                   help="length of the repeated random sequence for induction / previous-token scores "
                        "(default: min(20, n_ctx / 2))")
    p.add_argument("--no-figures", action="store_true", help="tables and files only (faster)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float64"],
                   help="dtype the layer norms are folded into while the checkpoint loads (the unfolded model "
                        "never exists in memory); auto: float64, the analysis precision, and the smallest peak "
                        "memory (float32 loads half the size, but the analysis then adds a float64 copy)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p = sub.add_parser("circuits", help="the exact top-k circuits", formatter_class=fmt)
    p.add_argument("model", help="zoo name or checkpoint path")
    p.add_argument("--top", type=_positive("--top"), default=10, help="how many circuits")
    p.add_argument("--max-heads", type=_positive("--max-heads", 0), default=2, help="most heads per circuit")
    p.add_argument("--sinks", nargs="+", default=["unembed", "q", "k"], choices=["unembed", "q", "k"],
                   help="where circuits may end")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("scores", help="composition scores with their random baseline", formatter_class=fmt)
    p.add_argument("model", help="zoo name or checkpoint path")
    p.add_argument("--kind", default="k", choices=["q", "k", "v"], help="composition kind")
    p.add_argument("--top", type=_positive("--top"), default=10, help="how many pairs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("info", help="the model's configuration (and card, for zoo models)", formatter_class=fmt)
    p.add_argument("model", nargs="?", help="zoo name or checkpoint path")
    p.add_argument("--list", action="store_true", help="list the zoo models")
    p.add_argument("--json", action="store_true", help="print JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad options, 0 on --help
        return int(e.code or 0)
    if args.command == "report":
        problem = _unwritable(Path(args.out))
        if problem:
            print(f"circuitalg report: error: --out {args.out}: {problem}", file=sys.stderr)
            return EXIT_USAGE
    try:
        with Runtime(hugepage_advice=False):  # loading and analysing make many large new arrays
            return _run(args)
    except CircuitAlgError as e:
        print(f"circuitalg: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # files are written atomically, so nothing partial is left
        print("circuitalg: interrupted; no partial files are left.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command: load the model, then the command; the exit code."""
    if args.command == "info" and (args.list or args.model is None):
        names = zoo.list()
        _print_json(names) if args.json else print("\n".join(names))
        return 0
    try:
        t_load = time.perf_counter()
        # folded while loading (the reading weights held once, not stored and norm-weighted); the
        # report into float64 (its analysis precision) unless --dtype says otherwise
        extra: dict[str, Any] = {} if args.command == "info" else {"fold": True}
        if args.command == "report":
            extra["dtype"] = np.float64 if args.dtype == "auto" else args.dtype
        model = resolve_model(args.model, **extra)
        if args.command == "report":
            progress(f"loaded {model.name} in {time.perf_counter() - t_load:.1f} s")
    except (LoadError, ConfigError) as e:
        print(f"circuitalg: error: {e}", file=sys.stderr)
        return EXIT_MODEL
    command = {"info": _info_command, "scores": _scores_command, "circuits": _circuits_command,
               "report": _report_command}[args.command]
    return command(args, model)


def _info_command(args: argparse.Namespace, model: Transformer) -> int:
    out = info(model)
    if args.json:
        _print_json(out)
    else:
        print(model)
        print(f"parameters: {out['n_parameters']:,}")
        for k, v in out.get("card", {}).items():
            print(f"{k}: {json.dumps(v)}")
    return 0


def _scores_command(args: argparse.Namespace, model: Transformer) -> int:
    out = scores(model, args.kind, args.top)
    if args.json:
        _print_json(out)
        return 0
    b = out["baseline"]
    print(f"{args.kind.upper()}-composition, {model.name}; random baseline {b['mean']:.4f} ± {b['std']:.4f}")
    if out["qk_offset"] is not None:
        print("  rotary model: scored through W_QK(0) = W_Q^T W_K (query and key at the same position)")
    if "note" in out:
        print(f"  none: {out['note']}")
    else:
        print(f"  {out['n_pairs']:,} earlier->later pairs; significant at {FAMILY_ALPHA:g} family-wise "
              f"from {out['threshold']:.4f} ({out['significance']})")
    for r in out["top"]:
        mark = "significant" if r["significant"] else "not significant"
        print(f"  {r['writer']} -> {r['reader']}: {r['score']:.4f}  ({r['z']:+.1f} std, "
              f"family-wise p {r['family_p']:.2g}, {mark})")
    return 0


def _circuits_command(args: argparse.Namespace, model: Transformer) -> int:
    out = circuits(model, args.top, args.max_heads, args.sinks)
    if args.json:
        _print_json(out)
        return 0
    print(out["summary"])
    for c in out["circuits"]:
        print(f"  {c['score']:10.4g}  {c['name']}\n              {c['symbol']}")
    return 0


def _report_command(args: argparse.Namespace, model: Transformer) -> int:
    tty = sys.stderr.isatty()
    options = ReportOptions(layers=args.layers, top=args.top, seq_len=args.seq_len, figures=not args.no_figures,
                            progress_bar=tty)
    try:
        options.check(model)
    except InvalidArgumentError as e:  # an option out of range for this model: a usage error
        print(f"circuitalg report: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    log = _bar_safe(progress) if tty else progress
    with warnings.catch_warnings():  # the report's warnings (one per stage at most) as progress lines
        warnings.showwarning = _warning_line(log)
        summary = write_report(model, Path(args.out), log=log, options=options)
    if args.json:
        _print_json(summary)
    else:
        print(summary["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
