"""Composition scores between attention heads (Elhage et al., 2021, "Composition").

For a writer head ``h1`` in an earlier layer than a reader head ``h2`` (column convention,
``W_OV = W_O W_V``, ``W_QK = W_Qᵀ W_K``)::

    Q:  ||W_QK^h2ᵀ W_OV^h1||_F / (||W_QK^h2||_F ||W_OV^h1||_F)
    K:  ||W_QK^h2  W_OV^h1||_F / (||W_QK^h2||_F ||W_OV^h1||_F)
    V:  ||W_OV^h2  W_OV^h1||_F / (||W_OV^h2||_F ||W_OV^h1||_F)

These equal TransformerLens's ``all_composition_scores("Q" | "K" | "V")`` (row-vector layout).

How they are computed (all heads at once, nothing of size vocab or ``d_model x d_model``
per *pair*): every squared numerator is a Frobenius inner product of two symmetric
``d_model x d_model`` matrices of rank ``d_head``, one per reader and one per writer::

    ||R W||_F² = <RᵀR, W Wᵀ>_F,   e.g. K: RᵀR = W_Kᵀ (W_Q W_Qᵀ) W_K,  W Wᵀ = W_O (W_V W_Vᵀ) W_Oᵀ.

Each such matrix is formed once per head, one block row (about 128 rows, the blocks on and
right of the diagonal) at a time, and all reader/writer pairs of a block row cost one matrix
product. At GPT-2-small shapes this is about 20 GFLOP with a peak of about 0.6 GB, against
TransformerLens's dense broadcast (``benchmarks/bench_composition.py``).

Accuracy: float64 throughout. The Gram inner products have an absolute error of about
``eps * d_model * ||R||_F² ||W||_F²`` in the squared numerator, i.e. a floor near ``1e-8`` on
the score, which would turn structural zeros into ``1e-9``-sized scores in a rotated residual
basis. So every pair whose squared Gram estimate is within :data:`ZERO_FLOOR` ``* eps * d_model``
of the normalisation is recomputed from the small factored product (K:
``||W_Qᵀ (W_K W_O) W_V||_F`` with the ``d_head x d_head`` core ``W_K W_O``, and likewise for Q
and V), whose error is relative to the factors: exact zeros come out below ``1e-12`` in any
basis, and only near-zero pairs pay for it. Heads with an all-zero ``W_OV`` or ``W_QK`` get
score 0 (not NaN).

One kernel does all of this, :func:`composition_tile`: the writers of some layers against the
readers of some layers (a *tile*), returning the squared terms (:class:`CompositionParts`). The
in-memory scores are one tile of all layers, kept with the model's view
(:func:`composition_parts`, through :meth:`~circuitalg.model.view.HeadWeights.memo`);
:func:`circuitalg.streaming.stream_composition` assembles tiles of layer chunks read from disk.

The scores read the model's view, in which every norm weight multiplies the maps it belongs to
(input norms folded into ``W_Q, W_K, W_V``, LayerNorm reads centred), whether or not the stored
weights were folded: :func:`~circuitalg.model.transforms.fold_layer_norm` changes no score.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from circuitalg.errors import InvalidArgumentError, TooLargeError, check_int
from circuitalg.model.view import HeadWeights
from circuitalg.model.weights import Transformer, require_model

__all__ = [
    "COMPOSITION_KINDS",
    "CompositionBaseline",
    "CompositionParts",
    "composition_parts",
    "composition_ratio",
    "composition_tile",
    "composition_scores",
    "composition_baseline",
    "composition_baselines",
    "valid_pairs",
]

#: The three ways a later head can read an earlier head's output.
COMPOSITION_KINDS = ("q", "k", "v")


def check_kind(kind: Any) -> str:
    """Normalise a composition kind (``"q"``, ``"K"``...) to lower case, or raise."""
    k = kind.lower() if isinstance(kind, str) else kind
    if k not in COMPOSITION_KINDS:
        raise InvalidArgumentError(f"kind={kind!r} is not a composition kind; use 'q', 'k' or 'v'.")
    return k


def check_model(model: Any) -> Transformer:
    """Raise unless ``model`` is a :class:`~circuitalg.model.weights.Transformer`."""
    return require_model(model)


#: Working memory of the block-row buffers of :func:`composition_scores` (both sides);
#: the block height shrinks from 128 rows to fit, and below one row TooLargeError is raised.
WORK_BYTES: int = 1 << 30


def _blocks(d: int, size: int = 128) -> list[tuple[int, int]]:
    """Row blocks ``[start, stop)`` of about ``size`` rows covering ``range(d)``."""
    n = max(1, -(-d // size))
    edges = np.linspace(0, d, n + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _gram_inner(
    readers: tuple[np.ndarray, np.ndarray], writers: tuple[np.ndarray, np.ndarray], needed: np.ndarray
) -> np.ndarray:
    """``<XᵀY, UᵀV>_F`` for readers ``(X, Y)`` and writers ``(U, V)`` (stacks ``(n, r, d)``).

    ``XᵀY`` and ``UᵀV`` must be symmetric (``Y = G X`` with ``G`` symmetric). Reader ``i``
    needs writers ``0 .. needed[i] - 1`` (``needed`` non-decreasing); other entries may be left
    0 or filled. The ``d x d`` matrices are formed one block row at a time (the blocks on and
    right of the diagonal; off-diagonal blocks count twice), so at most one block row of every
    head is held. Returns ``(n_readers, n_writers)``.
    """
    X, Y = readers
    U, V = writers
    d = X.shape[2]
    Xt = np.ascontiguousarray(X.transpose(0, 2, 1))
    Ut = np.ascontiguousarray(U.transpose(0, 2, 1))
    out = np.zeros((X.shape[0], U.shape[0]))
    # readers in a few contiguous chunks, each multiplied by the writers its last row needs
    edges = np.unique(np.linspace(0, X.shape[0], 5).astype(int))
    chunks = [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]
    per_row = (X.shape[0] + U.shape[0]) * d * 8  # one row of every head's block row, both sides
    if per_row > WORK_BYTES:
        raise TooLargeError(
            f"composition scores of {X.shape[0]} readers and {U.shape[0]} writers at d_model={d} need "
            f"{per_row / 1e9:.3g} GB per block row, above circuitalg.circuits.composition.WORK_BYTES = "
            f"{WORK_BYTES / 1e9:.3g} GB; raise WORK_BYTES or score a subset of layers."
        )
    blocks = _blocks(d, min(64, WORK_BYTES // per_row))  # 64 rows: faster than 128 here, and half the buffers
    width = max(b - a for a, b in blocks)
    S_buf, T_buf = np.empty(X.shape[0] * width * d), np.empty(U.shape[0] * width * d)  # reused per block
    for a, b in blocks:
        S = _block_row(Xt, Y, a, b, S_buf)
        T = _block_row(Ut, V, a, b, T_buf)
        # <S, T> over the block row, counting blocks right of the diagonal twice (their mirror
        # images are not formed) = 2 <S', T> with S' = S minus the lower triangle of its
        # diagonal block and with half its diagonal (S and T are symmetric there).
        S[:, :, : b - a] *= _half_upper(b - a)
        S2, T2 = S.reshape(S.shape[0], -1), T.reshape(T.shape[0], -1)
        for lo, hi in chunks:
            n = needed[hi - 1]
            out[lo:hi, :n] += S2[lo:hi] @ T2[:n].T
    out *= 2.0
    return out


def _half_upper(w: int) -> np.ndarray:
    """The ``w x w`` mask with 1 above the diagonal, 1/2 on it, 0 below."""
    return np.triu(np.ones((w, w))) - 0.5 * np.eye(w)


def _block_row(Xt: np.ndarray, Y: np.ndarray, a: int, b: int, buf: np.ndarray) -> np.ndarray:
    """Rows ``a:b``, columns ``a:`` of ``XᵀY`` for each head (``Xt`` is ``X`` transposed), written
    into the front of ``buf``: ``(n, b-a, d-a)``."""
    n, d = Xt.shape[0], Xt.shape[1]
    out = buf[: n * (b - a) * (d - a)].reshape(n, b - a, d - a)
    for h in range(n):  # 2-D products: numpy's batched matmul does not always reach BLAS
        np.matmul(Xt[h, a:b], Y[h, :, a:], out=out[h])
    return out


def _trace_product(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``tr(X Y)`` for stacks of symmetric matrices."""
    return (X * Y).sum(axis=(-1, -2))


def composition_ratio(numerator_sq: np.ndarray, writer_norm_sq: np.ndarray, reader_norm_sq: np.ndarray) -> np.ndarray:
    """Scores ``sqrt(numerator_sq / (writer_norm_sq * reader_norm_sq))`` (broadcast), 0 where a
    norm is 0; negative rounding residues of the squares count as 0."""
    den = np.sqrt(np.maximum(writer_norm_sq, 0.0) * np.maximum(reader_norm_sq, 0.0))
    out = np.zeros(np.broadcast(numerator_sq, den).shape)
    ok = den > 0
    np.divide(np.sqrt(np.maximum(numerator_sq, 0.0)), den, out=out, where=ok)
    return out


#: Squared Gram estimates below ``ZERO_FLOOR * eps * d_model * ||R||_F² ||W_OV||_F²`` are
#: recomputed from the small factored product (see the module docstring).
ZERO_FLOOR: float = 64.0


class CompositionParts(NamedTuple):
    """The squared terms of the composition scores of writer layers against reader layers.

    Attributes
    ----------
    numerator_sq : (n_writer_layers, n_heads, n_reader_layers, n_heads)
        Squared numerators ``||R W_OV||_F²``; zero unless the writer's layer is earlier.
    writer_norm_sq : (n_writer_layers, n_heads)
        ``||W_OV||_F²`` of each writer.
    reader_norm_sq : (n_reader_layers, n_heads)
        ``||R||_F²`` of each reader (``R`` the reading map of the kind).
    """

    numerator_sq: np.ndarray
    writer_norm_sq: np.ndarray
    reader_norm_sq: np.ndarray

    def scores(self) -> np.ndarray:
        """The composition scores ``(n_writer_layers, n_heads, n_reader_layers, n_heads)``."""
        return composition_ratio(self.numerator_sq, self.writer_norm_sq[:, :, None, None],
                                 self.reader_norm_sq[None, None, :, :])


def composition_tile(
    writers: HeadWeights, readers: HeadWeights, kinds: Sequence[str] = COMPOSITION_KINDS, *,
    writer_layers: range | None = None, reader_layers: range | None = None,
) -> dict[str, CompositionParts]:
    """The composition parts of one tile: every head of ``writers`` against every head of ``readers``.

    Parameters
    ----------
    writers, readers : HeadWeights
        float64 views of consecutive layers (the same object for a tile of a chunk with itself).
    kinds : sequence of {"q", "k", "v"}
        The kinds to score (the writers' factors are formed once for all of them).
    writer_layers, reader_layers : range, optional
        The model's indices of the layers ``writers`` and ``readers`` hold (default
        ``range(n_layers)``): a pair counts when its writer's layer is earlier.

    Returns
    -------
    dict of str to CompositionParts
        One entry per kind. Pairs whose Gram estimate lies within its error floor are recomputed
        from the small factored product, so structural zeros stay below ``1e-12`` of the
        normalisation in any residual basis (see the module docstring).
    """
    if isinstance(kinds, str) or not isinstance(kinds, Sequence):
        raise InvalidArgumentError(f"kinds={kinds!r}; pass a sequence of 'q', 'k', 'v'.")
    kinds = tuple(dict.fromkeys(check_kind(k) for k in kinds))
    wl = range(writers.n_layers) if writer_layers is None else writer_layers
    rl = range(readers.n_layers) if reader_layers is None else reader_layers
    if len(wl) != writers.n_layers or len(rl) != readers.n_layers:
        raise InvalidArgumentError(
            f"composition_tile: writer_layers={wl} and reader_layers={rl} must have one entry per layer of "
            f"writers ({writers.n_layers}) and readers ({readers.n_layers})."
        )
    H, D, dh = writers.n_heads, writers.d_model, writers.d_head
    w2 = _trace_product(writers.gram("O"), writers.gram("V"))
    mask = np.asarray(wl)[:, None, None, None] < np.asarray(rl)[None, None, :, None]
    # readers from the first layer after the writers' first; writers up to the readers' last
    r0 = sum(1 for l in rl if len(wl) and l <= wl[0])
    w1 = sum(1 for l in wl if len(rl) and l < rl[-1])
    pairs = r0 < len(rl) and w1 > 0
    if pairs:
        needed = np.repeat(np.clip(np.asarray(rl[r0:]) - wl[0], 0, w1) * H, H)  # writers before each reader
        U, V = (x[:w1].reshape(-1, dh, D) for x in writers.writer())
    out = {}
    for kind in kinds:
        if kind == "v":
            r2 = w2 if readers is writers else _trace_product(readers.gram("O"), readers.gram("V"))
        else:
            r2 = _trace_product(readers.gram("Q"), readers.gram("K"))
        numerator_sq = np.zeros((len(wl), H, len(rl), H))
        if pairs:
            G, W = readers.reader(kind)
            X, Y = W[r0:].reshape(-1, dh, D), np.matmul(G[r0:], W[r0:]).reshape(-1, dh, D)
            inner = _gram_inner((X, Y), (U, V), needed)
            del X, Y
            numerator_sq[:w1, :, r0:, :] = inner.reshape(len(rl) - r0, H, w1, H).transpose(2, 3, 0, 1)
        numerator_sq = np.where(mask, np.maximum(numerator_sq, 0.0), 0.0)
        floor = ZERO_FLOOR * np.finfo(np.float64).eps * D * w2[:, :, None, None] * r2[None, None, :, :]
        near_zero = np.argwhere(mask & (numerator_sq <= floor))
        if len(near_zero):
            recomputed = _small_product_numerator_sq(writers, readers, kind, near_zero)
            numerator_sq[tuple(near_zero.T)] = np.maximum(recomputed, 0.0)
        out[kind] = CompositionParts(numerator_sq, w2, r2)
    return out


def _small_product_numerator_sq(writers: HeadWeights, readers: HeadWeights, kind: str, pairs: np.ndarray) -> np.ndarray:
    """Squared numerators of the ``(writer layer, writer head, reader layer, reader head)`` rows of
    ``pairs`` (indices into ``writers`` and ``readers``) from the ``d_head x d_head`` core
    ``C = W_read^h2 W_O^h1``: ``||R W_OV||_F² = <G_read, C (W_V W_Vᵀ)^h1 Cᵀ>``.

    One reader at a time: its cores with all its flagged writers come from one matrix product
    ``W_read (W_O^a | W_O^b | ...)`` (writers in chunks of 256, at most about
    ``256 * d_model * d_head * 8`` bytes gathered at once)."""
    G, W = readers.reader(kind)
    GV = writers.gram("V")
    H, dh = readers.n_heads, readers.d_head
    out = np.empty(len(pairs))
    reader_index = pairs[:, 2] * H + pairs[:, 3]
    for r in np.unique(reader_index):
        rows = np.flatnonzero(reader_index == r)
        l2, h2 = divmod(int(r), H)
        for start in range(0, len(rows), 256):
            idx = rows[start:start + 256]
            l1, h1 = pairs[idx, 0], pairs[idx, 1]
            W_O = np.concatenate(list(writers.W_O[l1, h1]), axis=1)  # (d_model, n * d_head)
            C = (W[l2, h2] @ W_O).reshape(dh, len(idx), dh).swapaxes(0, 1)  # (n, d_head, d_head)
            out[idx] = _trace_product(G[l2, h2], C @ GV[l1, h1] @ C.swapaxes(-1, -2))
    return out


@dataclasses.dataclass(frozen=True)
class _PartsOf:
    """The key of a view's composition parts of one kind (:meth:`HeadWeights.memo`)."""

    kind: str


def _read_only(parts: CompositionParts) -> CompositionParts:
    for a in parts:
        a.flags.writeable = False
    return parts


def composition_parts(w: HeadWeights, kind: str) -> CompositionParts:
    """The :class:`CompositionParts` of every pair of ``w``'s heads (one tile of all layers, see
    :func:`composition_tile`): read-only arrays, computed once per view ``w`` and kind and kept
    with it (the report's scores, baselines and graph all read the same parts)."""
    kind = check_kind(kind)
    return w.memo(_PartsOf(kind), lambda view: _read_only(composition_tile(view, view, (kind,))[kind]))


def scores_from_weights(w: HeadWeights, kind: str) -> np.ndarray:
    """Composition scores ``[L, H, L, H]`` of stacked head weights (see the module docstring)."""
    return composition_parts(w, kind).scores()


def composition_scores(model: Transformer, kind: str) -> np.ndarray:
    """All-pairs composition scores of ``model``'s heads.

    Parameters
    ----------
    model : Transformer
    kind : {"q", "k", "v"}
        Which side of the reader head reads the writer's output (case-insensitive).

    Returns
    -------
    (n_layers, n_heads, n_layers, n_heads) float64 array
        ``scores[l1, h1, l2, h2]`` for writer ``L{l1}H{h1}`` and reader ``L{l2}H{h2}``; zero
        unless ``l1 < l2``. Compare with :func:`composition_baseline`.
    """
    return scores_from_weights(check_model(model).head_weights.float64(), check_kind(kind))


#: Fraction of the baseline sample above which its tail is fitted (see :class:`CompositionBaseline`).
TAIL_FRACTION: float = 0.05


@dataclasses.dataclass(frozen=True)
class CompositionBaseline:
    """The distribution of composition scores between *random* heads of a model's shapes.

    Attributes
    ----------
    kind : str
    mean, std : float
        Mean and standard deviation over ``n_samples`` writer/reader pairs.
    quantile_99 : float
        The 99th percentile: a score above it is unlikely for *one* pair of unrelated heads
        (among thousands of pairs, many exceed it by chance: use :meth:`family_p`).
    n_samples : int
    seed : int
    tail_start, tail_scale : float
        The exponential tail fitted to the sample above its 95th percentile ``tail_start``:
        ``P(score > x) = 0.05 exp(-(x - tail_start) / tail_scale)`` for ``x > tail_start``,
        ``tail_scale`` the mean excess (peaks over threshold). Random-head scores are
        light-tailed (nearly Gaussian), so this tail is conservative: it overstates the
        chance of a large score.
    """

    kind: str
    mean: float
    std: float
    quantile_99: float
    n_samples: int
    seed: int
    tail_start: float = float("nan")
    tail_scale: float = float("nan")

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (random heads, {self.kind.upper()}, n={self.n_samples})"

    def z(self, score: float) -> float:
        """Standard deviations of ``score`` above the random-head mean (for one pair)."""
        return (score - self.mean) / self.std if self.std > 0 else 0.0

    def tail_p(self, score: float) -> float:
        """``P(score' >= score)`` for one pair of random heads (the fitted tail above the 95th
        percentile; the empirical fraction below it is not resolved and reported as >= 0.05)."""
        if not np.isfinite(self.tail_start) or not self.tail_scale > 0:
            raise InvalidArgumentError("this baseline has no fitted tail; make it with ca.composition_baseline(model, kind).")
        if score <= self.tail_start:
            return 1.0
        return TAIL_FRACTION * math.exp(-(score - self.tail_start) / self.tail_scale)

    def family_p(self, score: float, n_pairs: int) -> float:
        """Family-wise p-value of the largest of ``n_pairs`` scores: the chance that the
        maximum over ``n_pairs`` random pairs reaches ``score`` (Šidák, ``1 - (1 - p)^n``,
        with ``p`` from :meth:`tail_p`)."""
        n_pairs = check_int("n_pairs", n_pairs, 1)
        p = self.tail_p(score)
        return float(-math.expm1(n_pairs * math.log1p(-p))) if p < 1 else 1.0

    def threshold(self, n_pairs: int, alpha: float = 0.01) -> float:
        """The score above which the largest of ``n_pairs`` scores is significant at family-wise
        level ``alpha`` (the inverse of :meth:`family_p`)."""
        n_pairs = check_int("n_pairs", n_pairs, 1)
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise InvalidArgumentError(f"alpha={alpha!r}; pass a probability in (0, 1).")
        self.tail_p(self.tail_start)  # raises without a fitted tail
        p = -math.expm1(math.log1p(-alpha) / n_pairs)  # per-pair level (Šidák)
        if p >= TAIL_FRACTION:
            return self.tail_start
        return self.tail_start + self.tail_scale * math.log(TAIL_FRACTION / p)


def valid_pairs(n_layers: int, n_heads: int) -> int:
    """Writer/reader pairs with the writer in an earlier layer: ``n_heads² L (L - 1) / 2``."""
    return n_heads * n_heads * n_layers * (n_layers - 1) // 2


def composition_baseline(
    model: Transformer, kind: str = "k", *, n_samples: int = 4096, seed: int = 0
) -> CompositionBaseline:
    """The random-matrix expectation of a composition score at ``model``'s shapes.

    Draws heads with i.i.d. Gaussian ``W_Q, W_K, W_V, W_O`` of the model's ``d_model`` and
    ``d_head`` (the scores are scale-free) and scores writer/reader pairs with the same
    routine as :func:`composition_scores`. The mean is about ``1/sqrt(d_model)``.

    Parameters
    ----------
    model : Transformer
    kind : {"q", "k", "v"}
    n_samples : int
        At least this many pairs (drawn in batches of up to ``64²`` writer/reader pairs).
    seed : int
        Seed of the generator; equal seeds give equal baselines.
    """
    kind = check_kind(kind)
    return composition_baselines(model, (kind,), n_samples=n_samples, seed=seed)[kind]


def composition_baselines(
    model: Transformer, kinds: Sequence[str] = COMPOSITION_KINDS, *, n_samples: int = 4096, seed: int = 0
) -> dict[str, CompositionBaseline]:
    """:func:`composition_baseline` of several kinds (default all three) from one draw of random
    heads: the draw each kind gets alone with this seed, so the results are equal, at the cost
    of one draw and one writer side.

    Returns a dict kind -> :class:`CompositionBaseline`.
    """
    check_model(model)
    if isinstance(kinds, str) or not isinstance(kinds, Sequence) or not kinds:
        raise InvalidArgumentError(f"kinds={kinds!r}; pass a non-empty sequence of 'q', 'k', 'v'.")
    kinds = tuple(dict.fromkeys(check_kind(k) for k in kinds))
    n_samples = check_int("n_samples", n_samples, 2)
    c = model.config
    D, dh = c.d_model, c.d_head
    H = int(min(64, max(2, math.ceil(math.sqrt(n_samples)))))  # one draw of H x H pairs usually suffices
    rng = np.random.default_rng(seed)
    samples: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    total = 0
    while total < n_samples:
        heads = HeadWeights.from_arrays(*_random_heads(rng, H, dh, D))
        for k in kinds:
            samples[k].append(scores_from_weights(heads, k)[0, :, 1, :].ravel())
        total += samples[kinds[0]][-1].size
    return {k: _baseline_from_samples(k, np.concatenate(samples[k]), seed) for k in kinds}


def _random_heads(rng: np.random.Generator, H: int, dh: int, D: int) -> list[np.ndarray]:
    """``W_Q, W_K, W_V, W_O`` of two layers of ``H`` random heads, drawn in the order of one
    ``(3, 2, H, dh, D)`` draw and one ``(2, H, D, dh)`` draw (so the baselines do not change), one
    stack at a time; the parts a layer-0 -> layer-1 score never reads (layer 0's ``W_Q`` and
    ``W_K``; V-composition reads layer 1's ``W_OV``) are left as zeros (pages never touched)."""
    out = []
    for name, shape in (("Q", (2, H, dh, D)), ("K", (2, H, dh, D)), ("V", (2, H, dh, D)), ("O", (2, H, D, dh))):
        unread = {"Q": 0, "K": 0}.get(name)
        if unread is None:
            out.append(rng.standard_normal(shape))
            continue
        W = np.zeros(shape)
        for layer in range(2):
            part = rng.standard_normal(shape[1:])  # the same numbers as the layer's slice of the full draw
            if layer != unread:
                W[layer] = part
        out.append(W)
    return out


def _baseline_from_samples(kind: str, x: np.ndarray, seed: int) -> CompositionBaseline:
    """The baseline statistics of the sampled scores ``x``."""
    u = float(np.quantile(x, 1.0 - TAIL_FRACTION))
    excess = x[x > u] - u
    scale = float(excess.mean()) if excess.size else float(x.std())
    return CompositionBaseline(
        kind, float(x.mean()), float(x.std()), float(np.quantile(x, 0.99)), int(x.size), seed, u, scale
    )
