"""Feature circuits of dictionaries too large to hold whole: each feature's top entries of a
feature x vocabulary map streamed by row blocks, and the top global weights of a cross-layer
transcoder as tiles on a dask cluster.

:func:`top_entries_per_row` ranks every row of a product ``L @ V`` held as two factors (a
feature's logit effects ``dec_fᵀ W_Uᵀ`` over the vocabulary, for every feature at once) without
holding the product: row blocks are multiplied in float32 within a stated memory budget, each row
keeps the candidates the float32 error bound cannot rule out, and those are ranked in float64.

:func:`stream_global_weights` finds the ``k`` largest residual-direct virtual weights
``W_enc^t (Σ_{l} W_dec^{s→l})`` between every source layer ``s`` and later target layer ``t`` of a
cross-layer transcoder (the decoders of ``s`` that write before ``t`` reads, summed in write
order). The work is split into tasks, one per layer pair and block of source features: a task
sums that block's visible decoders, reads the target's encoder by row blocks and ranks each tile
(a row block against the column block) with :func:`~circuitalg.linalg.top_entries` (the
certified float64 top ``k`` of a factored product), keeping its own top ``k``. The tasks' lists merge into the exact top ``k``
(every entry of the global top ``k`` is in its task's top ``k``), with the certificate of
:class:`~circuitalg.linalg.TopEntries` carried over. A transcoder in memory (a
:class:`~circuitalg.features.DictionarySet`) or a circuit-tracer directory (``W_enc_{l}`` and
``W_dec_{l}`` safetensors files, read by row blocks through memory maps, so no task holds more
than one tile's arrays) is read alike; pass a ``dask.distributed`` client to run the tasks on its
workers, as :func:`~circuitalg.streaming.stream_composition` does (the results are the same).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, LoadError, ShapeError, TooLargeError, check_int
from circuitalg.features.dictionary import DictionarySet
from circuitalg.linalg.topk import SCAN_BYTES, top_entries
from circuitalg.model.tensorfiles import SafetensorsSource, widen_bf16
from circuitalg.runtime import Runtime, current

__all__ = [
    "RowTopEntries", "top_entries_per_row", "ROW_BLOCK_BYTES",
    "GlobalWeightsPlan", "GlobalWeights", "plan_global_weights", "stream_global_weights",
]

#: Default float32 block of rows multiplied at once by :func:`top_entries_per_row` (64 MiB).
ROW_BLOCK_BYTES = 64 << 20
#: Columns sampled per row for the first threshold of :func:`top_entries_per_row`.
_SAMPLE_COLUMNS = 2048


# -- each row's top entries ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RowTopEntries:
    """Each row's ``k`` largest entries of ``L @ V`` (:func:`top_entries_per_row`).

    Attributes
    ----------
    cols : (n_rows, k) int64 array
        The columns of row ``i``'s entries, largest first (ties by column).
    values : (n_rows, k) float64 array
        The entries ``L[i] · V[:, j]`` (signed, also when ranked by magnitude).
    """

    cols: np.ndarray
    values: np.ndarray


def _below32(x: np.ndarray) -> np.ndarray:
    """The largest float32 values at most ``x`` (float64): a threshold rounded to nearest could
    round up and drop an entry just above it."""
    with np.errstate(over="ignore"):
        y = x.astype(np.float32)
    return np.where(y.astype(np.float64) > x, np.nextafter(y, np.float32(-np.inf)), y)


def _float32_error(r: int) -> float:
    """``c`` with ``|fl32(x̂ · ŷ) - fl64(x · y)| <= c ‖x‖ ‖y‖`` for length-``r`` float64 vectors
    rounded to float32 (``x̂``, ``ŷ``) and multiplied in float32 in any order: ``γ_r (1 + u)²``
    for the float32 sum, ``2u + u²`` for the rounded inputs, and room for the float64 value's
    own rounding (as :func:`~circuitalg.linalg.top_entries` bounds its full-rank float32 pass)."""
    u = float(np.finfo(np.float32).eps) / 2
    gamma = r * u / (1 - r * u)
    return gamma * (1 + u) ** 2 + 2.01 * u


def top_entries_per_row(
    L: np.ndarray, V: np.ndarray, k: int, rt: Runtime | None = None, *, by_abs: bool = False,
    max_bytes: int | None = None,
) -> RowTopEntries:
    """Each row's ``k`` largest entries of ``L @ V``, ranked in float64, without holding the product.

    Row blocks of the product are formed in float32 (``max_bytes`` each, split between the
    runtime's threads). In each row ``i`` the ``k``-th largest value of a sample of columns is a
    lower bound on the row's ``k``-th largest float32 value ``v_i``; the entries at or above it
    (less twice the float32 error) are collected, ``v_i`` found among them, and every entry with
    float32 value ``>= v_i - 2δ_i`` is evaluated in float64, where
    ``δ_i = c ‖L_i‖ max_j ‖V_j‖`` bounds the distance between an entry's float32 and float64
    values (``c = γ_r (1 + u)² + 2.01u``, ``u`` float32's unit roundoff). An entry left out is
    below ``v_i - δ_i``, and the ``k`` entries at or above ``v_i`` are all at least ``v_i - δ_i``
    in float64: the result is each row's float64 ranking, exactly.

    Parameters
    ----------
    L : (n_rows, r) float array
    V : (r, n_cols) float array
        ``V``'s transpose is gathered by rows for the float64 evaluation: pass the transpose of a
        C-ordered matrix (``W_U.T``) to avoid a copy.
    k : int
        Entries per row (all columns when ``n_cols <= k``).
    rt : Runtime, optional
        Splits each block between its threads (default: :func:`circuitalg.runtime.current`).
    by_abs : bool
        Rank by magnitude instead of value.
    max_bytes : int, optional
        The float32 block of rows (default :data:`ROW_BLOCK_BYTES`); the arrays held besides the
        factors and their float32 copies are about twice this.

    Returns
    -------
    RowTopEntries
    """
    L, V = np.asarray(L), np.asarray(V)
    if L.ndim != 2 or V.ndim != 2 or L.shape[1] != V.shape[0]:
        raise ShapeError(f"top_entries_per_row: L {L.shape} and V {V.shape} are not the factors of a product L @ V.")
    k = check_int("k", k, 1)
    budget = ROW_BLOCK_BYTES if max_bytes is None else check_int("max_bytes", max_bytes, 1)
    rt = current() if rt is None else rt
    n, r = L.shape
    m = V.shape[1]
    k = min(k, m)
    cols_out = np.zeros((n, k), dtype=np.int64)
    vals_out = np.zeros((n, k))
    if n == 0 or k == 0:
        return RowTopEntries(cols_out, vals_out)
    L64 = np.asarray(L, dtype=np.float64)
    Vt = np.ascontiguousarray(V.T, dtype=np.float64)  # rows gathered for the float64 products
    L32, V32 = L64.astype(np.float32), Vt.astype(np.float32).T  # V32: a transposed view (BLAS takes it)
    c = _float32_error(r)
    col_max = float(np.sqrt(np.einsum("ij,ij->i", Vt, Vt).max()))
    delta = c * np.sqrt(np.einsum("ij,ij->i", L64, L64)) * col_max * (1 + 1e-12)
    step = max(1, m // max(_SAMPLE_COLUMNS, 4 * k))  # at least 4k columns sampled (or all of them)
    sample = np.arange(0, m, step)
    block = max(1, min(n, budget // (4 * m)))
    buf = np.empty((block, m), dtype=np.float32)
    passed = np.empty((block, m), dtype=bool)

    def rows_top(lo: int, hi: int, start: int, buf: np.ndarray = buf, passed: np.ndarray = passed) -> None:
        """Rows ``start + lo .. start + hi``: their float32 block, candidates, float64 ranking."""
        g0, g1 = start + lo, start + hi
        S = np.matmul(L32[g0:g1], V32, out=buf[lo:hi])
        if by_abs:
            np.abs(S, out=S)
        d = delta[g0:g1]
        smp = S[:, sample]
        t = np.partition(smp, smp.shape[1] - k, axis=1)[:, smp.shape[1] - k].astype(np.float64)
        thr = _below32(t - 2 * d)
        ri, cj = np.nonzero(np.greater_equal(S, thr[:, None], out=passed[lo:hi]))
        v32 = S[ri, cj].astype(np.float64)
        order = np.lexsort((-v32, ri))  # by row, then value descending
        ri, cj, v32 = ri[order], cj[order], v32[order]
        counts = np.bincount(ri, minlength=hi - lo)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        short = counts < k  # only where float32 overflowed or gave NaN: that row in float64 whole
        kth = np.where(short, -np.inf, v32[np.minimum(first + k - 1, len(v32) - 1)] if len(v32) else -np.inf)
        keep = (v32 >= kth[ri] - 2 * d[ri]) & ~short[ri]
        ri, cj = ri[keep], cj[keep]
        for i in np.flatnonzero(short):  # rare: the whole row
            ri = np.concatenate([ri, np.full(m, i)])
            cj = np.concatenate([cj, np.arange(m)])
        vals = np.einsum("ij,ij->i", L64[ri + g0], Vt[cj])
        key = np.abs(vals) if by_abs else vals
        order = np.lexsort((cj, -key, ri))
        ri, cj, vals = ri[order], cj[order], vals[order]
        counts = np.bincount(ri, minlength=hi - lo)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(ri)) - first[ri]
        top = rank < k
        cols_out[g0:g1] = cj[top].reshape(hi - lo, k)
        vals_out[g0:g1] = vals[top].reshape(hi - lo, k)

    for start in range(0, n, block):
        rows = min(block, n - start)
        rt.map(lambda lo, hi, start=start: rows_top(lo, hi, start), rows)
    return RowTopEntries(cols_out, vals_out)


# -- a cross-layer transcoder, in memory or on disk ------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.dtype("<u2")}


class _MemoryCLT:
    """A :class:`DictionarySet` read as a cross-layer transcoder: member ``s``'s decoder ``j`` is
    visible to member ``t`` when it writes at a depth before ``t`` reads (:attr:`Hook.depth`)."""

    def __init__(self, clt: DictionarySet) -> None:
        self.where = f"DictionarySet {clt.name!r}"
        members = clt.members
        d = None
        for m in members:
            if len(m.reads) != 1:
                raise InvalidArgumentError(
                    f"{self.where}: member {m.name!r} reads {len(m.reads)} hooks; global weights need one read "
                    "hook per member (a cross-layer transcoder's)."
                )
            for dim in (*m.d_in, *m.d_out):
                if d is None:
                    d = dim
                elif dim != d:
                    raise ShapeError(
                        f"{self.where}: member {m.name!r} reads or writes {dim} dimensions, another {d}; the global "
                        "weights go through one residual stream."
                    )
        self.clt = clt
        self.n_layers = len(members)
        self.d_model = int(d)  # type: ignore[arg-type]
        self.layers = tuple(m.reads[0].layer for m in members)
        self.n_features = tuple(m.n_features for m in members)

    def visible(self, s: int, t: int) -> tuple[int, ...]:
        """Indices of member ``s``'s decoders that member ``t`` reads, in write order."""
        depth = self.clt.members[t].reads[0].depth
        writes = self.clt.members[s].writes
        return tuple(j for j in sorted(range(len(writes)), key=lambda j: writes[j].depth) if writes[j].depth < depth)

    def encoder_rows(self, t: int, a: int, b: int) -> np.ndarray:
        return np.ascontiguousarray(self.clt.members[t].W_enc[0][a:b], dtype=np.float64)

    def decoder_cols(self, s: int, j: int, a: int, b: int) -> np.ndarray:
        return np.asarray(self.clt.members[s].W_dec[j][:, a:b], dtype=np.float64)


class _FileCLT:
    """A circuit-tracer cross-layer transcoder directory: ``W_enc_{l}.safetensors`` holding
    ``W_enc_{l}`` ``(F, d)`` (the residual stream -> features, read before layer ``l``'s MLP) and
    ``W_dec_{l}.safetensors`` holding ``W_dec_{l}`` ``(F, n_layers - l, d)`` (slice ``j`` writes
    layer ``l + j``'s MLP output). Tensors are read by row blocks through memory maps."""

    def __init__(self, directory: str | Path) -> None:
        root = Path(directory)
        self.where = str(root)
        if not root.is_dir():
            raise LoadError(f"{root}: no such directory (a circuit-tracer cross-layer transcoder: W_enc_<l>.safetensors "
                            "and W_dec_<l>.safetensors files).")
        n = 0
        while (root / f"W_enc_{n}.safetensors").exists():
            n += 1
        if n == 0:
            raise LoadError(f"{root}: no W_enc_0.safetensors; expected a circuit-tracer cross-layer transcoder "
                            "(W_enc_<l>.safetensors and W_dec_<l>.safetensors for l = 0..n_layers-1).")
        self.root, self.n_layers = root, n
        self.layers = tuple(range(n))
        self._sources: dict[str, SafetensorsSource] = {}
        feats, d = [], None
        for l in range(n):
            F, dl = self._shape(f"W_enc_{l}", 2, None)
            dec_shape = self._shape(f"W_dec_{l}", 3, (F, n - l, None))
            for dim in (dl, dec_shape[2]):
                if d is None:
                    d = dim
                elif dim != d:
                    raise LoadError(f"{root}: W_enc_{l} / W_dec_{l} have d_model {dim}, another layer {d}.")
            feats.append(F)
        self.d_model = int(d)  # type: ignore[arg-type]
        self.n_features = tuple(feats)

    def _source(self, name: str) -> SafetensorsSource:
        if name not in self._sources:
            path = self.root / f"{name}.safetensors"
            if not path.exists():
                raise LoadError(f"{path}: missing (every layer of a circuit-tracer cross-layer transcoder has a "
                                "W_enc_<l> and a W_dec_<l> file).")
            src = SafetensorsSource([path], max_bytes=1 << 62)  # read by row blocks: no file-size limit
            if name not in src.index:
                raise LoadError(f"{path}: no tensor {name!r} (tensors: {sorted(src.index)[:8]}).")
            self._sources[name] = src
        return self._sources[name]

    def _shape(self, name: str, ndim: int, want: tuple[int | None, ...] | None) -> tuple[int, ...]:
        path, e = self._source(name).index[name]
        shape = e.shape
        bad = len(shape) != ndim or e.dtype not in _ST_DTYPES or (
            want is not None and any(w is not None and w != s for w, s in zip(want, shape)))
        if bad:
            expected = "(F, d_model)" if ndim == 2 else f"({want[0]}, {want[1]}, d_model)"  # type: ignore[index]
            raise LoadError(f"{path}: tensor {name!r} is {e.dtype} {list(shape)}; expected a float tensor of shape "
                            f"{expected}.")
        return shape

    def _rows(self, name: str, a: int, b: int) -> np.ndarray:
        path, e = self._source(name).index[name]
        mm = np.memmap(path, dtype=_ST_DTYPES[e.dtype], mode="r", offset=e.start, shape=e.shape)
        return mm[a:b]

    def _widen(self, name: str, x: np.ndarray) -> np.ndarray:
        return widen_bf16(x) if self._source(name).index[name][1].dtype == "BF16" else x

    def visible(self, s: int, t: int) -> tuple[int, ...]:
        return tuple(range(t - s)) if t > s else ()

    def encoder_rows(self, t: int, a: int, b: int) -> np.ndarray:
        name = f"W_enc_{t}"
        return np.ascontiguousarray(self._widen(name, self._rows(name, a, b)), dtype=np.float64)

    def decoder_cols(self, s: int, j: int, a: int, b: int) -> np.ndarray:
        name = f"W_dec_{s}"
        return self._widen(name, self._rows(name, a, b)[:, j, :]).astype(np.float64).T


def _open_clt(clt: Any) -> _MemoryCLT | _FileCLT:
    if isinstance(clt, (_MemoryCLT, _FileCLT)):
        return clt
    if isinstance(clt, DictionarySet):
        return _MemoryCLT(clt)
    if isinstance(clt, (str, Path)):
        return _FileCLT(clt)
    raise InvalidArgumentError(
        f"stream_global_weights takes a DictionarySet or a circuit-tracer transcoder directory, got {type(clt).__name__}."
    )


def _pairs(src: _MemoryCLT | _FileCLT) -> list[tuple[int, int]]:
    """(source, target) layer indices with a residual path (a decoder of the source written
    before the target reads), by source then target."""
    return [(s, t) for s in range(src.n_layers) for t in range(src.n_layers) if t != s and src.visible(s, t)]


# -- the plan ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GlobalWeightsPlan:
    """What :func:`stream_global_weights` will do: tiles, FLOPs and the peak arrays of one task."""

    n_layers: int
    n_pairs: int
    n_features: tuple[int, ...]
    d_model: int
    col_block: int
    row_block: int
    scan_bytes: int
    n_tasks: int
    n_tiles: int
    flops: float
    peak_bytes: int
    budget_bytes: int

    def __str__(self) -> str:
        return (f"global weights of {self.n_pairs} layer pairs ({self.n_layers} layers, {max(self.n_features):,} features, "
                f"d_model {self.d_model}): {self.n_tasks} tasks (a layer pair and {self.col_block:,} source features), "
                f"{self.n_tiles} tiles (with {self.row_block:,} target features), at most {self.flops:.2e} FLOP, "
                f"peak {self.peak_bytes / 2**30:.2f} GiB of arrays per task (budget {self.budget_bytes / 2**30:.2f} GiB)")


#: Bytes per ``d_model`` element of one task's column block (its summed decoders, and
#: :func:`top_entries`'s transposed copy, the float64 prefix it widens and their float32 copies)
#: and of a row block (the encoder rows, the float64 prefix and float32 copies).
_COL_BYTES, _ROW_BYTES = 8 + 8 + 8 + 4 + 4, 8 + 8 + 4 + 4


def _task_bytes(d: int, rows: int, cols: int, scan: int) -> int:
    """Peak array bytes of one task (see :data:`_COL_BYTES`), with :func:`top_entries`'s sample
    for the prefix choice (per column) and its scan blocks."""
    return d * (_ROW_BYTES * rows + _COL_BYTES * cols) + 2048 * cols + 3 * scan


def plan_global_weights(clt: Any, budget_bytes: int = 1 << 30) -> GlobalWeightsPlan:
    """The tiling, FLOP bound and per-task peak memory of :func:`stream_global_weights` on ``clt``;
    :class:`TooLargeError` when one row and one column do not fit ``budget_bytes``."""
    check_int("budget_bytes", budget_bytes, 1)
    return _plan(_open_clt(clt), budget_bytes)


def _plan(src: _MemoryCLT | _FileCLT, budget: int) -> GlobalWeightsPlan:
    d, feats, n = src.d_model, src.n_features, src.n_layers
    scan = max(1 << 16, min(SCAN_BYTES, budget // 8))
    room = budget - 3 * scan
    per_col, per_row = _COL_BYTES * d + 2048, _ROW_BYTES * d
    if room < per_col + per_row:
        raise TooLargeError(
            f"stream_global_weights: d_model={d} needs at least {(3 * scan + per_col + per_row) / 2**20:.1f} MiB per "
            f"task; budget_bytes={budget} is smaller."
        )
    F = max(feats)
    cols = max(1, min(F, room // (per_col + per_row)))  # square tiles where the budget binds
    rows = max(1, min(F, (room - cols * per_col) // per_row))
    tasks = tiles = 0
    flops = 0.0
    for s, t in _pairs(src):
        nc = -(-feats[s] // cols)
        tasks += nc
        tiles += nc * -(-feats[t] // rows)
        flops += 2.0 * feats[t] * feats[s] * d + feats[s] * d * len(src.visible(s, t))
    return GlobalWeightsPlan(n, len(_pairs(src)), tuple(feats), d, cols, rows, scan, tasks, tiles, flops,
                             _task_bytes(d, rows, cols, scan), budget)


# -- the tasks -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GlobalWeights:
    """The ``k`` largest global weights of a cross-layer transcoder (:func:`stream_global_weights`).

    Entry ``i`` is the virtual weight from feature ``source_feature[i]`` of layer
    ``source_layer[i]`` to feature ``target_feature[i]`` of the later layer ``target_layer[i]``:
    ``W_enc^t[f_t] · Σ_j W_dec^{s,j}[:, f_s]`` over the decoders of ``s`` that write before ``t``
    reads. Layers are the members' read layers (the file index for a directory).

    Attributes
    ----------
    source_layer, source_feature, target_layer, target_feature : int arrays
    values : float64 array
        The weights, largest first (by magnitude with ``by_abs``; signed values), ties by
        (target layer, target feature, source layer, source feature).
    by_abs : bool
    bound : float
        A bound on every weight not evaluated (rows cut by ``max_rows``); 0.0 when the tasks
        proved that none of them can enter the top ``k`` (the result is then exact).
    plan : GlobalWeightsPlan
    """

    source_layer: np.ndarray
    source_feature: np.ndarray
    target_layer: np.ndarray
    target_feature: np.ndarray
    values: np.ndarray
    by_abs: bool
    bound: float
    plan: GlobalWeightsPlan

    @property
    def exact(self) -> bool:
        """Whether these are the top entries over every layer pair (not only those evaluated)."""
        return self.bound == 0.0

    def __len__(self) -> int:
        return len(self.values)


# (key, target layer index, target feature, source layer index, source feature, value) and the
# largest bound of the entries a task left unevaluated
_Found = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]


def _merge(k: int, parts: list[_Found]) -> _Found:
    """The ``k`` best entries of ``parts`` (key descending, then target, source), their largest bound."""
    cat = [np.concatenate([p[i] for p in parts]) for i in range(6)]
    key, tl, tf, sl, sf, val = cat
    keep = np.lexsort((sf, sl, tf, tl, -key))[:k]
    return (key[keep], tl[keep], tf[keep], sl[keep], sf[keep], val[keep], max((p[6] for p in parts), default=0.0))


def _empty_found() -> _Found:
    z = np.empty(0, dtype=np.int64)
    return (np.empty(0), z, z, z, z, np.empty(0), 0.0)


def _pair_task(clt: Any, s: int, t: int, cols: tuple[int, int], k: int, by_abs: bool, row_block: int, scan: int,
               max_rows: int | None, read_maps: Mapping[int, np.ndarray] | None, rt: Runtime) -> _Found:
    """The top ``k`` weights from source layer ``s``'s features ``cols`` to target layer ``t`` (a
    dask task: a directory is opened here and its tensors read by row blocks): the visible
    decoders summed in write order, the target's encoder rows tile by tile."""
    src = _open_clt(clt)
    c0, c1 = cols
    D: np.ndarray | None = None
    for j in src.visible(s, t):
        part = src.decoder_cols(s, j, c0, c1)
        D = np.array(part, order="C") if D is None else np.add(D, part, out=D)
        del part
    found = _empty_found()
    if D is None:
        return found
    N = None if read_maps is None else read_maps.get(src.layers[t])
    for a in range(0, src.n_features[t], row_block):
        b = min(src.n_features[t], a + row_block)
        Lb = src.encoder_rows(t, a, b)
        if N is not None:
            Lb = Lb @ N
        res = top_entries(Lb, D, k, rt, by_abs=by_abs, max_rows=max_rows, max_bytes=scan)
        # each value one float64 dot product of contiguous vectors (the in-memory routes' values)
        vals = np.array([float(np.dot(Lb[i], np.ascontiguousarray(D[:, j]))) for i, j in zip(res.rows, res.cols)])
        n_ = len(vals)
        tile = (np.abs(vals) if by_abs else vals, np.full(n_, t), res.rows + a, np.full(n_, s), res.cols + c0, vals,
                res.bound)
        del Lb, res  # the next row block is read into the room of this one
        found = _merge(k, [found, tile])
    return found


def stream_global_weights(
    clt: DictionarySet | str | Path, k: int = 50, *, by_abs: bool = True, budget_bytes: int = 1 << 30,
    client: Any = None, max_rows: int | None = None, read_maps: Mapping[int, np.ndarray] | None = None,
    log: Callable[[str], None] | None = None,
) -> GlobalWeights:
    """The ``k`` largest global weights over every (source layer, later target layer) pair of a
    cross-layer transcoder, tiled within ``budget_bytes`` per task (see the module docstring).

    Parameters
    ----------
    clt : DictionarySet or path
        The transcoder in memory, or a circuit-tracer transcoder directory read lazily
        (``W_enc_<l>.safetensors``, ``W_dec_<l>.safetensors``; float32, float16 or bfloat16,
        widened exactly to float64).
    k : int
    by_abs : bool
        Rank by magnitude (default, inhibitory weights too, as
        :func:`~circuitalg.features.circuits.top_feature_weights`) or by signed value.
    budget_bytes : int
        The arrays of one task (one per dask worker thread); see :func:`plan_global_weights`.
    client : dask.distributed.Client, optional
        Run the tasks on its workers (a directory is read by each task itself; a transcoder in
        memory is scattered to the workers once). The results equal those without a client.
    max_rows : int, optional
        Scan at most this many rows (target features) of each tile, strongest first (see
        :func:`~circuitalg.linalg.top_entries`); the result's ``bound`` says whether it is still
        exact.
    read_maps : mapping of int to (d_in, d_model) array, optional
        For a target layer (key: its read layer) whose encoder reads the residual stream through
        a linear map ``N`` (an MLP input norm's weight and centring, frozen scale), ``N``: the
        encoder from the stream is ``W_enc N``, formed by row blocks.
    log : callable, optional
        Gets the plan and one line per task (without a client).

    Returns
    -------
    GlobalWeights
    """
    k = check_int("k", k, 1)
    check_int("budget_bytes", budget_bytes, 1)
    if max_rows is not None:
        max_rows = check_int("max_rows", max_rows, 1)
    src = _open_clt(clt)
    if read_maps is not None:
        read_maps = {int(l): np.asarray(N, dtype=np.float64) for l, N in read_maps.items()}
        for l, N in read_maps.items():
            if l not in src.layers or N.ndim != 2 or N.shape[1] != src.d_model:
                raise ShapeError(f"read_maps[{l}] has shape {N.shape}; expected (d_in, {src.d_model}) for one of the "
                                 f"read layers {list(src.layers)}.")
    plan = _plan(src, budget_bytes)
    say = log or (lambda _m: None)
    say(str(plan))
    rt = current()
    tasks = [(s, t, (c, min(src.n_features[s], c + plan.col_block)))
             for s, t in _pairs(src) for c in range(0, src.n_features[s], plan.col_block)]
    args = (k, bool(by_abs), plan.row_block, plan.scan_bytes, max_rows, read_maps, rt)
    if client is not None:
        where = str(clt) if isinstance(clt, (str, Path)) else client.scatter(src, broadcast=True, hash=False)
        futures = [client.submit(_pair_task, where, s, t, cols, *args, pure=False) for s, t, cols in tasks]
        parts = client.gather(futures)
    else:
        parts = []
        for i, (s, t, cols) in enumerate(tasks):
            parts.append(_pair_task(src, s, t, cols, *args))
            say(f"task {i + 1}/{len(tasks)}: source layer {src.layers[s]} features {cols[0]}-{cols[1] - 1} -> "
                f"target layer {src.layers[t]}")
    key, tl, tf, sl, sf, val, bound = _merge(k, [_empty_found(), *parts])
    if bound > 0 and len(key) == k and bound < float(key[-1]):
        bound = 0.0  # nothing left unevaluated can reach the k-th weight
    layers = np.asarray(src.layers, dtype=np.int64)
    return GlobalWeights(layers[sl], sf, layers[tl], tf, val, bool(by_abs), float(bound), plan)

