"""Exact top-k circuit enumeration by best-first branch and bound.

The search space: every :class:`~circuitalg.circuits.circuit.Circuit` from a source
(``embed``: ``W_E``, or ``pos``: ``W_pos``) through heads in strictly increasing layers, ending
at the unembedding (``W_U W_OV^hk ... W_OV^h1 S``) or at the key (side ``"k"``:
``S_qᵀ W_QK^h P``) or query (side ``"q"``: ``Pᵀ W_QK^h S_k``) side of a later head, with a bare
source on the other side.

QK terms whose query *and* key paths both pass through heads are not enumerated. A circuit's
head count includes its QK sink head. The score is the Frobenius norm of the virtual weight.

Features of bound dictionaries (:class:`~circuitalg.model.ids.FeatureId`) may be sources (the
chain starts at the decoder column ``d_s`` its first reader sees), sinks (the encoder row
``e_t`` that reads the chain: ``e_t W_OV^hk ... W_OV^h1 S``, a scalar ``e_t W_OV ... d_s`` from
a feature source, and ``e_t d_s`` for the direct path) and the bare side of QK sinks (the QK
sinks' bare side ranges over the sources). Heads enter only where depth allows: a head of
layer ``l`` reads what was written at depth ``<= l`` and its output is read at depth
``> l + 0.25`` (:mod:`circuitalg.circuits.circuit` states the rule). A feature sink reads the
chain with a rank-one Gram matrix, so its bounds ``λmax(Z) = ‖W_Oᵀ e_tᵀ‖²`` are exact.

The search works with ``d_head x d_head`` Gram matrices ``K = X Xᵀ`` of the chain
``P = W_O^g X`` (``K' = M K Mᵀ`` with ``M = W_V^g' W_O^g`` when extending to ``g'``); a
circuit's squared score is ``tr(K Z)`` with ``Z = W_O^gᵀ G W_O^g`` for the sink's Gram
``G``. Upper bounds: ``tr(K Z) <= tr(K) λmax(Z)`` and ``λmax(MᵀZM) <= ||M||₂² λmax(Z)``,
combined over the remaining layers by dynamic programming. Entries are popped best bound
first; when the best remaining bound is below the k-th score found, no unvisited circuit can
enter the top k.

The certificate :attr:`CircuitSearch.bound` is the largest bound of any entry the search
dropped without scoring its circuits: entries pruned when pushed (their bound was already at
most the k-th score) and the entries left on the heap when the search stopped. Every circuit
that was never scored is covered by one of them, so it scores at most ``bound`` (bounds are
inflated by ``1 + 1e-9`` against rounding). Circuits that were scored but are not in the top
``k`` score at most the k-th score. Exactly-zero circuits are ordinary circuits: with
``k >= count_circuits(...)`` all of them are returned.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from circuitalg import runtime
from circuitalg.circuits.circuit import (
    FEATURE_SIDE,
    SINK_SIDES,
    UNEMBED,
    Circuit,
    as_feature_id,
    FeatureVectors,
    Sink,
    bound_dictionaries,
    count_head_chains,
    feature_vectors,
)
from circuitalg.circuits.composition import check_model
from circuitalg.errors import InvalidArgumentError, check_int
from circuitalg.linalg import gram_factor
from circuitalg.model.ids import FeatureId, HeadId, Source
from circuitalg.model.weights import Transformer
from circuitalg.runtime import Runtime

__all__ = ["CircuitSearch", "top_circuits", "count_circuits"]

_SAFETY = 1.0 + 1e-9  # bounds are inflated by this factor against rounding


@dataclasses.dataclass(frozen=True)
class CircuitSearch:
    """The result of :func:`top_circuits`.

    Attributes
    ----------
    circuits : list of Circuit
        The top ``k``, best first.
    visited : int
        Head chains whose Gram matrix was formed (each one is a circuit prefix).
    evaluated : int
        Circuits whose exact score was computed.
    total : int
        Circuits in the search space (what brute force would score).
    bound : float
        Every circuit that was never evaluated scores at most this; it is at most the k-th
        score. 0.0 when every circuit was evaluated (nothing is left to bound). Evaluated
        circuits outside the top ``k`` score at most the k-th score.
    """

    circuits: list[Circuit]
    visited: int
    evaluated: int
    total: int
    bound: float

    def __iter__(self) -> Any:
        return iter(self.circuits)

    def __len__(self) -> int:
        return len(self.circuits)

    def __getitem__(self, i: int) -> Circuit:
        return self.circuits[i]

    @property
    def unevaluated(self) -> int:
        """Circuits whose score was bounded but never computed."""
        return self.total - self.evaluated

    def summary(self) -> str:
        """One line: what was returned, how much was scored, and the certificate."""
        frac = self.evaluated / self.total if self.total else 0.0
        head = (f"top {len(self.circuits)} of {self.total:,} circuits; evaluated {self.evaluated:,} "
                f"({100 * frac:.2f}%), visited {self.visited:,} chains; ")
        if self.unevaluated == 0:
            return head + "every circuit was evaluated (the ranking is exhaustive)"
        return head + f"each of the {self.unevaluated:,} unevaluated circuits scores <= {self.bound:.6g} (certified bound)"


def _check_args(model: Any, k: Any, max_heads: Any, sinks: Any) -> tuple[str, ...]:
    check_model(model)
    check_int("k", k, 1)
    check_int("max_heads", max_heads, 0)
    if isinstance(sinks, str):
        sinks = (sinks,)
    sinks = tuple(sinks)
    bad = [s for s in sinks if s not in SINK_SIDES]
    if bad or not sinks:
        raise InvalidArgumentError(f"sinks={sinks!r}; choose from {SINK_SIDES}.")
    return sinks


@dataclasses.dataclass(frozen=True)
class _Ends:
    """What a search with features starts and ends at: the sources (embeddings and features),
    the sink sides, the feature sinks, and the features' vectors by id."""

    sources: tuple[Source | FeatureId, ...]
    sides: tuple[str, ...]
    feature_sinks: tuple[FeatureId, ...]
    vectors: dict[FeatureId, FeatureVectors]
    dictionaries: dict[str, Any]


def _ends(model: Transformer, k: Any, max_heads: Any, sinks: Any, sources: Any, dictionaries: Any) -> _Ends | None:
    """Check the arguments; None when the search has no feature (today's search)."""
    if isinstance(sinks, str) or as_feature_id(sinks) is not None:
        sinks = (sinks,)
    try:
        sinks = tuple(x if as_feature_id(x) is None else as_feature_id(x) for x in sinks)
    except TypeError:
        raise InvalidArgumentError(f"sinks={sinks!r}; choose from {SINK_SIDES} or give ca.FeatureId sinks.") from None
    feature_sinks = tuple(x for x in sinks if isinstance(x, FeatureId))
    if sources is None and not feature_sinks:
        if dictionaries is not None:
            bound_dictionaries(check_model(model), dictionaries, "top_circuits")
        _check_args(model, k, max_heads, sinks)
        return None
    check_model(model)
    check_int("k", k, 1)
    check_int("max_heads", max_heads, 0)
    sides = tuple(x for x in sinks if not isinstance(x, FeatureId))
    bad = [x for x in sides if x not in SINK_SIDES]
    if bad or not sinks:
        raise InvalidArgumentError(f"sinks={sinks!r}; choose from {SINK_SIDES} or give ca.FeatureId sinks.")
    if len(set(sinks)) != len(sinks):
        raise InvalidArgumentError(f"sinks={sinks!r} lists a sink twice.")
    if sources is None:
        srcs: tuple[Any, ...] = tuple(model.embedding_sources)
    else:
        if isinstance(sources, Source) or as_feature_id(sources) is not None:
            sources = (sources,)
        try:
            srcs = tuple(x if as_feature_id(x) is None else as_feature_id(x) for x in sources)
        except TypeError:
            raise InvalidArgumentError(f"sources={sources!r}; pass a sequence of ca.Source and ca.FeatureId.") from None
        if not srcs:
            raise InvalidArgumentError("sources is empty; pass at least one ca.Source or ca.FeatureId.")
        if len(set(srcs)) != len(srcs):
            raise InvalidArgumentError(f"sources={[x.name for x in srcs]} lists a source twice.")
        for x in srcs:
            if isinstance(x, Source):
                if x not in model.embedding_sources:
                    raise InvalidArgumentError(
                        f"source {x.name}: the search starts at {[e.name for e in model.embedding_sources]} "
                        "or at features (ca.FeatureId)."
                    )
            elif not isinstance(x, FeatureId):
                raise InvalidArgumentError(f"sources: {x!r} is neither a ca.Source nor a ca.FeatureId.")
    bound = bound_dictionaries(model, dictionaries, "top_circuits")
    vectors = {f: feature_vectors(bound, f, "top_circuits")
               for f in (*srcs, *feature_sinks) if isinstance(f, FeatureId)}
    return _Ends(srcs, sides, feature_sinks, vectors, bound)


def _first_layer(ends: _Ends, s: Source | FeatureId) -> int:
    """The first layer whose heads read source ``s`` (a decoder written at depth ``b`` is read by
    layers ``l >= b``)."""
    return math.ceil(ends.vectors[s].write_depth) if isinstance(s, FeatureId) else 0


def _sink_limit(ends: _Ends, t: FeatureId, n_layers: int) -> int:
    """Heads of layers ``< limit`` write before feature ``t`` reads (``l + 0.25 < a``)."""
    return min(max(math.ceil(ends.vectors[t].read_depth - 0.25), 0), n_layers)


def _bare_reads(ends: _Ends, s: Source | FeatureId, t: FeatureId) -> bool:
    """Whether sink ``t`` reads source ``s`` through the stream alone."""
    return not isinstance(s, FeatureId) or ends.vectors[t].direct(ends.vectors[s]) is not None


def _count(model: Transformer, max_heads: int, ends: _Ends) -> int:
    """How many circuits a search with features scores (see :func:`count_circuits`)."""
    L, H = model.config.n_layers, model.config.n_heads

    def chains(lo: int, hi: int, max_len: int) -> int:
        """Chains of 1..max_len heads in layers lo..hi-1."""
        return sum(count_head_chains(hi, H, j, lo) for j in range(1, max_len + 1)) if hi > lo else 0

    first = {s: _first_layer(ends, s) for s in ends.sources}
    total = 0
    for s in ends.sources:
        f = first[s]
        if "unembed" in ends.sides:
            total += 1 + chains(f, L, max_heads)
        if max_heads >= 1:
            for side in ("k", "q"):
                if side not in ends.sides:
                    continue
                for l in range(L):
                    others = sum(1 for o in ends.sources if first[o] <= l)
                    n = chains(f, l, max_heads - 1) + (f <= l)
                    if side == "q" and "k" in ends.sides and f <= l:
                        n -= 1  # the bare-bare term is counted once, under "k"
                    total += H * others * n
        for t in ends.feature_sinks:
            total += _bare_reads(ends, s, t) + chains(f, _sink_limit(ends, t, L), max_heads)
    return total


def count_circuits(
    model: Transformer, max_heads: int = 3, sinks: Sequence[Any] = SINK_SIDES, *,
    sources: Sequence[Source | FeatureId] | None = None, dictionaries: Any = None,
) -> int:
    """How many circuits :func:`top_circuits` searches (what brute force would score); the
    arguments are :func:`top_circuits`'s."""
    ends = _ends(model, 1, max_heads, sinks, sources, dictionaries)
    if ends is not None:
        return _count(model, max_heads, ends)
    sinks = _check_args(model, 1, max_heads, sinks)
    L, H = model.config.n_layers, model.config.n_heads
    S = len(model.embedding_sources)  # embed, and pos with learned positions

    def chains_below(limit: int, max_len: int) -> int:
        """Chains (empty included) of <= max_len heads in layers < limit."""
        return sum(count_head_chains(limit, H, j) for j in range(0, max_len + 1))

    total = 0
    if "unembed" in sinks:
        total += S * chains_below(L, max_heads)
    if max_heads >= 1:
        for side in ("k", "q"):
            if side in sinks:
                for l in range(L):
                    n = chains_below(l, max_heads - 1)
                    if side == "q" and "k" in sinks:
                        n -= 1  # the bare-bare term is counted once, under "k"
                    total += H * S * S * n
    return total


class _VirtualWeights:
    """The virtual weights the search multiplies, with their Gram matrices and norm bounds (float64,
    per model): sources into heads (``W S Sᵀ Wᵀ``), writer to later head (the transition
    ``W_V^g2 W_O^g``) and heads into sinks (``W_O^gᵀ G W_O^g``)."""

    def __init__(self, model: Transformer, sinks: tuple[str, ...], rt: Runtime, ends: _Ends | None = None) -> None:
        c = model.config
        self.model, self.sinks, self.ends = model, sinks, ends
        self.L, self.H = c.n_layers, c.n_heads
        hw = model.head_weights.float64()
        self.heads: list[HeadId] = list(hw.ids())
        self.W_Q = [hw.W_Q[l, h] for l, h in self.heads]
        self.W_K = [hw.W_K[l, h] for l, h in self.heads]
        self.W_V = [hw.W_V[l, h] for l, h in self.heads]
        self.W_O = [hw.W_O[l, h] for l, h in self.heads]
        # R_s with R_sᵀ R_s = S Sᵀ for each source S (cached on the leaf)
        self.sources: tuple[Any, ...] = model.embedding_sources if ends is None else ends.sources
        self.R_src = {s: _f(gram_factor(model.source_map(s), "rows")) for s in self.sources if isinstance(s, Source)}
        self.layer = np.array([l for l, _ in self.heads])
        n = len(self.heads)
        # W S Sᵀ Wᵀ for every head's W_V, W_Q, W_K and every source S: one product R_s Wᵀ of all
        # heads at a time per source and weight (a transient d_model x n d_head array)
        self.source_gram = {(s, X): _all_grams(R, [hw.W_Q, hw.W_K, hw.W_V]["QKV".index(X)], sinks, X)
                            for s, R in self.R_src.items() for X in "QKV"}
        # sees[s][g]: head g reads source s (a feature's decoder written at depth <= its layer)
        self.sees = {s: np.ones(n, dtype=bool) for s in self.R_src}
        for s in self.sources:
            if isinstance(s, FeatureId):
                self._feature_source(s, [hw.W_Q, hw.W_K, hw.W_V])
        # first step: K_1(s, g) = W_V^g S Sᵀ W_V^gᵀ
        self.K1 = {s: list(self.source_gram[(s, "V")]) for s in self.sources}
        # transitions M = W_V^g2 W_O^g for writer g and later reader g2: bounds on their norms for
        # every pair (_bound_transitions); the search forms the ones it follows on demand
        # (transition()): holding all 9,504 of GPT-2 small took 297 MiB
        self.M_norm2 = np.zeros((n, n))
        self._M: dict[tuple[int, int], np.ndarray] = {}
        if n:
            self._bound_transitions(rt)
        # readers: (sink side, sink head index or -1, bare source)
        self.readers: list[tuple[str, int, Source | None]] = []
        self.reader_layer: list[int] = []
        self._sink_grams: dict[tuple[int, int], np.ndarray] = {}
        if "unembed" in sinks:
            self.readers.append(("unembed", -1, None))
            self.reader_layer.append(self.L)
            R_U = _f(gram_factor(model.W_U, "cols"))
            self.G_U_factor = R_U
        for side in ("k", "q"):
            if side in sinks:
                for g in range(n):
                    for s in self.sources:
                        if self.sees[s][g]:  # the bare side is read by the sink head
                            self.readers.append((side, g, s))
                            self.reader_layer.append(int(self.layer[g]))
        for t in ends.feature_sinks if ends is not None else ():
            self.readers.append((FEATURE_SIDE, -1, t))
            self.reader_layer.append(_sink_limit(ends, t, self.L))
        self.reader_layer_arr = np.array(self.reader_layer, dtype=np.int64)
        # squared spectral norms from the d_head x d_head Gram matrices (batched; rounding is
        # covered by _SAFETY): ‖W_O‖₂² = λmax(W_OᵀW_O), ‖W_Q‖₂² = λmax(W_Q W_Qᵀ), ...
        def norm2(which: str) -> np.ndarray:
            return np.linalg.eigvalsh(hw.gram(which).reshape(-1, c.d_head, c.d_head))[:, -1] if n else np.zeros(0)

        self.W_O_norm2 = norm2("O")
        self.read_norm2 = {"k": norm2("K"), "q": norm2("Q")}  # the side a QK sink reads the chain through
        # sigma[g, rho] >= λmax(Z_{g, rho}); exact for unembed, a product bound for QK sinks
        self.sigma = np.zeros((n, len(self.readers)))
        for r, (kind, h, s) in enumerate(self.readers):
            if kind == "unembed":
                for g in range(n):
                    self.sigma[g, r] = np.linalg.eigvalsh(self.sink_gram(g, r))[-1]
            elif kind == FEATURE_SIDE:  # Z = u uᵀ: λmax(Z) = ‖u‖², exact
                for g in np.flatnonzero(self.layer < self.reader_layer[r]):
                    u = self._feature_sink_vector(int(g), s)
                    self.sigma[g, r] = float(u @ u)
            else:
                lam = np.linalg.eigvalsh(self.other_gram(kind, h, s))[-1]
                self.sigma[:, r] = self.read_norm2[kind][h] * lam * self.W_O_norm2
        # valid[g, rho]: a chain ending at head g may stop at reader rho (a later layer)
        self.valid = self.layer[:, None] < self.reader_layer_arr[None, :]
        self.sigma = np.where(self.valid, np.maximum(self.sigma, 0.0) * _SAFETY, 0.0)

    def _feature_source(self, s: FeatureId, stacks: list[np.ndarray]) -> None:
        """``source_gram`` and ``sees`` of feature source ``s``: ``(W v)(W v)ᵀ`` for each head's
        ``W`` and the decoder ``v`` its layer reads (zero where it reads none)."""
        fv = self.ends.vectors[s]  # type: ignore[union-attr]
        n, dh = len(self.heads), self.model.config.d_head
        v_by_layer = [fv.written(float(l)) for l in range(self.L)]
        self.sees[s] = np.array([v_by_layer[l] is not None for l in self.layer], dtype=bool)
        for X, W in zip("QKV", stacks):
            if X != "V" and not ({"q", "k"} & set(self.sinks)):
                self.source_gram[(s, X)] = np.zeros((0, dh, dh))
                continue
            G = np.zeros((n, dh, dh))
            for g, (l, h) in enumerate(self.heads):
                v = v_by_layer[l]
                if v is not None:
                    y = W[l, h] @ v
                    G[g] = np.outer(y, y)
            self.source_gram[(s, X)] = G

    def _feature_sink_vector(self, g: int, t: FeatureId) -> np.ndarray:
        """``u = W_O^gᵀ e_tᵀ`` for the encoder row ``e_t`` that reads head ``g``'s output."""
        e = self.ends.vectors[t].read(self.layer[g] + 0.25)  # type: ignore[union-attr]
        return self.W_O[g].T @ e

    def source_visible(self, s: Any, r: int) -> bool:
        """Whether reader ``r`` reads source ``s`` bare (no head between)."""
        kind, h, _ = self.readers[r]
        if kind == "unembed":
            return True
        if kind == FEATURE_SIDE:
            return _bare_reads(self.ends, s, self.readers[r][2])  # type: ignore[arg-type]
        return bool(self.sees[s][h])

    def sides(self, kind: str, h: int) -> tuple[np.ndarray, np.ndarray]:
        """``(W_read, W_other)`` of QK sink ``h``: the chain enters through ``W_K`` for key sinks
        (``W_Q`` for query sinks) and the bare source through the other."""
        return (self.W_K[h], self.W_Q[h]) if kind == "k" else (self.W_Q[h], self.W_K[h])

    def other_gram(self, kind: str, h: int, s: str) -> np.ndarray:
        """``W S Sᵀ Wᵀ`` for the bare side of a QK sink (``W_Q`` for key sinks, ``W_K`` for query sinks)."""
        return self.source_gram[(s, "Q" if kind == "k" else "K")][h]

    def _bound_transitions(self, rt: Runtime) -> None:
        """``M_norm2[g, g2]``: a bound on ``‖W_V^g2 W_O^g‖₂²`` for every writer ``g`` and later head
        ``g2``, from one product per writer (``W_V`` of all later heads, a suffix of the
        layer-ordered list, times ``W_O^g``) made and dropped inside the threads of the split.

        :meth:`transition` forms ``M`` in its own product, whose rounding differs from the block's by
        at most ``2 γ_D |W_V^g2| |W_O^g|`` entrywise (Higham, ch. 3); in norm at most
        ``2 γ_D Σ_j ‖W_V^g2[:, j]‖ ‖W_O^g[j, :]‖`` (one small product for all pairs), which is added
        to each bound: so the bound holds for the matrix the search multiplies by, and stays exactly
        zero where no term is nonzero."""
        W_V_all = np.ascontiguousarray(np.stack(self.W_V))  # rows reshape as views
        _, dh, D = W_V_all.shape
        writers = [(g, int(np.argmax(self.layer > self.layer[g])))
                   for g in range(len(self.heads)) if self.layer[g] < self.layer.max()]
        # alternate writers between the halves of the split: both get early and late ones
        order = list(range(0, len(writers), 2)) + list(range(1, len(writers), 2))
        u = np.finfo(np.float64).eps / 2
        col_V = np.sqrt(np.einsum("gij,gij->gj", W_V_all, W_V_all))
        row_O = np.sqrt(np.stack([np.einsum("ji,ji->j", w, w) for w in self.W_O]))
        slack = 2.01 * (D * u / (1 - D * u)) * (row_O @ col_V.T)

        def bounds(lo: int, hi: int) -> list[np.ndarray]:
            out = []
            for i in order[lo:hi]:
                g, first = writers[i]
                Ms = (W_V_all[first:].reshape(-1, D) @ self.W_O[g]).reshape(-1, dh, dh)
                out.append((np.sqrt(_spectral_norm2_bound(Ms)) + slack[g, first:]) ** 2)
            return out

        for i, norms2 in zip(order, (x for part in rt.map(bounds, len(order)) for x in part)):
            g, first = writers[i]
            self.M_norm2[g, first:] = norms2

    def transition(self, g: int, g2: int) -> np.ndarray:
        """``M = W_V^g2 W_O^g`` (cached): the transition from writer ``g`` to a later head ``g2``,
        whose norm ``M_norm2[g, g2]`` bounds."""
        M = self._M.get((g, g2))
        if M is None:
            M = self._M[(g, g2)] = self.W_V[g2] @ self.W_O[g]
        return M

    def sink_gram(self, g: int, r: int) -> np.ndarray:
        """``Z = W_O^gᵀ G_ρ W_O^g`` (cached): the Gram matrix ``G_ρ`` of reader ``r``'s sink seen
        through writer ``g``'s ``W_O``; a chain ending at ``g`` with Gram ``K`` scores ``tr(K Z)``."""
        key = (g, r)
        Z = self._sink_grams.get(key)
        if Z is None:
            kind, h, s = self.readers[r]
            if kind == "unembed":
                Z = _gram_of(self.G_U_factor @ self.W_O[g])
            elif kind == FEATURE_SIDE:
                u = self._feature_sink_vector(g, s)
                Z = np.outer(u, u)
            else:
                W_read = self.sides(kind, h)[0]
                A = W_read @ self.W_O[g]
                Z = A.T @ self.other_gram(kind, h, s) @ A
            self._sink_grams[key] = Z
        return Z

    def bare_value(self, s: str, r: int) -> float:
        """Squared score of the circuit from bare source ``s`` into reader ``r``."""
        kind, h, other = self.readers[r]
        if isinstance(s, FeatureId):
            fv = self.ends.vectors[s]  # type: ignore[union-attr]
            if kind == "unembed":
                return float(np.sum((self.G_U_factor @ fv.written(float(self.L))) ** 2))
            if kind == FEATURE_SIDE:
                return self.ends.vectors[other].direct(fv) ** 2  # type: ignore[union-attr, operator]
        elif kind == FEATURE_SIDE:
            e = self.ends.vectors[other].read(-math.inf)  # type: ignore[union-attr]
            return float(np.sum((self.R_src[s] @ e) ** 2))  # ‖e S‖² = ‖R_s eᵀ‖²
        R = self.R_src.get(s)
        if kind == "unembed":
            return float(np.linalg.norm(self.G_U_factor @ R.T) ** 2)
        G = self.source_gram[(s, "K" if kind == "k" else "Q")][h]  # W_read S Sᵀ W_readᵀ
        return float(np.sum(G * self.other_gram(kind, h, other)))


def _all_grams(R: np.ndarray, W: np.ndarray, sinks: tuple[str, ...], which: str) -> np.ndarray:
    """``(R Wᵀ)ᵀ (R Wᵀ) = W (RᵀR) Wᵀ`` for every head's ``W`` (stack ``(L, H, d_head, d_model)``):
    ``(L H, d_head, d_head)``; empty when no sink reads through ``which`` (Q/K without QK sinks)."""
    L, H, dh, D = W.shape
    if which != "V" and not ({"q", "k"} & set(sinks)):
        return np.zeros((0, dh, dh))
    Y = (R @ W.reshape(L * H * dh, D).T).reshape(R.shape[0], L * H, dh)
    return np.einsum("dni,dnj->nij", Y, Y, optimize=True)


def _f(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _gram_of(Y: np.ndarray) -> np.ndarray:
    """``Yᵀ Y``."""
    return Y.T @ Y


def top_circuits(
    model: Transformer, k: int = 10, max_heads: int = 3, sinks: Sequence[Any] = SINK_SIDES, *,
    sources: Sequence[Source | FeatureId] | None = None, dictionaries: Any = None,
) -> CircuitSearch:
    """The ``k`` circuits with the largest Frobenius norm, exactly (best-first branch and bound).

    Parameters
    ----------
    model : Transformer
        Its view's weights, norm weights included whether or not the model was folded.
    k : int
        How many circuits to return; ``min(k, count_circuits(...))`` are returned, circuits
        that score exactly zero included.
    max_heads : int
        At most this many heads per circuit (a QK sink head counts).
    sinks : sequence of {"unembed", "q", "k"} or FeatureId
        Where circuits end; a :class:`~circuitalg.model.ids.FeatureId` ends at that feature's
        encoder row (its score: the absolute value of the scalar ``e_t ... d_s`` from a feature
        source, the norm of the row ``e_t ... S`` from an embedding).
    sources : sequence of Source or FeatureId, optional
        Where circuits start (and what the bare side of a QK sink ranges over): the model's
        embeddings (the default) and features, each starting at its decoder column.
    dictionaries : sequence of BoundDictionary, optional
        The dictionaries the features belong to (:func:`circuitalg.features.binding.bind` to
        this model; a bound dictionary set's tuple is accepted).

    Returns
    -------
    CircuitSearch
        The circuits (each with its ``score``), how many chains were visited and circuits
        evaluated, the size of the space, and the bound that certifies every circuit that was
        not evaluated.
    """
    ends = _ends(model, k, max_heads, sinks, sources, dictionaries)
    if ends is None:
        sinks = _check_args(model, k, max_heads, sinks)
        return _Search(_VirtualWeights(model, sinks, runtime.current()), k, max_heads).run()
    return _Search(_VirtualWeights(model, ends.sides, runtime.current(), ends), k, max_heads).run()


#: ``on_score(circuit)``: called with every circuit the search evaluates, its ``score`` set
#: (the tests check the certificate against brute force with it).
ScoreHook = Callable[[Circuit], None]


@dataclasses.dataclass(frozen=True)
class _Node:
    """A chain prefix: its source, heads (indices into the virtual weights' head list) and Gram ``K``."""

    source: Source
    chain: tuple[int, ...]
    K: np.ndarray
    trace: float


@dataclasses.dataclass(frozen=True)
class _Stops:
    """Every circuit that stops at one of ``node``'s readers (bounded together)."""

    node: _Node


@dataclasses.dataclass(frozen=True)
class _Stop:
    """The one circuit that stops ``node`` at reader ``reader``."""

    node: _Node
    reader: int


@dataclasses.dataclass(frozen=True)
class _Expand:
    """Every circuit that extends ``node`` by at least one head (bounded together)."""

    node: _Node


@dataclasses.dataclass(frozen=True)
class _Child:
    """Every circuit that extends ``node`` through head ``head`` (bounded together)."""

    node: _Node
    head: int


_Entry = _Stops | _Stop | _Expand | _Child


def _spectral_norm2_bound(Ms: np.ndarray, squarings: int = 3) -> np.ndarray:
    """Upper bounds on ``‖M‖₂²`` for a stack of square matrices, from ``λmax(A) <= ‖A^(2^s)‖_F^(1/2^s)``
    for the PSD ``A = MᵀM`` (``s`` squarings; scaled by ``‖A‖_F`` first so nothing overflows): at
    most ``n^(1/2^s)`` (``s = 3``: 1.7x at n = 64, typically a few percent) above the true value,
    never below it, and a few batched matrix products instead of one SVD per matrix. Rounding
    is covered by the search's safety factor."""
    out = np.empty(len(Ms))
    for s in range(0, len(Ms), 32):  # 32 at a time: temporaries of about 1 MB at d_head 64
        A = np.matmul(Ms[s:s + 32].swapaxes(-1, -2), Ms[s:s + 32])
        scale = np.sqrt(np.einsum("nij,nij->n", A, A))  # ‖A‖_F >= λmax
        ok = scale > 0
        A /= np.where(ok, scale, 1.0)[:, None, None]
        B = np.empty_like(A)
        for _ in range(squarings):
            np.matmul(A, A, out=B)
            A, B = B, A
        root = np.sqrt(np.einsum("nij,nij->n", A, A)) ** (1.0 / 2**squarings)
        out[s:s + 32] = np.where(ok, scale * np.minimum(root, 1.0), 0.0)
    return out


class _Search:
    """Best-first branch and bound over chain prefixes (see the module docstring)."""

    def __init__(self, weights: _VirtualWeights, k: int, max_heads: int, on_score: ScoreHook | None = None) -> None:
        self.weights, self.k, self.max_heads, self.on_score = weights, k, max_heads, on_score
        n, R = len(weights.heads), len(weights.readers)
        # readers that take no head of their own (the unembedding, features)
        unembed_readers = [r for r in range(R) if weights.readers[r][0] in ("unembed", FEATURE_SIDE)]
        # B[r][g]: bound on λmax of the sink Gram seen from head g's W_O with r more heads allowed
        stop_u = weights.sigma[:, unembed_readers].max(axis=1) if unembed_readers else np.zeros(n)
        stop_all = weights.sigma.max(axis=1) if R else np.zeros(n)
        self.B = [stop_u.copy()]
        for r in range(1, max_heads + 1):
            ext = (weights.M_norm2 * self.B[r - 1][None, :]).max(axis=1) * _SAFETY if n else np.zeros(0)
            self.B.append(np.maximum(stop_all, ext))
        # can_stop[n][g]: a chain of n heads ending at head g has a reader it may stop at
        is_unembed = np.array([side in ("unembed", FEATURE_SIDE) for side, _, _ in weights.readers], dtype=bool)
        any_u = (weights.valid & is_unembed).any(axis=1) if R else np.zeros(n, dtype=bool)
        any_qk = (weights.valid & ~is_unembed).any(axis=1) if R else np.zeros(n, dtype=bool)
        self.can_stop = [(any_u & (j <= max_heads)) | (any_qk & (j + 1 <= max_heads)) for j in range(max_heads + 1)]
        self.best: list[tuple[float, int, Circuit]] = []  # min-heap of (value², tiebreak, circuit)
        self.heap: list[tuple[float, int, _Entry]] = []  # (-bound², tiebreak, entry)
        self.tick = itertools.count()
        self.evaluated = self.visited = 0
        self.cert = 0.0  # the largest bound² of an entry dropped unexplored

    # -- the top k and the certificate ------------------------------------------------------
    def threshold(self) -> float:
        return self.best[0][0] if len(self.best) == self.k else -1.0

    def offer(self, v2: float, source: Source | FeatureId, chain: tuple[int, ...], r: int) -> None:
        """Record an evaluated circuit of squared score ``v2``."""
        self.evaluated += 1
        kept = len(self.best) < self.k or v2 > self.best[0][0]
        if not kept and self.on_score is None:
            return  # the common case once the top k fills: no Circuit is built
        weights = self.weights
        side, h, other = weights.readers[r]
        if side == FEATURE_SIDE:
            sink = Sink(FEATURE_SIDE, feature=other)
        else:
            sink = UNEMBED if side == "unembed" else Sink(side, weights.heads[h], other)
        circ = Circuit(source, tuple(weights.heads[g] for g in chain), sink, weights.model, math.sqrt(max(v2, 0.0)),
                       *(() if weights.ends is None else (weights.ends.dictionaries,)))
        if self.on_score is not None:
            self.on_score(circ)
        if not kept:
            return
        item = (v2, next(self.tick), circ)
        if len(self.best) < self.k:
            heapq.heappush(self.best, item)
        else:
            heapq.heapreplace(self.best, item)

    def push(self, bound2: float, entry: _Entry) -> None:
        if bound2 > self.threshold():
            heapq.heappush(self.heap, (-bound2, next(self.tick), entry))
        else:  # pruned: its circuits are never scored, so its bound enters the certificate
            self.cert = max(self.cert, bound2)

    def allowed(self, r: int, n_chain: int) -> bool:
        """May a chain of ``n_chain`` heads stop at reader ``r``?"""
        side = self.weights.readers[r][0]
        return n_chain <= self.max_heads if side in ("unembed", FEATURE_SIDE) else n_chain + 1 <= self.max_heads

    # -- the search ----------------------------------------------------------------------------
    def add_node(self, source: Source | FeatureId, chain: tuple[int, ...], K: np.ndarray) -> None:
        weights, g = self.weights, chain[-1]
        self.visited += 1
        node = _Node(source, chain, K, max(float(np.trace(K)), 0.0))
        remaining = self.max_heads - len(chain)
        if self.can_stop[len(chain)][g]:
            self.push(node.trace * weights.sigma[g].max(initial=0.0), _Stops(node))
        if remaining >= 1 and np.any(weights.layer > weights.layer[g]):
            ext = (weights.M_norm2[g] * self.B[remaining - 1]).max(initial=0.0) * _SAFETY
            self.push(node.trace * ext, _Expand(node))

    def expand(self, entry: _Entry) -> None:
        weights = self.weights
        node = entry.node
        g = node.chain[-1]
        if isinstance(entry, _Stops):
            for r in np.flatnonzero(weights.valid[g]):
                if self.allowed(int(r), len(node.chain)):
                    self.push(node.trace * weights.sigma[g, r], _Stop(node, int(r)))
        elif isinstance(entry, _Stop):
            self.offer(float(np.sum(node.K * weights.sink_gram(g, entry.reader))), node.source, node.chain, entry.reader)
        elif isinstance(entry, _Expand):
            remaining = self.max_heads - len(node.chain)
            for g2 in np.flatnonzero(weights.layer > weights.layer[g]):
                bound2 = node.trace * weights.M_norm2[g, g2] * self.B[remaining - 1][g2] * _SAFETY
                self.push(bound2, _Child(node, int(g2)))
        else:
            M = weights.transition(g, entry.head)
            self.add_node(node.source, node.chain + (entry.head,), M @ node.K @ M.T)

    def run(self) -> CircuitSearch:
        weights = self.weights
        for s in weights.sources:  # bare-source circuits, scored directly
            for r, (side, _, _) in enumerate(weights.readers):
                if not self.allowed(r, 0):
                    continue
                if side == "q" and "k" in weights.sinks:
                    continue  # the bare-bare QK term is listed once, as a key-side term
                if weights.ends is not None and not weights.source_visible(s, r):
                    continue  # the reader does not read the source (it is written later)
                self.offer(weights.bare_value(s, r), s, (), r)
        if self.max_heads >= 1:
            for s in weights.sources:
                for g in range(len(weights.heads)):
                    if weights.sees[s][g]:
                        self.add_node(s, (g,), weights.K1[s][g])
        while self.heap:
            neg, _, entry = heapq.heappop(self.heap)
            if -neg <= self.threshold():
                self.cert = max(self.cert, -neg)  # it and everything left on the heap stay unexplored
                break
            self.expand(entry)
        circuits = [c for _, _, c in sorted(self.best, key=lambda t: (-t[0], t[1]))]
        if weights.ends is None:
            total = count_circuits(weights.model, self.max_heads, weights.sinks)
        else:
            total = _count(weights.model, self.max_heads, weights.ends)
        bound = 0.0 if self.evaluated == total else math.sqrt(max(self.cert, 0.0))
        return CircuitSearch(circuits, self.visited, self.evaluated, total, bound)
