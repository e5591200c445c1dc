"""Exact path expansion of a transformer's logits (Elhage et al., 2021, section "Path expansion").

With attention patterns, layer-norm scales and MLP outputs frozen (taken from a forward
pass's :class:`~circuitalg.model.forward.Cache`), the logits are exactly a sum of path terms

    logits = Σ_paths  D_f P_hk ... P_h1 X_src  ⊗  W_U W_OV^hk ... W_OV^h1 S_src   (+ b_U)

over sources ``src`` and chains of heads ``h1 < ... < hk`` in strictly increasing layers:

- ``embed``: ``S = W_E`` on the one-hot tokens; ``pos``: ``S = W_pos`` on the one-hot
  positions (both enter before layer 0);
- ``attn_bias{l}``: the constant vector ``b_O^l + Σ_h W_O^h b_V^h`` written by layer ``l``'s
  attention (patterns' rows sum to 1, so value biases are constants), read by later layers;
- ``mlp{l}``: layer ``l``'s MLP output taken from the cache, a *frozen, input-dependent*
  term (the MLP is nonlinear, so its output is not expanded further), read by later layers;
- ``unembed_bias``: the constant ``b_U`` (no heads).

``P_h = A^h diag(1/s^l)`` is head ``h``'s pattern times the frozen inverse scales of the layer
norm it reads through (the identity without normalisation) and ``D_f = diag(1/s_final)``.
Layer norms are handled by folding them (:func:`~circuitalg.model.transforms.fold_layer_norm`
with centring): a path's ``weight`` uses the folded weights, and the expansion holds exactly
for the folded model, which computes the same logits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, ShapeError, check_int
from circuitalg.linalg import gram_factor
from circuitalg.maps.nodes import Dense, LinearMap
from circuitalg.maps.rules import identity
from circuitalg.model.forward import Cache, check_tokens
from circuitalg.model.ids import SOURCE_KINDS, HeadId, Source
from circuitalg.model.transforms import fold_layer_norm
from circuitalg.model.weights import Transformer, require_model
from circuitalg.spaces import Space

__all__ = ["Path", "PathSum", "PathScore", "expand", "SOURCE_KINDS"]

_CONST = Space("const", 1)
_UNEMBED_BIAS = Source("unembed_bias")


@dataclasses.dataclass(frozen=True)
class Path:
    """One term of a :class:`PathSum`: a source and a chain of heads in strictly increasing layers.

    Attributes
    ----------
    source : Source
        ``embed``, ``pos``, ``attn_bias{l}``, ``mlp{l}`` or ``unembed_bias``.
    heads : tuple of (layer, head)
        The chain, first head first, e.g. ``((0, 3), (1, 2))``.
    """

    source: Source
    heads: tuple[tuple[int, int], ...]
    expansion: PathSum = dataclasses.field(repr=False, compare=False, hash=False)

    @property
    def name(self) -> str:
        """``embed -> L0H3 -> L1H2 -> unembed``."""
        return " -> ".join([self.source.name, *(HeadId(l, h).name for l, h in self.heads), "unembed"])

    @property
    def order(self) -> int:
        """The number of heads."""
        return len(self.heads)

    @cached_property
    def weight(self) -> LinearMap:
        """The lazy typed map from the source space to vocab, ``W_U @ W_OV^hk ... @ W_OV^h1 @ S``."""
        ps = self.expansion
        m = ps.model
        if self.source == _UNEMBED_BIAS:
            return ps.unembed_bias_map
        out = ps.source_map(self.source)
        for l, h in self.heads:
            out = m.head(l, h).ov @ out
        return m.W_U @ out

    @property
    def symbol(self) -> Any:
        """The sympy twin of :attr:`weight`."""
        return self.weight.symbol

    def position_map(self, cache: Cache) -> np.ndarray:
        """The ``(seq, seq)`` position factor ``D_f P_hk ... P_h1`` (``(seq, 1)`` ones for constants)."""
        ps = self.expansion
        ps.check_cache(cache)
        seq = cache.seq
        if self.source == _UNEMBED_BIAS:
            return np.ones((seq, 1))
        M = np.ones((seq, 1)) if self.source.kind == "attn_bias" else np.eye(seq)
        for l, h in self.heads:
            M = ps.pattern_factor(cache, l, h) @ M
        return ps.final_scale(cache)[:, None] * M

    def contribution(self, tokens: Any, cache: Cache) -> np.ndarray:
        """The logits ``(seq, d_vocab)`` this term contributes on ``tokens`` with ``cache`` frozen."""
        ps = self.expansion
        tok = ps.check_inputs(tokens, cache)
        if self.source == _UNEMBED_BIAS:
            return np.broadcast_to(ps.model.b_U, (tok.shape[0], ps.model.config.d_vocab)).copy()
        V = ps.source_vectors(self.source, tok, cache)
        for l, h in self.heads:
            V = ps.apply_head(V, cache, l, h)
        return ps.unembed(V, cache)

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class PathScore:
    """A path and the size of its contribution (see :meth:`PathSum.top`)."""

    path: Path
    score: float


class PathSum:
    """The lazy sum of path terms of a model up to ``order`` heads per path; built by :func:`expand`.

    Iterating yields :class:`Path` objects, source by source, then by number of heads, then
    in lexicographic order of the chain. Nothing is computed until asked: the folded model
    is built on first use, and :attr:`Path.weight` is a lazy product.
    """

    def __init__(self, model: Transformer, order: int | None, sources: Sequence[str]) -> None:
        c = require_model(model, "PathSum").config
        if order is None:
            order = c.n_layers
        order = check_int("order", order, 0, hint=f" (n_layers={c.n_layers}; larger orders are the full expansion)")
        if isinstance(sources, str) or not isinstance(sources, Sequence):
            raise InvalidArgumentError(f"sources={sources!r}; pass a sequence drawn from {SOURCE_KINDS}.")
        unknown = [s for s in sources if s not in SOURCE_KINDS]
        if unknown:
            raise InvalidArgumentError(f"unknown sources {unknown!r}; choose from {SOURCE_KINDS}.")
        self.original = model
        self.order = min(order, c.n_layers)
        found: list[Source] = []
        for kind in tuple(sources):
            if kind in ("embed", "pos", "unembed_bias"):
                found.append(Source(kind))
            elif kind == "attn_bias" or (kind == "mlp" and c.d_mlp is not None):
                found += [Source(kind, l) for l in range(c.n_layers)]
        self.sources: tuple[Source, ...] = tuple(found)

    # -- the folded model and shared factors ---------------------------------------------
    @cached_property
    def model(self) -> Transformer:
        """The model the path weights refer to: ``fold_layer_norm(original)`` (itself when there is no LN)."""
        return fold_layer_norm(self.original)

    @cached_property
    def _attn_bias(self) -> np.ndarray:
        return self.model.head_weights.attention_bias

    def _source(self, source: Source | str) -> Source:
        """``source`` as one of this expansion's sources (names are parsed by :meth:`Source.parse`)."""
        src = source if isinstance(source, Source) else Source.parse(source) if isinstance(source, str) else None
        if src is None or src not in self.sources:
            raise InvalidArgumentError(
                f"unknown source {source!r}; this expansion has sources {', '.join(s.name for s in self.sources)}."
            )
        return src

    def source_map(self, source: Source | str) -> LinearMap:
        """The typed map ``S`` a source writes through: ``W_E``, ``W_pos``, a bias column, or identity."""
        src, m = self._source(source), self.model
        if src.kind == "embed":
            return m.W_E
        if src.kind == "pos":
            return m.W_pos
        if src.kind == "attn_bias":
            return self._bias_maps[src.layer]  # type: ignore[index]
        if src.kind == "mlp":
            return identity(m.resid_space, dtype=m.dtype)
        return self.unembed_bias_map

    @cached_property
    def _bias_maps(self) -> tuple[Dense, ...]:
        m = self.model
        return tuple(
            Dense(b[:, None], _CONST, m.resid_space, f"b_attn^{{{l}}}") for l, b in enumerate(self._attn_bias)
        )

    @cached_property
    def unembed_bias_map(self) -> Dense:
        """``b_U`` as a map ``const[1] -> vocab`` (after folding: includes ``W_U b_final``)."""
        return Dense(self.model.b_U[:, None], _CONST, self.model.vocab_space, "b_U")

    # -- enumeration ---------------------------------------------------------------------
    def terms(self, source: Source | str | None = None, n_heads: int | None = None) -> Iterator[Path]:
        """Iterate the terms, optionally only from ``source`` and/or with exactly ``n_heads`` heads."""
        for src in self.sources if source is None else (self._source(source),):
            if src == _UNEMBED_BIAS:
                if n_heads in (None, 0):
                    yield Path(src, (), self)
                continue
            for n in range(self.order + 1) if n_heads is None else (n_heads,):
                for chain in self._chains_of_length(src.entry_layer, n):
                    yield Path(src, chain, self)

    def _chains_of_length(self, first_layer: int, n: int) -> Iterator[tuple[tuple[int, int], ...]]:
        c = self.original.config
        if n == 0:
            yield ()
            return
        if n > self.order:
            return

        def rec(prefix: tuple[tuple[int, int], ...], start: int) -> Iterator[tuple[tuple[int, int], ...]]:
            if len(prefix) == n:
                yield prefix
                return
            for l in range(start, c.n_layers):
                for h in range(c.n_heads):
                    yield from rec(prefix + ((l, h),), l + 1)

        yield from rec((), first_layer)

    def count(self, source: Source | str | None = None, n_heads: int | None = None) -> int:
        """The number of terms :meth:`terms` yields, computed without enumerating."""
        c = self.original.config
        total = 0
        for src in self.sources if source is None else (self._source(source),):
            if src == _UNEMBED_BIAS:
                total += n_heads in (None, 0)
                continue
            free = c.n_layers - src.entry_layer
            for n in range(self.order + 1) if n_heads is None else (n_heads,):
                if 0 <= n <= self.order:
                    total += math.comb(max(free, 0), n) * c.n_heads**n
        return total

    def __len__(self) -> int:
        return self.count()

    def __iter__(self) -> Iterator[Path]:
        return self.terms()

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.sources)
        return f"<PathSum of {self.original.name!r}: order {self.order}, {len(self)} terms, sources ({names})>"

    # -- numerics with frozen activations ------------------------------------------------
    def check_cache(self, cache: Cache) -> None:
        """Check that ``cache`` comes from a forward pass of a model shaped like this one."""
        c = self.original.config
        if not isinstance(cache, Cache):
            raise InvalidArgumentError(f"cache must be the Cache from model.run(tokens), got {type(cache).__name__}.")
        if cache.pattern.shape[:2] != (c.n_layers, c.n_heads) or cache.resid.shape[-1] != c.d_model:
            raise ShapeError(
                f"cache patterns have shape {cache.pattern.shape} and d_model {cache.resid.shape[-1]}; "
                f"{self.original.name} has {c.n_layers} layers, {c.n_heads} heads, d_model {c.d_model}. "
                "Pass the cache from this model's run."
            )
        if c.normalization is not None and (cache.ln1_scale is None or cache.ln_final_scale is None):
            raise ShapeError("cache has no layer-norm scales, but the model has layer norms; use its own run.")

    def check_inputs(self, tokens: Any, cache: Cache) -> np.ndarray:
        """Validate ``tokens`` against the model and ``cache`` (same length as the cached run)."""
        self.check_cache(cache)
        tok = check_tokens(tokens, self.original)
        if tok.shape[0] != cache.seq:
            raise ShapeError(
                f"{tok.shape[0]} tokens given but the cache holds a run on {cache.seq} tokens; the frozen "
                "patterns must have the same length."
            )
        return tok

    def pattern_factor(self, cache: Cache, layer: int, head: int) -> np.ndarray:
        """``P_h = A^h diag(1/s^l)``: the frozen pattern times the inverse layer-norm scales it reads."""
        A = cache.pattern[layer, head]
        if cache.ln1_scale is None or self.original.config.normalization is None:
            return A
        return A / cache.ln1_scale[layer][None, :]

    def final_scale(self, cache: Cache) -> np.ndarray:
        """``1 / s_final`` per position (ones without normalisation)."""
        if cache.ln_final_scale is None or self.original.config.normalization is None:
            return np.ones(cache.seq)
        return 1.0 / cache.ln_final_scale

    def source_vectors(self, source: Source | str, tokens: np.ndarray, cache: Cache) -> np.ndarray:
        """The ``(d_model, seq)`` residual vectors a source writes, before any head (``S X_src``)."""
        src, m = self._source(source), self.model
        seq = tokens.shape[0]
        if src.kind == "embed":
            return m.W_E.array[:, tokens]
        if src.kind == "pos":
            return m.W_pos.array[:, :seq]
        if src.kind == "attn_bias":
            b = self._attn_bias[src.layer]
            return np.repeat(b[:, None], seq, axis=1)
        if src.kind == "mlp":
            if cache.mlp_out is None:
                raise ShapeError("cache has no MLP outputs; use the cache of this model's run.")
            return cache.mlp_out[src.layer].T
        raise InvalidArgumentError(f"source {src.name} writes no residual vectors (it is the constant b_U).")

    def apply_head(self, V: np.ndarray, cache: Cache, layer: int, head: int) -> np.ndarray:
        """``W_OV^h V P_hᵀ``: move ``(d_model, seq)`` vectors through one head with frozen pattern."""
        hw = self.model.head_weights
        moved = hw.W_O[layer, head] @ (hw.W_V[layer, head] @ V)
        return moved @ self.pattern_factor(cache, layer, head).T

    def unembed(self, V: np.ndarray, cache: Cache) -> np.ndarray:
        """``(W_U V D_f)ᵀ``: the ``(seq, d_vocab)`` logits of final residual vectors ``V``."""
        return (V * self.final_scale(cache)[None, :]).T @ self.model.W_U.array.T

    def _walk(self, tokens: np.ndarray, cache: Cache) -> Iterator[tuple[Path, np.ndarray]]:
        """Every non-constant term with its final residual vectors, sharing chain prefixes."""
        c = self.original.config

        def rec(src: Source, V: np.ndarray, chain: tuple[tuple[int, int], ...], start: int) -> Iterator[
            tuple[Path, np.ndarray]
        ]:
            yield Path(src, chain, self), V
            if len(chain) < self.order:
                for l in range(start, c.n_layers):
                    for h in range(c.n_heads):
                        yield from rec(src, self.apply_head(V, cache, l, h), chain + ((l, h),), l + 1)

        for src in self.sources:
            if src != _UNEMBED_BIAS:
                yield from rec(src, self.source_vectors(src, tokens, cache), (), src.entry_layer)

    def logits(self, tokens: Any, cache: Cache) -> np.ndarray:
        """The sum of every term's contribution, ``(seq, d_vocab)``; equals the model's logits at full order."""
        tok = self.check_inputs(tokens, cache)
        total = np.zeros((self.original.config.d_model, tok.shape[0]), dtype=self.model.dtype)
        for _, V in self._walk(tok, cache):
            total += V
        out = self.unembed(total, cache)
        if _UNEMBED_BIAS in self.sources:
            out = out + self.model.b_U
        return out

    def top(self, tokens: Any, cache: Cache, k: int = 10, *, targets: Any = None) -> list[PathScore]:
        """The ``k`` terms with the largest contributions (direct logit attribution for paths).

        Without ``targets`` a term's score is the Frobenius norm of its ``(seq, d_vocab)``
        contribution, computed as ``||R V D_f||_F`` with ``RᵀR = W_UᵀW_U`` (never the logits).
        With ``targets`` (one token id per position) the score is the summed contribution to
        the target logits, ranked by absolute value.
        """
        tok = self.check_inputs(tokens, cache)
        k = check_int("k", k, 1)
        scale = self.final_scale(cache)
        W_U = self.model.W_U.array
        if targets is None:
            # RᵀR = W_UᵀW_U; the tall leaf's factor is cached on it and shared with the factored numerics
            tall = W_U.shape[0] >= W_U.shape[1]
            R = gram_factor(self.model.W_U, "cols") if tall else np.linalg.qr(W_U, mode="r")

            def score(V: np.ndarray) -> float:
                return float(np.linalg.norm(R @ (V * scale[None, :])))

            bias_score = float(np.linalg.norm(self.model.b_U)) * math.sqrt(tok.shape[0])
        else:
            tgt = check_tokens(targets, self.original)
            if tgt.shape != tok.shape:
                raise ShapeError(f"targets has shape {tgt.shape}; give one target token per position {tok.shape}.")
            rows = W_U[tgt] * scale[:, None]  # (seq, d_model): the unembedding row each position is scored on

            def score(V: np.ndarray) -> float:
                return float(np.einsum("sm,ms->", rows, V))

            bias_score = float(self.model.b_U[tgt].sum())
        scored = [PathScore(path, score(V)) for path, V in self._walk(tok, cache)]
        if _UNEMBED_BIAS in self.sources:
            scored.append(PathScore(Path(_UNEMBED_BIAS, (), self), bias_score))
        scored.sort(key=lambda s: -abs(s.score))
        return scored[:k]


def expand(model: Transformer, order: int | None = None, *, sources: Sequence[str] = SOURCE_KINDS) -> PathSum:
    """The path expansion of ``model``'s logits up to ``order`` heads per path (default: all layers).

    Parameters
    ----------
    model : Transformer
    order : int, optional
        The most heads in one path; ``model.config.n_layers`` (the exact expansion) by default.
    sources : sequence of str
        Which of :data:`SOURCE_KINDS` to include; all by default (needed for exactness).

    Returns
    -------
    PathSum
        Lazy: terms are generated on iteration, weights built on access.
    """
    return PathSum(require_model(model, "expand"), order, sources)
