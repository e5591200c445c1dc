"""The largest entries of a map held as two thin factors, ``L @ V``, without forming it.

A vocabulary-sized map (a full OV circuit ``W_U W_OV W_E``, a QK circuit ``W_Eᵀ W_QK W_E``) is
too large to build, but its factored SVD ``U S Vᵀ`` is thin: :func:`top_entries` ranks the
entries of ``L @ V`` (``L = U S``, ``V = Vᵀ``) by scanning rows strongest first, screening each
block in float32 with a rigorous error bound and computing in float64 only the entries the
screen cannot rule out. The result is the float64 ranking exactly, with a certificate
(:class:`TopEntries`) when a row budget cuts the scan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, ShapeError, check_int
from circuitalg.runtime import Runtime

__all__ = [
    "TopEntries", "top_entries", "count_entries", "SCAN_BYTES", "SCREEN_BLOCK_BYTES", "SURVIVOR_COST", "GATHER_BYTES",
]

#: Default size of one block of rows scanned by :func:`top_entries` (64 MiB).
SCAN_BYTES = 64 << 20
#: Rows of a screened block are chosen so that the block's float32 screen takes about this
#: many bytes (it stays in cache; at most ``max_bytes``).
SCREEN_BLOCK_BYTES = 16 << 20
#: Cost of evaluating one screened-in entry (a gathered full-rank float32 dot product, then
#: float64 for the few it cannot rule out), in multiply-adds of the float32 screen; chooses the
#: screen's prefix length (the optimum is flat: p from 31 to 39 of 64 times alike).
SURVIVOR_COST = 2000.0

_Best = tuple[np.ndarray, np.ndarray, np.ndarray]  # (values, rows, columns), best first


@dataclasses.dataclass(frozen=True)
class TopEntries:
    """The entries :func:`top_entries` found, largest first, and how they were found.

    Attributes
    ----------
    rows, cols : int arrays
        Row and column of each entry.
    values : float64 array
        Each entry, ``L[i] @ V[:, j]`` in float64 (signed, also when ranked by magnitude).
    rows_scanned : int
        Rows of ``L`` whose entries are known, strongest (largest ``‖L_i‖``) first; rows of
        norm 0 count as known once reached (their entries are exactly 0).
    n_rows : int
    bound : float
        ``unscanned_bound`` when the result is not exact (then always ``> 0``); 0.0 when it is
        (callers that test ``bound == 0.0`` for exactness stay right).
    exact : bool
        Whether these are the top ``k`` entries of the whole product, ties by (row, column):
        every entry of the rows not scanned is provably *strictly* below the ``k``-th key
        (``unscanned_bound < k-th key``), or no row is left.
    unscanned_bound : float
        Every entry of the rows not scanned has magnitude at most this (Cauchy-Schwarz with
        room for rounding); 0.0 when no row is left or every row left is zero.
    unscanned_rows : int array
        The rows not scanned, ascending.
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    rows_scanned: int
    n_rows: int
    bound: float
    exact: bool
    unscanned_bound: float
    unscanned_rows: np.ndarray


def count_entries(n_rows: int, n_cols: int, *, causal: bool = False, window: int | None = None) -> int:
    """The entries :func:`top_entries` ranks: every one, or with ``causal`` those with
    ``col <= row`` (and ``row - col < window``) of a square position table."""
    if not causal:
        return n_rows * n_cols
    w = n_rows if window is None else min(window, n_rows)
    return sum(min(i + 1, w) for i in range(n_rows))


def top_entries(
    L: np.ndarray, V: np.ndarray, k: int, rt: Runtime, *, by_abs: bool = False, causal: bool = False,
    window: int | None = None, max_rows: int | None = None, max_bytes: int | None = None,
) -> TopEntries:
    """The ``k`` largest entries of ``L @ V``, without forming the product.

    Rows are taken strongest first (largest ``‖L_i‖``); the scan stops when the Cauchy-Schwarz
    bound ``|(L V)_ij| <= ‖L_i‖ max_j ‖V_j‖`` shows that no remaining row can enter the top
    ``k``. The first rows are evaluated in float64 until ``k`` entries are known. Every later
    entry is screened against the running ``k``-th value ``t`` with the bound
    ``e_ij <= P_ij + ‖L_i,tail‖ ‖V_tail,j‖``, ``P = L[:, :p] V[:p]`` (``|P_ij|`` for
    magnitudes): for ``L = U S`` of a factored SVD, the leading ``p`` singular directions carry
    most of every entry, so a prefix ``p < r`` (chosen on a sample of rows to minimise the work)
    rules out nearly all entries at a fraction of the full product's cost. The screen is a
    float32 product (the bound's rank-one term appended as one more column), whose error is at
    most ``δ = (γ_{p+1} + 5u) max‖L_i‖ max‖V_j‖`` (``u`` the float32 unit roundoff,
    ``γ_n = n u / (1 - n u)``, inputs rounded to float32 and the magnitude screen's float32
    addition of the bound included; by Cauchy-Schwarz
    ``‖L_i,head‖‖V_head,j‖ + ‖L_i,tail‖‖V_tail,j‖ <= ‖L_i‖‖V_j‖``), so every entry with screen
    value below ``t - δ`` is provably outside the top ``k`` (``t - δ`` rounded down to float32
    for the comparison). The others are evaluated at full rank in float32, within
    ``δ' = (γ_r (1 + u)² + 2.01u) max‖L_i‖ max‖V_j‖`` of the float64 value (half the bytes of a
    float64 gather), and those at or above ``t - δ'`` in float64: the result is the float64
    ranking, exactly. A block where too many entries pass the screen (ties, e.g. a zero map) is
    evaluated in float64 whole.

    Parameters
    ----------
    L : (n_rows, r) float64 or float32 array
    V : (r, n_cols) float64 or float32 array
        Float32 factors are ranked as they are (their values are exact in float64): only the
        rows and columns gathered for an evaluation are widened, never a whole factor.
    k : int
        Entries to return (fewer when the product has fewer).
    rt : Runtime
        Splits each block's float32 screen between its worker threads.
    by_abs : bool
        Rank by magnitude instead of value.
    causal : bool
        Rank only entries with ``col <= row`` (key position at most the query position).
    window : int, optional
        With ``causal``: only entries with ``row - col < window`` (a local attention layer).
    max_rows : int, optional
        Scan at most this many rows, the strongest (more only while fewer than ``k`` entries
        are known); the result says whether it is still exact.
    max_bytes : int, optional
        Size of one block of rows (default :data:`SCAN_BYTES`).

    Returns
    -------
    TopEntries
        Largest first; ties by (row, column). ``exact`` is set only when every entry not
        evaluated is provably strictly below the ``k``-th key (rows of norm 0, whose entries are
        exactly 0, are filled in as entries rather than bounded).
    """
    L, V = np.asarray(L), np.asarray(V)
    if L.ndim != 2 or V.ndim != 2 or L.shape[1] != V.shape[0]:
        raise ShapeError(f"top_entries: L {L.shape} and V {V.shape} are not the factors of a product L @ V.")
    if L.dtype not in _FLOATS or V.dtype not in _FLOATS:
        L, V = L.astype(np.float64), V.astype(np.float64)
    k = check_int("k", k, 1)
    if window is not None:
        window = check_int("window", window, 1)
        if not causal:
            raise InvalidArgumentError("window restricts the pairs of a causal position table; pass causal=True with it.")
    if max_rows is not None:
        max_rows = check_int("max_rows", max_rows, 1)
    budget = SCAN_BYTES if max_bytes is None else max_bytes
    rows, cols, scanned, left, exact, order = _scan(L, V, k, rt, bool(by_abs), bool(causal), window, budget, max_rows)
    values = np.array([float(np.dot(L[i].astype(np.float64), V[:, j].astype(np.float64))) for i, j in zip(rows, cols)],
                      dtype=np.float64)
    if not exact and not left > 0:  # (a positive bound marks an inexact result; see TopEntries.bound)
        left = float(np.nextafter(0.0, 1.0))
    return TopEntries(rows, cols, values, int(scanned), L.shape[0], 0.0 if exact else float(left), bool(exact),
                      float(left), np.sort(order[scanned:]))


#: The factor dtypes ranked as they are (float32 factors are widened to float64 only where gathered).
_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))


def _norms(A: np.ndarray, axis: int) -> np.ndarray:
    """The float64 norms of the rows (``axis=1``) or columns (``axis=0``) of ``A``, in blocks (no
    full float64 copy of a float32 factor)."""
    n = A.shape[1 - axis]
    step = max(1, (SCREEN_BLOCK_BYTES // 8) // (8 * max(1, A.shape[axis])))  # a 2 MiB float64 block
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, step):
        part = A[s:s + step] if axis == 1 else A[:, s:s + step]
        out[s:s + step] = np.linalg.norm(part.astype(np.float64, copy=False), axis=axis)
    return out


#: Bytes of gathered factor rows one chunk of the screen's survivors holds.
GATHER_BYTES = 16 << 20


def _gathered_dots(A: np.ndarray, Bt: np.ndarray, ri: np.ndarray, cj: np.ndarray, dtype: Any) -> np.ndarray:
    """``A[ri[n]] · Bt[cj[n]]`` in ``dtype`` for every pair, the rows gathered in chunks of at most
    :data:`GATHER_BYTES` (a block's survivors at full rank would otherwise take ``2 n r`` values)."""
    isz = np.dtype(dtype).itemsize
    step = max(1, GATHER_BYTES // (2 * isz * max(1, A.shape[1])))
    out = np.empty(ri.size, dtype=dtype)
    for s in range(0, ri.size, step):
        a, b = ri[s:s + step], cj[s:s + step]
        out[s:s + step] = np.einsum("ij,ij->i", A[a].astype(dtype, copy=False), Bt[b].astype(dtype, copy=False))
    return out


def _merge_top(k: int, best: _Best, vals: np.ndarray, ri: np.ndarray, cj: np.ndarray) -> _Best:
    """The ``k`` best of ``best`` and the new entries (value descending, then row, column)."""
    v = np.concatenate([best[0], vals])
    i = np.concatenate([best[1], ri])
    j = np.concatenate([best[2], cj])
    keep = np.lexsort((j, i, -v))[:k]
    return v[keep], i[keep], j[keep]


def _zero_entries(rows: np.ndarray, n_cols: int, k: int, causal: bool, window: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` entries, in (row, column) order, of ``rows`` (ascending): the causal pairs
    only with ``causal``."""
    ri: list[np.ndarray] = []
    cj: list[np.ndarray] = []
    got = 0
    for i in rows:
        if got >= k:
            break
        if causal:
            lo = 0 if window is None else max(0, int(i) - window + 1)
            c = np.arange(lo, min(int(i) + 1, n_cols))
        else:
            c = np.arange(n_cols)
        c = c[: k - got]
        ri.append(np.full(c.size, i, dtype=np.int64))
        cj.append(c)
        got += c.size
    if not ri:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(ri), np.concatenate(cj)


def _scan(
    L: np.ndarray, V: np.ndarray, k: int, rt: Runtime, by_abs: bool, causal: bool, window: int | None,
    budget: int, max_rows: int | None,
) -> tuple[np.ndarray, np.ndarray, int, float, bool, np.ndarray]:
    """Rows and columns of the top ``k`` (see :func:`top_entries`), the rows scanned (a prefix of
    the scan order), the bound on the rows left, whether the result is exact, and the scan order."""
    n_rows, r = L.shape
    n_cols = V.shape[1]
    empty = (np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    if n_rows == 0 or n_cols == 0:
        return empty[1], empty[2], n_rows, 0.0, True, np.arange(n_rows)
    stop = n_rows if max_rows is None else max(1, min(n_rows, max_rows))  # rows that may be scanned
    row_norm = _norms(L, 1)
    col_norm = _norms(V, 0)
    col_max = float(col_norm.max())
    order = np.argsort(-row_norm, kind="stable")
    cols = np.arange(n_cols)
    # Cauchy-Schwarz with room for the rounding of the float64 entries and norms
    room = 1.0 + max(1e-12, 4.0 * (r + 4) * float(np.finfo(np.float64).eps))

    def allowed(ri: np.ndarray, cj: np.ndarray) -> np.ndarray:
        back = ri - cj
        return (back >= 0) if window is None else (back >= 0) & (back < window)

    def exact_block(rows: np.ndarray, floor: float = -np.inf) -> _Best:
        """The top ``k`` of some rows in float64 (ties at the k-th kept, then cut in order); with
        ``floor`` (the running k-th value), only entries ``>= floor``, the only ones that can enter."""
        Lr = L[rows].astype(np.float64, copy=False)
        if V.dtype == np.float64:
            ex = Lr @ V
        else:  # a float32 V widened by column blocks, not whole
            ex = np.empty((len(rows), n_cols))
            step = max(1, SCREEN_BLOCK_BYTES // (8 * max(1, r)))
            for c in range(0, n_cols, step):
                np.matmul(Lr, V[:, c:c + step].astype(np.float64), out=ex[:, c:c + step])
        key = np.abs(ex) if by_abs else ex
        if causal:
            key = np.where(allowed(rows[:, None], cols[None, :]), key, -np.inf)
        flat = key.ravel()
        cand = np.flatnonzero(flat >= floor) if floor > -np.inf else None
        if cand is None or cand.size > max(4 * k, 1 << 16):  # a partial sort (ties: the whole block)
            kk = min(k, flat.size)
            cand = np.flatnonzero(flat >= flat[np.argpartition(-flat, kk - 1)[kk - 1]])
        ri, cj = np.unravel_index(cand, key.shape)
        fin = np.isfinite(flat[cand])  # masked (causal) entries are -inf
        return flat[cand][fin], rows[ri][fin], cj[fin]

    # phase 1: the strongest rows in float64 until k entries are known
    best: _Best = empty
    start = 0
    first = max(1, min(n_rows, -(-max(k, 1 << 22) // n_cols), budget // (8 * n_cols)))
    first = min(first, stop)  # the budget binds here too (beyond it only while fewer than k are known)
    while best[0].size < k and start < n_rows:  # (k entries are needed whatever max_rows says)
        rows = order[start:start + first]
        best = _merge_top(k, best, *exact_block(rows))
        start += len(rows)
    if start >= n_rows or best[0].size < k:
        return best[1], best[2], start, 0.0, True, order

    def unscanned(at: int) -> tuple[np.ndarray, np.ndarray, int, float, bool, np.ndarray]:
        """The result when the rows from ``order[at]`` on are left: exact iff every entry left is
        provably strictly below the k-th key (then no tie with it either), or known."""
        nonlocal best
        if at >= n_rows:
            return best[1], best[2], n_rows, 0.0, True, order
        kth = float(best[0].min())
        strongest = float(row_norm[order[at]])
        if strongest > 0 and col_max > 0:  # a nonzero row is left
            cut = strongest * col_max * room
            return best[1], best[2], at, cut, bool(cut < kth), order
        # every entry left is exactly 0 (zero rows, or V = 0)
        if kth > 0:
            return best[1], best[2], at, 0.0, True, order
        ri, cj = _zero_entries(np.sort(order[at:]), n_cols, k, causal, window)
        best = _merge_top(k, best, np.zeros(ri.size), ri, cj)
        return best[1], best[2], n_rows, 0.0, True, order

    if start >= stop:
        return unscanned(start)

    # phase 2: screened blocks; the prefix length p from a sample of the remaining rows
    u = float(np.finfo(np.float32).eps) / 2
    rest = order[start:stop]
    sample = rest[:: max(1, len(rest) // 64)][:64]
    kth = float(best[0].min())
    mask = allowed(sample[:, None], cols[None, :]) if causal else None
    p = _screen_prefix(L, V, sample, kth, by_abs, col_max * float(row_norm.max()), u, mask)
    gamma = (p + 1) * u / (1 - (p + 1) * u)
    # + 3u: the magnitude screen adds the rank-one bound in float32 after the product (two more roundings)
    delta = (gamma + 5.01 * u) * float(row_norm.max()) * col_max
    tail_l = _norms(L[:, p:], 1) if p < r else np.zeros(n_rows)
    tail_v = _norms(V[p:], 0) if p < r else np.zeros(n_cols)
    # rows of V.T gathered for the dot products (in V's dtype: float32 factors are widened to
    # float64 only where gathered)
    Vt = np.ascontiguousarray(V.T)
    # entries that pass the screen are first evaluated at full rank in float32 (half the bytes
    # to gather), within delta_full of the float64 value; only those that can still reach the
    # k-th value get the float64 dot product
    Lf32, Vt32 = L.astype(np.float32, copy=False), Vt.astype(np.float32, copy=False)
    if p < r and not by_abs:  # P + b in one product: the rank-one bound as one more column
        L32 = np.empty((n_rows, p + 1), dtype=np.float32)  # filled in place: no float64 temporary
        L32[:, :p], L32[:, p] = Lf32[:, :p], tail_l
        V32 = np.empty((p + 1, n_cols), dtype=np.float32)
        V32[:p], V32[p] = Vt32.T[:p], tail_v
    else:  # |P| + b: the bound is added after the absolute value; views of the full-rank copies
        L32, V32 = Lf32[:, :p], Vt32.T[:p]
    tail_l32, tail_v32 = tail_l.astype(np.float32), tail_v.astype(np.float32)
    gamma_r = r * u / (1 - r * u)
    delta_full = (gamma_r * (1 + u) ** 2 + 2.01 * u) * float(row_norm.max()) * col_max
    block = max(1, min(len(rest), min(budget, SCREEN_BLOCK_BYTES) // (4 * n_cols)))
    # the block's buffers are made once: a fresh array per block costs page faults on every block
    buf = np.empty((block, n_cols), dtype=np.float32)
    passed = np.empty((block, n_cols), dtype=bool)
    bound = np.empty((block, n_cols), dtype=np.float32) if by_abs and p < r else None
    for s in range(0, len(rest), block):
        rows = rest[s:s + block]
        kth = float(best[0].min())
        if row_norm[rows[0]] * col_max * room < kth:
            return unscanned(start + s)  # no remaining row can reach the k-th entry
        threshold = _float32_below(kth - delta)  # a float32 threshold, rounded down

        def screen(lo: int, hi: int, rows: np.ndarray = rows, threshold: np.float32 = threshold) -> np.ndarray:
            """The flat indices (in the block) of rows ``lo:hi``'s entries that pass the screen."""
            scr = np.matmul(L32[rows[lo:hi]], V32, out=buf[lo:hi])
            if by_abs:
                np.abs(scr, out=scr)
                if bound is not None:
                    np.multiply(tail_l32[rows[lo:hi], None], tail_v32[None, :], out=bound[lo:hi])
                    np.add(scr, bound[lo:hi], out=scr)
            return np.flatnonzero(np.greater_equal(scr, threshold, out=passed[lo:hi])) + lo * n_cols

        # the block's rows split between the runtime's threads (one BLAS thread each): the float32
        # product has only p + 1 inner terms, and OpenBLAS's own threads stall on it
        cand = np.concatenate(rt.map(screen, len(rows)))
        if cand.size > max(4 * k, 1 << 16):  # too many within the screen's error: this block in float64
            best = _merge_top(k, best, *exact_block(rows, kth))
            continue
        ri, cj = np.unravel_index(cand, (len(rows), n_cols))
        ri = rows[ri]
        if causal:
            ok = allowed(ri, cj)
            ri, cj = ri[ok], cj[ok]
        if ri.size:
            approx = _gathered_dots(Lf32, Vt32, ri, cj, np.float32).astype(np.float64)  # compared in float64
            close = ~((np.abs(approx) if by_abs else approx) < kth - delta_full)  # NaN (overflow): kept
            ri, cj = ri[close], cj[close]
        if ri.size:
            vals = _gathered_dots(L, Vt, ri, cj, np.float64)  # float64, the ranking's values
            vals = np.abs(vals) if by_abs else vals
            keep = vals >= kth  # the rest cannot enter (ties at the k-th are ordered by the merge)
            if keep.any():
                best = _merge_top(k, best, vals[keep], ri[keep], cj[keep])
    return unscanned(stop)


def _float32_below(x: float) -> np.float32:
    """The largest float32 at most ``x`` (a float64 threshold compared with float32 values would
    be rounded to nearest, possibly up, and drop entries just above it)."""
    with np.errstate(over="ignore"):  # beyond float32's range: ±inf, then the largest finite below
        y = np.float32(x)
    return np.nextafter(y, np.float32(-np.inf)) if float(y) > x else y


def _screen_prefix(L: np.ndarray, V: np.ndarray, sample: np.ndarray, kth: float, by_abs: bool,
                   scale: float, u: float, mask: np.ndarray | None = None) -> int:
    """The prefix length ``p`` of the screen that minimises its estimated work,
    ``(p + 1) + SURVIVOR_COST * (fraction of the sample's entries that pass)`` per entry (entries
    outside ``mask``, the causal pairs, are dropped before any float64 work and count as passing
    nothing)."""
    r = L.shape[1]
    if r <= 8 or sample.size == 0:
        return r
    Ls = L[sample]
    best_p, best_cost = r, float(r + 1)
    acc = np.zeros((len(sample), V.shape[1]))
    done = 0
    cands = [q - 1 for q in range(8, r + 1, 8) if q - 1 >= r // 4] + [r]  # p + 1 a multiple of 8: fast GEMMs
    # the tails' squared norms, updated as the prefix grows (an estimate for choosing p: the screen
    # itself uses exact tail norms), instead of a pass over V's remaining rows per candidate
    tl2, tv2 = np.einsum("ij,ij->i", Ls, Ls), np.einsum("ij,ij->j", V, V)
    for p in cands:
        acc += Ls[:, done:p] @ V[done:p]
        tl2 -= np.einsum("ij,ij->i", Ls[:, done:p], Ls[:, done:p])
        tv2 -= np.einsum("ij,ij->j", V[done:p], V[done:p])
        done = p
        gamma = (p + 1) * u / (1 - (p + 1) * u)
        floor = kth - (gamma + 5.01 * u) * scale
        tail = np.sqrt(np.maximum(tl2, 0.0))[:, None] * np.sqrt(np.maximum(tv2, 0.0))[None, :]
        passes = ((np.abs(acc) if by_abs else acc) + tail) >= floor
        frac = float(np.mean(passes if mask is None else passes & mask))
        cost = (p + 1) + SURVIVOR_COST * frac
        if cost < best_cost:
            best_p, best_cost = p, cost
    return best_p
