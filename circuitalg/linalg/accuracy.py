"""Honest accuracy: a-priori error bounds of the numeric routines, and precision warnings.

Every number circuitalg computes from a map ``m`` is the exact answer for a nearby
matrix ``m + E``. :func:`accuracy` bounds ``‖E‖₂`` from the structure of ``m``
(never from the result), so it also bounds the error of each singular value
(Weyl): ``|σ̂ᵢ - σᵢ| <= accuracy(m)``. The bound is

``accuracy(m) = (4 (n_leaves + 1) sqrt(d_max) · g · u + t) · magnitude(m)``

with ``u`` the machine epsilon of ``m.dtype`` (2.2e-16 for float64, 1.2e-7 for
float32), ``d_max`` the largest dimension in the tree, ``g >= 1`` the largest condition
number of a leaf whose triangular factor came from its Gram matrix (at most about
:data:`~circuitalg.linalg.factors.GRAM_COND_LIMIT`; that factor has ``u · cond``
relative error), ``t`` the summed relative deviation ``‖Δ‖₂/‖W_U‖₂`` of the tied leaves
whose products come from their embedding's Gram matrix (:func:`~circuitalg.linalg.declare_tied`;
of the order of ``u``, 0 without ties) and :func:`magnitude` the
cancellation-free bound on ``‖m‖₂`` (spectral norms of leaves, multiplied through
products and Kronecker products, added through sums; a vocabulary-sized leaf's norm from its
Gram matrix, whose largest eigenvalue is certified by :func:`top_eigenvalue_bound`). The same
formula serves trees that are not maps (:func:`error_bound`: the streamed full-OV circuits of
:mod:`circuitalg.streaming`). Derived bounds:

- singular values, :func:`~circuitalg.linalg.svd` values: ``accuracy(m)`` each;
- Frobenius norm: ``sqrt(rank_bound) · accuracy(m)``;
- trace: ``rank_bound · accuracy(m)``;
- eigenvalues: ``κᵢ · accuracy(m)`` to first order, ``κᵢ`` the condition number of
  eigenvalue ``i`` of the small problem actually solved (:func:`eigen_conditions`).
  Eigenvalues below :func:`eigen_noise_floor` ``= sqrt(accuracy(m) · magnitude(m))``
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
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.linalg as sla

from circuitalg.errors import InvalidArgumentError, PrecisionWarning
from circuitalg.linalg.common import small_lapack, split_small_products
from circuitalg.linalg.factors import (
    Gram,
    gram_blocks,
    gram_err2,
    gram_factor,
    gram_gamma,
    leaf_factor_method,
    leaf_factors,
    leaf_gram,
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

__all__ = [
    "accuracy",
    "magnitude",
    "unit_roundoff",
    "eigen_conditions",
    "eigen_noise_floor",
    "warn_rtol",
    "warn_if_imprecise",
    "warn_summary",
    "collect_precision_warnings",
    "prime_leaf_norms",
    "eigen_conditions_many",
    "top_eigenvalue_bound",
    "error_bound",
    "eigenvalue_error",
    "norm2_from_gram",
    "stacked_norm2_bounds",
    "norm2_bound",
]


def unit_roundoff(dtype: np.dtype) -> float:
    """Machine epsilon of a floating dtype (float64 for anything else)."""
    dt = np.dtype(dtype)
    return float(np.finfo(dt if dt.kind == "f" else np.float64).eps)


def magnitude(m: LinearMap) -> float:
    """A bound on ``‖m‖₂`` that ignores cancellation (so ``magnitude(m) >= ‖m‖₂``).

    Leaves contribute their spectral norm (cached; the Frobenius norm for square leaves
    above 1024 or tall/wide ones with both sides above 2048), identities 1, diagonals
    their largest absolute entry; products and Kronecker products multiply, sums add.
    """
    if isinstance(m, Dense):
        cache = leaf_factors(m)
        if cache.norm2_bound is None:
            cache.norm2_bound = _leaf_norm2(m)
        return cache.norm2_bound
    if isinstance(m, Identity):
        return 1.0
    if isinstance(m, Diagonal):
        return float(np.max(np.abs(m.values))) if m.values.size else 0.0
    if isinstance(m, Scaled):
        return abs(float(m.scalar)) * magnitude(m.inner)
    if isinstance(m, Transpose):
        return magnitude(m.inner)
    if isinstance(m, (Product, Kron)):
        return math.prod(magnitude(f) for f in m.factors)
    if isinstance(m, Sum):
        return sum(magnitude(t) for t in m.terms)
    raise InvalidArgumentError(f"magnitude: unknown map node {type(m).__name__}; register its rules first.")


def _float32_gram_side(m: Dense) -> str | None:
    """The side whose float32 Gram matrix bounds ``‖m‖₂`` in :func:`_leaf_norm2` (a float32 leaf,
    tall or wide with its short side up to 2048, not yet factored), or None for the other routes."""
    n, k = m.shape
    if m.array.dtype != np.float32 or n == k or min(n, k) > 2048:
        return None
    side = "cols" if n > k else "rows"
    return side if leaf_factor_method(m, side) is None else None


def prime_leaf_norms(leaves: Sequence[Dense], max_rows: int = 4096) -> None:
    """Compute and cache :func:`magnitude` of many leaves at once. Leaves that take the float32
    Gram route (:func:`_float32_gram_side`) with at most ``max_rows`` rows on that side (one Gram
    block, as :func:`gram_norm2_bound` forms it) are stacked by shape: their Gram matrices come
    from batched products and their largest eigenvalues from batched ``eigvalsh``, a chunk per
    thread (numpy releases the GIL); longer ones (vocabulary-sized) have their Gram matrices
    formed one by one (:func:`~circuitalg.linalg.factors.leaf_gram`, kept) and bounds on their largest
    eigenvalues (:func:`top_eigenvalue_bound`) found side by side in threads. The bound is :func:`norm2_from_gram`'s, entry
    for entry. The other leaves go one by one."""
    todo: dict[tuple[tuple[int, int], str], list[Dense]] = {}
    long: list[tuple[Dense, Gram]] = []
    seen: set[int] = set()
    for leaf in leaves:
        if id(leaf) in seen or leaf_factors(leaf).norm2_bound is not None:
            continue
        seen.add(id(leaf))
        side = _float32_gram_side(leaf)
        if side is None:
            magnitude(leaf)
        elif max(leaf.shape) > max_rows:
            gram = leaf_gram(leaf, side)
            if math.isfinite(gram.err2):
                long.append((leaf, gram))
            else:  # an overflowed float32 Gram matrix: the one-by-one route takes the factor
                magnitude(leaf)
        else:
            todo.setdefault((leaf.shape, side), []).append(leaf)
    tops = split_small_products(lambda lo, hi: [top_eigenvalue_bound(g.G) for _, g in long[lo:hi]], len(long))
    for (leaf, gram), lam in zip(long, (t for part in tops for t in part)):
        leaf_factors(leaf).norm2_bound = norm2_bound(lam, gram.G.shape[0], gram.err2)
    for (_shape, side), group in todo.items():
        M = np.stack([leaf.array if side == "cols" else leaf.array.T for leaf in group])  # (g, rows, d)
        rows, d = M.shape[1:]

        def grams(lo: int, hi: int, M: np.ndarray = M) -> tuple[np.ndarray, np.ndarray]:
            with np.errstate(over="ignore", invalid="ignore"):
                G = np.matmul(M[lo:hi].transpose(0, 2, 1), M[lo:hi]).astype(np.float64)
            finite = np.isfinite(G).all(axis=(1, 2))
            lam = np.full(hi - lo, np.inf)
            if finite.any():
                lam[finite] = np.linalg.eigvalsh(G[finite])[:, -1]
            return lam, np.trace(G, axis1=1, axis2=2)

        parts = split_small_products(grams, len(group))
        lam = np.concatenate([p[0] for p in parts])
        gamma = gram_gamma(rows, 4096, np.float32, False)  # gram_blocks' (one block)
        traces = np.concatenate([p[1] for p in parts])
        for leaf, l, tr in zip(group, lam, traces):
            bound = norm2_bound(float(l), d, gram_err2(float(tr), gamma))
            if math.isfinite(bound):
                leaf_factors(leaf).norm2_bound = bound
            else:  # an overflowed float32 Gram matrix: the one-by-one route takes the factor
                magnitude(leaf)


def _leaf_norm2(m: Dense) -> float:
    """``‖A‖₂`` of a leaf (slightly inflated against rounding). A tall or wide leaf: from its
    triangular factor (:func:`~circuitalg.linalg.factors.gram_factor`, cached for the singular
    values that usually follow; records its conditioning, see :func:`_gram_penalty`), except a
    float32 leaf not yet factored, whose norm alone comes from a float32 Gram matrix at half
    the cost (:func:`gram_norm2_bound`: eigenvalues need no factor). A square leaf up to 1024:
    its SVD. Otherwise the Frobenius norm, which bounds it."""
    a = m.array
    n, k = a.shape
    if n != k and min(n, k) <= 2048:
        side = "cols" if n > k else "rows"
        if _float32_gram_side(m) is not None:
            bound = norm2_from_gram(leaf_gram(m, side))
            if math.isfinite(bound):  # else the float32 Gram matrix overflowed (entries above ~1e19)
                return bound
        return _record_factor(m, side)
    if n == k and n <= 1024:
        with small_lapack(n, k):
            sv = sla.svdvals(np.asarray(a, dtype=np.float64), check_finite=False)
        return _inflated(float(sv[0]), a)
    return math.sqrt(float(np.einsum("ij,ij->", a, a, dtype=np.float64)))


def _inflated(norm: float, a: np.ndarray) -> float:
    return norm * (1.0 + 16 * max(a.shape) * unit_roundoff(a.dtype))


def _record_factor(m: Dense, side: str) -> float:
    """The leaf's norm from the singular values of its :func:`gram_factor` (those of the leaf);
    records it if none is cached, and the factor's condition number when it came from the Gram
    matrix (it carries ``eps * cond`` relative error)."""
    R = np.asarray(gram_factor(m, side), dtype=np.float64)
    with small_lapack(*R.shape):
        lam = np.linalg.eigvalsh(R.T @ R)[::-1]  # 4x cheaper than the SVD of R at 768
        if lam[-1] > 1e-8 * lam[0]:  # the smallest is exact to ~eps * lam[0]: to 1e-8 relative at worst
            sv = np.sqrt(lam)
        else:  # (nearly) singular, or centred: the SVD of R has relative accuracy
            sv = sla.svdvals(R, check_finite=False)
    cache = leaf_factors(m)
    method = leaf_factor_method(m, side)
    if method == "gram-cholesky":
        cache.gram_cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf
    elif method == "gram-cholesky-centred":  # exact null direction (the ones vector): its complement
        nz = sv[:-1]
        cache.gram_cond = float(sv[0] / nz[-1]) if len(nz) and nz[-1] > 0 else math.inf
    if cache.norm2_bound is None:
        cache.norm2_bound = _inflated(float(sv[0]), m.array)
    return cache.norm2_bound


def gram_norm2_bound(M: np.ndarray, rows: int = 4096) -> float:
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


def norm2_from_gram(g: Gram) -> float:
    """The bound of :func:`gram_norm2_bound` from a computed Gram matrix and its rounding."""
    if not math.isfinite(g.err2):
        return math.inf
    return norm2_bound(top_eigenvalue_bound(g.G), g.G.shape[0], g.err2)


def stacked_norm2_bounds(A: np.ndarray) -> np.ndarray:
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
    with small_lapack(short, short):
        G = np.matmul(A.swapaxes(1, 2), A) if n >= d else np.matmul(A, A.swapaxes(1, 2))
        lam = np.linalg.eigvalsh(G)[:, -1]
    gamma = gram_gamma(long_, long_, np.float64, True)
    return np.array([norm2_bound(float(l), short, gram_err2(float(tr), gamma))
                     for l, tr in zip(lam, np.trace(G, axis1=1, axis2=2))])


#: Relative tolerance of the Lanczos estimate in :func:`top_eigenvalue_bound`; the certified bound
#: is the estimate raised by twice this.
LANCZOS_RTOL = 1e-3


def top_eigenvalue_bound(G: np.ndarray) -> float:
    """An upper bound on the largest eigenvalue of a symmetric ``d x d`` float64 ``G`` (its lower
    triangle), on one BLAS thread (safe in :func:`~circuitalg.linalg.common.split_small_products`).

    For ``d >= 256``: a Lanczos estimate ``θ <= λmax`` (ARPACK, relative tolerance
    :data:`LANCZOS_RTOL`, a fixed start vector), raised to ``μ = θ (1 + 2 LANCZOS_RTOL)`` and
    *certified*: the Cholesky factorisation of ``fl((μ - c) I - G)`` succeeds only if
    ``λmax <= μ``, with ``c = γ'(d μ + |tr G|) + u (2μ + max |G_ii|)`` covering the factorisation's
    backward error (``R̂ᵀR̂ = A + ΔA``, ``‖ΔA‖₂ <= γ_{d+1} ‖R̂‖_F² <= γ' tr(A)``, ``γ' =
    γ_{d+1} / (1 - γ_{d+1})``) and the rounding of the diagonal. About 3x faster than the largest
    eigenvalue by bisection at ``d = 768``, and at most 0.2% above ``λmax``. If the estimate or the
    certificate fails: the largest eigenvalue from LAPACK, within ``8 d u`` relative. Smaller
    ``d``: ``eigvalsh``'s largest value."""
    d = G.shape[0]
    if d == 0:
        return 0.0
    with small_lapack(1, 1):  # one BLAS thread: safe in split threads (OpenBLAS's threads stalled mid-sized LAPACK here)
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


def _gram_penalty(m: LinearMap) -> float:
    """The largest condition number of a leaf factored through its Gram matrix (at least 1)."""
    if isinstance(m, Dense):
        cache = leaf_factors(m)
        if cache.gram_cond is None:
            for side in ("cols", "rows"):
                if (leaf_factor_method(m, side) or "").startswith("gram-cholesky"):
                    _record_factor(m, side)  # a factor made after the leaf's norm was cached
        return max(1.0, 1.0 if cache.gram_cond is None else cache.gram_cond)
    return max((_gram_penalty(c) for c in m.children), default=1.0)


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


def accuracy(m: LinearMap) -> float:
    """A-priori bound on the 2-norm error of circuitalg's evaluation of ``m``.

    Every singular value returned by :func:`~circuitalg.linalg.singular_values` or
    :func:`~circuitalg.linalg.svd` is within ``accuracy(m)`` of the exact one (for the
    stored arrays). See the module docstring for the formula and the derived bounds
    for norms, traces and eigenvalues. Cheap: one pass over the tree, leaf norms cached.
    """
    require_map(m, "accuracy")
    n_leaves, d_max, tied = _tree_size(m)
    penalty = _gram_penalty(m)  # before magnitude(m), whose leaf norms may factor a leaf (as before)
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


def eigen_conditions(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the square array ``a`` and their condition numbers
    ``κᵢ = 1 / |yᵢᴴ xᵢ|`` (unit left and right eigenvectors; ``inf`` for a defective
    eigenvalue): to first order a perturbation ``E`` moves ``λᵢ`` by at most ``κᵢ ‖E‖₂``."""
    if a.shape[0] == 0:
        return np.zeros(0, dtype=complex), np.zeros(0)
    with small_lapack(*a.shape):
        w, vl, vr = sla.eig(a, left=True, right=True, check_finite=False)
    s = np.abs(np.einsum("ij,ij->j", vl.conj(), vr))
    with np.errstate(divide="ignore"):
        kappa = np.where(s > 0, 1.0 / np.maximum(s, 1e-300), np.inf)
    return w, kappa


def eigen_conditions_many(stack: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`eigen_conditions` of each matrix of a ``(g, r, r)`` stack, through numpy's batched
    LAPACK calls (which release the GIL, so chunks can run in threads): the right eigenvectors
    ``X`` (unit columns) and ``Y = X⁻¹``, whose rows are the left eigenvectors scaled to
    ``yᵢᴴ xᵢ = 1``, so ``κᵢ = ‖xᵢ‖ ‖yᵢ‖ / |yᵢᴴ xᵢ| = ‖yᵢ‖``. A stack with a singular ``X`` (a
    defective eigenvalue) is done matrix by matrix with :func:`eigen_conditions`."""
    if stack.shape[0] == 0:
        return []
    if stack.shape[1] == 0:
        return [eigen_conditions(a) for a in stack]
    try:
        with small_lapack(*stack.shape[1:]):
            w, X = np.linalg.eig(stack)
            Y = np.linalg.inv(X)
    except np.linalg.LinAlgError:
        return [eigen_conditions(a) for a in stack]
    kappa = np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=2)
    if not np.all(np.isfinite(kappa)):
        return [eigen_conditions(a) for a in stack]
    return list(zip(w, kappa))


def eigen_noise_floor(m: LinearMap, acc: float | None = None) -> float:
    """``sqrt(accuracy(m) · magnitude(m))``: eigenvalues below it may be rounding
    artefacts of a zero (possibly defective) part of the spectrum. Pass ``acc`` when
    ``accuracy(m)`` is already known."""
    return math.sqrt((accuracy(m) if acc is None else acc) * magnitude(m))


def warn_rtol(dtype: np.dtype) -> float:
    """The relative bound above which results warn: ``u^(1/3)`` (6.1e-6 float64, 4.9e-3 float32)."""
    return unit_roundoff(dtype) ** (1.0 / 3.0)


def _outside_stacklevel() -> int:
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


def _tagged(w: PrecisionWarning, **facts: object) -> PrecisionWarning:
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
        _tagged(PrecisionWarning(
            f"{what} of {n} of {len(rel)} {subject} carry a-priori relative error bounds above {limit}, up to "
            f"{top:.2g}; the bounds are worst cases, usually pessimistic by orders of magnitude (see "
            "circuitalg.linalg.accuracy)."
        ), what=what, subject=subject, count=n, total=len(rel), relative=top),
        stacklevel=_outside_stacklevel(),
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
        _tagged(PrecisionWarning(
            f"{what} of {label(m)} {m.shape} may be inaccurate: the error bound {bound:.3g} is "
            f"{'larger than' if rel >= 1 else f'{rel:.2g} of'} the result's scale {abs(scale):.3g} "
            f"({np.dtype(m.dtype).name}, epsilon {u:.2g}). The factors cancel or the eigenvectors "
            "are nearly parallel; evaluate in float64, rescale the factors, or treat values below "
            "the bound as zero (see circuitalg.linalg.accuracy)."
        ), what=what, subject=label(m), count=1, total=1, relative=rel),
        stacklevel=_outside_stacklevel(),
    )
