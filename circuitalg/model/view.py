"""The model view every analysis reads: all heads' weights stacked, with typed ids.

:class:`HeadWeights` holds every head's ``W_Q, W_K, W_V, W_O`` and biases as batched arrays
(column convention), layer-major, one row per query head, in one dtype. ``model.head_weights``
is the model's own, built once when the model is made (its ``params`` attention entries are
views into the same stacks), and ``.float64()`` is the float64 copy the factored numerics use.
Grouped-query attention: ``kv_head[l, h]`` names the key/value head query head ``h`` reads, and
``W_K``/``W_V`` repeat that head's weights for each query head of its group (the typed maps of
``model.head(l, h)`` share one object per group). The reading side of a head is asked for
through :meth:`HeadWeights.reader`, the one place a new QK form would change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterator, Mapping
from functools import cached_property
from typing import Any, TypeVar

import numpy as np

from circuitalg.errors import InvalidArgumentError
from circuitalg.model.ids import HeadId

__all__ = ["HeadWeights", "READ_SIDES", "HEAD_STACKED", "stack_heads"]

T = TypeVar("T")

#: The ways a head reads the residual stream: through its query, key or value weights.
READ_SIDES = ("q", "k", "v")


@dataclasses.dataclass(frozen=True, eq=False)
class HeadWeights:
    """Every head's weights, stacked.

    Attributes
    ----------
    W_Q, W_K, W_V : (n_layers, n_heads, d_head, d_model)
    W_O : (n_layers, n_heads, d_model, d_head)
    b_Q, b_K, b_V : (n_layers, n_heads, d_head)
    b_O : (n_layers, d_model)
    kv_head : (n_layers, n_heads) int
        The key/value head each query head reads (the identity for multi-head attention).
    """

    W_Q: np.ndarray
    W_K: np.ndarray
    W_V: np.ndarray
    W_O: np.ndarray
    b_Q: np.ndarray
    b_K: np.ndarray
    b_V: np.ndarray
    b_O: np.ndarray
    kv_head: np.ndarray

    @classmethod
    def from_arrays(
        cls, W_Q: np.ndarray, W_K: np.ndarray, W_V: np.ndarray, W_O: np.ndarray, *,
        b_Q: np.ndarray | None = None, b_K: np.ndarray | None = None, b_V: np.ndarray | None = None,
        b_O: np.ndarray | None = None,
    ) -> HeadWeights:
        """Stacks without biases (zeros), e.g. random heads for a baseline."""
        L, H, dh, D = W_Q.shape
        z = np.zeros((L, H, dh), dtype=W_Q.dtype)
        return cls(
            W_Q, W_K, W_V, W_O, z if b_Q is None else b_Q, z if b_K is None else b_K, z if b_V is None else b_V,
            np.zeros((L, D), dtype=W_Q.dtype) if b_O is None else b_O,
            np.broadcast_to(np.arange(H), (L, H)),
        )

    # -- shapes and ids ------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[2]

    @property
    def d_model(self) -> int:
        return self.W_Q.shape[3]

    @property
    def dtype(self) -> np.dtype:
        return self.W_Q.dtype

    def ids(self) -> Iterator[HeadId]:
        """Every head, layer by layer."""
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                yield HeadId(l, h)

    # -- derived arrays (cached) ----------------------------------------------------------
    def memo(self, key: Hashable, make: Callable[[HeadWeights], T]) -> T:
        """``make(self)``, computed on the first call with ``key`` and kept with this view (the
        results of analyses that read the view several times, e.g. composition parts per kind).
        ``make`` must return read-only results: they are shared by every later caller."""
        cache: dict[Any, Any] = self._memo
        if key not in cache:
            cache.setdefault(key, make(self))
        return cache[key]

    @cached_property
    def _memo(self) -> dict[Any, Any]:
        return {}

    def float64(self) -> HeadWeights:
        """This view in float64 (itself when it already is)."""
        if self.dtype == np.float64:
            return self
        return self._float64

    @cached_property
    def _float64(self) -> HeadWeights:
        f = {k.name: np.asarray(getattr(self, k.name), dtype=np.float64) for k in dataclasses.fields(self)
             if k.name != "kv_head"}
        return HeadWeights(**f, kv_head=self.kv_head)

    @cached_property
    def attention_bias(self) -> np.ndarray:
        """``(n_layers, d_model)``: what each layer's attention writes at every position whatever
        the pattern, ``b_O + Σ_h W_O^h b_V^h`` (pattern rows sum to 1)."""
        return self.b_O + np.einsum("lhmd,lhd->lm", self.W_O, self.b_V)

    def gram(self, which: str) -> np.ndarray:
        """``W Wᵀ`` of ``W_Q``, ``W_K``, ``W_V`` (``which`` = "Q", "K", "V") or ``W_Oᵀ W_O`` ("O"):
        ``(n_layers, n_heads, d_head, d_head)``, cached."""
        if which not in ("Q", "K", "V", "O"):
            raise InvalidArgumentError(f"gram: which={which!r}; use 'Q', 'K', 'V' or 'O'.")
        return getattr(self, "_gram_" + which)

    @cached_property
    def _gram_Q(self) -> np.ndarray:
        return np.matmul(self.W_Q, self.W_Q.swapaxes(-1, -2))

    @cached_property
    def _gram_K(self) -> np.ndarray:
        return np.matmul(self.W_K, self.W_K.swapaxes(-1, -2))

    @cached_property
    def _gram_V(self) -> np.ndarray:
        return np.matmul(self.W_V, self.W_V.swapaxes(-1, -2))

    @cached_property
    def _gram_O(self) -> np.ndarray:
        return np.matmul(self.W_O.swapaxes(-1, -2), self.W_O)

    # -- the reading side of each head -----------------------------------------------------
    def reader(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """``(G, W)`` with ``RᵀR = Wᵀ G W`` for the map ``R`` through which every head reads on
        ``side`` (stacks ``(L, H, d_head, d_head)`` and ``(L, H, d_head, d_model)``)::

            k: R = W_Qᵀ W_K  ->  G = W_Q W_Qᵀ, W = W_K
            q: R = W_Kᵀ W_Q  ->  G = W_K W_Kᵀ, W = W_Q
            v: R = W_O W_V   ->  G = W_Oᵀ W_O, W = W_V
        """
        if side == "k":
            return self.gram("Q"), self.W_K
        if side == "q":
            return self.gram("K"), self.W_Q
        if side == "v":
            return self.gram("O"), self.W_V
        raise InvalidArgumentError(f"side={side!r}; a head reads on {READ_SIDES}.")

    def writer(self) -> tuple[np.ndarray, np.ndarray]:
        """``(U, V)`` per head with ``UᵀV = W_OV W_OVᵀ = W_O (W_V W_Vᵀ) W_Oᵀ``."""
        U = self.W_O.swapaxes(-1, -2)
        return U, np.matmul(self.gram("V"), U)


#: The head weights the view stacks over layers, in the order of :class:`HeadWeights`'s fields.
HEAD_STACKED = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")


def stack_heads(config: Any, params: Mapping[str, np.ndarray], layers: range | None = None
                ) -> tuple[HeadWeights, dict[str, np.ndarray]]:
    """The view of every head of ``layers`` (default all; layer ``layers[i]`` at index ``i``): one
    read-only C-ordered stack per weight (the batched kernels read heads as contiguous rows), in the
    parameters' dtype, and ``params`` with each of those layers' ``blocks.{l}.attn.*`` entries
    replaced by a view into it, so the two share memory and cannot disagree. Grouped-query
    attention: ``W_K``, ``W_V``, ``b_K``, ``b_V`` repeated for each query head of a group in the view
    (a copy), stored once per key/value head in ``params``."""
    layers = range(config.n_layers) if layers is None else layers
    stacks = {}
    out = dict(params)
    group = np.array([config.kv_head(h) for h in range(config.n_heads)])
    for name in HEAD_STACKED:
        per_layer = [params[f"blocks.{l}.attn.{name}"] for l in layers]
        a = _stacked_base(per_layer)
        if a is None:
            a = np.empty((len(per_layer), *per_layer[0].shape), dtype=per_layer[0].dtype)
            for i, x in enumerate(per_layer):
                a[i] = x
        a.flags.writeable = False
        for i, l in enumerate(layers):
            out[f"blocks.{l}.attn.{name}"] = a[i]
        if name in ("W_K", "W_V", "b_K", "b_V") and config.n_kv_heads is not None:
            a = np.take(a, group, axis=1)  # one row per query head: the view analyses read (a C-ordered copy)
            a.flags.writeable = False
        stacks[name] = a
    kv = np.broadcast_to(group, (len(layers), config.n_heads))
    return HeadWeights(**stacks, kv_head=kv), out


def _stacked_base(layers: list[np.ndarray]) -> np.ndarray | None:
    """The array over layers that ``layers`` are consecutive slices of (as ``fold_params`` makes
    them), or None: a stack that exists already is used, not copied."""
    base = layers[0].base
    if not (isinstance(base, np.ndarray) and base.shape == (len(layers), *layers[0].shape)
            and base.dtype == layers[0].dtype and base.flags.c_contiguous):
        return None
    for l, x in enumerate(layers):
        if x.base is not base or x.__array_interface__["data"][0] != base[l].__array_interface__["data"][0] \
                or x.strides != base[l].strides:
            return None
    return base
