"""The ``circuitalg`` command: ``report``, ``circuits``, ``scores``, ``info`` and ``attribute``.

MODEL is a zoo name (``circuitalg info --list`` shows them) or a path that
:func:`circuitalg.load` reads. Every analysis reads the norm-weighted maps (the model's view), so
folding changes no number; ``report``, ``scores`` and ``circuits`` load checkpoints folded
(``fold=True``) only so that the reading weights are held once.

``attribute`` builds an attribution graph on a prompt (:func:`circuitalg.features.attribution.attribute`)
with the transcoders of ``--dictionaries`` and writes ``graph.json`` (circuit-tracer's graph file),
``attribution.html`` (:func:`circuitalg.features.view.write_attribution_html`, pruned as the graph
file is) and ``summary.txt`` (:func:`circuitalg.features.summary.summarise`); it loads the
model unfolded (a transcoder reading the MLP's input needs the norm's weight).

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
from circuitalg.features.io import FORMATS
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
    _attribute_parser(sub, fmt)
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
    if args.command in ("report", "attribute"):
        problem = _unwritable(Path(args.out))
        if problem:
            print(f"circuitalg {args.command}: error: --out {args.out}: {problem}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "attribute":  # before the model loads, which may take long
        for d in args.dictionaries:
            if not Path(d).exists():
                print(f"circuitalg attribute: error: --dictionaries {d}: no such file or folder.", file=sys.stderr)
                return EXIT_MODEL
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
        extra: dict[str, Any] = {} if args.command in ("info", "attribute") else {"fold": True}
        if args.command == "report":
            extra["dtype"] = np.float64 if args.dtype == "auto" else args.dtype
        if args.command == "attribute":
            extra["dtype"] = args.dtype
        model = resolve_model(args.model, **extra)
        if args.command == "report":
            progress(f"loaded {model.name} in {time.perf_counter() - t_load:.1f} s")
    except (LoadError, ConfigError) as e:
        print(f"circuitalg: error: {e}", file=sys.stderr)
        return EXIT_MODEL
    command = {"info": _info_command, "scores": _scores_command, "circuits": _circuits_command,
               "report": _report_command, "attribute": _attribute_command}[args.command]
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


# -- attribute ----------------------------------------------------------------------------------------

#: files that make a folder a Hugging Face tokenizer
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _unit_interval(option: str) -> Any:
    """An argparse type: a float in [0, 1], or an error that names ``option``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a number, got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{option} must be between 0 and 1, got {value}")
        return value

    return parse


def _token_list(text: str) -> list[int]:
    """An argparse type for ``--tokens``: comma-separated non-negative token ids."""
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tokens must be comma-separated token ids such as 50256,464,3290, got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"--tokens must list at least one non-negative token id, got {text!r}")
    return out


def _attribute_parser(sub: Any, fmt: type) -> None:
    p = sub.add_parser("attribute", formatter_class=fmt,
                       help="attribution graph on a prompt through transcoders: DIR/graph.json, attribution.html, summary.txt")
    p.add_argument("model", help="zoo name or checkpoint path (loaded unfolded)")
    p.add_argument("--dictionaries", action="append", required=True, metavar="DIR",
                   help="transcoders: a folder load_dictionary reads (circuit-tracer config.yaml folder, a SAELens "
                        "transcoder folder, ...); repeat for per-layer transcoders in separate folders")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                   help="the dictionaries' format (auto: detected from the files)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt's text (needs a tokenizer: MODEL's own or --tokenizer); a special "
                                      "token is put first when the tokenizer does not, as circuit-tracer does")
    src.add_argument("--tokens", type=_token_list, help="the prompt as comma-separated token ids, e.g. 50256,464,3290")
    p.add_argument("--tokenizer", default=None,
                   help="for --prompt: a Hugging Face tokenizer folder, a tokenizer.json or a .gguf file (default: "
                        "MODEL's folder or GGUF file, when it holds one)")
    p.add_argument("--out", default="circuitalg-attribution", help="output folder (created if missing)")
    p.add_argument("--max-logits", type=_positive("--max-logits"), default=10,
                   help="target logits: at most this many of the most probable next tokens")
    p.add_argument("--logit-probability", type=_unit_interval("--logit-probability"), default=0.95,
                   help="target logits: up to the first whose cumulative probability reaches this")
    p.add_argument("--target", action="append", default=None, metavar="TOKEN",
                   help="a target token instead of the most probable ones (a token id, or a string that is one "
                        "token); repeatable")
    p.add_argument("--no-demean", action="store_true",
                   help="targets are the logits themselves (default: logits minus their mean, circuit-tracer's)")
    p.add_argument("--node-threshold", type=_unit_interval("--node-threshold"), default=0.8,
                   help="pruning: keep the nodes holding this fraction of the influence")
    p.add_argument("--edge-threshold", type=_unit_interval("--edge-threshold"), default=0.98,
                   help="pruning: keep the edges holding this fraction of the influence")
    p.add_argument("--top-paths", type=_positive("--top-paths"), default=5, help="paths listed in the summary")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="dtype the model and dictionaries load in; the edges are computed in float64 from them, "
                        "so float32 weights give values rounded to float32 (completeness about 1e-6 instead of 1e-15)")


def _tokenizer_path(model_spec: str, tokenizer: str | None) -> Path | None:
    """Where --prompt's tokenizer is: ``tokenizer`` (which must be one), else MODEL's folder or GGUF file
    when it is one; None when there is none."""
    if tokenizer is not None:
        return Path(tokenizer)
    p = Path(model_spec)
    if model_spec in zoo.list() or not p.exists():
        return None
    if p.is_file() and p.suffix == ".gguf":
        return p
    folder = p if p.is_dir() else p.parent
    if p.is_dir() or p.name.startswith("model"):  # a Hugging Face folder's weights file
        if any((folder / f).is_file() for f in _TOKENIZER_FILES):
            return folder
    return None


def load_tokenizer(path: Path) -> Any:
    """A ``transformers`` tokenizer from a folder, a ``tokenizer.json`` or a ``.gguf`` file (local files
    only); LoadError naming the path when it cannot be read."""
    if not path.exists():
        raise LoadError(f"--tokenizer {path}: no such file or folder.")
    try:
        import transformers
    except ImportError:
        raise LoadError("--prompt needs the transformers package to tokenize (pip install transformers); "
                        "or pass the token ids with --tokens.") from None
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its notes on tokenizer files are not the command's output
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.is_file() and path.suffix == ".gguf":
                return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            if path.is_file() and path.suffix == ".json":
                return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
            return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many kinds; the user needs the path and the reason
        raise LoadError(f"{path}: not a tokenizer transformers reads ({type(e).__name__}: {e}).") from None
    finally:
        transformers.logging.set_verbosity(verbosity)


def prompt_tokens(tokenizer: Any, prompt: str) -> list[int]:
    """``prompt``'s token ids as circuit-tracer's ``ensure_tokenized`` makes them: the tokenizer's own
    special tokens added, then, when the first token is not special, a special token put first (the
    BOS, else the padding, end-of-text or first special token) so that position 0, which has no
    feature nodes, holds no prompt token."""
    ids = [int(t) for t in tokenizer(prompt)["input_ids"]]
    special = [int(t) for t in getattr(tokenizer, "all_special_ids", []) or []]
    if ids and ids[0] in special:
        return ids
    for cand in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "pad_token_id", None),
                 getattr(tokenizer, "eos_token_id", None), *special):
        if cand is not None:
            return [int(cand)] + ids
    return ids


def _target_id(text: str, model: Transformer, tokenizer: Any) -> int:
    """``--target``: a token id, a string of the model's vocabulary, or a string the tokenizer makes one token of."""
    try:
        return int(text)
    except ValueError:
        pass
    if model.vocab is not None and text in model.vocab:
        return int(model.vocab.index(text))
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
        raise InvalidArgumentError(f"--target {text!r} is {len(ids)} tokens ({ids}); give one token or its id.")
    raise InvalidArgumentError(f"--target {text!r} is not a token id nor a string of {model.name}'s vocabulary.")


def _row_progress(tty: bool) -> tuple[Any, Any]:
    """``(callback(done, total), close())`` for attribute's progress: a tqdm bar on a terminal, else a
    line on stderr at every tenth of the rows."""
    if tty:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="row", desc="attribution rows", leave=False, dynamic_ncols=True, file=sys.stderr)

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return update, bar.close
    last = [-1]

    def line(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth > last[0]:
            last[0] = tenth
            progress(f"attribution: {done:,}/{total:,} adjacency rows ({100 * done // max(total, 1)}%)")

    return line, lambda: None


def _attribute_command(args: argparse.Namespace, model: Transformer) -> int:
    from circuitalg.features import load_dictionary
    from circuitalg.features.attribution import attribute
    from circuitalg.features.graphfile import write_circuit_tracer_json
    from circuitalg.features.summary import summarise
    from circuitalg.features.view import write_attribution_html
    from circuitalg.files import atomic_write

    dtype = np.dtype(args.dtype)
    dictionaries = []
    for d in args.dictionaries:
        try:
            dictionaries.append(load_dictionary(d, format=args.format, dtype=dtype))
        except (LoadError, ConfigError) as e:
            print(f"circuitalg attribute: error: --dictionaries {d}: {e}", file=sys.stderr)
            return EXIT_MODEL
    tokenizer = None
    tok_path = _tokenizer_path(args.model, args.tokenizer)
    if args.prompt is not None:
        if tok_path is None:
            print(f"circuitalg attribute: error: {args.model} has no tokenizer for --prompt; pass --tokenizer PATH "
                  "(a Hugging Face tokenizer folder, tokenizer.json or .gguf) or the token ids with --tokens.",
                  file=sys.stderr)
            return EXIT_USAGE
        try:
            tokenizer = load_tokenizer(tok_path)
        except LoadError as e:
            print(f"circuitalg attribute: error: {e}", file=sys.stderr)
            return EXIT_MODEL
        tokens = prompt_tokens(tokenizer, args.prompt)
    else:
        tokens = list(args.tokens)
        if args.target and any(not t.lstrip("-").isdigit() for t in args.target) and tok_path is not None:
            tokenizer = load_tokenizer(tok_path)
    targets = None if not args.target else [_target_id(t, model, tokenizer) for t in args.target]
    out = Path(args.out)
    tty = sys.stderr.isatty()
    log = _bar_safe(progress) if tty else progress
    progress(f"attribute: {model.name}, {len(tokens)} tokens, {len(dictionaries)} dictionary path(s)")
    t0 = time.perf_counter()
    update, close = _row_progress(tty)
    try:
        with warnings.catch_warnings():  # library warnings as one progress line each, not tracebacks
            warnings.showwarning = _warning_line(log)
            graph = attribute(model, dictionaries, tokens, max_logits=args.max_logits,
                              logit_probability=args.logit_probability, targets=targets,
                              demean_logits=not args.no_demean, progress=update)
    finally:
        close()
    progress(f"attribution graph: {len(graph.nodes):,} nodes in {time.perf_counter() - t0:.1f} s")
    pr = graph.prune(args.node_threshold, args.edge_threshold)
    out.mkdir(parents=True, exist_ok=True)
    write_circuit_tracer_json(graph, out / "graph.json", node_threshold=args.node_threshold,
                              edge_threshold=args.edge_threshold, prompt=args.prompt)
    text = summarise(graph, args.top_paths, prompt=args.prompt, node_threshold=args.node_threshold,
                     edge_threshold=args.edge_threshold, prune=pr)
    title = f"{model.name}: {args.prompt!r}" if args.prompt is not None else None
    write_attribution_html(graph, out / "attribution.html", prune=pr, title=title)
    atomic_write(out / "summary.txt", lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    progress(f"wrote {out / 'graph.json'}, {out / 'attribution.html'} and {out / 'summary.txt'}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
