"""Full-OV spectra and all-pairs composition scores of every head of a checkpoint too large to
load whole, streamed from disk.

This module plans, tiles and schedules; reading and arithmetic are the in-memory library's. A
checkpoint (safetensors, sharded or not, float32/float16/bfloat16) is opened as
:func:`~circuitalg.load` opens it (:func:`~circuitalg.model.checkpoint.open_checkpoint`: the
loader's own key tables and config rules), and a task reads only its layers' attention tensors,
folded by the model view's own code (:meth:`~circuitalg.model.checkpoint.Checkpoint.head_weights`).

:func:`stream_full_ov` reads a Hugging Face Llama-layout checkpoint (``llama``, ``mistral``,
``qwen2``, ``qwen3``, ``gemma2``, ``gemma3``, ``olmo2``, ``phi3``) one tensor at a time, the
vocabulary by row tiles through memory maps, never holding more than a stated budget, and
computes for every head the singular values and eigenvalues of the full OV circuit
``W_U W_O W_V W_E`` of the model's view (every norm weight folded into the maps it multiplies, as
:func:`~circuitalg.fold_layer_norm` folds them), and the copying score. MLP weights are never read.

Everything is computed in float64 from three ``d_model x d_model`` matrices accumulated over
vocabulary row tiles (``W_E``'s and ``W_U``'s Gram matrices, and ``W_E W_U``) and, per layer,
that layer's value and output projections: a head's singular values are those of
``R_U W_O W_V R_Eᵀ`` (``R`` the Cholesky factors of the Gram matrices) and its eigenvalues
those of ``W_V (W_E W_U) W_O`` (``d_head x d_head``). :func:`plan_full_ov` states the FLOP
count and peak memory before anything runs. Layers are independent tasks: pass a
``dask.distributed`` client to run them on its workers (the ``dask`` extra); the results are the
same.

:func:`stream_composition` computes the Q-, K- and V-composition scores of every pair of heads:
the layers are split into chunks sized so that two chunks fit the budget, and each tile (a
writer chunk and an equal or later reader chunk) reads only those layers' attention weights and
scores its pairs with the in-memory kernel
(:func:`~circuitalg.circuits.composition.composition_tile`; :func:`plan_composition` states the
tiling, FLOPs and peak memory first); tiles are dask tasks when a client is given. It reads any
layout :func:`~circuitalg.load` reads from safetensors files.

Both leave NumPy's huge-page advice as the caller's :class:`~circuitalg.runtime.Runtime` has it:
their large arrays (vocabulary tiles, a tile's stacked heads) feed long BLAS products, which
huge pages speed up; enter ``Runtime(hugepage_advice=False)`` where free memory is fragmented.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg as sla

from circuitalg.circuits.composition import CompositionParts, check_kind, composition_tile
from circuitalg.errors import ConfigError, LoadError, PrecisionWarning, TooLargeError, check_int
from circuitalg.linalg.accuracy import (
    eigen_conditions_many,
    eigenvalue_error,
    error_bound,
    norm2_bound,
    stacked_norm2_bounds,
    warn_rtol,
)
from circuitalg.linalg.factors import Gram, gram_error_bound, gram_gamma, tied_gram
from circuitalg.linalg.ties import TiedForm
from circuitalg.model.checkpoint import Checkpoint, open_checkpoint
from circuitalg.model.config import TransformerConfig
from circuitalg.model.tensorfiles import SafetensorsSource

__all__ = [
    "CompositionPlan", "CompositionResult", "FullOVPlan", "FullOVResult", "plan_composition", "plan_full_ov",
    "stream_composition", "stream_full_ov",
]


def _open(directory: str | Path) -> Checkpoint:
    """The checkpoint in ``directory`` as :func:`~circuitalg.load` opens it (its tensors are read by
    layers and vocabulary rows, within the caller's budget, so no file-size limit applies)."""
    if not Path(directory).exists():
        raise LoadError(f"{directory}: no such checkpoint directory (a Hugging Face folder of safetensors files).")
    ckpt = open_checkpoint(directory, max_bytes=1 << 62)
    if not isinstance(ckpt.tensors, SafetensorsSource):
        raise LoadError(
            f"{directory}: circuitalg.streaming reads safetensors checkpoints (a Hugging Face directory or a "
            ".safetensors file), whose tensors it maps by rows; load other formats with ca.load."
        )
    return ckpt


def _checkpoint(where: Checkpoint | str) -> Checkpoint:
    """``where`` itself, or the checkpoint in directory ``where`` (a dask task opens its own)."""
    return where if isinstance(where, Checkpoint) else _open(where)


def _vocabulary_tied(ckpt: Checkpoint) -> bool:
    """Whether ``W_U = W_Eᵀ`` (the vocabulary's rows read once); :class:`ConfigError` for layouts
    whose vocabulary cannot be read by rows."""
    try:
        return ckpt.reader.vocabulary_tied()
    except ConfigError:
        raise ConfigError(
            f"{ckpt.source}: stream_full_ov reads the vocabulary of Hugging Face Llama-layout checkpoints by rows "
            "(llama, mistral, qwen2, qwen3, gemma2, gemma3, olmo2, phi3); this checkpoint's layout is another."
        ) from None


@dataclasses.dataclass(frozen=True)
class FullOVPlan:
    """What :func:`stream_full_ov` will do: sizes, FLOPs and the peak memory of its arrays."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    tile_rows: int
    flops: float
    peak_bytes: int
    budget_bytes: int

    def __str__(self) -> str:
        return (f"full-OV spectra of {self.n_layers * self.n_heads:,} heads ({self.n_layers} layers x {self.n_heads}, "
                f"d_model {self.d_model}, d_head {self.d_head}, vocab {self.d_vocab:,}): about {self.flops:.2e} FLOP "
                f"in float64, peak {self.peak_bytes / 2**30:.2f} GiB of arrays (budget "
                f"{self.budget_bytes / 2**30:.2f} GiB; vocabulary tiles of {self.tile_rows:,} rows)")


@dataclasses.dataclass(frozen=True)
class FullOVResult:
    """Per head (``[n_layers, n_heads, d_head]``): singular values (descending) and eigenvalues
    (descending magnitude) of the full OV circuit, and the copying score ``Σ Re λ / Σ |λ|``.

    ``singular_value_error`` and ``eigenvalue_error`` (``[n_layers, n_heads]``) are the a-priori
    bounds of :mod:`circuitalg.linalg.accuracy` for each head, as the in-memory routines state
    them: every singular value is within ``singular_value_error`` of the exact one, and every
    eigenvalue above the noise floor ``sqrt(bound · ‖W_U‖‖W_O‖‖W_V‖‖W_E‖)`` within
    ``eigenvalue_error`` (0 when the whole spectrum is below the floor)."""

    singular_values: np.ndarray
    eigenvalues: np.ndarray
    copying: np.ndarray
    plan: FullOVPlan
    singular_value_error: np.ndarray
    eigenvalue_error: np.ndarray


def plan_full_ov(directory: str | Path, budget_bytes: int = 8 << 30) -> FullOVPlan:
    """The sizes, FLOP count and peak array memory of :func:`stream_full_ov` on ``directory``;
    :class:`TooLargeError` when even the smallest tiles do not fit ``budget_bytes``."""
    check_int("budget_bytes", budget_bytes, 1)  # the arguments before the files
    return _plan_full_ov(_open(directory), budget_bytes)


def _plan_full_ov(ckpt: Checkpoint, budget_bytes: int) -> FullOVPlan:
    budget = check_int("budget_bytes", budget_bytes, 1)
    c = ckpt.config
    tied = _vocabulary_tied(ckpt)
    D, dh, V, H, L = c.d_model, c.d_head, c.d_vocab, c.n_heads, c.n_layers
    fixed = 3 * D * D * 8 + 2 * D * D * 8  # G_E / R_E, G_U / R_U, W_E W_U; a D x D temporary pair
    layer = (c.kv_heads * dh * D + D * H * dh) * 8 * 3  # one layer's V and O projections (+ folded copies)
    per_row = 2 * D * 8 * 2  # a tile of W_E and of W_U rows, read and widened
    room = budget - fixed - layer
    if room < per_row:
        raise TooLargeError(
            f"stream_full_ov: d_model={D} needs at least {(fixed + layer + per_row) / 2**30:.2f} GiB; "
            f"budget_bytes={budget} is smaller."
        )
    tile = int(min(V, room // per_row))
    kv = c.kv_heads
    vocab_products = 1 if tied else 3  # tied: W_E's Gram matrix only
    flops = (vocab_products * 2.0 * V * D * D + 2 * 4.0 * D**3  # the Gram matrices' spectra (error bounds)
             + L * (kv * 2 * 2.0 * D * D * dh + (kv + H) * 2.0 * D * dh * dh  # per layer: the value side, norms
                    + H * (2.0 * D * D * dh + 2.0 * D * dh * dh + 40.0 * dh**3)))  # per head: QR, SVD, eig with vectors
    return FullOVPlan(L, H, c.kv_heads, D, dh, V, tile, flops, fixed + layer + tile * per_row, budget)


def _layer_spectra(where: Checkpoint | str, layer: int, R_E: np.ndarray, R_U: np.ndarray, M: np.ndarray,
                   vocab_norms: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Singular values and eigenvalues ``[n_heads, d_head]`` of one layer's heads, and their error
    bounds ``[n_heads]`` (a dask task). ``vocab_norms``: bounds on ``‖W_E‖₂`` and ``‖W_U‖₂``, and
    the Gram-factor penalty of ``R_E`` and ``R_U`` (their larger condition number)."""
    ckpt = _checkpoint(where)
    c = ckpt.config
    dh, H, kv = c.d_head, c.n_heads, c.kv_heads
    proj = ckpt.attention(range(layer, layer + 1), ("V", "O"))  # folded as the model view holds them
    W_V = proj[f"blocks.{layer}.attn.W_V"]  # (n_kv_heads, d_head, d_model)
    W_O = np.ascontiguousarray(proj.pop(f"blocks.{layer}.attn.W_O"))  # (n_heads, d_model, d_head)
    sv = np.zeros((H, dh))
    ev = np.zeros((H, dh), dtype=np.complex128)
    # the value side is shared by the query heads of a key/value group: once per group
    rb = [np.linalg.qr((W_V[g] @ R_E.T).T, mode="r") for g in range(kv)]  # W_V W_E's triangular factor
    VM = [W_V[g] @ M for g in range(kv)]  # W_V (W_E W_U)
    cores = np.stack([VM[c.kv_head(h)] @ W_O[h] for h in range(H)])
    for h in range(H):
        ra = np.linalg.qr(R_U @ W_O[h], mode="r")  # ||W_U W_O x|| = ||R_U W_O x||
        sv[h] = sla.svdvals(ra @ rb[c.kv_head(h)].T)
    # a-priori bounds, as accuracy() states them for the chain W_U W_O W_V W_E (4 leaves, float64)
    n_E, n_U, penalty = vocab_norms
    n_V = stacked_norm2_bounds(np.stack(W_V))
    n_O = stacked_norm2_bounds(np.stack(W_O))
    d_max = max(c.d_vocab, c.d_model)
    sv_err, ev_err = np.zeros(H), np.zeros(H)
    for h, (lam, cond) in enumerate(eigen_conditions_many(cores)):
        order = np.argsort(-np.abs(lam), kind="stable")
        ev[h] = lam[order]
        mag = n_U * n_O[h] * n_V[c.kv_head(h)] * n_E
        sv_err[h] = error_bound(4, d_max, mag, np.float64, penalty)
        acc = error_bound(4, d_max, mag, np.float64)  # the eigenvalue route factors nothing
        ev_err[h] = eigenvalue_error(lam[order], cond[order], acc, mag)
    return sv, ev, sv_err, ev_err


def stream_full_ov(
    directory: str | Path, *, budget_bytes: int = 8 << 30, client: Any = None,
    log: Callable[[str], None] | None = None,
) -> FullOVResult:
    """Full-OV singular values, eigenvalues and copying scores of every head of a Llama-family
    checkpoint in ``directory``, streamed tensor by tensor within ``budget_bytes`` of arrays (see
    the module docstring). ``client``: a ``dask.distributed.Client``, to run the layers on its
    workers (each reads its layer's tensors itself); ``log`` gets the plan and progress lines."""
    check_int("budget_bytes", budget_bytes, 1)  # the arguments before the files
    return _stream_full_ov(directory, budget_bytes, client, log or (lambda _m: None))


def _stream_full_ov(directory: str | Path, budget_bytes: int, client: Any, log: Callable[[str], None]) -> FullOVResult:
    ckpt = _open(directory)
    plan = _plan_full_ov(ckpt, budget_bytes)
    log(str(plan))
    c, reader = ckpt.config, ckpt.reader
    D, V = c.d_model, c.d_vocab
    tied = reader.vocabulary_tied()
    final = reader.final_norm()
    if set(final) != {"ln_final.w"}:
        raise ConfigError(
            f"{ckpt.source}: stream_full_ov folds an RMSNorm's weight into W_U; this model has {sorted(final)}."
        )
    wf = np.asarray(final["ln_final.w"], dtype=np.float64)
    G_E = np.zeros((D, D))
    G_U = np.zeros((D, D))
    M = np.zeros((D, D))
    for start in range(0, V, plan.tile_rows):
        stop = min(V, start + plan.tile_rows)
        E = reader.embedding_rows(start, stop).astype(np.float64)  # (rows, D): W_E's columns
        G_E += E.T @ E
        if not tied:
            U = reader.unembedding_rows(start, stop).astype(np.float64) * wf  # folded: W_U diag(w)
            G_U += U.T @ U
            M += E.T @ U  # W_E W_U = Σ_tiles Eᵀ U
    gamma = gram_gamma(V, V, np.float64, True)  # sums of V rows in float64
    gram_E = Gram(G_E, gram_error_bound(float(np.trace(G_E)), gamma), True)
    if tied:  # W_U = W_Eᵀ diag(w): both follow from W_E's Gram matrix (a third of the vocabulary work)
        form = TiedForm(wf, centred=False)
        gram_U, M = tied_gram(form, gram_E), form.times_right(G_E)
    else:
        gram_U = Gram(G_U, gram_error_bound(float(np.trace(G_U)), gamma), True)
    R_E = sla.cholesky(gram_E.G, lower=False)
    R_U = sla.cholesky(gram_U.G, lower=False)
    log("vocabulary Gram matrices and W_E W_U done")
    norms = _vocab_norms(gram_E, gram_U)
    if client is not None:
        shared = client.scatter([R_E, R_U, M], broadcast=True)
        futures = [client.submit(_layer_spectra, str(directory), l, *shared, norms, pure=False)
                   for l in range(c.n_layers)]
        parts = client.gather(futures)
    else:
        parts = [_layer_spectra(ckpt, l, R_E, R_U, M, norms) for l in range(c.n_layers)]
    sv, ev, sv_err, ev_err = (np.stack([p[i] for p in parts]) for i in range(4))
    mag = np.abs(ev).sum(axis=-1)
    copying = np.divide(ev.real.sum(axis=-1), mag, out=np.zeros_like(mag), where=mag > 0)
    _warn_imprecise(sv[..., 0], sv_err, np.abs(ev[..., 0]), ev_err)
    return FullOVResult(sv, ev, copying, plan, sv_err, ev_err)


def _vocab_norms(gram_E: Gram, gram_U: Gram) -> tuple[float, float, float]:
    """Bounds on ``‖W_E‖₂`` and ``‖W_U‖₂`` from their Gram matrices (with their rounding ``err2``),
    and the Gram-factor penalty of the Cholesky factors ``R_E``, ``R_U`` (the larger
    ``sqrt(λmax / λmin)``; ``inf`` for a singular Gram matrix), from one ``eigvalsh`` each."""
    norms, penalty = [], 1.0
    for g in (gram_E, gram_U):
        lam = np.linalg.eigvalsh(g.G)
        norms.append(norm2_bound(float(lam[-1]), g.G.shape[0], g.err2))
        penalty = max(penalty, math.sqrt(lam[-1] / lam[0]) if lam[0] > 0 else math.inf)
    return norms[0], norms[1], penalty


def _warn_imprecise(s1: np.ndarray, sv_err: np.ndarray, l1: np.ndarray, ev_err: np.ndarray) -> None:
    """One :class:`PrecisionWarning` naming the heads whose bounds exceed ``warn_rtol`` of their
    largest singular value or eigenvalue magnitude (as the in-memory routines warn per map)."""
    rtol = warn_rtol(np.float64)
    for what, bound, scale in (("singular values", sv_err, s1), ("eigenvalues", ev_err, l1)):
        bad = np.argwhere((bound > rtol * scale) & (bound > 0))
        if len(bad):
            names = ", ".join(f"L{l}H{h}" for l, h in bad[:8]) + (" ..." if len(bad) > 8 else "")
            warnings.warn(PrecisionWarning(
                f"stream_full_ov: the full-OV {what} of {len(bad)} of {bound.size} heads ({names}) may be inaccurate: "
                f"their a-priori error bounds exceed {rtol:.2g} of the head's largest value (see "
                f"FullOVResult.{'singular_value_error' if what[0] == 's' else 'eigenvalue_error'})."), stacklevel=3)


# -- all-pairs composition scores, tiled over layer chunks --------------------------------------


@dataclasses.dataclass(frozen=True)
class CompositionPlan:
    """What :func:`stream_composition` will do: layer chunks, tiles, FLOPs and peak array memory."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    kinds: tuple[str, ...]
    chunk_layers: int
    n_tiles: int
    flops: float
    peak_bytes: int
    budget_bytes: int

    def __str__(self) -> str:
        n = self.n_layers * self.n_heads
        return (f"{'/'.join(k.upper() for k in self.kinds)}-composition scores of all {n * n:,} head pairs "
                f"({self.n_layers} layers x {self.n_heads} heads, d_model {self.d_model}, d_head {self.d_head}): "
                f"{self.n_tiles} tiles of {self.chunk_layers}-layer chunks, about {self.flops:.2e} FLOP in float64, "
                f"peak {self.peak_bytes / 2**30:.2f} GiB of arrays (budget {self.budget_bytes / 2**30:.2f} GiB)")


@dataclasses.dataclass(frozen=True)
class CompositionResult:
    """``scores[kind]``: ``[n_layers, n_heads, n_layers, n_heads]`` composition scores (writer
    first; zero unless the writer's layer is earlier), as :func:`~circuitalg.composition_scores`
    computes them on the loaded, folded model."""

    scores: dict[str, np.ndarray]
    plan: CompositionPlan


def _tile_bytes(c: TransformerConfig, layers: int) -> int:
    """Peak array bytes of one tile with ``layers`` layers in all (writers and readers): per layer
    the four stacked projections, one reader and one writer factor, their contiguous copies and
    64-row block buffers (see :func:`~circuitalg.circuits.composition.composition_tile`)."""
    return layers * c.n_heads * c.d_model * 8 * (6 * c.d_head + 2 * 64)


def _tiles(n_layers: int, chunk: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(writer layers, reader layers) ranges of every tile with valid pairs (writer chunk <= reader chunk)."""
    chunks = [(a, min(n_layers, a + chunk)) for a in range(0, n_layers, chunk)]
    return [(chunks[i], chunks[j]) for i in range(len(chunks)) for j in range(i, len(chunks))
            if chunks[i][0] < chunks[j][1] - 1]


def plan_composition(
    directory: str | Path, kinds: tuple[str, ...] = ("q", "k", "v"), budget_bytes: int = 8 << 30
) -> CompositionPlan:
    """The tiling, FLOP count and peak array memory of :func:`stream_composition` on ``directory``;
    :class:`TooLargeError` when a tile of two single layers does not fit ``budget_bytes``."""
    check_int("budget_bytes", budget_bytes, 1)  # the arguments before the files
    kinds = tuple(dict.fromkeys(check_kind(k) for k in kinds))
    return _plan_composition(_open(directory), kinds, budget_bytes)


def _plan_composition(ckpt: Checkpoint, kinds: tuple[str, ...], budget_bytes: int) -> CompositionPlan:
    budget = check_int("budget_bytes", budget_bytes, 1)
    kinds = tuple(dict.fromkeys(check_kind(k) for k in kinds))
    c = ckpt.config
    if _tile_bytes(c, 2) > budget:
        raise TooLargeError(
            f"stream_composition: a tile of two layers at d_model={c.d_model} needs {_tile_bytes(c, 2) / 2**30:.2f} GiB; "
            f"budget_bytes={budget} is smaller."
        )
    chunk = max(1, min(c.n_layers, budget // _tile_bytes(c, 2)))
    tiles = _tiles(c.n_layers, chunk)
    H, D, dh = c.n_heads, c.d_model, c.d_head
    flops = 0.0
    for (a0, a1), (b0, b1) in tiles:
        nA, nB = (a1 - a0) * H, (b1 - b0) * H
        flops += len(kinds) * ((nA + nB) * D * D * dh + nA * nB * D * D + 2.0 * (nA + nB) * dh * dh * D)
    return CompositionPlan(c.n_layers, H, D, dh, kinds, chunk, len(tiles), flops, _tile_bytes(c, 2 * chunk), budget)


def _composition_tile(where: Checkpoint | str, kinds: tuple[str, ...], writers: tuple[int, int],
                      readers: tuple[int, int]) -> dict[str, CompositionParts]:
    """Per kind, the composition parts of one tile: the heads of layers ``writers`` against those
    of layers ``readers``, read and folded as the loaded model's view holds them (a dask task)."""
    ckpt = _checkpoint(where)
    A = ckpt.head_weights(range(*writers))
    B = A if writers == readers else ckpt.head_weights(range(*readers))
    return composition_tile(A, B, kinds, writer_layers=range(*writers), reader_layers=range(*readers))


def stream_composition(
    directory: str | Path, kinds: tuple[str, ...] = ("q", "k", "v"), *, budget_bytes: int = 8 << 30,
    client: Any = None, log: Callable[[str], None] | None = None,
) -> CompositionResult:
    """All-pairs composition scores of a Llama-family checkpoint in ``directory`` too large to load
    whole: the layers are split into chunks that fit ``budget_bytes`` in pairs, and each tile
    (an earlier or equal writer chunk, a reader chunk) reads its layers' attention weights
    through memory maps, folds the input norms and scores its pairs with the engine of
    :func:`~circuitalg.composition_scores` (so scores equal the in-memory ones). MLP and vocabulary
    weights are never read. ``client``: a ``dask.distributed.Client`` to run the tiles on its
    workers; ``log`` gets the plan and one line per tile."""
    check_int("budget_bytes", budget_bytes, 1)  # the arguments before the files
    for k in kinds:
        check_kind(k)
    return _stream_composition(directory, kinds, budget_bytes, client, log or (lambda _m: None))


def _stream_composition(directory: str | Path, kinds: tuple[str, ...], budget_bytes: int, client: Any,
                        log: Callable[[str], None]) -> CompositionResult:
    ckpt = _open(directory)
    plan = _plan_composition(ckpt, kinds, budget_bytes)
    log(str(plan))
    L, H = plan.n_layers, plan.n_heads
    tiles = _tiles(L, plan.chunk_layers)
    numerator_sq = {k: np.zeros((L, H, L, H)) for k in plan.kinds}
    writer_norm_sq = np.zeros((L, H))
    reader_norm_sq = {k: np.zeros((L, H)) for k in plan.kinds}
    if client is not None:
        futures = [client.submit(_composition_tile, str(directory), plan.kinds, a, b, pure=False) for a, b in tiles]
        parts = client.gather(futures)
    else:
        parts = []
        for i, (a, b) in enumerate(tiles):
            parts.append(_composition_tile(ckpt, plan.kinds, a, b))
            log(f"tile {i + 1}/{len(tiles)}: writers L{a[0]}-{a[1] - 1}, readers L{b[0]}-{b[1] - 1}")
    for ((a0, a1), (b0, b1)), part in zip(tiles, parts):
        for k, tile in part.items():
            numerator_sq[k][a0:a1, :, b0:b1, :] = tile.numerator_sq
            writer_norm_sq[a0:a1] = tile.writer_norm_sq
            reader_norm_sq[k][b0:b1] = tile.reader_norm_sq
    scores = {k: CompositionParts(numerator_sq[k], writer_norm_sq, reader_norm_sq[k]).scores() for k in plan.kinds}
    return CompositionResult(scores, plan)
