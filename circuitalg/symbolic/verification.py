"""Verify matrix identities: sound rewriting to a normal form, then exact randomized testing.

A side of an identity is a sympy matrix expression (MatrixSymbols with integer or symbolic
dimensions, MatMul, MatAdd, Transpose, KroneckerProduct, Identity, ZeroMatrix, MatPow with a
positive integer exponent, exact scalar coefficients) or a circuitalg map (through its twin).

1. **Rewriting** (``method="rewrite"``). Each side becomes a polynomial: a sum of words with
   exact coefficients, where a word is a product of letters (a leaf, possibly transposed, or a
   Kronecker letter holding one word per factor). The rules, each a small pure function in
   :class:`Rules`, are: distribute products and Kronecker products over sums; flatten;
   push transposes to the leaves (reversing products); drop identities; merge adjacent
   Kronecker letters by the mixed-product rule ``(A⊗B)(C⊗D) = (AC)⊗(BD)`` *only when the factor
   shapes conform*; collect like terms. Equal normal forms prove the identity for all values
   and all dimensions. As a guard against an unsound rule, a proof is also confirmed by one
   exact evaluation of the *original* expressions.
2. **Exact randomized identity testing** (``method="exact-random"``) when the normal forms
   differ: symbols get random integer matrices (symbolic dimensions instantiated at several
   small sizes) and both sides are evaluated exactly with Python integers and fractions, never
   floats. A difference refutes the identity with a counterexample; agreement in every trial
   holds with the Schwartz-Zippel bound reported in ``detail``.

sympy's ``combine_kronecker`` is never used: in sympy 1.14 it rewrites ``A⊗B + C⊗D`` into
``(A+C)⊗(B+D)``, which is false (sympy issue 30272).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import numpy as np
import sympy

from circuitalg.errors import InvalidArgumentError, ShapeError, check_int, check_real
from circuitalg.maps.nodes import LinearMap

__all__ = ["Verification", "Rules", "RULES", "verify", "normal_form", "evaluate_exact", "VALUE_RANGE"]

#: Random matrix entries are drawn uniformly from ``[-VALUE_RANGE, VALUE_RANGE]``.
VALUE_RANGE = 2**31


# -- the normal form ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Atom:
    """A leaf matrix ``name`` of shape ``(rows, cols)``, transposed when ``transposed``."""

    name: str
    rows: Any
    cols: Any
    transposed: bool = False


@dataclasses.dataclass(frozen=True)
class Word:
    """A product of letters (atoms and Kronecker letters) of shape ``(rows, cols)``; empty = identity."""

    letters: tuple[Any, ...]
    rows: Any
    cols: Any


@dataclasses.dataclass(frozen=True)
class KronLetter:
    """A Kronecker product of words, one per factor."""

    factors: tuple[Word, ...]

    @property
    def rows(self) -> Any:
        return sympy.Mul(*(f.rows for f in self.factors))

    @property
    def cols(self) -> Any:
        return sympy.Mul(*(f.cols for f in self.factors))


@dataclasses.dataclass(frozen=True)
class Poly:
    """A sum of words with exact sympy coefficients; ``terms`` maps each word to its coefficient."""

    terms: tuple[tuple[Word, Any], ...]
    rows: Any
    cols: Any

    def as_dict(self) -> dict[Word, Any]:
        return dict(self.terms)


def _same(a: Any, b: Any) -> bool:
    """Exact equality of two dimensions (polynomials in integer symbols)."""
    return bool(sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0)


# Rules: small pure functions. Each is checked numerically on random instances in the tests.


def rule_transpose_letter(letter: Any, rules: Rules) -> Any:
    """``(A)ᵀ`` flips the leaf's flag; ``(A⊗B)ᵀ = Aᵀ⊗Bᵀ``."""
    if isinstance(letter, Atom):
        return Atom(letter.name, letter.cols, letter.rows, not letter.transposed)
    return KronLetter(tuple(rules.transpose_word(f, rules) for f in letter.factors))


def rule_transpose_word(word: Word, rules: Rules) -> Word:
    """``(AB)ᵀ = BᵀAᵀ``: reverse the letters and transpose each."""
    return Word(tuple(rules.transpose_letter(x, rules) for x in reversed(word.letters)), word.cols, word.rows)


def rule_mixed_product(left: Any, right: Any, rules: Rules) -> Any | None:
    """``(A⊗B)(C⊗D) = (AC)⊗(BD)`` when both are Kronecker letters with conforming factors, else None."""
    if not (isinstance(left, KronLetter) and isinstance(right, KronLetter)):
        return None
    if len(left.factors) != len(right.factors):
        return None
    if not all(_same(a.cols, b.rows) for a, b in zip(left.factors, right.factors)):
        return None
    return KronLetter(tuple(rules.multiply_words(a, b, rules) for a, b in zip(left.factors, right.factors)))


def rule_simplify_kron(letter: KronLetter) -> Any:
    """Flatten nested Kronecker letters; a Kronecker product of identities is an identity (``None``)."""
    flat: list[Word] = []
    for f in letter.factors:
        if len(f.letters) == 1 and isinstance(f.letters[0], KronLetter):
            flat.extend(f.letters[0].factors)
        else:
            flat.append(f)
    if all(not f.letters for f in flat):
        return None  # identity: dropped from products
    return KronLetter(tuple(flat))


def rule_multiply_words(a: Word, b: Word, rules: Rules) -> Word:
    """Concatenate (identities are empty words) and merge adjacent Kronecker letters while they conform."""
    letters: list[Any] = list(a.letters)
    for x in b.letters:
        if letters:
            merged = rules.mixed_product(letters[-1], x, rules)
            if merged is not None:
                letters.pop()
                simplified = rule_simplify_kron(merged)
                if simplified is not None:
                    letters.append(simplified)
                continue
        letters.append(x)
    return Word(tuple(letters), a.rows, b.cols)


def rule_collect(pairs: Any, rows: Any, cols: Any) -> Poly:
    """Collect like terms: add coefficients of equal words, drop zeros, sort canonically."""
    acc: dict[Word, Any] = {}
    for word, c in pairs:
        acc[word] = acc.get(word, sympy.Integer(0)) + c
    kept = [(w, sympy.expand(c)) for w, c in acc.items()]
    kept = [(w, c) for w, c in kept if c != 0]
    kept.sort(key=lambda wc: repr(wc[0]))
    return Poly(tuple(kept), rows, cols)


@dataclasses.dataclass(frozen=True)
class Rules:
    """The rewrite rules :func:`normal_form` uses; replace one to test that a wrong rule is caught."""

    transpose_letter: Callable[..., Any] = rule_transpose_letter
    transpose_word: Callable[..., Word] = rule_transpose_word
    mixed_product: Callable[..., Any] = rule_mixed_product
    multiply_words: Callable[..., Word] = rule_multiply_words
    collect: Callable[..., Poly] = rule_collect


RULES = Rules()


def _poly_mul(p: Poly, q: Poly, rules: Rules, node: Any) -> Poly:
    if not _same(p.cols, q.rows):
        raise ShapeError(f"verify: non-conforming product in {node}: {p.rows}x{p.cols} times {q.rows}x{q.cols}.")
    return rules.collect(
        ((rules.multiply_words(w1, w2, rules), c1 * c2) for w1, c1 in p.terms for w2, c2 in q.terms), p.rows, q.cols
    )


def _poly_kron(p: Poly, q: Poly, rules: Rules) -> Poly:
    pairs = []
    for w1, c1 in p.terms:
        for w2, c2 in q.terms:
            letter = rule_simplify_kron(KronLetter((w1, w2)))
            word = Word(() if letter is None else (letter,), p.rows * q.rows, p.cols * q.cols)
            pairs.append((word, c1 * c2))
    return rules.collect(pairs, p.rows * q.rows, p.cols * q.cols)


def normal_form(expr: Any, rules: Rules = RULES) -> Poly:
    """The normal form of a sympy matrix expression (or a map's twin) under ``rules``."""
    return _to_poly(_as_sympy(expr), rules, {})


def _as_sympy(x: Any) -> Any:
    if isinstance(x, LinearMap):
        return x.symbol
    if isinstance(x, sympy.MatrixExpr):
        return x
    raise InvalidArgumentError(
        f"verify: expected a sympy matrix expression or a circuitalg map, got {type(x).__name__} {x!r}."
    )


def _to_poly(e: Any, rules: Rules, seen: dict[str, Any]) -> Poly:
    one = sympy.Integer(1)
    if isinstance(e, sympy.MatrixSymbol):
        name = e.name
        shape = (e.shape[0], e.shape[1])
        if name in seen and not (_same(seen[name][0], shape[0]) and _same(seen[name][1], shape[1])):
            raise ShapeError(f"verify: symbol {name!r} is used with shapes {seen[name]} and {shape}.")
        seen[name] = shape
        atom = Atom(name, shape[0], shape[1])
        return Poly(((Word((atom,), *shape), one),), *shape)
    if isinstance(e, sympy.Identity):
        n = e.shape[0]
        return Poly(((Word((), n, n), one),), n, n)
    if isinstance(e, sympy.ZeroMatrix):
        return Poly((), e.shape[0], e.shape[1])
    if isinstance(e, sympy.Transpose):
        p = _to_poly(e.arg, rules, seen)
        return rules.collect(((rules.transpose_word(w, rules), c) for w, c in p.terms), p.cols, p.rows)
    if isinstance(e, sympy.MatAdd):
        parts = [_to_poly(a, rules, seen) for a in e.args]
        for q in parts[1:]:
            if not (_same(q.rows, parts[0].rows) and _same(q.cols, parts[0].cols)):
                raise ShapeError(f"verify: terms of different shapes added in {e}.")
        return rules.collect((t for q in parts for t in q.terms), parts[0].rows, parts[0].cols)
    if isinstance(e, sympy.MatMul):
        coeff = one
        mats = []
        for a in e.args:
            if isinstance(a, sympy.MatrixExpr):
                mats.append(_to_poly(a, rules, seen))
            else:
                coeff = coeff * _exact_scalar(a, e)
        out = mats[0]
        for q in mats[1:]:
            out = _poly_mul(out, q, rules, e)
        return rules.collect(((w, c * coeff) for w, c in out.terms), out.rows, out.cols)
    if isinstance(e, sympy.KroneckerProduct):
        parts = [_to_poly(a, rules, seen) for a in e.args]
        out = parts[0]
        for q in parts[1:]:
            out = _poly_kron(out, q, rules)
        return out
    if isinstance(e, sympy.MatPow):
        base, exp = e.args
        if not (exp.is_Integer and exp > 0):
            raise InvalidArgumentError(f"verify: unsupported power {e} (only positive integer exponents).")
        p = _to_poly(base, rules, seen)
        out = p
        for _ in range(int(exp) - 1):
            out = _poly_mul(out, p, rules, e)
        return out
    raise InvalidArgumentError(
        f"verify: unsupported expression node {type(e).__name__} in {e}; use MatrixSymbol, MatMul, MatAdd, "
        "Transpose, KroneckerProduct, Identity, ZeroMatrix or MatPow."
    )


def _exact_scalar(a: Any, node: Any) -> Any:
    a = sympy.sympify(a)
    if isinstance(a, sympy.Float):
        return sympy.Rational(a)  # the float's exact binary value
    if a.is_number and not a.is_real:
        raise InvalidArgumentError(f"verify: complex scalar {a} in {node} is not supported.")
    return a


# -- exact evaluation -----------------------------------------------------------------------------
def evaluate_exact(expr: Any, values: Mapping[str, np.ndarray], scalars: Mapping[Any, Any], dims: Mapping[Any, int]) -> np.ndarray:
    """Evaluate a sympy matrix expression exactly (object arrays of ints/Fractions), independently of the rules."""
    e = expr

    def dim(x: Any) -> int:
        return int(sympy.sympify(x).subs(dims))

    if isinstance(e, sympy.MatrixSymbol):
        return values[e.name]
    if isinstance(e, sympy.Identity):
        n = dim(e.shape[0])
        out = np.zeros((n, n), dtype=object)
        for i in range(n):
            out[i, i] = 1
        return out
    if isinstance(e, sympy.ZeroMatrix):
        return np.zeros((dim(e.shape[0]), dim(e.shape[1])), dtype=object)
    if isinstance(e, sympy.Transpose):
        return evaluate_exact(e.arg, values, scalars, dims).T
    if isinstance(e, sympy.MatAdd):
        parts = [evaluate_exact(a, values, scalars, dims) for a in e.args]
        out = parts[0]
        for q in parts[1:]:
            out = out + q
        return out
    if isinstance(e, sympy.MatMul):
        coeff: Any = 1
        out = None
        for a in e.args:
            if isinstance(a, sympy.MatrixExpr):
                m = evaluate_exact(a, values, scalars, dims)
                out = m if out is None else out.dot(m)
            else:
                coeff = coeff * _scalar_value(a, scalars)
        return out * coeff
    if isinstance(e, sympy.KroneckerProduct):
        parts = [evaluate_exact(a, values, scalars, dims) for a in e.args]
        out = parts[0]
        for q in parts[1:]:
            out = np.kron(out, q)
        return out
    if isinstance(e, sympy.MatPow):
        base = evaluate_exact(e.args[0], values, scalars, dims)
        out = base
        for _ in range(int(e.args[1]) - 1):
            out = out.dot(base)
        return out
    raise InvalidArgumentError(f"verify: unsupported expression node {type(e).__name__} in {e}.")


def _scalar_value(a: Any, scalars: Mapping[Any, Any]) -> Any:
    v = sympy.sympify(a).subs(scalars)
    if isinstance(v, sympy.Float):
        v = sympy.Rational(v)
    if not v.is_Rational:
        raise InvalidArgumentError(f"verify: scalar {a} does not evaluate to an exact rational.")
    return Fraction(int(v.p), int(v.q))


# -- verification ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Verification:
    """The verdict on ``lhs = rhs``.

    Attributes
    ----------
    holds : bool
    method : str
        ``"rewrite"`` (a proof for all dimensions), ``"exact-random"`` (exact evaluation at
        random integer points) or ``"numeric"`` (floating point, :func:`verify_numeric`).
    detail : str
    counterexample : dict or None
        When refuted: ``dims``, the symbols' ``values`` and both sides' exact results.
    """

    lhs: Any
    rhs: Any
    holds: bool
    method: str
    detail: str
    counterexample: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return self.holds

    def latex(self) -> str:
        """``lhs = rhs`` (or ``\\neq``) in LaTeX, with the method."""
        rel = "=" if self.holds else r"\neq"
        return rf"{sympy.latex(self.lhs)} {rel} {sympy.latex(self.rhs)} \quad (\text{{{self.method}}})"


def _symbols_of(exprs: Any) -> tuple[dict[str, Any], set[Any], set[Any]]:
    mats: dict[str, Any] = {}
    dim_syms: set[Any] = set()
    scalar_syms: set[Any] = set()
    for expr in exprs:
        for m in expr.atoms(sympy.MatrixSymbol):
            mats[m.name] = m
            for d in m.shape:
                dim_syms |= sympy.sympify(d).free_symbols
        for node in sympy.preorder_traversal(expr):
            if isinstance(node, (sympy.Identity, sympy.ZeroMatrix)):
                for d in node.shape:
                    dim_syms |= sympy.sympify(d).free_symbols
        for node in expr.atoms(sympy.MatMul):
            for a in node.args:
                if not isinstance(a, sympy.MatrixExpr):
                    scalar_syms |= sympy.sympify(a).free_symbols
    return mats, dim_syms, scalar_syms - dim_syms


def _degree(p: Poly) -> int:
    def word_deg(w: Word) -> int:
        return sum(1 if isinstance(x, Atom) else sum(word_deg(f) for f in x.factors) for x in w.letters)

    return max((word_deg(w) for w, _ in p.terms), default=0)


def _exact_trials(
    lhs: Any, rhs: Any, dim_sets: list[dict[Any, int]], trials_per_dims: int, seed: int
) -> tuple[bool, dict[str, Any] | None]:
    mats, _, scalar_syms = _symbols_of((lhs, rhs))
    rng = random.Random(seed)
    for dims in dim_sets:
        for _ in range(trials_per_dims):
            values = {}
            for name, m in mats.items():
                r, c = (int(sympy.sympify(d).subs(dims)) for d in m.shape)
                arr = np.empty((r, c), dtype=object)
                for i in range(r):
                    for j in range(c):
                        arr[i, j] = rng.randint(-VALUE_RANGE, VALUE_RANGE)
                values[name] = arr
            scalars = {s: rng.randint(-VALUE_RANGE, VALUE_RANGE) for s in scalar_syms}
            a = evaluate_exact(lhs, values, scalars, dims)
            b = evaluate_exact(rhs, values, scalars, dims)
            if a.shape != b.shape or not np.all(a == b):
                return False, {
                    "dims": {str(k): v for k, v in dims.items()},
                    "scalars": {str(k): v for k, v in scalars.items()},
                    "values": {k: sympy.Matrix(v.tolist()) for k, v in values.items()},
                    "lhs": sympy.Matrix(a.tolist()) if a.size else a,
                    "rhs": sympy.Matrix(b.tolist()) if b.size else b,
                }
    return True, None


def _dim_sets(dim_syms: set[Any], sizes: tuple[int, ...], seed: int) -> list[dict[Any, int]]:
    syms = sorted(dim_syms, key=str)
    if not syms:
        return [{}]
    rng = random.Random(seed + 1)
    out = [{s: n for s in syms} for n in sizes]
    out.append({s: rng.choice(sizes) for s in syms})
    return out


def verify(
    lhs: Any,
    rhs: Any,
    *,
    trials: int = 2,
    sizes: tuple[int, ...] = (2, 3),
    seed: int = 0,
    rules: Rules = RULES,
) -> Verification:
    """Decide ``lhs = rhs`` by sound rewriting, else by exact randomized identity testing.

    Parameters
    ----------
    lhs, rhs : sympy matrix expression or LinearMap
    trials : int
        Random points per dimension assignment in exact testing.
    sizes : tuple of int
        Sizes at which symbolic dimensions are instantiated (all at each size, then a mixed draw).
    seed : int
        Seed of the random points (results are deterministic for a seed).
    rules : Rules
        The rewrite rules (replace one only to test the safeguards).
    """
    trials = check_int("trials", trials, 1)
    seed = check_int("seed", seed, 0)
    if (
        not isinstance(sizes, (tuple, list))
        or not sizes
        or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 64 for n in sizes)
    ):
        raise InvalidArgumentError(f"verify: sizes={sizes!r}; pass a non-empty tuple of integers from 1 to 64.")
    sizes = tuple(sizes)
    a, b = _as_sympy(lhs), _as_sympy(rhs)
    if not (_same(a.shape[0], b.shape[0]) and _same(a.shape[1], b.shape[1])):
        return Verification(a, b, False, "rewrite", f"shapes differ: {a.shape} vs {b.shape}.")
    pa, pb = normal_form(a, rules), normal_form(b, rules)
    _, dim_syms, _ = _symbols_of((a, b))
    dim_sets = _dim_sets(dim_syms, sizes, seed)
    da, db = pa.as_dict(), pb.as_dict()
    if da.keys() == db.keys() and all(sympy.expand(da[w] - db[w]) == 0 for w in da):
        ok, cex = _exact_trials(a, b, dim_sets[:1], 1, seed)  # guard against an unsound rule
        if ok:
            return Verification(
                a, b, True, "rewrite",
                f"equal normal forms ({len(pa.terms)} terms): a proof for all values and dimensions; "
                f"confirmed by one exact evaluation at dims {_fmt_dims(dim_sets[0])}.",
            )
        return Verification(
            a, b, False, "exact-random",
            "the normal forms agree but an exact evaluation of the original expressions refutes the identity: "
            "a rewrite rule is unsound.",
            cex,
        )
    ok, cex = _exact_trials(a, b, dim_sets, trials, seed)
    if not ok:
        return Verification(
            a, b, False, "exact-random",
            f"refuted by exact integer evaluation at dims {cex['dims'] if cex else {}}; see counterexample.", cex,
        )
    d = max(_degree(pa), _degree(pb), 1)
    per = d / (2 * VALUE_RANGE + 1)
    return Verification(
        a, b, True, "exact-random",
        f"normal forms differ ({len(pa.terms)} vs {len(pb.terms)} terms) but both sides agree exactly in "
        f"{trials} random integer trials at each of dims {', '.join(_fmt_dims(x) for x in dim_sets)}; by "
        f"Schwartz-Zippel (degree {d}, entries from {2 * VALUE_RANGE + 1} values) a false identity passes at "
        f"given dims with probability at most {per ** trials:.1e}. Not a proof for other dimensions.",
    )


def _fmt_dims(dims: Mapping[Any, int]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(dims.items(), key=lambda kv: str(kv[0]))) + "}" if dims else "(fixed)"


def verify_numeric(a: LinearMap, b: LinearMap, *, rtol: float = 1e-9, probes: int = 8, seed: int = 0) -> Verification:
    """Compare two numeric maps in floating point (``method="numeric"``: evidence, not a proof).

    Small maps are compared densely; larger ones on ``probes`` random vectors, relative to
    ``‖a x‖``. ``holds`` means the maximum relative difference is at most ``rtol``.
    """
    from circuitalg.linalg.budget import SMALL_DENSE_BYTES

    if not isinstance(a, LinearMap) or not isinstance(b, LinearMap):
        raise InvalidArgumentError("verify_numeric compares two circuitalg maps; use verify for sympy expressions.")
    probes, seed = check_int("probes", probes, 1), check_int("seed", seed, 0)
    check_real("verify_numeric: rtol", rtol, 0)
    if a.domain != b.domain or a.codomain != b.codomain:
        return Verification(a.symbol, b.symbol, False, "numeric",
                            f"spaces differ: {a.domain} -> {a.codomain} vs {b.domain} -> {b.codomain}.")
    if a.shape[0] * a.shape[1] * 8 <= SMALL_DENSE_BYTES:
        da, db = a.to_dense(), b.to_dense()
        err = float(np.abs(da - db).max() / max(np.abs(da).max(), np.finfo(float).tiny))
        how = "dense comparison"
    else:
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((a.shape[1], probes))
        ya, yb = a.matvec(X), b.matvec(X)
        err = float(np.linalg.norm(ya - yb) / max(np.linalg.norm(ya), np.finfo(float).tiny))
        how = f"{probes} random probe vectors"
    return Verification(
        a.symbol, b.symbol, err <= rtol, "numeric",
        f"floating point, {how}: max relative difference {err:.1e} (tolerance {rtol:.0e}); evidence, not a proof.",
    )
