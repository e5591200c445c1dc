"""Factored structure: chains, leaf decompositions held by the leaves, and the small-core sweeps.

A map is seen as a *chain* ``c * F1 @ F2 @ ... @ Fk``
(:func:`circuitalg.maps.chain.as_chain`; sums whose terms share outer factors are factored
first). With dims ``d0 = n, d1, ..., dk = m``, the *bottleneck* ``j``
is where ``dj`` is smallest. Everything numeric then happens on small matrices:

- :func:`sweep` sweeps ``F1 ... Fj`` into ``S_L`` with ``S_Lᵀ S_L = Lᵀ L``
  (``L = F1 ... Fj``), so ``‖L x‖ = ‖S_L x‖``; ``S_L`` has at most ``dj`` columns and is
  kept short by QR of small matrices. The right part is swept the same way from the
  other end, and ``P = L R`` has the singular values and Frobenius norm of the small
  core ``S_L S_Rᵀ``: cost O((n + m) r^2) once per outer leaf, then O(d r^2) per chain.
- Outer leaves (``W_E``, ``W_U``, ``W_pos``) are decomposed once per leaf, and the results are held
  by the leaf itself (:attr:`Dense.cache <circuitalg.maps.nodes.Dense.cache>`, a :class:`LeafCache`):
  Gram matrices (:func:`leaf_gram`), triangular factors (:func:`gram_factor`) and products with
  other leaves (:func:`pair_product`), so all heads reuse them. Each entry is a pure function of
  the leaf's array (and of the leaf it is tied to): whether it was computed earlier changes the
  time a routine takes, never its result.
- A leaf met by its own transpose (``W_E W_Eᵀ``) has one Gram matrix: the pair product, the norm
  bound and the triangular factor all come from it.
- An unembedding built tied to its embedding (``Dense(..., tied_to=W_E)``, :func:`declare_tied`,
  as a model with tied embeddings builds ``W_U``) is ``W_Eᵀ diag(g) P`` when the fitted form holds
  (:func:`tied_form`, :mod:`circuitalg.linalg.ties`): ``W_E W_U``, ``W_Uᵀ W_U`` and ``W_U``'s norm
  and triangular factor then come from ``W_E``'s Gram matrix.

The triangular factor of a tall leaf ``A`` comes from the Cholesky factor of its Gram
matrix ``AᵀA``, accumulated in float64 also for float32 leaves (one BLAS-3 pass, several
times faster than Householder QR at vocabulary shapes), when ``A`` is well conditioned (estimated
condition number below :data:`GRAM_COND_LIMIT`), and from Householder QR otherwise; the two agree
up to row signs, and the choice is recorded (:func:`leaf_factor_method`).

The kernels that split work take a :class:`~circuitalg.runtime.Runtime` (``rt``; None means
:func:`circuitalg.runtime.current`) and give the same numbers on :data:`~circuitalg.runtime.SERIAL`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import TypeVar

import numpy as np

from circuitalg import runtime
from circuitalg.errors import InvalidArgumentError
from circuitalg.linalg.apply import evaluate, matmat, rmatmat
from circuitalg.linalg.budget import check_budget
from circuitalg.linalg.ties import TiedForm, fit_tied_form, screen_tied_form
from circuitalg.maps.chain import Chain
from circuitalg.maps.nodes import Dense, Identity, LinearMap, Transpose
from circuitalg.runtime import SMALL_LAPACK_WORK, Runtime

__all__ = [
    "Side",
    "LeafCache",
    "TriangularFactor",
    "gram_factor",
    "leaf_factor",
    "leaf_factor_method",
    "well_conditioned_cholesky",
    "pair_product",
    "sweep",
    "core",
    "collapse_pairs",
    "evaluate_chain",
    "cyclic_core",
    "cyclic_cores",
    "BATCH_BYTES",
    "GRAM_BLOCK_ROWS",
    "GRAM_COND_LIMIT",
    "KEEP_GRAM_ROWS",
    "leaf_gram",
    "Gram",
    "gram_blocks",
    "gram_gamma",
    "gram_error_bound",
    "declare_tied",
    "tied_form",
    "tie_deviation",
    "tied_gram",
]

T = TypeVar("T")

#: Leaves whose estimated 2-norm condition number is above this use Householder QR;
#: below it the Gram-Cholesky factor loses at most ~eps * GRAM_COND_LIMIT**2 relative.
GRAM_COND_LIMIT: float = 1e3

#: A leaf's Gram matrix (float64, ``d x d``) is kept in its cache when the contracted side has at
#: least this many rows (vocabulary-sized leaves, whose Gram matrix costs a pass over the whole
#: leaf); smaller leaves' Gram matrices are cheap to recompute and would add up over many heads.
KEEP_GRAM_ROWS: int = 8192

#: Rows of the blocks in which :func:`gram_blocks` forms a float32 Gram matrix (each block in
#: float32, the blocks summed in float64); the rounding bound :func:`gram_gamma` depends on it.
GRAM_BLOCK_ROWS: int = 4096

#: Rows of the blocks of a large float64 Gram matrix (one block per thread at a time).
_FLOAT64_BLOCK_ROWS = 8192


# --- leaf caches ------------------------------------------------------------------------------
class Side(str, Enum):
    """Which orientation ``M`` of a leaf ``A`` a decomposition is of: ``COLS`` is ``M = A`` (its Gram
    matrix ``AᵀA`` is over ``A``'s columns: ``W_U``), ``ROWS`` is ``M = Aᵀ`` (``A Aᵀ``, over its rows:
    ``W_E``, ``W_pos``). A string-valued enum: ``"cols"`` and ``"rows"`` are accepted where a side is."""

    COLS = "cols"
    ROWS = "rows"

    def of(self, leaf: Dense) -> np.ndarray:
        """``M``: the leaf's array (``COLS``) or its transpose (``ROWS``)."""
        return leaf.array if self is Side.COLS else leaf.array.T

    @staticmethod
    def tall(leaf: Dense) -> Side | None:
        """The side whose ``M`` has more rows than columns (the one the singular-value routes
        factor), or None for a square leaf."""
        n, k = leaf.shape
        return Side.COLS if n > k else Side.ROWS if k > n else None


def _side(side: Side | str, what: str) -> Side:
    try:
        return Side(side)
    except ValueError:
        raise InvalidArgumentError(f"{what}: side={side!r}; use 'cols' (M = leaf) or 'rows' (M = leaf.T).") from None


@dataclass(frozen=True, eq=False)
class Gram:
    """A computed Gram matrix ``G ≈ MᵀM`` (float64) of a tall ``M`` (``n x d``) with
    ``‖G - MᵀM‖₂ <= err2``; ``accurate`` when that error is float64 rounding of ``M``'s entries
    (blocks converted to float64, or derived from such a Gram matrix through a tie)."""

    G: np.ndarray
    err2: float
    accurate: bool


@dataclass(frozen=True, eq=False)
class TriangularFactor:
    """A square ``R`` (upper-triangular unless centred) with ``RᵀR = MᵀM`` for one side ``M`` of a
    leaf, and how it was made: ``"gram-cholesky"``, ``"gram-cholesky-centred"`` or ``"qr"``."""

    R: np.ndarray
    method: str


class LeafCache:
    """What the numeric routines have computed about one Dense leaf, held by the leaf
    (:attr:`Dense.cache <circuitalg.maps.nodes.Dense.cache>`) while it lives.

    Each entry is filled once, on first use, with a pure function of the leaf's array (and of the
    leaf it is tied to, :attr:`~circuitalg.maps.nodes.Dense.tied_to`), so whether it was filled
    earlier never changes a result: Gram matrices by ``(side, accurate)`` (:func:`leaf_gram`; the
    vocabulary-sized ones, :data:`KEEP_GRAM_ROWS`), triangular factors by side
    (:func:`leaf_factor`), the verified tie (:func:`tied_form`; a one-tuple once resolved),
    products with other leaves (:func:`pair_product`), and :mod:`circuitalg.linalg.accuracy`'s
    spectral-norm bound and the singular values of the factors.
    """

    __slots__ = ("grams", "factors", "tie", "pairs", "norm2", "factor_values")

    def __init__(self) -> None:
        self.grams: dict[tuple[Side, bool], Gram] = {}
        self.factors: dict[Side, TriangularFactor] = {}
        self.tie: tuple[TiedForm | None] | None = None
        self.pairs: dict[tuple[Side, int, Side], tuple[weakref.ref[Dense], np.ndarray]] = {}
        self.norm2: float | None = None
        self.factor_values: dict[Side, np.ndarray] = {}


def once(table: dict, key: object, compute: Callable[[], T]) -> T:
    """``table[key]``, computed by ``compute()`` and stored on first use (for threads that compute it
    at once, the first stored value: equal to theirs, as entries are pure)."""
    hit = table.get(key)
    if hit is None:
        hit = table.setdefault(key, compute())
    return hit


def _leaf_and_side(f: LinearMap) -> tuple[Dense, Side] | None:
    """``(leaf, COLS)`` for a Dense leaf, ``(leaf, ROWS)`` for its transpose."""
    if isinstance(f, Dense):
        return f, Side.COLS
    if isinstance(f, Transpose) and isinstance(f.inner, Dense):
        return f.inner, Side.ROWS
    return None


def gram_factor(leaf: Dense, side: Side | str, rt: Runtime | None = None) -> np.ndarray:
    """A square ``R`` (upper-triangular unless centred) with ``RᵀR = MᵀM`` for ``M = leaf`` (side
    ``"cols"``) or ``M = leafᵀ`` (side ``"rows"``), for tall ``M``; computed once per leaf
    (:func:`leaf_factor`).

    So ``‖M x‖ = ‖R x‖`` for every ``x``: ``R`` stands in for ``W_U`` (``"cols"``) or for
    ``W_Eᵀ``, ``W_posᵀ`` (``"rows"``) in every norm and singular value.
    """
    return leaf_factor(leaf, side, rt).R


def leaf_factor(leaf: Dense, side: Side | str, rt: Runtime | None = None) -> TriangularFactor:
    """The triangular factor of one side of ``leaf`` (see :func:`gram_factor`) and its method: from
    the Cholesky factor of the Gram matrix (accumulated in float64) when ``M`` is well conditioned
    (below :data:`GRAM_COND_LIMIT`), from the same Gram matrix with the all-ones direction deflated
    when ``M``'s rows are centred (:func:`_centred_cholesky`), else Householder QR. Held by the leaf."""
    side = _side(side, "gram_factor")
    return once(leaf.cache.factors, side, lambda: _factor(leaf, side, rt or runtime.current()))


def _factor(leaf: Dense, side: Side, rt: Runtime) -> TriangularFactor:
    M = side.of(leaf)
    G = leaf_gram(leaf, side, accurate=True, rt=rt).G
    R, method = well_conditioned_cholesky(G, rt=rt), "gram-cholesky"
    if R is None:
        R, method = _centred_cholesky(G, M, rt), "gram-cholesky-centred"
    if R is None:
        R, method = np.linalg.qr(M, mode="r"), "qr"
    R = R.astype(M.dtype) if R.dtype != M.dtype else R  # a float32 leaf keeps float32 factors
    R.flags.writeable = False
    return TriangularFactor(R, method)


def well_conditioned_cholesky(
    G: np.ndarray, limit: float = GRAM_COND_LIMIT, rt: Runtime | None = None
) -> np.ndarray | None:
    """The upper Cholesky factor of ``G``, or None if it fails or its estimated condition number
    (diagonal ratio) exceeds ``limit`` (default :data:`GRAM_COND_LIMIT`)."""
    try:
        with (rt or runtime.current()).lapack(*G.shape):
            R = np.linalg.cholesky(G).T  # numpy's LAPACK call: less overhead than scipy's here
    except np.linalg.LinAlgError:
        return None
    diag = np.abs(np.diag(R))
    return None if diag.min() <= 0 or diag.max() / diag.min() > limit else R



def _centred_cholesky(G: np.ndarray, M: np.ndarray, rt: Runtime) -> np.ndarray | None:
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
    R1 = well_conditioned_cholesky((HGH[1:, 1:] + HGH[1:, 1:].T) / 2, rt=rt)
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


def gram_error_bound(trace: float, gamma: float) -> float:
    """The bound ``err2 = γ ‖M‖_F²`` on ``‖Ĝ - MᵀM‖₂`` for a Gram matrix ``Ĝ`` of ``M`` formed
    within ``γ |M|ᵀ|M|`` entrywise, with ``‖M‖_F² <= tr(Ĝ) / (1 - γ)``; ``inf`` when ``γ >= 1`` or
    the trace is not finite (an overflowed Gram matrix)."""
    if not (gamma < 1 and math.isfinite(trace)):
        return math.inf
    return gamma * max(trace, 0.0) / (1 - gamma)




def gram_blocks(M: np.ndarray, rows: int = GRAM_BLOCK_ROWS, *, accurate: bool = False,
                rt: Runtime | None = None) -> Gram:
    """``MᵀM`` for a tall ``M``, a block of ``rows`` rows at a time, the blocks summed in float64.

    ``accurate=False``: each block is formed in ``M``'s dtype (one BLAS-3 pass, no float64 copy of
    ``M``): entrywise within ``γ |M|ᵀ|M|``, ``γ = γ_b(u) + γ_{B+1}(u₆₄)`` for blocks of ``b`` rows,
    ``B`` blocks, ``u`` the unit roundoff of the dtype, so ``err2 = γ ‖M‖_F²`` with
    ``‖M‖_F² <= tr(G) / (1 - γ)``. ``accurate=True``: float32 blocks are converted to float64 first,
    so ``γ = γ_n(u₆₄)``, far below float32 data's own resolution (the Cholesky factor of a
    well-conditioned float32 leaf is then as exact as Householder QR in float64); twice the
    arithmetic cost. A float64 ``M`` is the same either way (one product, or blocks of a fixed
    size when large). Overflow of the dtype gives infinite entries and ``err2`` (no warning).

    Above :data:`~circuitalg.runtime.SMALL_LAPACK_WORK` the blocks are split between the threads
    of ``rt`` (:meth:`Runtime.map <circuitalg.runtime.Runtime.map>`, each product on one BLAS
    thread), a round of one block per thread at a time, and added in block order: the sum does not
    depend on the split."""
    rt = rt or runtime.current()
    n, d = M.shape
    small = n * d * d <= SMALL_LAPACK_WORK
    if M.dtype == np.float64:  # its own rounding is float64's: one product, or fixed blocks to split
        step = max(1, n) if small else _FLOAT64_BLOCK_ROWS
    else:
        step = rows
    starts = range(0, n, step)
    G = np.zeros((d, d))
    if small:
        with rt.lapack(n, d):
            for s in starts:
                G += _block_gram(M, step, accurate, s)
    else:
        per_round = max(1, rt.threads)
        for r in range(0, len(starts), per_round):
            todo = starts[r:r + per_round]
            for part in rt.map(partial(_block_grams, M, step, accurate, todo), len(todo)):
                for block in part:
                    G += block
    with np.errstate(over="ignore", invalid="ignore"):
        trace = float(np.trace(G))
    return Gram(G, gram_error_bound(trace, gram_gamma(n, rows, M.dtype, accurate)),
                accurate or M.dtype == np.float64)


def _block_gram(M: np.ndarray, step: int, accurate: bool, s: int) -> np.ndarray:
    """``BᵀB`` for the block ``B`` of ``step`` rows from row ``s`` (float64 when ``accurate``)."""
    B = np.asarray(M[s:s + step], dtype=np.float64) if accurate else M[s:s + step]
    with np.errstate(over="ignore", invalid="ignore"):
        return B.T @ B  # one operand transposed: numpy calls syrk (half a product)


def _block_grams(M: np.ndarray, step: int, accurate: bool, starts: range, lo: int, hi: int) -> list[np.ndarray]:
    return [_block_gram(M, step, accurate, s) for s in starts[lo:hi]]


def leaf_gram(leaf: Dense, side: Side | str, *, accurate: bool = False, rt: Runtime | None = None) -> Gram:
    """The Gram matrix of ``M = leaf`` (``side="cols"``) or ``M = leafᵀ`` (``"rows"``): ``MᵀM``
    (:func:`gram_blocks`), or for a tied leaf's columns ``Mᵀ G_E M`` from its embedding's
    (:func:`tied_form`). Held by the leaf when ``M`` has at least :data:`KEEP_GRAM_ROWS` rows, one
    per ``(side, accurate)`` (a float64 leaf's are the same either way)."""
    side = _side(side, "leaf_gram")
    accurate = bool(accurate) or leaf.array.dtype == np.float64
    hit = leaf.cache.grams.get((side, accurate))
    if hit is not None:
        return hit
    M = side.of(leaf)
    form = tied_form(leaf, rt) if side is Side.COLS else None
    if form is not None:
        out = tied_gram(form, leaf_gram(leaf.tied_to, Side.ROWS, accurate=accurate, rt=rt))  # type: ignore[arg-type]
    else:
        out = gram_blocks(M, 2 * GRAM_BLOCK_ROWS if accurate else GRAM_BLOCK_ROWS, accurate=accurate, rt=rt)
    if M.shape[0] < KEEP_GRAM_ROWS:
        return out
    out.G.flags.writeable = False
    return leaf.cache.grams.setdefault((side, accurate), out)


# --- tied leaves ----------------------------------------------------------------------------------
def declare_tied(leaf: Dense, source: Dense) -> Dense:
    """``leaf`` (``n x d``, e.g. ``W_U``) tied to the leaf ``source`` (``d x n``, e.g. ``W_E``): a new
    leaf with ``leaf``'s array (not copied), spaces and name, and ``tied_to=source``. Leaves are
    immutable: use the one returned (``W_U = declare_tied(W_U, W_E)``).

    The tied leaf may be ``sourceᵀ diag(g) P``: a tied unembedding with a folded final norm
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
    return Dense(leaf.array, leaf.domain, leaf.codomain, leaf.name, tied_to=source)


def tied_form(leaf: Dense, rt: Runtime | None = None) -> TiedForm | None:
    """The verified form ``leaf = tied_toᵀ diag(g) P + Δ`` of a leaf built tied to an embedding
    (:attr:`~circuitalg.maps.nodes.Dense.tied_to`), or None when it has no tie or the form does not
    hold. Resolved once per leaf, from the two arrays alone: a sample screen, then one pass over
    both leaves with the embedding's Gram matrix (:func:`leaf_gram`, ``accurate=False``: the one
    the pair product ``W_E W_U`` and the norm bounds use)."""
    source = leaf.tied_to
    if source is None:
        return None
    cache = leaf.cache
    if cache.tie is None:
        form = None
        start = screen_tied_form(leaf.array, source.array, rt)
        if start is not None:
            gram = leaf_gram(source, Side.ROWS, rt=rt)
            form = fit_tied_form(leaf.array, source.array, gram.G, gram.err2, start, rt)
        cache.tie = (form,)
    return cache.tie[0]


def tie_deviation(leaf: Dense) -> float:
    """``‖Δ‖₂ / ‖leaf‖₂`` bounded for a leaf whose quantities come through a verified tie
    (:func:`tied_form`), 0 otherwise: the relative perturbation the tie adds (for
    :func:`circuitalg.linalg.accuracy.accuracy`)."""
    form = tied_form(leaf)
    return 0.0 if form is None else form.relative_deviation_2


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


def leaf_factor_method(leaf: Dense, side: Side | str = Side.COLS) -> str | None:
    """How :func:`gram_factor` factored this side of the leaf (``"gram-cholesky"``,
    ``"gram-cholesky-centred"`` or ``"qr"``), or None if it has not factored it."""
    hit = leaf.cache.factors.get(_side(side, "leaf_factor_method"))
    return None if hit is None else hit.method


def pair_product(a: LinearMap, b: LinearMap, rt: Runtime | None = None) -> np.ndarray | None:
    """``a @ b`` as a dense array, held by ``a``'s leaf, when both are (transposed) Dense leaves
    and the contracted dimension is larger than both outer dimensions; else None.

    A leaf times its own transpose (``W_E W_Eᵀ``) is its Gram matrix (:func:`leaf_gram`, shared
    with the leaf's norm bound and triangular factor), formed once with float64 block sums: half a
    product's arithmetic, and more accurate. A verified tie ``W_U = W_Eᵀ M`` (:func:`tied_form`)
    gives ``W_E W_U = G_E M`` the same way."""
    la, lb = _leaf_and_side(a), _leaf_and_side(b)
    if la is None or lb is None:
        return None
    inner = a.domain.dim
    if inner <= max(a.codomain.dim, b.domain.dim):
        return None
    (leaf_a, side_a), (leaf_b, side_b) = la, lb
    key = (side_a, id(leaf_b), side_b)
    pairs = leaf_a.cache.pairs
    hit = pairs.get(key)
    if hit is not None and hit[0]() is leaf_b:
        return hit[1]
    out = _pair(leaf_a, side_a, leaf_b, side_b, rt)
    out.flags.writeable = False
    pairs[key] = (weakref.ref(leaf_b), out)
    return out


def _pair(leaf_a: Dense, side_a: Side, leaf_b: Dense, side_b: Side, rt: Runtime | None) -> np.ndarray:
    dtype = np.result_type(leaf_a.array.dtype, leaf_b.array.dtype)
    if leaf_a is leaf_b and side_a is not side_b:  # M^T M with M = b's orientation of the leaf
        return np.array(leaf_gram(leaf_b, side_b, rt=rt).G, dtype=dtype)
    if side_a is side_b is Side.COLS and leaf_b.tied_to is leaf_a:  # W_E W_U = G_E M
        form = tied_form(leaf_b, rt)
        if form is not None:
            return np.array(form.times_right(leaf_gram(leaf_a, Side.ROWS, rt=rt).G), dtype=dtype)
    if side_a is side_b is Side.ROWS and leaf_a.tied_to is leaf_b:  # W_Uᵀ W_Eᵀ = Mᵀ G_E = (G_E M)ᵀ
        form = tied_form(leaf_a, rt)
        if form is not None:
            return np.array(form.times_right(leaf_gram(leaf_b, Side.ROWS, rt=rt).G).T, dtype=dtype)
    return side_a.of(leaf_a) @ side_b.of(leaf_b)


# --- sweeps -------------------------------------------------------------------------------------
def _qr_r(S: np.ndarray, rt: Runtime) -> np.ndarray:
    """Shorten a tall ``S`` to its triangular factor (same Gram matrix)."""
    if S.shape[0] <= S.shape[1]:
        return S
    with rt.lapack(*S.shape):
        return np.linalg.qr(S, mode="r")


def _first_factor(f: LinearMap, max_bytes: int | None, rt: Runtime) -> np.ndarray:
    hit = _leaf_and_side(f)
    rows, cols = f.shape
    if hit is not None:
        leaf, side = hit
        return gram_factor(leaf, side, rt) if rows > cols else side.of(leaf)
    if isinstance(f, Identity):
        return np.eye(rows, dtype=f.dtype)
    return _qr_r(np.asarray(evaluate(f, max_bytes)), rt)


def sweep(factors: tuple[LinearMap, ...], max_bytes: int | None = None, rt: Runtime | None = None) -> np.ndarray | None:
    """``S`` with ``SᵀS = LᵀL`` for ``L = factors[0] @ ... @ factors[-1]``.

    Returns None for an empty sweep (``L`` is the identity). ``S`` has at most
    ``min(dims)`` rows.
    """
    rt = rt or runtime.current()
    S: np.ndarray | None = None
    for f in factors:
        if S is None:
            S = _first_factor(f, max_bytes, rt)
        else:
            S = _qr_r(rmatmat(f, S.T).T, rt)
    return S


def transposed(factors: tuple[LinearMap, ...]) -> tuple[LinearMap, ...]:
    """The factors of ``(F1 ... Fk)ᵀ = Fkᵀ ... F1ᵀ``."""
    from circuitalg.maps.rules import transpose

    return tuple(transpose(f) for f in reversed(factors))


def core(chain: Chain, max_bytes: int | None = None, rt: Runtime | None = None) -> np.ndarray:
    """The small core ``C = S_L S_Rᵀ`` with the singular values and norm of the chain
    (without the scalar)."""
    j = chain.bottleneck
    fs = chain.factors
    S_L = sweep(fs[:j], max_bytes, rt)
    S_R = sweep(transposed(fs[j:]), max_bytes, rt)
    if S_L is None and S_R is None:  # pragma: no cover - a chain has at least one factor
        raise AssertionError("empty chain")
    if S_L is None:
        return S_R.T
    if S_R is None:
        return S_L
    return S_L @ S_R.T


# --- dense evaluation of short chains -----------------------------------------------------------
def collapse_pairs(factors: tuple[LinearMap, ...], rt: Runtime | None = None) -> list[LinearMap | np.ndarray]:
    """Replace adjacent leaf pairs that contract a large dimension by their products (held by the
    leaves, :func:`pair_product`)."""
    out: list[LinearMap | np.ndarray] = []
    i = 0
    while i < len(factors):
        if i + 1 < len(factors):
            p = pair_product(factors[i], factors[i + 1], rt)
            if p is not None:
                out.append(p)
                i += 2
                continue
        out.append(factors[i])
        i += 1
    return out


def evaluate_chain(factors: tuple[LinearMap, ...], max_bytes: int | None = None,
                   rt: Runtime | None = None) -> np.ndarray:
    """Dense product of a chain whose outer dimensions are small, using the leaves' pair products."""
    items = collapse_pairs(factors, rt)
    last = items[-1]
    X = last if isinstance(last, np.ndarray) else np.asarray(evaluate(last, max_bytes))
    for it in reversed(items[:-1]):
        check_budget((it.shape[0], X.shape[1]), X.dtype, "evaluating a chain's small core", max_bytes)
        X = it @ X if isinstance(it, np.ndarray) else matmat(it, X)
    return X


def cyclic_core(chain: Chain, rt: Runtime | None = None) -> np.ndarray:
    """The small square matrix ``F_{j+1} ... F_k F_1 ... F_j`` (``j`` the bottleneck),
    which has the nonzero eigenvalues and the trace of the chain (without its scalar).

    The wrap-around pair ``F_k F_1`` (e.g. ``W_E W_U``) is held by its leaves."""
    return evaluate_chain(_rotated(chain), rt=rt)


def _rotated(chain: Chain) -> tuple[LinearMap, ...]:
    """The chain's factors rotated to start after its bottleneck ``j``: ``F_{j+1} ... F_k F_1 ... F_j``."""
    j, fs = chain.bottleneck, chain.factors
    return fs[j:] + fs[:j] if 0 < j < len(fs) else fs


#: Bytes of the shared product ``(W_E W_U) [W_O^1 ... W_O^g]`` that :func:`cyclic_cores` forms at once.
BATCH_BYTES = 256 << 20


def cyclic_cores(chains: list[Chain], rt: Runtime | None = None) -> list[np.ndarray]:
    """:func:`cyclic_core` of every chain. Chains whose rotated core is
    ``C P B`` with the same pair product ``P`` (``W_E W_U``) and leaves ``B``, ``C`` of equal
    shapes are done together: ``P [B_1 ... B_g]`` as one product (in pieces of at most
    :data:`BATCH_BYTES` over all threads), then ``C_i (P B_i)`` as one stacked product; the
    members are split between the threads of ``rt`` (:meth:`Runtime.map
    <circuitalg.runtime.Runtime.map>`)."""
    rt = rt or runtime.current()
    cores: list[np.ndarray | None] = [None] * len(chains)
    groups: dict[tuple, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = {}
    for i, chain in enumerate(chains):
        rotated = _rotated(chain)
        items = collapse_pairs(rotated, rt)
        ends = [_leaf_and_side(f) if not isinstance(f, np.ndarray) else None for f in (items[0], items[-1])]
        if len(items) == 3 and isinstance(items[1], np.ndarray) and None not in ends:
            C, B = (side.of(leaf) for leaf, side in ends)  # type: ignore[misc]
            P = items[1]
            groups.setdefault((id(P), C.shape, B.shape, C.dtype, B.dtype), []).append((i, C, P, B))
        else:
            cores[i] = evaluate_chain(rotated, rt=rt)
    for members in groups.values():
        P = members[0][2]
        B0 = members[0][3]
        per_member = max(1, P.shape[0] * B0.shape[1] * np.result_type(P, B0).itemsize)
        width = max(1, BATCH_BYTES // rt.threads // per_member)  # each thread's piece

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
        for (i, *_), z in zip(members, (z for piece in rt.map(group_cores, len(members)) for z in piece)):
            cores[i] = z
    return cores  # type: ignore[return-value]
