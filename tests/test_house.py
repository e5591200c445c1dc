"""The house rules of the package, checked on its source: no private names imported across modules,
threads and process settings only in ``circuitalg/runtime.py``, no machine timings in comments, and
results that do not depend on the runtime."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest

import circuitalg as ca

ROOT = Path(ca.__file__).parent
SOURCES = sorted(p for p in ROOT.rglob("*.py"))


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT.parent))


def test_no_private_name_is_imported_across_modules() -> None:
    offenders = []
    for p in SOURCES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("circuitalg"):
                offenders += [f"{_rel(p)}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"]
    assert not offenders, f"private names imported from other modules: {offenders}"


#: What starts threads or changes a process-wide setting.
_RUNTIME_ONLY = re.compile(
    r"ThreadPoolExecutor|ProcessPoolExecutor|threading\.Thread\b|threadpoolctl|ThreadpoolController|"
    r"_set_madvise_hugepage|register_at_fork|os\.environ\[[^]]*\]\s*="
)


def test_only_the_runtime_module_starts_threads_or_changes_process_settings() -> None:
    offenders = [
        f"{_rel(p)}:{i}" for p in SOURCES if p.name != "runtime.py"
        for i, line in enumerate(p.read_text().splitlines(), 1) if _RUNTIME_ONLY.search(line)
    ]
    assert not offenders, f"threads or process settings outside circuitalg/runtime.py: {offenders}"


#: A figure with a unit of time in a comment: "0.24 s", "3.5-3.9 s", "80 ms".
_TIMING = re.compile(r"\b\d+(\.\d+)?(-\d+(\.\d+)?)?\s?(s|ms|µs|us|seconds|minutes)\b")


def _comments_and_docstrings(src: str) -> list[tuple[int, str]]:
    out = [(t.start[0], t.string) for t in tokenize.generate_tokens(io.StringIO(src).readline)
           if t.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((getattr(node, "lineno", 1), doc))
    return out


def test_no_comment_quotes_one_machines_timings() -> None:
    literal = re.compile(r"``.*?``", re.S)  # examples of printed output (``[1/7] load: 1.2 s``) are not timings
    offenders = [
        f"{_rel(p)}:{line}: {hit.group(0)!r}"
        for p in SOURCES for line, text in _comments_and_docstrings(p.read_text())
        if (hit := _TIMING.search(literal.sub("", text)))
    ]
    assert not offenders, f"comments or docstrings quoting timings: {offenders}"


def test_results_do_not_depend_on_the_runtime() -> None:
    """Serial and threaded runs give the same numbers, bit for bit (each item of a split is computed
    by the same code whatever chunk it falls in)."""
    model = ca.zoo.load("attn2l")

    def numbers() -> list[np.ndarray]:
        maps = [model.W_U @ model.head(l, h).ov @ model.W_E for l in range(2) for h in range(4)]
        search = ca.top_circuits(model, k=5, max_heads=2)
        return [
            *ca.eigenvalues_many(maps),
            *(ca.singular_values(m) for m in maps),
            ca.composition_scores(model, "k"),
            np.array([c.score for c in search]),
            np.array([ca.accuracy(m) for m in maps]),
        ]

    with ca.Runtime(workers=1):
        serial = numbers()
    model = ca.zoo.load("attn2l")  # fresh leaves: nothing computed above is reused
    with ca.Runtime(workers=2):
        threaded = numbers()
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_runtime_is_scoped_and_refuses_bad_settings() -> None:
    from circuitalg import runtime

    assert runtime.current() is runtime.AUTO
    with ca.Runtime(workers=1) as rt:
        assert runtime.current() is rt
        with runtime.SERIAL:
            assert runtime.current() is runtime.SERIAL
        assert runtime.current() is rt
    assert runtime.current() is runtime.AUTO
    for workers in (1, 2, 3):
        chunks = ca.Runtime(workers=workers).map(lambda lo, hi: list(range(lo, hi)), 10)
        assert [i for c in chunks for i in c] == list(range(10))  # contiguous, in order, whatever the split
    with pytest.raises(ca.InvalidArgumentError, match="workers"):
        ca.Runtime(workers=0)
    with pytest.raises(ca.InvalidArgumentError, match="hugepage_advice"):
        ca.Runtime(hugepage_advice="off")  # type: ignore[arg-type]
