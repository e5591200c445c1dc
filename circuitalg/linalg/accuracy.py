"""Honest accuracy: a-priori error bounds of the numeric routines, and precision warnings.

Every number circuitalg computes from a map ``m`` is the exact answer for a nearby
matrix ``m + E``. :func:`accuracy` bounds ``‖E‖₂`` from the structure of ``m``
(never from the result), so it also bounds the error of each singular value
(Weyl): ``|σ̂ᵢ - σᵢ| <= accuracy(m)``. The bound is

``accuracy(m) = (4 (n_leaves + 1) sqrt(d_max) · g · u + t) · magnitude(m)``

with ``u`` the machine epsilon of ``m.dtype`` (2.2e-16 for float64, 1.2e-7 for
float32), ``d_max`` the largest dimension in the tree, ``g >= 1`` the largest condition
number of a leaf whose triangular factor comes from its Gram matrix (:func:`gram_penalty`: every
leaf with a tall side, as the singular-value routes factor it; at most about
:data:`~circuitalg.linalg.factors.GRAM_COND_LIMIT`; that factor has ``u · cond``
relative error), ``t`` the summed relative deviation ``‖Δ‖₂/‖W_U‖₂`` of the tied leaves
whose products come from their embedding's Gram matrix (:func:`~circuitalg.linalg.declare_tied`;
of the order of ``u``, 0 without ties) and :func:`magnitude` the
cancellation-free bound on ``‖m‖₂`` (spectral norms of leaves, multiplied through
products and Kronecker products, added through sums; a vocabulary-sized leaf's norm from its
Gram matrix, whose largest eigenvalue is certified by :func:`top_eigenvalue_bound`). The same
formula serves trees that are not maps (:func:`error_bound`: the streamed full-OV circuits of
:mod:`circuitalg.streaming`). Every part is a pure function of ``m``'s leaves (computed once and
held by them), so ``accuracy(m)`` does not depend on what was computed before. Derived bounds:

- singular values, :func:`~circuitalg.linalg.svd` values: ``accuracy(m)`` each;
- Frobenius norm: ``sqrt(rank_bound) · accuracy(m)``;
- trace: ``rank_bound · accuracy(m, gram_factors=False)``;
- eigenvalues: ``κᵢ · accuracy(m, gram_factors=False)`` to first order (the cyclic products use
  no triangular factor, so ``g = 1``), ``κᵢ`` the condition number of
  eigenvalue ``i`` of the small problem actually solved (:func:`eigen_conditions`).
  Eigenvalues below :func:`eigen_noise_floor` ``= sqrt(accuracy(m, gram_factors=False) · magnitude(m))``
  may be rounding artefacts of a zero, possibly defective, part of the spectrum (the
  zero eigenvalues of a rank-deficient product) and are not covered.

A result *loses precision* when its bound exceeds :func:`warn_rtol` ``= u^(1/3)`` times
its scale (6.1e-6 in float64, 4.9e-3 in float32; the scale is the largest singular value,
the norm, the largest eigenvalue magnitude): fewer than two thirds of the dtype's digits are
guaranteed. The bound is a worst case and usually pessimistic by orders of magnitude, so
the threshold leaves room for it (for eigenvalues: any eigenvalue above the noise
floor, relative to the largest magnitude; a spectrum entirely below the floor, as of a
nilpotent map, is reported without a warning). A result of exactly zero from a product route
(an exactly zero small core: a structural zero) is exact and does not warn. The routines then emit a
:class:`~circuitalg.errors.PrecisionWarning` that states the bound. This happens when
factors cancel (``‖A B‖ << ‖A‖ ‖B‖``) or eigenvectors are nearly parallel; ordinary
weights are orders of magnitude away from it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from functools import partial, singledispatch

import numpy as np
import scipy.linalg as sla

from circuitalg import runtime
from circuitalg.errors import InvalidArgumentError, PrecisionWarning
from circuitalg.linalg.factors import (
    GRAM_BLOCK_ROWS,
    Gram,
    Side,
    gram_blocks,
    gram_error_bound,
    gram_gamma,
    leaf_factor,
    leaf_gram,
    once,
    tie_deviation,
)
from circuitalg.maps.nodes import (
    Dense,
    Diagonal,
    Identity,
    Kron,
    LinearMap,
    Product,
    Scaled,
    Sum,
    Transpose,
    label,
    require_map,
)
from circuitalg.runtime import Runtime

__all__ = [
    "accuracy",
    "magnitude",
    "gram_penalty",
    "unit_roundoff",
    "eigen_conditions",
    "eigen_conditions_many",
    "eigen_noise_floor",
    "warn_rtol",
    "warn_if_imprecise",
    "warn_summary",
    "collect_precision_warnings",
    "outside_stacklevel",
    "tag_warning",
    "leaf_magnitudes",
    "factor_singular_values",
    "top_eigenvalue_bound",
    "error_bound",
    "eigenvalue_error",
    "gram_norm2_bound",
    "norm2_from_gram",
    "stacked_norm2_bounds",
    "norm2_bound",
]


def unit_roundoff(dtype: np.dtype) -> float:
    """Machine epsilon of a floating dtype (float64 for anything else)."""
    dt = np.dtype(dtype)
    return float(np.finfo(dt if dt.kind == "f" else np.float64).eps)


@singledispatch
def magnitude(m: LinearMap) -> float:
    """A bound on ``‖m‖₂`` that ignores cancellation (so ``magnitude(m) >= ‖m‖₂``).

    Leaves contribute their spectral norm (held by the leaf; the Frobenius norm for square leaves
    above 1024 or tall/wide ones with both sides above 2048), identities 1, diagonals
    their largest absolute entry; products and Kronecker products multiply, sums add.
    """
    raise InvalidArgumentError(f"magnitude: unknown map node {type(m).__name__}; register its rules first.")


@magnitude.register
def _(m: Dense) -> float:
    cache = m.cache
    if cache.norm2 is None:
        cache.norm2 = _leaf_norm2(m, runtime.current())
    return cache.norm2


@magnitude.register
def _(m: Identity) -> float:
    return 1.0


@magnitude.register
def _(m: Diagonal) -> float:
    return float(np.max(np.abs(m.values))) if m.values.size else 0.0


@magnitude.register
def _(m: Scaled) -> float:
    return abs(float(m.scalar)) * magnitude(m.inner)


@magnitude.register
def _(m: Transpose) -> float:
    return magnitude(m.inner)


@magnitude.register(Product)
@magnitude.register(Kron)
def _(m: Product | Kron) -> float:
    return math.prod(magnitude(f) for f in m.factors)


@magnitude.register
def _(m: Sum) -> float:
    return sum(magnitude(t) for t in m.terms)


def _float32_gram_side(m: Dense) -> Side | None:
    """The side whose float32 Gram matrix bounds ``‖m‖₂`` in :func:`_leaf_norm2` (a float32 leaf,
    tall or wide with its short side up to 2048), or None for the other routes."""
    side = Side.tall(m)
    if m.array.dtype != np.float32 or side is None or min(m.shape) > 2048:
        return None
    return side


def leaf_magnitudes(leaves: Iterable[Dense], rt: Runtime | None = None) -> list[float]:
    """:func:`magnitude` of each leaf (held by the leaf), many at once, the same values as one by one.

    Leaves that take the float32 Gram route (:func:`_float32_gram_side`) with at most
    :data:`~circuitalg.linalg.factors.GRAM_BLOCK_ROWS` rows on that side (one Gram block) are stacked
    by shape: their Gram matrices come from batched products and their largest eigenvalues from
    batched ``eigvalsh``, a chunk per thread of ``rt`` (numpy releases the GIL), each leaf computed
    as one leaf alone is (:func:`_one_block_norm2s`). Longer ones (vocabulary-sized) have their
    Gram matrices formed one by one (:func:`~circuitalg.linalg.factors.leaf_gram`, held by the leaf)
    and the bounds on their largest eigenvalues (:func:`top_eigenvalue_bound`) found side by side
    in threads. The other leaves go one by one."""
    rt = rt or runtime.current()
    leaves = list(leaves)
    groups: dict[tuple[tuple[int, int], Side], list[Dense]] = {}
    long: list[tuple[Dense, Gram]] = []
    seen: set[int] = set()
    for leaf in leaves:
        if id(leaf) in seen or leaf.cache.norm2 is not None:
            continue
        seen.add(id(leaf))
        side = _float32_gram_side(leaf)
        if side is None:
            magnitude(leaf)
        elif max(leaf.shape) > GRAM_BLOCK_ROWS:
            long.append((leaf, leaf_gram(leaf, side, rt=rt)))
        else:
            groups.setdefault((leaf.shape, side), []).append(leaf)
    bounds = rt.map(partial(_gram_norm2s, [g for _, g in long], rt), len(long))
    for (leaf, _), bound in zip(long, (b for part in bounds for b in part)):
        _keep_norm2(leaf, bound)
    for (_shape, side), group in groups.items():
        M = np.stack([side.of(leaf) for leaf in group])  # (g, rows, d)
        parts = rt.map(partial(_one_block_chunk, M, rt), len(group))
        for leaf, bound in zip(group, (b for part in parts for b in part)):
            _keep_norm2(leaf, bound)
    return [magnitude(leaf) for leaf in leaves]




def _keep_norm2(leaf: Dense, bound: float) -> None:
    """Hold ``bound`` as the leaf's norm, or (an overflowed float32 Gram matrix) take the factor route."""
    if math.isfinite(bound):
        leaf.cache.norm2 = bound
    else:
        magnitude(leaf)


def _gram_norm2s(grams: list[Gram], rt: Runtime, lo: int, hi: int) -> list[float]:
    return [norm2_from_gram(g, rt) for g in grams[lo:hi]]


def _one_block_chunk(M: np.ndarray, rt: Runtime, lo: int, hi: int) -> list[float]:
    return list(_one_block_norm2s(M[lo:hi], rt))


def _one_block_norm2s(M: np.ndarray, rt: Runtime) -> np.ndarray:
    """:func:`norm2_from_gram`'s bound for each float32 ``M_i`` of a ``(g, rows, d)`` stack with
    ``rows <= GRAM_BLOCK_ROWS`` (the one block of :func:`~circuitalg.linalg.factors.gram_blocks`, the
    same rounding bound), from batched products and eigensolves on one BLAS thread; ``inf`` where the
    float32 Gram matrix overflows. A stack of one is a leaf alone: each item is computed by the same
    code whatever else is in the stack."""
    g, rows, d = M.shape
    with rt.lapack(1, 1), np.errstate(over="ignore", invalid="ignore"):
        G = np.matmul(M.transpose(0, 2, 1), M).astype(np.float64)
    finite = np.isfinite(G).all(axis=(1, 2))
    lam = np.full(g, np.inf)
    if finite.any():
        if d < 256:
            with rt.lapack(1, 1):
                lam[finite] = np.linalg.eigvalsh(G[finite])[:, -1]
        else:
            lam[finite] = [top_eigenvalue_bound(x, rt) for x in G[finite]]
    gamma = gram_gamma(rows, GRAM_BLOCK_ROWS, np.float32, False)  # gram_blocks' (one block)
    with np.errstate(over="ignore", invalid="ignore"):
        traces = np.trace(G, axis1=1, axis2=2)
    return np.array([norm2_bound(float(l), d, gram_error_bound(float(tr), gamma)) for l, tr in zip(lam, traces)])


def _leaf_norm2(m: Dense, rt: Runtime) -> float:
    """``‖A‖₂`` of a leaf (slightly inflated against rounding), a pure function of the array. A tall
    or wide leaf: from its triangular factor (:func:`_factor_norm2`), except a float32 leaf, whose
    norm comes from a float32 Gram matrix at half the cost (:func:`norm2_from_gram`: eigenvalues
    need no factor; one block stacked as :func:`leaf_magnitudes` stacks it, or the leaf's kept Gram
    matrix), unless that overflows. A square leaf up to 1024: its SVD. Otherwise the Frobenius
    norm, which bounds it."""
    a = m.array
    n, k = a.shape
    side = Side.tall(m)
    if side is not None and min(n, k) <= 2048:
        if _float32_gram_side(m) is not None:
            if max(n, k) > GRAM_BLOCK_ROWS:
                bound = norm2_from_gram(leaf_gram(m, side, rt=rt), rt)
            else:
                bound = float(_one_block_norm2s(np.stack([side.of(m)]), rt)[0])
            if math.isfinite(bound):  # else the float32 Gram matrix overflowed (entries above ~1e19)
                return bound
        return _inflated(float(factor_singular_values(m, side, rt)[0]), a)
    if n == k and n <= 1024:
        with rt.lapack(n, k):
            sv = sla.svdvals(np.asarray(a, dtype=np.float64), check_finite=False)
        return _inflated(float(sv[0]), a)
    return math.sqrt(float(np.einsum("ij,ij->", a, a, dtype=np.float64)))


def _inflated(norm: float, a: np.ndarray) -> float:
    return norm * (1.0 + 16 * max(a.shape) * unit_roundoff(a.dtype))


def factor_singular_values(m: Dense, side: Side, rt: Runtime | None = None) -> np.ndarray:
    """The singular values of the leaf's triangular factor on ``side``
    (:func:`~circuitalg.linalg.factors.gram_factor`; those of the leaf), descending, in float64;
    held by the leaf."""
    rt = rt or runtime.current()

    def compute() -> np.ndarray:
        R = np.asarray(leaf_factor(m, side, rt).R, dtype=np.float64)
        with rt.lapack(*R.shape):
            lam = np.linalg.eigvalsh(R.T @ R)[::-1]  # cheaper than the SVD of R
            if lam[-1] > 1e-8 * lam[0]:  # the smallest is exact to ~eps * lam[0]: to 1e-8 relative at worst
                return np.sqrt(lam)
            return sla.svdvals(R, check_finite=False)  # (nearly) singular, or centred: relative accuracy

    return once(m.cache.factor_values, side, compute)


def gram_norm2_bound(M: np.ndarray, rows: int = GRAM_BLOCK_ROWS) -> float:
    """An upper bound on ``‖M‖₂`` for a tall ``M`` (``n x d``), from its Gram matrix.

    The Gram matrix is formed in ``M``'s dtype a block of ``b = rows`` rows at a time (one
    BLAS-3 pass, no float64 copy of ``M``) and the blocks are summed in float64
    (:func:`~circuitalg.linalg.factors.gram_blocks`). Each block is
    exact to ``γ_b |M_b|ᵀ|M_b|`` entrywise (``γ_b = b u / (1 - b u)``, ``u`` the unit roundoff of
    the dtype, any summation order), so the computed ``Ĝ`` satisfies
    ``‖Ĝ - MᵀM‖₂ <= (γ_b + γ'_B) ‖M‖_F²`` (``γ'_B`` float64's, over the ``B`` blocks), and
    ``‖M‖_F² <= tr(Ĝ) / (1 - γ_b - γ'_B)``. The bound is ``sqrt(λmax(Ĝ)(1 + 8 d u₆₄) + err)``:
    a few percent above ``‖M‖₂`` for float32 weights at vocabulary size (a Gaussian
    ``50257 x 768``: 7%), never below it; ``inf`` if the Gram matrix overflows the dtype.
    """
    return norm2_from_gram(gram_blocks(M, rows))


def norm2_from_gram(g: Gram, rt: Runtime | None = None) -> float:
    """The bound of :func:`gram_norm2_bound` from a computed Gram matrix and its rounding."""
    if not math.isfinite(g.err2):
        return math.inf
    return norm2_bound(top_eigenvalue_bound(g.G, rt), g.G.shape[0], g.err2)


def stacked_norm2_bounds(A: np.ndarray, rt: Runtime | None = None) -> np.ndarray:
    """Upper bounds on ``‖A_i‖₂`` for a ``(g, n, d)`` stack, in float64: the largest eigenvalue of
    each Gram matrix of the short side (batched), inflated as :func:`gram_norm2_bound` inflates it
    (``γ`` of the long side's sums)."""
    A = np.asarray(A, dtype=np.float64)
    g, n, d = A.shape
    if g == 0:
        return np.zeros(0)
    short, long_ = min(n, d), max(n, d)
    if short == 0:
        return np.zeros(g)
    with (rt or runtime.current()).lapack(short, short):
        G = np.matmul(A.swapaxes(1, 2), A) if n >= d else np.matmul(A, A.swapaxes(1, 2))
        lam = np.linalg.eigvalsh(G)[:, -1]
    gamma = gram_gamma(long_, long_, np.float64, True)
    return np.array([norm2_bound(float(l), short, gram_error_bound(float(tr), gamma))
                     for l, tr in zip(lam, np.trace(G, axis1=1, axis2=2))])


#: Relative tolerance of the Lanczos estimate in :func:`top_eigenvalue_bound`; the certified bound
#: is the estimate raised by twice this.
LANCZOS_RTOL = 1e-3


def top_eigenvalue_bound(G: np.ndarray, rt: Runtime | None = None) -> float:
    """An upper bound on the largest eigenvalue of a symmetric ``d x d`` float64 ``G`` (its lower
    triangle), on one BLAS thread (safe in :meth:`Runtime.map <circuitalg.runtime.Runtime.map>`).

    For ``d >= 256``: a Lanczos estimate ``θ <= λmax`` (ARPACK, relative tolerance
    :data:`LANCZOS_RTOL`, a fixed start vector), raised to ``μ = θ (1 + 2 LANCZOS_RTOL)`` and
    *certified*: the Cholesky factorisation of ``fl((μ - c) I - G)`` succeeds only if
    ``λmax <= μ``, with ``c = γ'(d μ + |tr G|) + u (2μ + max |G_ii|)`` covering the factorisation's
    backward error (``R̂ᵀR̂ = A + ΔA``, ``‖ΔA‖₂ <= γ_{d+1} ‖R̂‖_F² <= γ' tr(A)``, ``γ' =
    γ_{d+1} / (1 - γ_{d+1})``) and the rounding of the diagonal. Cheaper than the largest
    eigenvalue by bisection at vocabulary-leaf sizes, and at most 0.2% above ``λmax``. If the estimate or the
    certificate fails: the largest eigenvalue from LAPACK, within ``8 d u`` relative. Smaller
    ``d``: ``eigvalsh``'s largest value."""
    d = G.shape[0]
    if d == 0:
        return 0.0
    with (rt or runtime.current()).lapack(1, 1):  # one BLAS thread: safe in split threads (OpenBLAS's own stalled here)
        if d >= 256:
            mu = _certified_top_eigenvalue(G)
            if mu is not None:
                return mu
            lam = float(sla.eigh(G, eigvals_only=True, subset_by_index=[d - 1, d - 1], driver="evx",
                                 check_finite=False)[0])
        else:
            lam = float(np.linalg.eigvalsh(G)[-1])
    return lam


def _certified_top_eigenvalue(G: np.ndarray) -> float | None:
    """:func:`top_eigenvalue_bound`'s certified ``μ``, or None when the estimate or the certificate fails."""
    from scipy.sparse.linalg import ArpackError, eigsh

    d = G.shape[0]
    v0 = np.random.default_rng(0).standard_normal(d)  # a fixed start: reproducible
    try:
        theta = float(eigsh(G, k=1, which="LA", tol=LANCZOS_RTOL, v0=v0, return_eigenvectors=False)[0])
    except (ArpackError, ValueError):
        return None
    if not (math.isfinite(theta) and theta > 0):
        return None
    mu = theta * (1 + 2 * LANCZOS_RTOL)
    u = unit_roundoff(np.float64) / 2
    gamma = (d + 1) * u / (1 - (d + 1) * u)
    diag = np.diag(G)
    c = 1.01 * (gamma / (1 - gamma) * (d * mu + abs(float(diag.sum()))) + u * (2 * mu + float(np.abs(diag).max())))
    A = -np.tril(G)
    A[np.diag_indices(d)] += mu - c
    _, info = sla.lapack.dpotrf(A.T, lower=0)  # Aᵀ's upper triangle is A's lower (Fortran order: no copy)
    return mu if info == 0 else None


def norm2_bound(lam: float, d: int, err2: float) -> float:
    """``sqrt(λmax(Ĝ) (1 + 8 d u₆₄) + err2)`` >= ‖M‖₂ for ``‖Ĝ - MᵀM‖₂ <= err2`` (``λmax`` of a
    ``d x d`` Gram matrix computed in float64, its own rounding covered by the factor)."""
    return math.sqrt(max(lam, 0.0) * (1 + 8 * d * unit_roundoff(np.float64) / 2) + err2)


def gram_penalty(m: LinearMap) -> float:
    """The largest condition number of a leaf of ``m`` whose triangular factor comes from its Gram
    matrix (at least 1): every Dense leaf with a tall side counts, factored now if it was not (the
    singular-value routes factor it), so the penalty does not depend on what was computed before."""
    if isinstance(m, Dense):
        return _leaf_penalty(m, runtime.current())
    return max((gram_penalty(c) for c in m.children), default=1.0)


def _leaf_penalty(m: Dense, rt: Runtime) -> float:
    """The condition number of the leaf's Gram-Cholesky factor (with an exactly null ones direction
    left out when centred), or 1 for a square leaf or one factored by QR."""
    side = Side.tall(m)
    if side is None:
        return 1.0
    method = leaf_factor(m, side, rt).method
    if not method.startswith("gram-cholesky"):
        return 1.0
    sv = factor_singular_values(m, side, rt)
    nz = sv if method == "gram-cholesky" else sv[:-1]  # centred: the ones direction is exactly null
    return max(1.0, float(sv[0] / nz[-1]) if len(nz) and nz[-1] > 0 else math.inf)


def _tree_size(m: LinearMap) -> tuple[int, int, float]:
    """(number of leaves, largest dimension, summed relative deviation of tied leaves) of the tree."""
    kids = m.children
    if not kids:
        return 1, max(m.shape), tie_deviation(m) if isinstance(m, Dense) else 0.0
    n, d, t = 0, max(m.shape), 0.0
    for c in kids:
        cn, cd, ct = _tree_size(c)
        n, d, t = n + cn, max(d, cd), t + ct
    return n, d, t


def accuracy(m: LinearMap, *, gram_factors: bool = True) -> float:
    """A-priori bound on the 2-norm error of circuitalg's evaluation of ``m``.

    Every singular value returned by :func:`~circuitalg.linalg.singular_values` or
    :func:`~circuitalg.linalg.svd` is within ``accuracy(m)`` of the exact one (for the
    stored arrays). See the module docstring for the formula and the derived bounds
    for norms, traces and eigenvalues. A pure function of ``m``: one pass over the tree, the leaves'
    norms, factors and ties computed once and held by the leaves.

    Parameters
    ----------
    m : LinearMap
        The map.
    gram_factors : bool
        Include the leaves' Gram-factor penalty (:func:`gram_penalty`; every leaf with a tall side
        is factored for it), which the singular-value, SVD and norm routes need. ``False``: the
        bound of the routes that use no triangular factor (eigenvalues and traces, from cyclic
        products of the leaves), without the penalty and without factoring anything.
    """
    require_map(m, "accuracy")
    n_leaves, d_max, tied = _tree_size(m)
    penalty = gram_penalty(m) if gram_factors else 1.0
    return error_bound(n_leaves, d_max, magnitude(m), m.dtype, penalty, tied)


def error_bound(n_leaves: int, d_max: int, magnitude: float, dtype: np.dtype, gram_penalty: float = 1.0,
                tied: float = 0.0) -> float:
    """The formula of :func:`accuracy` for a tree of ``n_leaves`` leaves whose largest dimension is
    ``d_max``: ``(4 (n_leaves + 1) sqrt(d_max) · g · u + t) · magnitude`` (``u`` of ``dtype``, ``g``
    the Gram-factor penalty, ``t`` the tied leaves' relative deviation). Also used where the tree
    is not a map (:func:`circuitalg.streaming.stream_full_ov`)."""
    rounding = 4.0 * (n_leaves + 1) * math.sqrt(d_max) * gram_penalty * unit_roundoff(dtype)
    return (rounding + tied) * magnitude


def eigenvalue_error(vals: np.ndarray, cond: np.ndarray, acc: float, magnitude: float) -> float:
    """The a-priori bound ``max κᵢ · acc`` over the eigenvalues above the noise floor
    ``sqrt(acc · magnitude)`` (see the module docstring; ``nan`` conditions, of the iterative route,
    count as 0), or 0 when none is above it."""
    above = np.abs(vals) > math.sqrt(acc * magnitude)
    if not above.any():
        return 0.0
    return float(np.max(np.where(np.isnan(cond[above]), 0.0, cond[above]))) * acc


def eigen_conditions(a: np.ndarray, rt: Runtime | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the square array ``a`` and their condition numbers
    ``κᵢ = 1 / |yᵢᴴ xᵢ|`` (unit left and right eigenvectors; ``inf`` for a defective
    eigenvalue): to first order a perturbation ``E`` moves ``λᵢ`` by at most ``κᵢ ‖E‖₂``."""
    if a.shape[0] == 0:
        return np.zeros(0, dtype=complex), np.zeros(0)
    with (rt or runtime.current()).lapack(*a.shape):
        w, vl, vr = sla.eig(a, left=True, right=True, check_finite=False)
    s = np.abs(np.einsum("ij,ij->j", vl.conj(), vr))
    with np.errstate(divide="ignore"):
        kappa = np.where(s > 0, 1.0 / np.maximum(s, 1e-300), np.inf)
    return w, kappa


def eigen_conditions_many(stack: np.ndarray, rt: Runtime | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`eigen_conditions` of each matrix of a ``(g, r, r)`` stack, through numpy's batched
    LAPACK calls (which release the GIL, so chunks can run in threads): the right eigenvectors
    ``X`` (unit columns) and ``Y = X⁻¹``, whose rows are the left eigenvectors scaled to
    ``yᵢᴴ xᵢ = 1``, so ``κᵢ = ‖xᵢ‖ ‖yᵢ‖ / |yᵢᴴ xᵢ| = ‖yᵢ‖``. A stack with a singular ``X`` (a
    defective eigenvalue) is done matrix by matrix with :func:`eigen_conditions`."""
    rt = rt or runtime.current()
    if stack.shape[0] == 0:
        return []
    if stack.shape[1] == 0:
        return [eigen_conditions(a, rt) for a in stack]
    try:
        with rt.lapack(*stack.shape[1:]):
            w, X = np.linalg.eig(stack)
            Y = np.linalg.inv(X)
    except np.linalg.LinAlgError:
        return [eigen_conditions(a, rt) for a in stack]
    kappa = np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=2)
    if not np.all(np.isfinite(kappa)):
        return [eigen_conditions(a, rt) for a in stack]
    return list(zip(w, kappa))


def eigen_noise_floor(m: LinearMap, acc: float | None = None) -> float:
    """``sqrt(accuracy(m, gram_factors=False) · magnitude(m))``: eigenvalues below it may be rounding
    artefacts of a zero (possibly defective) part of the spectrum. Pass ``acc`` when that
    bound is already known."""
    return math.sqrt((accuracy(m, gram_factors=False) if acc is None else acc) * magnitude(m))


def warn_rtol(dtype: np.dtype) -> float:
    """The relative bound above which results warn: ``u^(1/3)`` (6.1e-6 float64, 4.9e-3 float32)."""
    return unit_roundoff(dtype) ** (1.0 / 3.0)


def outside_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made by this function's caller that names the first
    frame outside the circuitalg package: warnings point at the user's line, however many of
    circuitalg's own calls (a method, ``eigenvalues_many``, the report) lie between. Frames of
    :mod:`contextlib` (the wrappers of circuitalg's context-manager decorators) are skipped too."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    skip = os.path.abspath(contextlib.__file__)
    frame, level = sys._getframe(2), 2  # stacklevel 2: the warning caller's caller
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not (name.startswith(root) or name == skip):
            break
        frame, level = frame.f_back, level + 1
    return level


def tag_warning(w: PrecisionWarning, **facts: object) -> PrecisionWarning:
    """``w`` with attributes stating what it is about (read by :func:`collect_precision_warnings`'
    callers to summarise many warnings): ``what`` (``"eigenvalues"``, ``"singular_values"``, ...),
    ``subject`` (the map's label, or the family of maps), ``count`` and ``total`` (results over the
    threshold, results checked), ``relative`` (the largest bound relative to its scale)."""
    for key, value in facts.items():
        setattr(w, key, value)
    return w




def warn_summary(what: str, subject: str, relative: np.ndarray, dtypes: Sequence[np.dtype]) -> None:
    """One :class:`PrecisionWarning` for a family of results (``subject``, e.g. ``"heads' full OV
    circuits"``) whose bounds relative to their scales are ``relative``, computed in ``dtypes`` (one
    of each per result): how many exceed their dtype's :func:`warn_rtol` and the largest; nothing
    when none does. Points at the first calling line outside circuitalg."""
    rel = np.asarray(relative, dtype=np.float64)
    names = sorted({np.dtype(d).name for d in dtypes})
    tol = np.array([warn_rtol(d) for d in dtypes])
    over = rel > tol
    n = int(over.sum())
    if n == 0:
        return
    top = float(rel[over].max())
    limit = (f"{float(tol[0]):.2g} ({names[0]}: fewer than two thirds of the digits guaranteed)" if len(names) == 1
             else "their dtypes' u^(1/3) (fewer than two thirds of the digits guaranteed)")
    warnings.warn(
        tag_warning(PrecisionWarning(
            f"{what} of {n} of {len(rel)} {subject} carry a-priori relative error bounds above {limit}, up to "
            f"{top:.2g}; the bounds are worst cases, usually pessimistic by orders of magnitude (see "
            "circuitalg.linalg.accuracy)."
        ), what=what, subject=subject, count=n, total=len(rel), relative=top),
        stacklevel=outside_stacklevel(),
    )


@contextlib.contextmanager
def collect_precision_warnings() -> Iterator[list[PrecisionWarning]]:
    """Collect the :class:`PrecisionWarning` s raised inside the block into the list it yields
    (each carries ``what``, ``subject``, ``count``, ``total`` and ``relative``, see
    :func:`warn_summary`) instead of showing them; other warnings are shown as usual when the
    block ends. For callers that summarise many warnings in one (the report, per stage)."""
    caught: list[PrecisionWarning] = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", PrecisionWarning)
        yield caught
    for r in rec:
        if isinstance(r.message, PrecisionWarning):
            caught.append(r.message)
        else:
            warnings.warn_explicit(r.message, r.category, r.filename, r.lineno, source=r.source)


def warn_if_imprecise(m: LinearMap, what: str, bound: float, scale: float, *, zero_is_exact: bool = True) -> None:
    """Emit :class:`PrecisionWarning` if ``bound > warn_rtol(m.dtype) * |scale|``, attributed to
    the first calling line outside circuitalg.

    A result of exactly ``0.0`` does not warn when ``zero_is_exact`` (the default): the
    product routes compute it from an exactly zero small core, which is how structural zeros
    (orthogonal supports, zero factors) come out, so no digit was lost; its absolute error is
    still at most ``bound``. Routes that clamp a cancelling sum at zero (Gram-trace norms)
    pass ``zero_is_exact=False``.
    """
    u = unit_roundoff(m.dtype)
    if scale == 0.0 and zero_is_exact:
        return
    if not (bound > warn_rtol(m.dtype) * abs(scale)) or bound == 0.0:
        return
    rel = bound / abs(scale) if scale else math.inf
    warnings.warn(
        tag_warning(PrecisionWarning(
            f"{what} of {label(m)} {m.shape} may be inaccurate: the error bound {bound:.3g} is "
            f"{'larger than' if rel >= 1 else f'{rel:.2g} of'} the result's scale {abs(scale):.3g} "
            f"({np.dtype(m.dtype).name}, epsilon {u:.2g}). The factors cancel or the eigenvectors "
            "are nearly parallel; evaluate in float64, rescale the factors, or treat values below "
            "the bound as zero (see circuitalg.linalg.accuracy)."
        ), what=what, subject=label(m), count=1, total=1, relative=rel),
        stacklevel=outside_stacklevel(),
    )
