"""Factored structure: chains, cached leaf decompositions and the small-core sweeps.

A map is seen as a *chain* ``c * F1 @ F2 @ ... @ Fk``
(:func:`circuitalg.maps.chain.as_chain`; sums whose terms share outer factors are factored
first). With dims ``d0 = n, d1, ..., dk = m``, the *bottleneck* ``j``
is where ``dj`` is smallest. Everything numeric then happens on small matrices:

- :func:`left_factor` sweeps ``F1 ... Fj`` into ``S_L`` with ``S_Lᵀ S_L = Lᵀ L``
  (``L = F1 ... Fj``), so ``‖L x‖ = ‖S_L x‖``; ``S_L`` has at most ``dj`` columns and is
  kept short by QR of small matrices. The right part is swept the same way from the
  other end, and ``P = L R`` has the singular values and Frobenius norm of the small
  core ``S_L S_Rᵀ``: cost O((n + m) r^2) once per outer leaf, then O(d r^2) per chain.
- Outer leaves (``W_E``, ``W_U``, ``W_pos``) are decomposed once per leaf object and the
  results cached per leaf (:func:`gram_factor`, :func:`pair_product`, :func:`leaf_gram`, held in
  one ``WeakKeyDictionary`` owned by this module, so leaves stay immutable), so all heads reuse them.
- A leaf met by its own transpose (tied embeddings, ``W_U = W_Eᵀ``) has one Gram matrix: the
  pair product ``W_E W_Eᵀ``, the norm bound and the triangular factor all come from it.

The triangular factor of a tall leaf ``A`` comes from the Cholesky factor of its Gram
matrix ``AᵀA``, accumulated in float64 also for float32 leaves (one BLAS-3 pass, ~8x faster
than Householder QR at GPT-2 shapes), when ``A`` is well conditioned (estimated condition
number below :data:`GRAM_COND_LIMIT`), and from Householder QR otherwise; the two agree up to row signs, and the choice is
recorded (:func:`leaf_factor_method`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError
from circuitalg.linalg.apply import evaluate, matmat, rmatmat
from circuitalg.linalg.budget import check_budget
from circuitalg.linalg.common import SMALL_LAPACK_WORK, core_count, small_lapack, split_small_products
from circuitalg.linalg.ties import TiedForm, fit_tied_form, screen_tied_form
from circuitalg.maps.chain import Chain
from circuitalg.maps.nodes import Dense, Identity, LinearMap, Transpose

__all__ = [
    "gram_factor",
    "leaf_factors",
    "LeafFactors",
    "leaf_factor_method",
    "pair_product",
    "sweep",
    "collapse_pairs",
    "evaluate_chain",
    "cyclic_core",
    "cyclic_cores",
    "BATCH_BYTES",
    "GRAM_COND_LIMIT",
    "KEEP_GRAM_ROWS",
    "leaf_gram",
    "Gram",
    "gram_blocks",
    "gram_gamma",
    "gram_err2",
    "declare_tied",
    "tied_form",
    "tie_deviation",
    "tied_gram",
]

#: Leaves whose estimated 2-norm condition number is above this use Householder QR;
#: below it the Gram-Cholesky factor loses at most ~eps * GRAM_COND_LIMIT**2 relative.
GRAM_COND_LIMIT: float = 1e3

#: A leaf's Gram matrix (float64, ``d x d``) is kept in its cache when the contracted side has at
#: least this many rows (vocabulary-sized leaves, whose Gram matrix costs a pass over the whole
#: leaf); smaller leaves' Gram matrices are cheap to recompute and would add up over many heads.
KEEP_GRAM_ROWS: int = 8192


# --- leaf caches ------------------------------------------------------------------------------
def _leaf_and_side(f: LinearMap) -> tuple[Dense, str] | None:
    """``(leaf, "cols")`` for a Dense leaf, ``(leaf, "rows")`` for its transpose."""
    if isinstance(f, Dense):
        return f, "cols"
    if isinstance(f, Transpose) and isinstance(f.inner, Dense):
        return f.inner, "rows"
    return None


def _oriented(leaf: Dense, side: str) -> np.ndarray:
    return leaf.array if side == "cols" else leaf.array.T


@dataclass(frozen=True, eq=False)
class Gram:
    """A computed Gram matrix ``G ≈ MᵀM`` (float64) of a tall ``M`` (``n x d``) with
    ``‖G - MᵀM‖₂ <= err2``; ``accurate`` when that error is float64 rounding of ``M``'s entries
    (blocks converted to float64, or derived from such a Gram matrix through a tie)."""

    G: np.ndarray
    err2: float
    accurate: bool


@dataclass(eq=False)
class LeafFactors:
    """What circuitalg has computed about one Dense leaf, kept while the leaf lives.

    Held in :data:`_LEAF_FACTORS` (a ``WeakKeyDictionary`` owned by this module), never on the
    leaf, so leaves stay immutable. Filled on demand by :func:`gram_factor`,
    :func:`pair_product` and :func:`circuitalg.linalg.accuracy.magnitude`.
    """

    r: dict[str, np.ndarray] = field(default_factory=dict)  # side -> upper-triangular R
    method: dict[str, str] = field(default_factory=dict)  # side -> "gram-cholesky" | "qr"
    pairs: dict[tuple[str, int, str], tuple[Any, np.ndarray]] = field(default_factory=dict)
    norm2_bound: float | None = None  # a bound on the spectral norm
    gram_cond: float | None = None  # condition number of a Gram-Cholesky factor
    grams: dict[str, Gram] = field(default_factory=dict)  # side -> kept Gram matrix (KEEP_GRAM_ROWS)
    tie_source: Any = None  # weakref to the Dense leaf this one may be tied to (declare_tied)
    tie: TiedForm | None = None  # the verified tied form (columns side), once resolved
    tie_resolved: bool = False


_LEAF_FACTORS: weakref.WeakKeyDictionary[Dense, LeafFactors] = weakref.WeakKeyDictionary()


def leaf_factors(leaf: Dense) -> LeafFactors:
    """The cached decompositions of ``leaf`` (created empty on first use)."""
    hit = _LEAF_FACTORS.get(leaf)
    if hit is None:
        hit = _LEAF_FACTORS[leaf] = LeafFactors()
    return hit


def gram_factor(leaf: Dense, side: str) -> np.ndarray:
    """A square ``R`` (upper-triangular unless centred) with ``RᵀR = MᵀM`` for ``M = leaf`` (side ``"cols"``) or
    ``M = leafᵀ`` (side ``"rows"``), for tall ``M``; computed once per leaf and cached.

    So ``‖M x‖ = ‖R x‖`` for every ``x``: ``R`` stands in for ``W_U`` (``"cols"``) or for
    ``W_Eᵀ``, ``W_posᵀ`` (``"rows"``) in every norm and singular value. From the Cholesky factor
    of the Gram matrix (accumulated in float64) when ``M`` is well conditioned (below
    :data:`GRAM_COND_LIMIT`), from the same Gram matrix with the all-ones direction deflated
    when ``M``'s rows are centred (:func:`_centred_cholesky`), else Householder QR
    (:func:`leaf_factor_method` says which).
    """
    if side not in ("cols", "rows"):
        raise InvalidArgumentError(f"gram_factor: side={side!r}; use 'cols' (M = leaf) or 'rows' (M = leaf.T).")
    cache = leaf_factors(leaf)
    hit = cache.r.get(side)
    if hit is not None:
        return hit
    M = _oriented(leaf, side)
    R, method = None, "qr"
    G = leaf_gram(leaf, side, accurate=True).G
    R = _well_conditioned_cholesky(G)
    if R is not None:
        method = "gram-cholesky"
    else:
        R = _centred_cholesky(G, M)
        if R is not None:
            method = "gram-cholesky-centred"
    if R is None:
        R = np.linalg.qr(M, mode="r")
    R = R.astype(M.dtype) if R.dtype != M.dtype else R  # a float32 leaf keeps float32 factors
    R.flags.writeable = False
    cache.r[side] = R
    cache.method[side] = method
    return R


def _well_conditioned_cholesky(G: np.ndarray, limit: float = GRAM_COND_LIMIT) -> np.ndarray | None:
    """The upper Cholesky factor of ``G``, or None if it fails or its estimated condition number
    (diagonal ratio) exceeds ``limit`` (default :data:`GRAM_COND_LIMIT`)."""
    try:
        with small_lapack(*G.shape):
            R = np.linalg.cholesky(G).T  # numpy's LAPACK call: about twice as fast as scipy's here
    except np.linalg.LinAlgError:
        return None
    diag = np.abs(np.diag(R))
    return None if diag.min() <= 0 or diag.max() / diag.min() > limit else R


def _centred_cholesky(G: np.ndarray, M: np.ndarray) -> np.ndarray | None:
    """``R`` with ``RᵀR = G`` when the all-ones direction is a null vector of ``G`` (a leaf whose
    rows were centred, as :func:`~circuitalg.model.transforms.fold_layer_norm` centres every
    reader) and ``G`` is well conditioned on its complement; else None.

    With the Householder reflection ``H`` (symmetric, orthogonal) taking ``1/√n`` to ``e₁``,
    ``H G H`` has a (numerically) zero first row and column; the Cholesky factor ``R'`` of its
    trailing block gives ``R = (0 ⊕ R') H``, square but not triangular, with ``R 1 = 0``
    exactly. The dropped part is ``‖M 1‖²/n``, rounding of the centring: computed from ``M``
    itself and required below ``(64 u)² n tr(G)`` (``u`` the unit roundoff of ``M``'s dtype)."""
    n = G.shape[0]
    if n < 2:
        return None
    v = np.full(n, 1.0 / math.sqrt(n))
    v[0] -= 1.0  # H = I - 2 v vᵀ / vᵀv maps 1/√n to e₁
    vv = float(v @ v)
    Gv = G @ v
    # H G H = G - 2 v (Gv)ᵀ/vv - 2 (Gv) vᵀ/vv + 4 (vᵀGv) v vᵀ / vv²
    HGH = G - (2.0 / vv) * (np.outer(v, Gv) + np.outer(Gv, v)) + (4.0 * float(v @ Gv) / vv**2) * np.outer(v, v)
    u = np.finfo(M.dtype).eps / 2
    ones = np.asarray(M @ np.ones(n, dtype=M.dtype), dtype=np.float64)
    if float(ones @ ones) > (64 * u) ** 2 * n * max(float(np.trace(G)), 0.0):
        return None
    R1 = _well_conditioned_cholesky((HGH[1:, 1:] + HGH[1:, 1:].T) / 2)
    if R1 is None:
        return None
    R = np.zeros((n, n))
    R[1:, 1:] = R1
    return R - (2.0 / vv) * np.outer(R @ v, v)  # R H


def _gamma(n: int, u: float) -> float:
    """``γ_n = n u / (1 - n u)``: the relative error bound of a sum of ``n`` terms (Higham)."""
    return n * u / (1 - n * u) if n * u < 1 else math.inf


def gram_gamma(n: int, rows: int, dtype: np.dtype, accurate: bool) -> float:
    """The entrywise rounding factor ``γ`` of :func:`gram_blocks` for ``n`` rows of ``dtype`` in
    blocks of ``rows``: ``γ_b(u) + γ_{B+1}(u₆₄)`` (``b = min(rows, n)``, ``B`` blocks), or
    ``γ_n(u₆₄)`` when ``accurate`` or float64."""
    u64 = float(np.finfo(np.float64).eps) / 2
    if accurate or np.dtype(dtype) == np.float64:
        return _gamma(n, u64)
    u = float(np.finfo(dtype).eps) / 2
    return _gamma(min(rows, n), u) + _gamma(-(-n // rows) + 1, u64)


def gram_err2(trace: float, gamma: float) -> float:
    """``err2 = γ ‖M‖_F²`` for a Gram matrix ``Ĝ`` of ``M`` formed within ``γ |M|ᵀ|M|`` entrywise,
    with ``‖M‖_F² <= tr(Ĝ) / (1 - γ)``; ``inf`` when ``γ >= 1`` or the trace is not finite (an
    overflowed Gram matrix)."""
    if not (gamma < 1 and math.isfinite(trace)):
        return math.inf
    return gamma * max(trace, 0.0) / (1 - gamma)


def gram_blocks(M: np.ndarray, rows: int = 4096, *, accurate: bool = False) -> Gram:
    """``MᵀM`` for a tall ``M``, a block of ``rows`` rows at a time, the blocks summed in float64.

    ``accurate=False``: each block is formed in ``M``'s dtype (one BLAS-3 pass, no float64 copy of
    ``M``): entrywise within ``γ |M|ᵀ|M|``, ``γ = γ_b(u) + γ_{B+1}(u₆₄)`` for blocks of ``b`` rows,
    ``B`` blocks, ``u`` the unit roundoff of the dtype, so ``err2 = γ ‖M‖_F²`` with
    ``‖M‖_F² <= tr(G) / (1 - γ)``. ``accurate=True``: float32 blocks are converted to float64 first,
    so ``γ = γ_n(u₆₄)``, far below float32 data's own resolution (the Cholesky factor of a
    well-conditioned float32 leaf is then as exact as Householder QR in float64); twice the
    arithmetic cost. A float64 ``M`` is the same either way. Overflow of the dtype gives
    infinite entries and ``err2`` (no warning). Above :data:`~circuitalg.linalg.common.SMALL_LAPACK_WORK`
    the blocks are split between threads (:func:`~circuitalg.linalg.common.split_small_products`),
    each product on one BLAS thread."""
    n, d = M.shape
    wide = M.dtype == np.float64  # one product (its own rounding is float64's), else blocks of `rows`
    step = max(1, n) if wide else rows

    def part(lo: int, hi: int) -> np.ndarray:  # the blocks lo..hi, summed in float64
        G = np.zeros((d, d))
        with np.errstate(over="ignore", invalid="ignore"):
            for s in range(lo * step, min(n, hi * step), step):
                B = np.asarray(M[s:s + step], dtype=np.float64) if accurate else M[s:s + step]
                G += B.T @ B  # one operand transposed: numpy calls syrk (half a product)
        return G

    if n * d * d <= SMALL_LAPACK_WORK:
        with small_lapack(n, d):
            G = part(0, 1) if wide else part(0, -(-n // rows))
    elif wide:  # each thread one product over its rows
        G = sum(split_small_products(lambda lo, hi: M[lo:hi].T @ M[lo:hi], n), np.zeros((d, d)))
    else:  # each thread its own blocks on one BLAS thread (faster here than OpenBLAS's threads per block)
        G = sum(split_small_products(part, -(-n // rows)), np.zeros((d, d)))
    with np.errstate(over="ignore", invalid="ignore"):
        trace = float(np.trace(G))
    return Gram(G, gram_err2(trace, gram_gamma(n, rows, M.dtype, accurate)), accurate or M.dtype == np.float64)


def leaf_gram(leaf: Dense, side: str, *, accurate: bool = False) -> Gram:
    """The Gram matrix of ``M = leaf`` (``side="cols"``) or ``M = leafᵀ`` (``"rows"``): ``MᵀM``
    (:func:`gram_blocks`), or for a tied leaf's columns ``Mᵀ G_E M`` from its source's
    (:func:`declare_tied`). Kept in the leaf's cache when ``M`` has at least
    :data:`KEEP_GRAM_ROWS` rows; a kept accurate one also serves ``accurate=False`` requests."""
    cache = leaf_factors(leaf)
    hit = cache.grams.get(side)
    if hit is not None and (hit.accurate or not accurate):
        return hit
    M = _oriented(leaf, side)
    tied = tied_form(leaf, accurate=accurate) if side == "cols" else None
    if tied is not None:
        out = tied_gram(tied[1], tied[2])
    else:
        out = gram_blocks(M, 8192 if accurate else 4096, accurate=accurate)
    if M.shape[0] >= KEEP_GRAM_ROWS:
        out.G.flags.writeable = False
        cache.grams[side] = out
    return out


# --- tied leaves ----------------------------------------------------------------------------------
def declare_tied(leaf: Dense, source: Dense) -> None:
    """Declare that ``leaf`` (``n x d``, e.g. ``W_U``) may be ``sourceᵀ diag(g) P`` for the leaf
    ``source`` (``d x n``, e.g. ``W_E``): a tied unembedding with a folded final norm
    (:mod:`circuitalg.linalg.ties`). Nothing is trusted: on first use the form is fitted and its
    deviation measured over every entry; if it does not hold, the leaf is used as it is. When it
    holds, ``W_E W_U``, ``W_Uᵀ W_U`` and ``W_U``'s norm and triangular factor come from
    ``W_E``'s Gram matrix (error bounds include the deviation)."""
    if not isinstance(leaf, Dense) or not isinstance(source, Dense):
        raise InvalidArgumentError(
            f"declare_tied: expected two Dense leaves, got {type(leaf).__name__} and {type(source).__name__}."
        )
    if leaf.shape != source.shape[::-1]:
        raise InvalidArgumentError(
            f"declare_tied: {leaf.symbol} {leaf.shape} cannot be the transpose of {source.symbol} {source.shape} "
            "times a d x d map; pass the unembedding (vocab x d_model) first and the embedding (d_model x vocab) second."
        )
    cache = leaf_factors(leaf)
    cache.tie_source, cache.tie, cache.tie_resolved = weakref.ref(source), None, False


def _declared_source(leaf: Dense) -> Dense | None:
    """The leaf ``leaf`` was declared tied to (alive), without resolving the tie."""
    cache = _LEAF_FACTORS.get(leaf)
    return None if cache is None or cache.tie_source is None else cache.tie_source()


def tied_form(leaf: Dense, *, accurate: bool = False) -> tuple[Dense, TiedForm, Gram] | None:
    """``(source, form, the source's rows-side Gram matrix)`` when ``leaf`` was declared tied
    (:func:`declare_tied`) and the form holds; None otherwise. Resolved once per leaf: a
    sample screen, then one pass over both leaves (and the source's Gram matrix, which the
    derived quantities need anyway: ``accurate`` asks for the float64-accurate one, so that a
    caller who needs it does not pay for both)."""
    source = _declared_source(leaf)
    if source is None:
        return None
    cache = leaf_factors(leaf)
    gram = None
    if not cache.tie_resolved:
        cache.tie_resolved = True
        start = screen_tied_form(leaf.array, source.array)
        if start is not None:
            gram = leaf_gram(source, "rows", accurate=accurate)
            cache.tie = fit_tied_form(leaf.array, source.array, gram.G, gram.err2, start)
    if cache.tie is None:
        return None
    return source, cache.tie, gram or leaf_gram(source, "rows", accurate=accurate)


def tie_deviation(leaf: Dense) -> float:
    """``‖Δ‖₂ / ‖leaf‖₂`` bounded for a leaf whose quantities come through a verified tie
    (:func:`tied_form`), 0 otherwise: the relative perturbation the tie adds (for
    :func:`circuitalg.linalg.accuracy.accuracy`)."""
    cache = _LEAF_FACTORS.get(leaf)
    return 0.0 if cache is None or cache.tie is None else cache.tie.relative_deviation_2


def tied_gram(form: TiedForm, g: Gram) -> Gram:
    """``Mᵀ G_E M`` (:meth:`~circuitalg.linalg.ties.TiedForm.sandwich`, ``O(d²)``) for ``U = Eᵀ M + Δ``
    (``‖Δ‖_F <= δ``): ``‖Mᵀ Ĝ_E M - UᵀU‖₂ <= ‖M‖₂² err_E + (2 ‖U‖_F + δ) δ`` plus the float64
    rounding of the scalings and centrings (``UᵀU - MᵀG_E M = MᵀEΔ + ΔᵀEᵀM + ΔᵀΔ`` and
    ``‖EᵀM‖ <= ‖U‖ + δ``); ``g`` is the source's Gram matrix ``G_E``."""
    G = form.sandwich(g.G)
    m2 = float(np.max(np.abs(form.gains))) ** 2  # ‖diag(g) P‖₂² <= max g² (P a projection)
    d = G.shape[0]
    u64 = float(np.finfo(np.float64).eps) / 2
    dev = form.deviation
    # the scalings' and centrings' rounding: each entry of G M and of Mᵀ (G M) is within (d + 2) u64
    # of its row's magnitude; in norm at most 4 (d + 2) u64 max g² ‖|G|‖₂, and ‖|G|‖₂ <= tr(G)
    err2 = m2 * g.err2 + (2 * form.norm_fro + dev) * dev + 4 * (d + 2) * u64 * m2 * float(np.trace(g.G))
    return Gram(G, err2, g.accurate)


def leaf_factor_method(leaf: Dense, side: str = "cols") -> str | None:
    """How :func:`gram_factor` factored this leaf (``"gram-cholesky"``, ``"gram-cholesky-centred"``
    or ``"qr"``), or None."""
    hit = _LEAF_FACTORS.get(leaf)
    return None if hit is None else hit.method.get(side)


def pair_product(a: LinearMap, b: LinearMap) -> np.ndarray | None:
    """``a @ b`` as a dense array, cached with ``a``, when both are (transposed) Dense leaves
    and the contracted dimension is larger than both outer dimensions; else None.

    A leaf times its own transpose (tied embeddings: ``W_E W_Eᵀ``) is its Gram matrix
    (:func:`leaf_gram`, shared with the leaf's norm bound and triangular factor), formed once
    with float64 block sums: half a product's arithmetic, and more accurate. A declared and
    verified tie ``W_U = W_Eᵀ M`` (:func:`declare_tied`) gives ``W_E W_U = G_E M`` the same way."""
    la, lb = _leaf_and_side(a), _leaf_and_side(b)
    if la is None or lb is None:
        return None
    inner = a.domain.dim
    if inner <= max(a.codomain.dim, b.domain.dim):
        return None
    (leaf_a, side_a), (leaf_b, side_b) = la, lb
    key = (side_a, id(leaf_b), side_b)
    pairs = leaf_factors(leaf_a).pairs
    hit = pairs.get(key)
    if hit is not None and hit[0]() is leaf_b:
        return hit[1]
    dtype = np.result_type(leaf_a.array.dtype, leaf_b.array.dtype)
    tie_b = tied_form(leaf_b) if side_a == side_b == "cols" and _declared_source(leaf_b) is leaf_a else None
    tie_a = tied_form(leaf_a) if side_a == side_b == "rows" and _declared_source(leaf_a) is leaf_b else None
    if leaf_a is leaf_b and side_a != side_b:  # M^T M with M = b's orientation of the leaf
        out = np.array(leaf_gram(leaf_b, side_b).G, dtype=dtype)
    elif tie_b is not None:  # W_E W_U = G_E M
        out = np.array(tie_b[1].times_right(tie_b[2].G), dtype=dtype)
    elif tie_a is not None:  # W_Uᵀ W_Eᵀ = Mᵀ G_E = (G_E M)ᵀ
        out = np.array(tie_a[1].times_right(tie_a[2].G).T, dtype=dtype)
    else:
        A = leaf_a.array if side_a == "cols" else leaf_a.array.T
        B = leaf_b.array if side_b == "cols" else leaf_b.array.T
        out = A @ B
    out.flags.writeable = False
    pairs[key] = (weakref.ref(leaf_b), out)
    return out


# --- sweeps -------------------------------------------------------------------------------------
def _qr_r(S: np.ndarray) -> np.ndarray:
    """Shorten a tall ``S`` to its triangular factor (same Gram matrix)."""
    if S.shape[0] <= S.shape[1]:
        return S
    with small_lapack(*S.shape):
        return np.linalg.qr(S, mode="r")


def _first_factor(f: LinearMap, max_bytes: int | None) -> np.ndarray:
    hit = _leaf_and_side(f)
    rows, cols = f.shape
    if hit is not None:
        leaf, side = hit
        return gram_factor(leaf, side) if rows > cols else _oriented(leaf, side)
    if isinstance(f, Identity):
        return np.eye(rows, dtype=f.dtype)
    return _qr_r(np.asarray(evaluate(f, max_bytes)))


def sweep(factors: tuple[LinearMap, ...], max_bytes: int | None = None) -> np.ndarray | None:
    """``S`` with ``SᵀS = LᵀL`` for ``L = factors[0] @ ... @ factors[-1]``.

    Returns None for an empty sweep (``L`` is the identity). ``S`` has at most
    ``min(dims)`` rows.
    """
    S: np.ndarray | None = None
    for f in factors:
        if S is None:
            S = _first_factor(f, max_bytes)
        else:
            S = _qr_r(rmatmat(f, S.T).T)
    return S


def transposed(factors: tuple[LinearMap, ...]) -> tuple[LinearMap, ...]:
    """The factors of ``(F1 ... Fk)ᵀ = Fkᵀ ... F1ᵀ``."""
    from circuitalg.maps.rules import transpose

    return tuple(transpose(f) for f in reversed(factors))


def core(chain: Chain, max_bytes: int | None = None) -> np.ndarray:
    """The small core ``C = S_L S_Rᵀ`` with the singular values and norm of the chain
    (without the scalar)."""
    j = chain.bottleneck
    fs = chain.factors
    S_L = sweep(fs[:j], max_bytes)
    S_R = sweep(transposed(fs[j:]), max_bytes)
    if S_L is None and S_R is None:  # pragma: no cover - a chain has at least one factor
        raise AssertionError("empty chain")
    if S_L is None:
        return S_R.T
    if S_R is None:
        return S_L
    return S_L @ S_R.T


# --- dense evaluation of short chains -----------------------------------------------------------
def collapse_pairs(factors: tuple[LinearMap, ...]) -> list[LinearMap | np.ndarray]:
    """Replace adjacent leaf pairs that contract a large dimension by their cached products."""
    out: list[LinearMap | np.ndarray] = []
    i = 0
    while i < len(factors):
        if i + 1 < len(factors):
            p = pair_product(factors[i], factors[i + 1])
            if p is not None:
                out.append(p)
                i += 2
                continue
        out.append(factors[i])
        i += 1
    return out


def evaluate_chain(factors: tuple[LinearMap, ...], max_bytes: int | None = None) -> np.ndarray:
    """Dense product of a chain whose outer dimensions are small, using cached pairs."""
    items = collapse_pairs(factors)
    last = items[-1]
    X = last if isinstance(last, np.ndarray) else np.asarray(evaluate(last, max_bytes))
    for it in reversed(items[:-1]):
        check_budget((it.shape[0], X.shape[1]), X.dtype, "evaluating a chain's small core", max_bytes)
        X = it @ X if isinstance(it, np.ndarray) else matmat(it, X)
    return X


def cyclic_core(chain: Chain) -> np.ndarray:
    """The small square matrix ``F_{j+1} ... F_k F_1 ... F_j`` (``j`` the bottleneck),
    which has the nonzero eigenvalues and the trace of the chain (without its scalar).

    The wrap-around pair ``F_k F_1`` (e.g. ``W_E W_U``) is cached on its leaves."""
    return evaluate_chain(_rotated(chain))


def _rotated(chain: Chain) -> tuple[LinearMap, ...]:
    """The chain's factors rotated to start after its bottleneck ``j``: ``F_{j+1} ... F_k F_1 ... F_j``."""
    j, fs = chain.bottleneck, chain.factors
    return fs[j:] + fs[:j] if 0 < j < len(fs) else fs


#: Bytes of the shared product ``(W_E W_U) [W_O^1 ... W_O^g]`` that :func:`cyclic_cores` forms at once.
BATCH_BYTES = 256 << 20


def cyclic_cores(chains: list[Chain]) -> list[np.ndarray]:
    """:func:`cyclic_core` of every chain. Chains whose rotated core is
    ``C P B`` with the same cached pair product ``P`` (``W_E W_U``) and leaves ``B``, ``C`` of equal
    shapes are done together: ``P [B_1 ... B_g]`` as one product (in pieces of at most
    :data:`BATCH_BYTES` over all threads), then ``C_i (P B_i)`` as one stacked product; the
    members are split between threads (:func:`~circuitalg.linalg.common.split_small_products`)."""
    cores: list[np.ndarray | None] = [None] * len(chains)
    groups: dict[tuple, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = {}
    for i, chain in enumerate(chains):
        rotated = _rotated(chain)
        items = collapse_pairs(rotated)
        ends = [_leaf_and_side(f) if not isinstance(f, np.ndarray) else None for f in (items[0], items[-1])]
        if len(items) == 3 and isinstance(items[1], np.ndarray) and None not in ends:
            C, B = (_oriented(*e) for e in ends)  # type: ignore[misc]
            P = items[1]
            groups.setdefault((id(P), C.shape, B.shape, C.dtype, B.dtype), []).append((i, C, P, B))
        else:
            cores[i] = evaluate_chain(rotated)
    for members in groups.values():
        P = members[0][2]
        B0 = members[0][3]
        per_member = max(1, P.shape[0] * B0.shape[1] * np.result_type(P, B0).itemsize)
        width = max(1, BATCH_BYTES // core_count() // per_member)  # each thread's piece

        def group_cores(lo: int, hi: int, members: list = members, P: np.ndarray = P, b: int = B0.shape[1],
                        width: int = width) -> list:
            out = []
            for s in range(lo, hi, width):
                part = members[s:min(s + width, hi)]
                Y = P @ np.concatenate([m[3] for m in part], axis=1)  # (W_E W_U) [W_O^1 ... W_O^g]
                Ys = Y.reshape(Y.shape[0], len(part), b).transpose(1, 0, 2)
                out.extend(np.matmul(np.stack([m[1] for m in part]), Ys))  # W_V^i ((W_E W_U) W_O^i)
            return out

        # the members split between threads, each product on one BLAS thread
        for (i, *_), z in zip(members, (z for piece in split_small_products(group_cores, len(members)) for z in piece)):
            cores[i] = z
    return cores  # type: ignore[return-value]
