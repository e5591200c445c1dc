"""Dictionary activation functions, each exactly as its library defines it at inference.

Every activation is a small frozen object called on pre-activations ``(n, F)`` (row layout, one
row per token) and returning the feature activations of the same shape and dtype.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, ShapeError

__all__ = ["Activation", "ReLU", "JumpReLU", "TopK", "BatchTopK", "Linear"]


def _rows(pre: Any) -> np.ndarray:
    a = np.asarray(pre)
    if a.ndim != 2 or a.dtype.kind != "f":
        raise ShapeError(f"pre-activations must be a 2-D float array (n_tokens, n_features), got {a.dtype} {a.shape}.")
    return a


class Activation(abc.ABC):
    """Base class of dictionary activations (``f = act(pre)``)."""

    #: whether ``act(pre)`` is zero wherever ``pre <= 0`` (what makes ``act(pre) = pre * mask``)
    nonnegative: bool = True

    @abc.abstractmethod
    def __call__(self, pre: Any) -> np.ndarray:
        """The feature activations, ``(n, F)``, in ``pre``'s dtype."""

    @abc.abstractmethod
    def mask(self, pre: Any) -> np.ndarray:
        """The boolean active set ``act(pre) != 0`` as the library decides it (before any
        value is zero by accident)."""

    def check(self, n_features: int, what: str) -> None:
        """Raise ShapeError unless the activation's parameters fit ``n_features`` features."""


@dataclass(frozen=True)
class Linear(Activation):
    """No nonlinearity: ``f = pre`` (a linear dictionary, e.g. a crosscoder's decoder-only test)."""

    nonnegative = False

    def __call__(self, pre: Any) -> np.ndarray:
        return _rows(pre).copy()

    def mask(self, pre: Any) -> np.ndarray:
        return np.ones(_rows(pre).shape, dtype=bool)


@dataclass(frozen=True)
class ReLU(Activation):
    """``f = max(pre, 0)``."""

    def __call__(self, pre: Any) -> np.ndarray:
        a = _rows(pre)
        return np.maximum(a, 0).astype(a.dtype, copy=False)

    def mask(self, pre: Any) -> np.ndarray:
        return _rows(pre) > 0


@dataclass(frozen=True, eq=False)
class JumpReLU(Activation):
    """``f = pre * (pre > threshold)`` (strict), per feature; with ``relu``, ``max(pre, 0) *
    (pre > threshold)`` (the same for non-negative thresholds).

    Parameters
    ----------
    threshold : (F,) array or scalar
    relu : bool
    """

    threshold: Any
    relu: bool = False

    def __post_init__(self) -> None:
        t = np.asarray(self.threshold)
        if t.ndim > 1 or t.dtype.kind not in "fiu" or not np.all(np.isfinite(t)):
            raise InvalidArgumentError(f"JumpReLU threshold must be a finite scalar or (F,) vector, got {t.dtype} {t.shape}.")
        t = np.array(t, dtype=np.float64 if t.dtype.kind != "f" else t.dtype)
        t.setflags(write=False)
        object.__setattr__(self, "threshold", t)
        object.__setattr__(self, "nonnegative", bool(self.relu or np.all(t >= 0)))

    def check(self, n_features: int, what: str) -> None:
        if self.threshold.ndim == 1 and self.threshold.shape[0] != n_features:
            raise ShapeError(f"{what}: JumpReLU threshold has {self.threshold.shape[0]} entries, expected {n_features} (one per feature).")

    def mask(self, pre: Any) -> np.ndarray:
        a = _rows(pre)
        m = a > self.threshold.astype(a.dtype, copy=False)
        return m & (a > 0) if self.relu else m

    def __call__(self, pre: Any) -> np.ndarray:
        a = _rows(pre)
        return np.where(self.mask(a), a, 0).astype(a.dtype, copy=False)


@dataclass(frozen=True, eq=False)
class TopK(Activation):
    """Keep each token's ``k`` largest pre-activations, zero the rest; with ``relu``, then
    ``max(·, 0)``.

    Parameters
    ----------
    k : int
    relu : bool
        Apply a ReLU to the kept values (SAELens, sparsify, circuit-tracer do; some don't).
    rank_weights : (F,) array, optional
        Rank by ``pre * rank_weights`` (e.g. decoder norms) but keep the ``pre`` values.
    absolute : bool
        Rank by magnitude ``|pre|`` (or ``|pre * rank_weights|``) and keep the signed values
        (SAELens ``abstopk``); needs ``relu=False``.

    Notes
    -----
    Ties at the ``k``-th value are broken towards the lower feature index (``torch.topk``'s
    choice among exactly equal values is unspecified; ties have measure zero on real data).
    """

    k: int
    relu: bool = True
    rank_weights: Any = field(default=None)
    absolute: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise InvalidArgumentError(f"TopK k must be a positive integer, got {self.k!r}.")
        if self.absolute and self.relu:
            raise InvalidArgumentError("TopK(absolute=True) keeps the signed values of the largest |pre|; pass relu=False.")
        object.__setattr__(self, "k", int(self.k))
        if self.rank_weights is not None:
            w = np.asarray(self.rank_weights, dtype=np.float64)
            if w.ndim != 1 or not np.all(np.isfinite(w)):
                raise InvalidArgumentError("TopK rank_weights must be a finite (F,) vector.")
            w.setflags(write=False)
            object.__setattr__(self, "rank_weights", w)
        object.__setattr__(self, "nonnegative", bool(self.relu))

    def check(self, n_features: int, what: str) -> None:
        if self.k > n_features:
            raise ShapeError(f"{what}: TopK k={self.k} exceeds the {n_features} features.")
        if self.rank_weights is not None and self.rank_weights.shape[0] != n_features:
            raise ShapeError(f"{what}: TopK rank_weights has {self.rank_weights.shape[0]} entries, expected {n_features}.")

    def mask(self, pre: Any) -> np.ndarray:
        a = _rows(pre)
        score = a if self.rank_weights is None else a * self.rank_weights.astype(a.dtype, copy=False)
        if self.absolute:
            score = np.abs(score)
        k = min(self.k, a.shape[1])
        # stable descending order: among equal scores the lower index wins
        order = np.argsort(-score, axis=1, kind="stable")[:, :k]
        m = np.zeros(a.shape, dtype=bool)
        np.put_along_axis(m, order, True, axis=1)
        return m & (a > 0) if self.relu else m

    def __call__(self, pre: Any) -> np.ndarray:
        a = _rows(pre)
        return np.where(self.mask(a), a, 0).astype(a.dtype, copy=False)


@dataclass(frozen=True, eq=False)
class BatchTopK(Activation):
    """BatchTopK at inference (dictionary_learning): ``r = max(pre, 0)``, ``f = r * (r > threshold)``
    with one learned scalar threshold for every feature.

    Parameters
    ----------
    threshold : float
    """

    threshold: float

    def __post_init__(self) -> None:
        t = float(self.threshold)
        if not np.isfinite(t):
            raise InvalidArgumentError(f"BatchTopK threshold must be finite, got {self.threshold!r}.")
        object.__setattr__(self, "threshold", t)

    def mask(self, pre: Any) -> np.ndarray:
        a = _rows(pre)
        return (a > 0) & (np.maximum(a, 0) > a.dtype.type(self.threshold))

    def __call__(self, pre: Any) -> np.ndarray:
        a = _rows(pre)
        return np.where(self.mask(a), a, 0).astype(a.dtype, copy=False)
