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
Other frozen quantities of newer architectures: the per-head q/k norm scales act inside the
patterns; a norm of the attention output (Gemma 2's ``post_norms``) multiplies ``P_h`` and the
attention bias by its inverse scale per query position, its weight folded into ``W_O``; the
MLP's output norm is inside the frozen MLP output; soft-capped attention scores are inside the
patterns. With final-logit soft-capping the terms add up to the pre-cap logits
(``cache.logits_precap``), and the model's logits are ``c · tanh(sum / c)``.
Norm weights are in the model's view (input norms folded into the weights that read them, reads
centred behind a layer norm), so a path's ``weight`` is the same whether or not the model was
folded (:func:`~circuitalg.model.transforms.fold_layer_norm`), and the expansion is exact for both.

Enumeration (:class:`PathSum`: which terms exist, their lazy weights) is separate from the
frozen-activation numerics (:meth:`PathSum.on` gives a :class:`FrozenPaths` for one run:
each term's position factor and contribution, the logits, attribution).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from circuitalg.circuits.circuit import UNEMBED, Circuit, count_head_chains, head_chains
from circuitalg.errors import InvalidArgumentError, ShapeError, check_int
from circuitalg.linalg import gram_factor
from circuitalg.model.forward import Cache, check_tokens
from circuitalg.model.ids import SOURCE_KINDS, HeadId, Source
from circuitalg.model.weights import Transformer, require_model

__all__ = ["PathSum", "PathScore", "FrozenPaths", "expand", "SOURCE_KINDS"]

_UNEMBED_BIAS = Source("unembed_bias")


@dataclasses.dataclass(frozen=True)
class PathScore:
    """A path term and the size of its contribution (see :meth:`FrozenPaths.top`)."""

    circuit: Circuit
    score: float


class PathSum:
    """The lazy sum of path terms of a model with up to ``max_heads`` heads per path; built by :func:`expand`.

    Iterating yields :class:`~circuitalg.circuits.circuit.Circuit` objects (sink: the
    unembedding), source by source, then by number of heads, then in lexicographic order of
    the chain. Nothing is computed until asked: :attr:`Circuit.weight` is a lazy product over
    the model's view.
    """

    def __init__(self, model: Transformer, max_heads: int | None, sources: Sequence[str]) -> None:
        c = require_model(model, "PathSum").config
        if max_heads is None:
            max_heads = c.n_layers
        max_heads = check_int(
            "max_heads", max_heads, 0, hint=f" (n_layers={c.n_layers}; more heads give the full expansion)"
        )
        if isinstance(sources, str) or not isinstance(sources, Sequence):
            raise InvalidArgumentError(f"sources={sources!r}; pass a sequence drawn from {SOURCE_KINDS}.")
        unknown = [s for s in sources if s not in SOURCE_KINDS]
        if unknown:
            raise InvalidArgumentError(f"unknown sources {unknown!r}; choose from {SOURCE_KINDS}.")
        self.original = model
        self.max_heads = min(max_heads, c.n_layers)
        found: list[Source] = []
        for kind in tuple(sources):
            if kind in ("embed", "unembed_bias") or (kind == "pos" and c.learned_positions):
                found.append(Source(kind))
            elif kind == "attn_bias" or (kind == "mlp" and c.d_mlp is not None):
                found += [Source(kind, l) for l in range(c.n_layers)]
        self.sources: tuple[Source, ...] = tuple(found)

    @property
    def model(self) -> Transformer:
        """The model the path weights refer to (the one given: its view carries the norm weights)."""
        return self.original

    def source(self, source: Source | str) -> Source:
        """``source`` as one of this expansion's sources (names are parsed by :meth:`Source.parse`)."""
        src = source if isinstance(source, Source) else Source.parse(source) if isinstance(source, str) else None
        if src is None or src not in self.sources:
            raise InvalidArgumentError(
                f"unknown source {source!r}; this expansion has sources {', '.join(s.name for s in self.sources)}."
            )
        return src

    # -- enumeration ---------------------------------------------------------------------
    def _lengths(self, src: Source, n_heads: int | None) -> range | tuple[int, ...]:
        if src == _UNEMBED_BIAS:  # a constant: no heads
            return (0,) if n_heads in (None, 0) else ()
        if n_heads is None:
            return range(self.max_heads + 1)
        return (n_heads,) if 0 <= n_heads <= self.max_heads else ()

    def terms(self, source: Source | str | None = None, n_heads: int | None = None) -> Iterator[Circuit]:
        """Iterate the terms, optionally only from ``source`` and/or with exactly ``n_heads`` heads."""
        c = self.original.config
        for src in self.sources if source is None else (self.source(source),):
            for n in self._lengths(src, n_heads):
                for chain in head_chains(c.n_layers, c.n_heads, n, src.entry_layer):
                    yield Circuit(src, chain, UNEMBED, self.model)

    def count(self, source: Source | str | None = None, n_heads: int | None = None) -> int:
        """The number of terms :meth:`terms` yields, computed without enumerating."""
        c = self.original.config
        return sum(
            count_head_chains(c.n_layers, c.n_heads, n, src.entry_layer)
            for src in (self.sources if source is None else (self.source(source),))
            for n in self._lengths(src, n_heads)
        )

    def __len__(self) -> int:
        return self.count()

    def __iter__(self) -> Iterator[Circuit]:
        return self.terms()

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.sources)
        return f"<PathSum of {self.original.name!r}: up to {self.max_heads} heads, {len(self)} terms, sources ({names})>"

    def on(self, tokens: Any, cache: Cache) -> FrozenPaths:
        """The terms' numerics on one run, with its patterns, layer-norm scales and MLP outputs frozen."""
        return FrozenPaths(self, tokens, cache)

    # convenience: the two questions asked most, on one run
    def logits(self, tokens: Any, cache: Cache) -> np.ndarray:
        """``self.on(tokens, cache).logits()``."""
        return self.on(tokens, cache).logits()

    def top(self, tokens: Any, cache: Cache, k: int = 10, *, targets: Any = None) -> list[PathScore]:
        """``self.on(tokens, cache).top(k, targets=targets)``."""
        return self.on(tokens, cache).top(k, targets=targets)


class FrozenPaths:
    """The path terms of a :class:`PathSum` on one run (tokens and the cache of its forward pass).

    Attention patterns, layer-norm scales and MLP outputs are taken from the cache and frozen;
    every quantity is then linear in the weights, and the terms' contributions add up to the
    logits (exactly, at full order).
    """

    def __init__(self, paths: PathSum, tokens: Any, cache: Cache) -> None:
        self.paths = paths
        c = paths.original.config
        if not isinstance(cache, Cache):
            raise InvalidArgumentError(f"cache must be the Cache from model.run(tokens), got {type(cache).__name__}.")
        if cache.pattern.shape[:2] != (c.n_layers, c.n_heads) or cache.resid.shape[-1] != c.d_model:
            raise ShapeError(
                f"cache patterns have shape {cache.pattern.shape} and d_model {cache.resid.shape[-1]}; "
                f"{paths.original.name} has {c.n_layers} layers, {c.n_heads} heads, d_model {c.d_model}. "
                "Pass the cache from this model's run."
            )
        if c.normalization is not None and ((c.pre_norms and cache.ln1_scale is None) or cache.ln_final_scale is None):
            raise ShapeError("cache has no layer-norm scales, but the model has layer norms; use its own run.")
        tok = check_tokens(tokens, paths.original)
        if tok.shape[0] != cache.seq:
            raise ShapeError(
                f"{tok.shape[0]} tokens given but the cache holds a run on {cache.seq} tokens; the frozen "
                "patterns must have the same length."
            )
        self.tokens, self.cache = tok, cache
        self._normalised = c.normalization is not None

    @property
    def model(self) -> Transformer:
        return self.paths.model

    # -- frozen factors ------------------------------------------------------------------------
    def pattern_factor(self, head: HeadId) -> np.ndarray:
        """``P_h = diag(1/t^l) A^h diag(1/s^l)``: the frozen pattern times the inverse layer-norm
        scales it reads (``s``) and, with ``post_norms``, the inverse scales of the norm of the
        layer's attention output (``t``, per query position; its weight is folded into ``W_O``)."""
        A = self.cache.pattern[head.layer, head.head]
        if self.cache.ln1_scale is not None and self._normalised:
            A = A / self.cache.ln1_scale[head.layer][None, :]
        return A * self.post_scale(head.layer)[:, None]

    def post_scale(self, layer: int) -> np.ndarray:
        """``1 / t^l`` per position: the frozen inverse scale of the norm of layer ``layer``'s
        attention output (ones without ``post_norms``)."""
        if self.cache.ln1_post_scale is None:
            return np.ones(self.cache.seq)
        return 1.0 / self.cache.ln1_post_scale[layer]

    @cached_property
    def final_scale(self) -> np.ndarray:
        """``1 / s_final`` per position (ones without normalisation)."""
        if self.cache.ln_final_scale is None or not self._normalised:
            return np.ones(self.cache.seq)
        return 1.0 / self.cache.ln_final_scale

    def position_map(self, term: Circuit) -> np.ndarray:
        """The ``(seq, seq)`` position factor ``D_f P_hk ... P_h1`` (``(seq, 1)`` for constants)."""
        seq = self.cache.seq
        if term.source == _UNEMBED_BIAS:
            return np.ones((seq, 1))
        M = np.ones((seq, 1)) if term.source.kind == "attn_bias" else np.eye(seq)
        for h in term.heads:
            M = self.pattern_factor(h) @ M
        return self.final_scale[:, None] * M

    def source_vectors(self, source: Source) -> np.ndarray:
        """The ``(d_model, seq)`` residual vectors a source writes, before any head (``S X_src``)."""
        m, seq = self.model, self.cache.seq
        if source.kind == "embed":
            return m.W_E.array[:, self.tokens]
        if source.kind == "pos":
            return m.source_map(source).array[:, :seq]  # type: ignore[attr-defined]
        if source.kind == "attn_bias":
            b = m.head_weights.attention_bias[source.layer]
            return b[:, None] * self.post_scale(source.layer)[None, :]
        if source.kind == "mlp":
            if self.cache.mlp_out is None:
                raise ShapeError("cache has no MLP outputs; use the cache of this model's run.")
            return self.cache.mlp_out[source.layer].T
        raise InvalidArgumentError(f"source {source.name} writes no residual vectors (it is the constant b_U).")

    def apply_head(self, V: np.ndarray, head: HeadId) -> np.ndarray:
        """``W_OV^h V P_hᵀ``: move ``(d_model, seq)`` vectors through one head with frozen pattern."""
        hw = self.model.head_weights
        moved = hw.W_O[head.layer, head.head] @ (hw.W_V[head.layer, head.head] @ V)
        return moved @ self.pattern_factor(head).T

    def unembed(self, V: np.ndarray) -> np.ndarray:
        """``(W_U V D_f)ᵀ``: the ``(seq, d_vocab)`` logits of final residual vectors ``V``."""
        return (V * self.final_scale[None, :]).T @ self.model.W_U.array.T

    # -- terms ---------------------------------------------------------------------------------
    def contribution(self, term: Circuit) -> np.ndarray:
        """The logits ``(seq, d_vocab)`` that ``term`` contributes on this run."""
        if term.sink != UNEMBED:
            raise InvalidArgumentError(f"{term.name} is not a path term (it ends at a QK circuit, not the logits).")
        if term.source == _UNEMBED_BIAS:
            return np.broadcast_to(self.model.b_U, (self.cache.seq, self.model.config.d_vocab)).copy()
        V = self.source_vectors(term.source)
        for h in term.heads:
            V = self.apply_head(V, h)
        return self.unembed(V)

    def _walk(self) -> Iterator[tuple[Circuit, np.ndarray]]:
        """Every non-constant term with its final residual vectors, sharing chain prefixes."""
        ps, c = self.paths, self.paths.original.config

        def rec(src: Source, V: np.ndarray, chain: tuple[HeadId, ...]) -> Iterator[tuple[Circuit, np.ndarray]]:
            yield Circuit(src, chain, UNEMBED, ps.model), V
            if len(chain) < ps.max_heads:
                start = chain[-1].layer + 1 if chain else src.entry_layer
                for (h,) in head_chains(c.n_layers, c.n_heads, 1, start):
                    yield from rec(src, self.apply_head(V, h), chain + (h,))

        for src in ps.sources:
            if src != _UNEMBED_BIAS:
                yield from rec(src, self.source_vectors(src), ())

    def logits(self) -> np.ndarray:
        """The sum of every term's contribution, ``(seq, d_vocab)``; equals the model's logits when
        ``max_heads >= n_layers`` (the full expansion); with ``final_softcap``, the pre-cap logits."""
        total = np.zeros((self.paths.original.config.d_model, self.cache.seq), dtype=self.model.dtype)
        for _, V in self._walk():
            total += V
        out = self.unembed(total)
        if _UNEMBED_BIAS in self.paths.sources:
            out = out + self.model.b_U
        return out

    def top(self, k: int = 10, *, targets: Any = None) -> list[PathScore]:
        """The ``k`` terms with the largest contributions (direct logit attribution for paths).

        Without ``targets`` a term's score is the Frobenius norm of its ``(seq, d_vocab)``
        contribution, computed as ``||R V D_f||_F`` with ``RᵀR = W_UᵀW_U`` (never the logits).
        With ``targets`` (one token id per position) the score is the summed contribution to
        the target logits, ranked by absolute value.
        """
        k = check_int("k", k, 1)
        scale = self.final_scale
        W_U = self.model.W_U.array
        if targets is None:
            # RᵀR = W_UᵀW_U; the tall leaf's factor is cached and shared with the factored numerics
            tall = W_U.shape[0] >= W_U.shape[1]
            R = gram_factor(self.model.W_U, "cols") if tall else np.linalg.qr(W_U, mode="r")

            def score(V: np.ndarray) -> float:
                return float(np.linalg.norm(R @ (V * scale[None, :])))

            bias_score = float(np.linalg.norm(self.model.b_U)) * math.sqrt(self.cache.seq)
        else:
            tgt = check_tokens(targets, self.paths.original)
            if tgt.shape != self.tokens.shape:
                raise ShapeError(f"targets has shape {tgt.shape}; give one target token per position {self.tokens.shape}.")
            rows = W_U[tgt] * scale[:, None]  # (seq, d_model): the unembedding row each position is scored on

            def score(V: np.ndarray) -> float:
                return float(np.einsum("sm,ms->", rows, V))

            bias_score = float(self.model.b_U[tgt].sum())
        scored = [PathScore(term, score(V)) for term, V in self._walk()]
        if _UNEMBED_BIAS in self.paths.sources:
            scored.append(PathScore(Circuit(_UNEMBED_BIAS, (), UNEMBED, self.model), bias_score))
        scored.sort(key=lambda s: -abs(s.score))
        return scored[:k]


def expand(model: Transformer, max_heads: int | None = None, *, sources: Sequence[str] = SOURCE_KINDS) -> PathSum:
    """The path expansion of ``model``'s logits with up to ``max_heads`` heads per path (default: all layers).

    Parameters
    ----------
    model : Transformer
    max_heads : int, optional
        The most heads in one path (the name :func:`top_circuits` uses too);
        ``model.config.n_layers`` (the exact expansion) by default.
    sources : sequence of str
        Which of :data:`SOURCE_KINDS` to include; all by default (needed for exactness).

    Returns
    -------
    PathSum
        Lazy: terms are generated on iteration, weights built on access.
    """
    return PathSum(require_model(model, "expand"), max_heads, sources)
