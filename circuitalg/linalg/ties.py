"""Tied unembeddings: recognising ``W_U = W_Eᵀ · diag(g) · P`` in the stored arrays.

Most small language models tie their embeddings (GPT-2, SmolLM2, Gemma): the checkpoint's
unembedding is the embedding's transpose. Folding the final norm into it scales its
``d_model`` columns by the norm's weight ``g`` and, for LayerNorm, centres its rows
(``P = I - 11ᵀ/d``). The stored ``W_U`` (``n x d``) is then, up to rounding, ``Eᵀ M`` with
``E = W_E`` (``d x n``) and ``M = diag(g) P`` (or ``diag(g)``): so ``W_E W_U = G M`` and
``W_Uᵀ W_U = Mᵀ G M`` follow from ``W_E``'s Gram matrix ``G = E Eᵀ`` in ``O(d³)``, instead of
two more passes over the vocabulary (:mod:`circuitalg.linalg.factors` uses them).

:func:`screen_tied_form` fits ``g`` on a sample of rows and rejects untied weights there, at
negligible cost. :func:`fit_tied_form` then takes one exact least-squares step from it with ``G``
and one pass over the arrays, which also bounds the *deviation* ``‖W_U - Eᵀ M‖_F`` over every
entry in float64. The form is accepted only when the deviation is at most
:data:`TIE_RTOL` ``· u · ‖W_U‖_F`` (``u`` the unit roundoff of ``W_U``'s dtype): folding in that
dtype leaves about ``0.5 u ‖W_U‖_F``. Results derived through the form carry the deviation in
their error bounds (:class:`~circuitalg.linalg.factors.Gram`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from circuitalg import runtime
from circuitalg.runtime import Runtime

__all__ = ["TIE_RTOL", "TiedForm", "fit_tied_form", "screen_tied_form"]

#: Largest accepted deviation ``‖W_U - Eᵀ M‖_F``, in units of ``u · ‖W_U‖_F``.
TIE_RTOL: float = 16.0

_SAMPLE_ROWS = 256
_BLOCK_ROWS = 256


@dataclass(frozen=True, eq=False)
class TiedForm:
    """``U ≈ Eᵀ diag(gains) P`` (``P = I - 11ᵀ/d`` when ``centred``, else ``I``), to within
    ``deviation`` in the Frobenius norm (an upper bound, measured over every entry);
    ``norm_fro`` is ``‖U‖_F`` (an upper bound, within rounding of its sums)."""

    gains: np.ndarray  # (d,) float64
    centred: bool
    deviation: float = 0.0
    norm_fro: float = 0.0
    norm_fro_low: float = 0.0  # a lower bound on ‖U‖_F

    @property
    def relative_deviation_2(self) -> float:
        """A bound on ``‖U - Eᵀ M‖₂ / ‖U‖₂``: ``deviation / ‖U‖_F · sqrt(min(n, d))`` (since
        ``‖U‖_F <= sqrt(rank) ‖U‖₂``); ``inf`` for a zero ``U`` with a nonzero deviation."""
        if self.deviation == 0.0:
            return 0.0
        if not self.norm_fro_low > 0:
            return math.inf
        return self.deviation / self.norm_fro_low * math.sqrt(len(self.gains))

    def right(self) -> np.ndarray:
        """``M = diag(gains) P`` as a dense ``d x d`` float64 array."""
        M = np.diag(self.gains)
        if self.centred:
            M -= self.gains[:, None] / len(self.gains)
        return M

    def times_right(self, A: np.ndarray) -> np.ndarray:
        """``A M`` in ``O(size)`` (a new float64 array): the columns scaled by the gains, then each
        row centred; for rows ``A`` of ``Eᵀ`` the rows of ``Eᵀ M``."""
        X = np.asarray(A, dtype=np.float64) * self.gains
        if self.centred:
            X -= X.mean(axis=1, keepdims=True)
        return X

    def sandwich(self, G: np.ndarray) -> np.ndarray:
        """``Mᵀ G M`` in ``O(d²)`` (symmetrised): ``P (D G D) P`` with ``D = diag(gains)``."""
        X = self.times_right(G)  # G M
        X = self.times_right(X.T)  # (G M)ᵀ M = Mᵀ G M for a symmetric G
        return (X + X.T) / 2


def _adjoint(R: np.ndarray, Et: np.ndarray, centred: bool) -> np.ndarray:
    """``f*(R)`` for ``f(g) = Eᵀ diag(g) P``: ``⟨E_j, (R P)_j⟩`` for each column ``j`` (a block)."""
    if centred:
        R = R - R.mean(axis=1, keepdims=True)
    return np.einsum("vj,vj->j", R, Et)


def _normal_matrix(G: np.ndarray, centred: bool) -> np.ndarray:
    """``f*f`` as a ``d x d`` matrix: ``diag(G) - G/d`` (centred) or ``diag(G)``."""
    J = np.diag(np.diag(G).copy())
    return J - G / G.shape[0] if centred else J


def _solve(J: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
    """``J⁻¹ rhs`` (a diagonal ``J`` divides), or None when ``J`` is singular."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if not np.any(J - np.diag(np.diag(J))):
            x = rhs / np.diag(J)
        else:
            try:
                x = np.linalg.solve(J, rhs)
            except np.linalg.LinAlgError:
                return None
    return x if np.all(np.isfinite(x)) else None


def _sample_gains(A: np.ndarray, rhs: np.ndarray, centred: bool, rt: Runtime) -> np.ndarray | None:
    """``J⁻¹ rhs`` for the sample's normal matrix ``J = D - AᵀA/d`` (centred; ``D`` the diagonal of
    ``AᵀA``, ``A`` the ``s x d`` sample of ``Eᵀ``) or ``J = D``, or None when ``J`` is singular.
    Centred, by Woodbury through the ``s x s`` matrix ``K = d I - A D⁻¹ Aᵀ`` (positive definite
    exactly when ``J`` is): ``J⁻¹ = D⁻¹ + D⁻¹ Aᵀ K⁻¹ A D⁻¹``, a fifth of the work of solving with
    ``J`` for ``s = 256``, ``d = 768``. A screen: the gains are verified over every entry after."""
    D = np.einsum("vj,vj->j", A, A)
    # one BLAS thread: OpenBLAS's threads on these small products occasionally stall
    with rt.lapack(*A.shape), np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x = rhs / D
        if centred and np.all(np.isfinite(x)):
            AD = A / D
            K = A.shape[1] * np.eye(A.shape[0]) - AD @ A.T
            try:
                x = x + AD.T @ sla.cho_solve(sla.cho_factor(K, check_finite=False), AD @ rhs, check_finite=False)
            except (np.linalg.LinAlgError, ValueError):
                return None
    return x if np.all(np.isfinite(x)) else None


def _unit_roundoff(a: np.ndarray) -> float:
    return float(np.finfo(a.dtype).eps) / 2


def screen_tied_form(U: np.ndarray, E: np.ndarray, rt: Runtime | None = None) -> TiedForm | None:
    """A candidate tied form of ``U`` (``n x d``) on ``E`` (``d x n``) fitted on a sample of rows,
    or None when the sample rules a tie out (a deviation above ``sqrt(u)``): a cheap screen;
    :func:`fit_tied_form` decides on every entry. ``rt``: the runtime (default
    :func:`circuitalg.runtime.current`)."""
    n, d = U.shape
    # a tie pays off only through W_E's d x d Gram matrix, so only for a vocabulary larger than d
    if E.shape != (d, n) or not 2 <= d < n or U.dtype.kind != "f" or E.dtype.kind != "f":
        return None
    rows = np.unique(np.linspace(0, n - 1, min(n, _SAMPLE_ROWS)).astype(int))
    Us, Es = np.asarray(U[rows], dtype=np.float64), np.asarray(E.T[rows], dtype=np.float64)
    u = _unit_roundoff(U)
    centred = bool(np.all(np.abs(Us.sum(axis=1)) <= 4 * d * u * np.abs(Us).sum(axis=1)))
    g = _sample_gains(Es, _adjoint(Us, Es, centred), centred, rt or runtime.current())
    if g is None:
        return None
    form = TiedForm(g, centred)
    D = form.times_right(Es) - Us
    return form if float(np.einsum("ij,ij->", D, D)) <= u * float(np.einsum("ij,ij->", Us, Us)) else None


def _low_precision_deviation(
    U: np.ndarray, Et: np.ndarray, start: TiedForm, x_fro: float, rt: Runtime
) -> tuple[float, float, float]:
    """``(bound on ‖U - f(g)‖_F, lower and upper bounds on ‖U‖_F)`` for a ``U`` stored below
    float64, in one pass in its own dtype (half the memory traffic of float64), the blocks of rows
    split between threads (:meth:`Runtime.map <circuitalg.runtime.Runtime.map>`; the blocks' sums
    are added in block order, so the bound does not depend on the split).

    The computed residual is ``R̂ = U - fl(X̂ - m̃)`` with ``X̂ = fl(Eᵀ diag(fl(g)))`` and the row
    means ``m̃`` of ``Eᵀ diag(g)`` formed in float64 (a float64 copy of each cache-sized block times
    ``g/d``) and rounded to ``U``'s dtype. To first order each entry is off by at most
    ``u (2|X| + |m| + |X - m| + |R̂|)`` (``X = Eᵀ diag(g)``, ``m`` its row means; the float64 sums'
    ``γ_d`` is far below ``u``), so ``‖R - R̂‖_F <= u (4 ‖X‖_F + ‖R̂‖_F)`` (``‖m 1ᵀ‖_F`` and
    ``‖X P‖_F`` are at most ``‖X‖_F``, which comes from ``G``); 5.05 leaves room for the second
    order. The sums of squares are formed in ``U``'s dtype per block of ``b d`` entries and bounded
    with ``γ = b d u`` (``‖R̂‖²`` divided by ``1 - γ``, ``‖U‖²`` multiplied by it)."""
    n, d = U.shape
    g = start.gains.astype(U.dtype)
    g_mean = start.gains / d

    def sums(lo: int, hi: int) -> list[tuple[float, float]]:  # (‖R̂_b‖², ‖U_b‖²) of each block
        buf = np.empty((_BLOCK_ROWS, d), dtype=U.dtype)
        wide = np.empty((_BLOCK_ROWS, d)) if start.centred else None
        out = []
        for s in range(lo * _BLOCK_ROWS, min(n, hi * _BLOCK_ROWS), _BLOCK_ROWS):
            B, Eb = U[s:s + _BLOCK_ROWS], Et[s:s + _BLOCK_ROWS]
            X = buf[:len(B)]
            np.multiply(Eb, g, out=X, casting="same_kind")
            if wide is not None:
                w = wide[:len(B)]
                w[...] = Eb
                X -= (w @ g_mean).astype(U.dtype)[:, None]
            np.subtract(B, X, out=X)
            r2_b = float(np.dot(X.ravel(), X.ravel()))  # sums of squares in U's dtype (BLAS): see gamma
            norm2_b = float(np.dot(B.ravel(), B.ravel())) if B.flags.c_contiguous else float(np.einsum("ij,ij->", B, B))
            out.append((r2_b, norm2_b))
        return out

    r2 = norm2 = 0.0
    for part in rt.map(sums, -(-n // _BLOCK_ROWS)):
        for r2_b, norm2_b in part:
            r2 += r2_b
            norm2 += norm2_b
    u = _unit_roundoff(U)
    gamma = _BLOCK_ROWS * d * u  # worst-case relative rounding of one block's sum of squares
    if not gamma < 0.5:  # pragma: no cover - blocks are far smaller than 1/u entries
        return math.inf, 0.0, math.inf
    r = math.sqrt(r2 / (1 - gamma))
    return r * (1 + u) + 5.05 * u * x_fro, math.sqrt(norm2 * (1 - gamma)), math.sqrt(norm2 / (1 - gamma))


def fit_tied_form(
    U: np.ndarray, E: np.ndarray, G: np.ndarray, G_err2: float, start: TiedForm, rt: Runtime | None = None
) -> TiedForm | None:
    """The tied form of ``U`` (``n x d``) on ``E`` (``d x n``), or None when its deviation exceeds
    :data:`TIE_RTOL` ``· u · ‖U‖_F``; ``G`` approximates ``E Eᵀ`` to ``‖G - E Eᵀ‖₂ <= G_err2``,
    ``start`` is :func:`screen_tied_form`'s candidate, ``rt`` the runtime that splits the pass
    (default :func:`circuitalg.runtime.current`).

    ``U`` below float64 (float32 checkpoints): the sample's gains are already far more accurate
    than ``U`` (they average its rounding over the sample), so one pass in ``U``'s dtype bounds the
    deviation of ``start`` itself (:func:`_low_precision_deviation`). Float64 ``U``: the gains are
    linear least squares, so one Newton step from ``start`` reaches them: ``g = g₀ + J⁻¹ f*(R)``
    with the residual ``R = U - f(g₀)``, ``f(g) = Eᵀ diag(g) P`` and ``J = f*f`` (``diag(G) - G/d``,
    or ``diag(G)``). One pass over the arrays (float64, in cache-sized blocks) gives ``f*(R)`` and
    ``‖R‖_F²``; the deviation of the refined gains is then ``‖R - f(δ)‖_F² = ‖R‖_F² - 2 δ·f*(R) +
    δᵀ f*f δ`` (exact in exact arithmetic), bounded above by adding ``G``'s error times ``‖δ‖²``
    and the worst-case rounding of the ``n d``-term sums."""
    n, d = U.shape
    Et = E.T
    if U.dtype != np.float64:
        x_fro = math.sqrt(max(float(start.gains**2 @ np.diag(G)), 0.0) + G_err2 * float(start.gains @ start.gains))
        dev, norm_low, norm_high = _low_precision_deviation(U, Et, start, x_fro, rt or runtime.current())
        if not dev <= TIE_RTOL * _unit_roundoff(U) * norm_low:
            return None
        return TiedForm(start.gains, start.centred, dev, norm_high, norm_low)
    g0, centred = start.gains, start.centred
    r2 = norm2 = 0.0
    adj = np.zeros(d)
    A = np.empty((_BLOCK_ROWS, d))
    for s in range(0, n, _BLOCK_ROWS):
        B = U[s:s + _BLOCK_ROWS]
        a = A[:len(B)]
        a[...] = Et[s:s + _BLOCK_ROWS]  # a float64 copy in cache-sized blocks
        R = start.times_right(a)
        np.subtract(B, R, out=R)
        r2 += float(np.einsum("ij,ij->", R, R))
        norm2 += float(np.einsum("ij,ij->", B, B))
        adj += np.einsum("vj,vj->j", R, a)
        if centred:  # f*(R) = <E_j, (R P)_j>: the residual's rows are centred to rounding only
            adj -= (R.sum(axis=1) @ a) / d
    J = _normal_matrix(G, centred)
    delta = _solve(J, adj)
    if delta is None:
        return None
    dev2 = r2 - 2.0 * float(delta @ adj) + float(delta @ J @ delta)
    u64 = float(np.finfo(np.float64).eps) / 2
    dev2 = max(dev2, 0.0) + G_err2 * float(delta @ delta) + 2 * n * d * u64 * r2
    if not dev2 <= (TIE_RTOL * u64) ** 2 * norm2:
        return None
    norm_low = math.sqrt(norm2 * max(0.0, 1 - 2 * n * d * u64))  # the sum's worst-case rounding
    return TiedForm(g0 + delta, centred, math.sqrt(dev2), math.sqrt(norm2 / (1 - 2 * n * d * u64)), norm_low)
