"""Co-activation statistics of dictionary features, and the global weights built from them.

Ameisen et al. (2025), "Circuit Tracing: Revealing Computational Graphs in Language Models",
section "Global Weights" (transformer-circuits.pub/2025/attribution-graphs/methods.html), weigh
the virtual weight ``V[t, s]`` of source feature ``s`` into target feature ``t`` (here any map of
:mod:`circuitalg.features.circuits`, e.g. the residual-direct :func:`virtual_weights`) by how the
features occur together on data:

- expected residual attribution, ``ERA[t, s] = V[t, s] · E[a_s]``: the residual attribution
  ``a_s V[t, s]`` of a token averaged over tokens (here with the norm scales frozen, as in every
  weight-based number);
- target-weighted expected residual attribution,
  ``TWERA[t, s] = V[t, s] · E[a_s a_t] / E[a_t]``: the virtual weight times the source's mean
  activation weighted by the target's activation, which keeps only pairs that co-occur (and is 0
  where ``E[a_t] = 0``).

Expectations are over the token positions given (every position of every sequence, less
``skip_first`` leading positions per sequence). Features are sparse, so the second moments are
accumulated as ``scipy.sparse`` matrices of the co-active pairs, never ``F x F`` dense; TWERA is
evaluated on those pairs only and is a sparse matrix, exactly zero elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from circuitalg.errors import ConfigError, InvalidArgumentError, ShapeError, check_int
from circuitalg.features.binding import BoundDictionary, bind
from circuitalg.features.circuits import (
    FeatureWeight,
    FeatureWeights,
    WeightCertificate,
    axis_id,
    pair_dots,
    weight_factors,
)
from circuitalg.features.dictionary import Dictionary, DictionarySet
from circuitalg.features.hooks import Hook, HookKind
from circuitalg.maps.nodes import LinearMap
from circuitalg.maps.rules import compose, diagonal
from circuitalg.model.forward import Cache, run_batch
from circuitalg.model.weights import Transformer, require_model

__all__ = ["CoactivationStats", "coactivation_stats", "hook_activations", "era", "twera", "top_twera"]


@dataclasses.dataclass(frozen=True, eq=False)
class CoactivationStats:
    """First and second moments of feature activations over ``n_tokens`` token positions.

    Attributes
    ----------
    n_tokens : int
    means : mapping of str to (F,) float64 array
        ``E[a_f]`` per dictionary (feature-space) name.
    comoments : mapping of (str, str) to scipy.sparse.csr_array
        ``E[a_x a_y]`` (``F_x x F_y``), one per unordered pair of dictionaries (read with
        :meth:`comoment`, which transposes as needed).
    """

    n_tokens: int
    means: Mapping[str, np.ndarray]
    comoments: Mapping[tuple[str, str], Any]

    def mean(self, name: str) -> np.ndarray:
        """``E[a]`` of dictionary ``name``'s features."""
        if name not in self.means:
            raise InvalidArgumentError(f"no statistics for dictionary {name!r}; these cover {sorted(self.means)}.")
        return self.means[name]

    def comoment(self, target: str, source: str) -> sp.csr_array:
        """``E[a_t a_s]`` as a sparse ``F_t x F_s`` matrix."""
        if (target, source) in self.comoments:
            return self.comoments[(target, source)]
        if (source, target) in self.comoments:
            return sp.csr_array(self.comoments[(source, target)].T)
        raise InvalidArgumentError(
            f"no co-activation statistics for ({target!r}, {source!r}); these cover {sorted(self.comoments)}."
        )

    @classmethod
    def from_activations(cls, activations: Mapping[str, Any]) -> CoactivationStats:
        """The statistics of given activations: ``{name: (n_tokens, F) array or sparse matrix}``,
        the same token positions in every entry."""
        acts = {}
        n = None
        for name, a in activations.items():
            m = sp.csr_array(a, dtype=np.float64)
            if m.ndim != 2:
                raise ShapeError(f"activations of {name!r} must be (n_tokens, F), got shape {m.shape}.")
            if n is not None and m.shape[0] != n:
                raise ShapeError(f"activations of {name!r} have {m.shape[0]} rows, the others {n}; give the same tokens.")
            n = m.shape[0]
            acts[name] = m
        if not acts or not n:
            raise InvalidArgumentError("from_activations: give at least one dictionary's activations on at least one token.")
        acc = _Accumulator(list(acts))
        acc.add(acts)
        return acc.stats()


class _Accumulator:
    """Sums of activations and of their pairwise products over batches of tokens."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.n = 0
        self.sums: dict[str, np.ndarray] = {}
        self.prods: dict[tuple[str, str], sp.csr_array] = {}

    def add(self, acts: Mapping[str, sp.csr_array]) -> None:
        self.n += next(iter(acts.values())).shape[0]
        for a, name in enumerate(self.names):
            x = acts[name]
            s = np.asarray(x.sum(axis=0)).ravel()
            self.sums[name] = s if name not in self.sums else self.sums[name] + s
            for other in self.names[a:]:
                p = sp.csr_array(x.T @ acts[other])
                key = (name, other)
                self.prods[key] = p if key not in self.prods else self.prods[key] + p

    def stats(self) -> CoactivationStats:
        n = self.n
        means = {k: v / n for k, v in self.sums.items()}
        comoments = {k: sp.csr_array(v / n) for k, v in self.prods.items()}
        for v in comoments.values():
            v.eliminate_zeros()
        return CoactivationStats(n, means, comoments)


def hook_activations(model: Transformer, cache: Cache, hook: Hook, *, fold_ln: bool = False,
                     center_writing_weights: bool = False) -> np.ndarray:
    """The activations at ``hook`` of a batched forward pass (:func:`~circuitalg.model.forward.run_batch`):
    ``(batch, seq, d)``.

    The residual hooks and the attention/MLP outputs are read from the cache; the MLP input is
    the residual stream the MLP reads, normalised by ``ln2`` (its cached scale), times ``ln2``'s
    weight plus its bias from ``model.params`` (:attr:`HookKind.MLP_IN`), or without them
    (:attr:`HookKind.MLP_NORMALIZED`, and ``MLP_IN`` with ``fold_ln``: TransformerLens folds the
    weight into ``W_in``); ``attn.hook_z`` has the heads concatenated. With
    ``center_writing_weights`` the residual stream and the outputs written into it are centred,
    as TransformerLens's preprocessing makes them.
    """
    model = require_model(model, "hook_activations")
    c = model.config
    if not isinstance(hook, Hook) or hook.layer >= c.n_layers:
        raise InvalidArgumentError(f"hook_activations: {hook!r} is not a hook of {model.name} ({c.n_layers} layers).")
    if cache.resid.ndim != 4:
        raise ShapeError("hook_activations takes the cache of run_batch (arrays with a leading batch axis).")
    l, kind = hook.layer, hook.kind
    if kind is HookKind.MLP_IN and fold_ln:
        kind = HookKind.MLP_NORMALIZED
    if kind in (HookKind.MLP_OUT, HookKind.MLP_IN, HookKind.MLP_NORMALIZED) and cache.mlp_out is None:
        raise ConfigError(f"hook_activations: {model.name} is attention-only; it has no {hook}.")
    if kind is HookKind.RESID_PRE:
        x = cache.resid[:, l]
    elif kind is HookKind.RESID_POST:
        x = cache.resid[:, l + 1]
    elif kind is HookKind.RESID_MID:
        x = cache.resid_mid[:, l]
    elif kind is HookKind.MLP_OUT:
        x = cache.mlp_out[:, l]
    elif kind is HookKind.ATTN_OUT:
        x = cache.attn_out[:, l]
    elif kind is HookKind.ATTN_Z:
        z = cache.z[:, l]  # (batch, heads, seq, d_head)
        return np.ascontiguousarray(np.moveaxis(z, 1, 2).reshape(z.shape[0], z.shape[2], -1))
    else:  # the MLP's input
        x = cache.resid[:, l] if c.parallel_attn_mlp else cache.resid_mid[:, l]
        if model.layers[l].ln2 is not None:
            if c.centred_norm:
                x = x - x.mean(axis=-1, keepdims=True)
            x = x / cache.ln2_scale[:, l][..., None]
            if kind is HookKind.MLP_IN:
                w, b = model.stored_norm(l, "ln2")
                if w is None:
                    raise ConfigError(
                        f"hook_activations: {hook} is the MLP input after ln2's weight, but {model.name} has its norms "
                        "folded; use the unfolded model, or MLP_NORMALIZED."
                    )
                x = x * w
                if b is not None:
                    x = x + b
        return x
    if center_writing_weights:
        x = x - x.mean(axis=-1, keepdims=True)
    return x


def _flatten(dictionaries: Any, model: Transformer) -> list[BoundDictionary]:
    items = [dictionaries] if isinstance(dictionaries, (Dictionary, DictionarySet, BoundDictionary)) else list(dictionaries)
    out: list[BoundDictionary] = []
    for d in items:
        if isinstance(d, DictionarySet):
            out += list(bind(d, model))
        elif isinstance(d, Dictionary):
            out.append(bind(d, model))
        elif isinstance(d, BoundDictionary):
            if d.model is not model:
                raise ConfigError(
                    f"coactivation_stats: {d.name!r} is bound to {d.model.name!r}, not to the model given; bind it to it."
                )
            out.append(d)
        elif isinstance(d, (tuple, list)):
            out += _flatten(d, model)
        else:
            raise InvalidArgumentError(
                f"coactivation_stats takes dictionaries (Dictionary, DictionarySet or BoundDictionary), got {type(d).__name__}."
            )
    names = [b.name for b in out]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"coactivation_stats: dictionary names repeat ({names}); each needs its own name.")
    if not out:
        raise InvalidArgumentError("coactivation_stats: no dictionaries given.")
    return out


def coactivation_stats(model: Transformer, dictionaries: Any, tokens: Any, *, batch_size: int = 16,
                       skip_first: int = 0) -> CoactivationStats:
    """Measure ``E[a]`` and ``E[a_x a_y]`` of the dictionaries' features on token sequences.

    Parameters
    ----------
    model : Transformer
    dictionaries : Dictionary, DictionarySet, BoundDictionary or a sequence of them
        Bound to ``model`` (unbound ones are bound here, which checks their hooks).
    tokens : (n_sequences, seq) int array
        Run with :func:`~circuitalg.model.forward.run_batch`, ``batch_size`` sequences at a time.
    skip_first : int
        Leading positions of every sequence left out of the statistics (e.g. a BOS token).

    Returns
    -------
    CoactivationStats
        Each dictionary's features encoded from its read hooks (:func:`hook_activations`) with
        its own activation (:meth:`Dictionary.encode`).
    """
    model = require_model(model, "coactivation_stats")
    bounds = _flatten(dictionaries, model)
    tok = np.asarray(tokens)
    if tok.ndim != 2 or tok.shape[0] < 1 or tok.dtype.kind not in "iu":
        raise ShapeError(f"coactivation_stats: tokens must be (n_sequences, seq) integer ids, got {tok.dtype} {tok.shape}.")
    batch_size = check_int("batch_size", batch_size, 1)
    skip_first = check_int("skip_first", skip_first, 0, tok.shape[1] - 1, " (fewer than the sequence length)")
    acc = _Accumulator([b.name for b in bounds])
    for s in range(0, tok.shape[0], batch_size):
        _, cache = run_batch(model, tok[s:s + batch_size], unembed=False)
        acts = {}
        for b in bounds:
            d = b.dictionary
            xs = [hook_activations(model, cache, h, fold_ln="fold_ln" in d.preprocessing,
                                   center_writing_weights="center_writing_weights" in d.preprocessing)[:, skip_first:]
                  for h in d.reads]
            rows = [x.reshape(-1, x.shape[-1]) for x in xs]
            acts[b.name] = sp.csr_array(d.encode(rows if len(rows) > 1 else rows[0]).astype(np.float64, copy=False))
        acc.add(acts)
    return acc.stats()


def _names(m: LinearMap, what: str) -> tuple[str, str]:
    if not isinstance(m, LinearMap):
        raise InvalidArgumentError(f"{what} takes a feature map (ca.LinearMap, e.g. virtual_weights(s, t)), got {type(m).__name__}.")
    return m.codomain.name, m.domain.name


def _vector(x: Any, n: int, what: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise ShapeError(f"{what} must be a finite ({n},) vector, got shape {v.shape}.")
    return v


def era(weights: LinearMap, source_mean: Any) -> LinearMap:
    """Expected residual attribution ``ERA[t, s] = V[t, s] E[a_s]``: the lazy map ``V diag(E[a_s])``
    (``F_s -> F_t``; :func:`~circuitalg.features.circuits.top_feature_weights` ranks it).

    Parameters
    ----------
    weights : LinearMap
        ``V``, e.g. :func:`~circuitalg.features.circuits.virtual_weights` (source -> target).
    source_mean : (F_s,) array or CoactivationStats
        ``E[a_s]``, or statistics holding it (under the source's feature-space name).
    """
    _, s = _names(weights, "era")
    mean = source_mean.mean(s) if isinstance(source_mean, CoactivationStats) else source_mean
    mean = _vector(mean, weights.domain.dim, "era: E[a_s]")
    return compose(weights, diagonal(mean, weights.domain, f"E[a_{{{s}}}]"))


def twera(weights: LinearMap, stats: CoactivationStats | None = None, *, comoment: Any = None,
          target_mean: Any = None) -> sp.csr_array:
    """Target-weighted expected residual attribution ``TWERA[t, s] = V[t, s] E[a_s a_t] / E[a_t]``
    (0 where ``E[a_t] = 0``), as a sparse ``F_t x F_s`` matrix.

    ``V`` is evaluated only on the co-active pairs (the stored entries of ``E[a_t a_s]``), each
    entry the float64 dot product of its factors (:func:`~circuitalg.features.circuits.weight_factors`);
    every other entry is exactly zero.

    Parameters
    ----------
    weights : LinearMap
        ``V`` (source features -> target features).
    stats : CoactivationStats, optional
        Statistics covering both dictionaries (by feature-space name); or give
    comoment : (F_t, F_s) array or sparse matrix, optional
        ``E[a_t a_s]``, and
    target_mean : (F_t,) array, optional
        ``E[a_t]``.
    """
    t, s = _names(weights, "twera")
    if stats is not None:
        if comoment is not None or target_mean is not None:
            raise InvalidArgumentError("twera: pass either stats or comoment and target_mean, not both.")
        if not isinstance(stats, CoactivationStats):
            raise InvalidArgumentError(f"twera: stats must be a CoactivationStats, got {type(stats).__name__}.")
        comoment, target_mean = stats.comoment(t, s), stats.mean(t)
    elif comoment is None or target_mean is None:
        raise InvalidArgumentError("twera needs stats (coactivation_stats) or both comoment and target_mean.")
    C = sp.coo_array(comoment, dtype=np.float64)
    if C.shape != weights.shape:
        raise ShapeError(f"twera: E[a_t a_s] has shape {C.shape}, the weights {weights.shape} (F_t x F_s).")
    mean_t = _vector(target_mean, weights.shape[0], "twera: E[a_t]")
    C.sum_duplicates()
    keep = (C.data != 0) & (mean_t[C.row] != 0)
    r, c, w = C.row[keep], C.col[keep], C.data[keep] / mean_t[C.row[keep]]
    L, V = weight_factors(weights)
    vals = pair_dots(L, V, r, c) * w
    out = sp.csr_array((vals, (r, c)), shape=weights.shape)
    return out


def top_twera(weights: LinearMap, stats: CoactivationStats | None = None, k: int = 10, *, by_abs: bool = True,
              comoment: Any = None, target_mean: Any = None, vocab: Any = None) -> FeatureWeights:
    """The ``k`` largest entries of :func:`twera` (every co-active pair evaluated; the rest are 0),
    ties by (row, column): where fewer than ``k`` entries rank above 0, the zero entries follow in
    (row, column) order (stored or not), then, by value, the negative ones."""
    k = check_int("k", k, 1)
    T = sp.coo_array(twera(weights, stats, comoment=comoment, target_mean=target_mean))
    T.sum_duplicates()
    n_rows, n_cols = weights.shape
    key = np.abs(T.data) if by_abs else T.data
    pos = np.flatnonzero(key > 0)
    pos = pos[np.lexsort((T.col[pos], T.row[pos], -key[pos]))][:k]
    rows, cols, vals = [T.row[pos]], [T.col[pos]], [T.data[pos]]
    need = k - pos.size
    if need > 0:  # the zeros next: the first ``need`` entries in (row, column) order whose value is 0
        nz = np.sort(T.row[T.data != 0].astype(np.int64) * n_cols + T.col[T.data != 0])
        span = min(n_rows * n_cols, need + nz.size)  # holds at least ``need`` zeros (or all of them)
        z = np.setdiff1d(np.arange(span, dtype=np.int64), nz, assume_unique=True)[:need]
        rows.append(z // n_cols)
        cols.append(z % n_cols)
        vals.append(np.zeros(z.size))
        need -= z.size
    if need > 0 and not by_abs:  # then the negative entries, largest first
        neg = np.flatnonzero(T.data < 0)
        neg = neg[np.lexsort((T.col[neg], T.row[neg], -T.data[neg]))][:need]
        rows.append(T.row[neg])
        cols.append(T.col[neg])
        vals.append(T.data[neg])
    r, c, v = (np.concatenate(x) for x in (rows, cols, vals))
    entries = [FeatureWeight(axis_id(weights.codomain, int(i), vocab), axis_id(weights.domain, int(j), vocab), float(x))
               for i, j, x in zip(r, c, v)]
    keys = np.abs(v) if by_abs else v
    kth = float(keys[-1]) if keys.size else 0.0
    note = (f"exact: all {T.nnz:,} co-active pairs evaluated; every other entry is 0 (E[a_s a_t] = 0 or E[a_t] = 0)"
            + (", and the zeros are ranked among them" if (keys == 0).any() else ""))
    cert = WeightCertificate(f"TWERA of {weights.symbol}", n_rows, n_cols, n_rows, np.empty(0, dtype=np.int64), 0.0,
                             kth, True, note)
    return FeatureWeights(entries, [cert], bool(by_abs))
