"""Exact top-k circuit enumeration by best-first branch and bound.

A *circuit* is a chain of OV maps from a source (``embed``: ``W_E``, or ``pos``: ``W_pos``)
through heads in strictly increasing layers, ending at a sink:

- ``unembed``: the OV circuit ``W_U W_OV^hk ... W_OV^h1 S`` (vocab x source);
- the key side of a head ``h`` (kind ``"k"``): the QK term ``S_qᵀ W_QK^h P`` whose key path is
  the chain ``P = W_OV^hk ... W_OV^h1 S`` and whose query side is a bare source ``S_q``;
- the query side (kind ``"q"``): ``Pᵀ W_QK^h S_k`` with a bare key source.

QK terms whose query *and* key paths both pass through heads are not enumerated. A circuit's
head count includes its QK sink head. The score is the Frobenius norm of the virtual weight.

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

from circuitalg.circuits.composition import check_model
from circuitalg.errors import InvalidArgumentError, check_int
from circuitalg.linalg import gram_factor
from circuitalg.maps.nodes import LinearMap
from circuitalg.model.weights import Transformer

__all__ = ["Circuit", "CircuitSearch", "SINK_KINDS", "top_circuits", "count_circuits"]

#: The sinks a circuit can end at.
SINK_KINDS = ("unembed", "q", "k")
_SOURCES = ("embed", "pos")
_SAFETY = 1.0 + 1e-9  # bounds are inflated by this factor against rounding


@dataclasses.dataclass(frozen=True)
class Circuit:
    """One circuit (see the module docstring).

    Attributes
    ----------
    kind : {"unembed", "q", "k"}
    source : str
        ``embed`` or ``pos``: where the chain starts.
    heads : tuple of (layer, head)
        The chain's heads, first first.
    sink : (layer, head) or None
        The head whose QK circuit the chain enters (None for ``unembed``).
    other_source : str or None
        The bare source on the other side of the QK term.
    score : float
        Frobenius norm of the virtual weight.
    """

    kind: str
    source: str
    heads: tuple[tuple[int, int], ...]
    sink: tuple[int, int] | None
    other_source: str | None
    score: float
    model: Transformer = dataclasses.field(repr=False, compare=False, hash=False)

    @property
    def n_heads(self) -> int:
        """Heads in the circuit, the QK sink head included."""
        return len(self.heads) + (self.sink is not None)

    @property
    def name(self) -> str:
        """e.g. ``embed -> L0H1 -> L1H2.k (query: embed)`` or ``embed -> L0H3 -> unembed``."""
        chain = " -> ".join([self.source, *(f"L{l}H{h}" for l, h in self.heads)])
        if self.kind == "unembed":
            return chain + " -> unembed"
        l, h = self.sink  # type: ignore[misc]
        side = "query" if self.kind == "k" else "key"
        return f"{chain} -> L{l}H{h}.{self.kind} ({side}: {self.other_source})"

    def _source_map(self, source: str) -> LinearMap:
        return self.model.W_E if source == "embed" else self.model.W_pos

    def path(self) -> LinearMap:
        """The chain ``W_OV^hk ... W_OV^h1 S`` (resid x source)."""
        m = self._source_map(self.source)
        for l, h in self.heads:
            m = self.model.head(l, h).ov @ m
        return m

    @property
    def weight(self) -> LinearMap:
        """The virtual weight, a lazy typed map (never materialised)."""
        P = self.path()
        if self.kind == "unembed":
            return self.model.W_U @ P
        head = self.model.head(*self.sink)  # type: ignore[misc]
        other = self._source_map(self.other_source)  # type: ignore[arg-type]
        if self.kind == "k":
            return other.T @ head.qk @ P
        return P.T @ head.qk @ other

    @property
    def symbol(self) -> Any:
        """The sympy twin of :attr:`weight`."""
        from circuitalg.maps.twin import to_sympy

        return to_sympy(self.weight)

    @property
    def roles(self) -> tuple[str, str]:
        """What the rows and columns of :attr:`weight` index: ``("query", "key")`` for QK
        circuits, ``("output", "input")`` for OV circuits into the unembedding."""
        return ("output", "input") if self.kind == "unembed" else ("query", "key")

    def top_tokens(self, k: int = 10, *, by: str = "value") -> list[Any]:
        """The ``k`` largest entries of :attr:`weight`, labelled by role (query/key or
        output/input) with the model's tokens, token ids or positions; position pairs of a QK
        circuit are restricted to key <= query (:func:`~circuitalg.circuits.diagnostics.top_tokens`)."""
        from circuitalg.circuits.diagnostics import top_tokens

        return top_tokens(self.weight, k, vocab=self.model.vocab, by=by, roles=self.roles)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record."""
        return {
            "name": self.name, "kind": self.kind, "source": self.source,
            "heads": [f"L{l}H{h}" for l, h in self.heads],
            "sink": None if self.sink is None else f"L{self.sink[0]}H{self.sink[1]}",
            "other_source": self.other_source, "score": self.score, "n_heads": self.n_heads,
        }

    def __str__(self) -> str:
        return f"{self.name}  ||.||_F = {self.score:.6g}"


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
    bad = [s for s in sinks if s not in SINK_KINDS]
    if bad or not sinks:
        raise InvalidArgumentError(f"sinks={sinks!r}; choose from {SINK_KINDS}.")
    return sinks


def count_circuits(model: Transformer, max_heads: int = 3, sinks: Sequence[str] = SINK_KINDS) -> int:
    """How many circuits :func:`top_circuits` searches (what brute force would score)."""
    sinks = _check_args(model, 1, max_heads, sinks)
    L, H = model.config.n_layers, model.config.n_heads
    def chains_below(limit: int, max_len: int) -> int:
        """Chains (empty included) of <= max_len heads in layers < limit."""
        return sum(math.comb(limit, j) * H**j for j in range(0, max_len + 1))

    total = 0
    if "unembed" in sinks:
        total += 2 * chains_below(L, max_heads)
    if max_heads >= 1:
        for side in ("k", "q"):
            if side in sinks:
                for l in range(L):
                    n = chains_below(l, max_heads - 1)
                    if side == "q" and "k" in sinks:
                        n -= 1  # the bare-bare term is counted once, under "k"
                    total += H * 2 * 2 * n
    return total


class _Engine:
    """Per-model precomputation shared by the search (float64)."""

    def __init__(self, model: Transformer, sinks: tuple[str, ...]) -> None:
        c = model.config
        self.model, self.sinks = model, sinks
        self.L, self.H = c.n_layers, c.n_heads
        hw = model.head_weights.float64()
        self.heads = [(i.layer, i.head) for i in hw.ids()]
        self.W_Q = [hw.W_Q[l, h] for l, h in self.heads]
        self.W_K = [hw.W_K[l, h] for l, h in self.heads]
        self.W_V = [hw.W_V[l, h] for l, h in self.heads]
        self.W_O = [hw.W_O[l, h] for l, h in self.heads]
        # R_s with R_sᵀ R_s = S Sᵀ for each source S (cached on the leaf)
        self.R_src = {"embed": _f(gram_factor(model.W_E, "rows")), "pos": _f(gram_factor(model.W_pos, "rows"))}
        self.layer = np.array([l for l, _ in self.heads])
        n = len(self.heads)
        # first step: K_1(s, g) = W_V^g S Sᵀ W_V^gᵀ
        self.K1 = {s: [_gram_of(R @ self.W_V[g].T) for g in range(n)] for s, R in self.R_src.items()}
        # transitions and their spectral norms, for writer g and later reader g'
        self.M: dict[tuple[int, int], np.ndarray] = {}
        self.M_norm2 = np.zeros((n, n))
        W_V_all = np.stack(self.W_V) if n else np.zeros((0, 0, 0))
        dh = W_V_all.shape[1] if n else 0
        for g in range(n):
            later = np.flatnonzero(self.layer > self.layer[g])
            if later.size:
                first = int(later[0])  # later heads are a suffix of the layer-ordered list
                Ms = (W_V_all[first:].reshape(-1, W_V_all.shape[2]) @ self.W_O[g]).reshape(-1, dh, dh)
                norms = np.linalg.norm(Ms, ord=2, axis=(1, 2))
                for g2, Mg, nm in zip(later, Ms, norms):
                    self.M[(g, int(g2))] = Mg
                    self.M_norm2[g, g2] = nm**2
        # readers: (kind, sink index or -1, bare source)
        self.readers: list[tuple[str, int, str | None]] = []
        self.reader_layer: list[int] = []
        self.Z: dict[tuple[int, int], np.ndarray] = {}
        self.side_gram: dict[tuple[str, int, str], np.ndarray] = {}
        if "unembed" in sinks:
            self.readers.append(("unembed", -1, None))
            self.reader_layer.append(self.L)
            R_U = _f(gram_factor(model.W_U, "cols"))
            self.G_U_factor = R_U
        for side in ("k", "q"):
            if side in sinks:
                for g in range(n):
                    for s in _SOURCES:
                        self.readers.append((side, g, s))
                        self.reader_layer.append(int(self.layer[g]))
        self.reader_layer_arr = np.array(self.reader_layer, dtype=np.int64)
        # sigma[g, rho] >= λmax(Z_{g, rho}); exact for unembed, a product bound for QK sinks
        self.W_O_norm2 = np.array([np.linalg.norm(W, 2) ** 2 for W in self.W_O])
        self.sigma = np.zeros((n, len(self.readers)))
        for r, (kind, h, s) in enumerate(self.readers):
            if kind == "unembed":
                for g in range(n):
                    self.sigma[g, r] = np.linalg.eigvalsh(self.Zmat(g, r))[-1]
            else:
                W_read = self.sides(kind, h)[0]
                lam = np.linalg.eigvalsh(self.other_gram(kind, h, s))[-1]
                self.sigma[:, r] = np.linalg.norm(W_read, 2) ** 2 * lam * self.W_O_norm2
        # valid[g, rho]: a chain ending at head g may stop at reader rho (a later layer)
        self.valid = self.layer[:, None] < self.reader_layer_arr[None, :]
        self.sigma = np.where(self.valid, np.maximum(self.sigma, 0.0) * _SAFETY, 0.0)

    def sides(self, kind: str, h: int) -> tuple[np.ndarray, np.ndarray]:
        """``(W_read, W_other)`` of QK sink ``h``: the chain enters through ``W_K`` for key sinks
        (``W_Q`` for query sinks) and the bare source through the other."""
        return (self.W_K[h], self.W_Q[h]) if kind == "k" else (self.W_Q[h], self.W_K[h])

    def other_gram(self, kind: str, h: int, s: str) -> np.ndarray:
        """``W S Sᵀ Wᵀ`` for the bare side of a QK sink (``W_Q`` for key sinks, ``W_K`` for query sinks)."""
        key = (kind, h, s)
        G = self.side_gram.get(key)
        if G is None:
            G = self.side_gram[key] = _gram_of(self.R_src[s] @ self.sides(kind, h)[1].T)
        return G

    def Zmat(self, g: int, r: int) -> np.ndarray:
        """``Z_{g, rho} = W_O^gᵀ G_rho W_O^g`` (cached)."""
        key = (g, r)
        Z = self.Z.get(key)
        if Z is None:
            kind, h, s = self.readers[r]
            if kind == "unembed":
                Z = _gram_of(self.G_U_factor @ self.W_O[g])
            else:
                W_read = self.sides(kind, h)[0]
                A = W_read @ self.W_O[g]
                Z = A.T @ self.other_gram(kind, h, s) @ A
            self.Z[key] = Z
        return Z

    def bare_value(self, s: str, r: int) -> float:
        """Squared score of the circuit from bare source ``s`` into reader ``r``."""
        kind, h, other = self.readers[r]
        R = self.R_src[s]
        if kind == "unembed":
            return float(np.linalg.norm(self.G_U_factor @ R.T) ** 2)
        W_read = self.sides(kind, h)[0]
        G = _gram_of(R @ W_read.T)
        return float(np.sum(G * self.other_gram(kind, h, other)))


def _f(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _gram_of(Y: np.ndarray) -> np.ndarray:
    """``Yᵀ Y``."""
    return Y.T @ Y


def top_circuits(
    model: Transformer, k: int = 10, max_heads: int = 3, sinks: Sequence[str] = SINK_KINDS
) -> CircuitSearch:
    """The ``k`` circuits with the largest Frobenius norm, exactly (best-first branch and bound).

    Parameters
    ----------
    model : Transformer
        Weights are used as given (fold layer norms first to analyse what the model computes).
    k : int
        How many circuits to return; ``min(k, count_circuits(...))`` are returned, circuits
        that score exactly zero included.
    max_heads : int
        At most this many heads per circuit (a QK sink head counts).
    sinks : sequence of {"unembed", "q", "k"}

    Returns
    -------
    CircuitSearch
        The circuits, how many chains were visited and circuits evaluated, the size of the
        space, and the bound that certifies every circuit that was not evaluated.
    """
    return _search(model, k, max_heads, sinks)


#: ``on_score(circuit_key, squared_score)`` with ``circuit_key = (kind, source, heads, sink,
#: other_source)``: called for every circuit the search evaluates (tests check the certificate).
ScoreHook = Callable[[tuple[Any, ...], float], None]


def _search(
    model: Transformer, k: int, max_heads: int, sinks: Sequence[str], on_score: ScoreHook | None = None
) -> CircuitSearch:
    sinks = _check_args(model, k, max_heads, sinks)
    eng = _Engine(model, sinks)
    n = len(eng.heads)
    R = len(eng.readers)
    unembed_readers = [r for r in range(R) if eng.readers[r][0] == "unembed"]

    # B[r][g]: bound on λmax of the sink Gram seen from head g's W_O with r more heads allowed
    stop_u = eng.sigma[:, unembed_readers].max(axis=1) if unembed_readers else np.zeros(n)
    stop_all = eng.sigma.max(axis=1) if R else np.zeros(n)
    B = [stop_u.copy()]
    for r in range(1, max_heads + 1):
        ext = (eng.M_norm2 * B[r - 1][None, :]).max(axis=1) * _SAFETY if n else np.zeros(0)
        B.append(np.maximum(stop_all, ext))

    best: list[tuple[float, int, Circuit]] = []  # min-heap of (value², tiebreak, circuit)
    tick = itertools.count()
    evaluated = 0

    def offer(v2: float, kind: str, s: str, chain: tuple[int, ...], r: int) -> None:
        nonlocal evaluated
        evaluated += 1
        _, h, other = eng.readers[r]
        heads = tuple(eng.heads[g] for g in chain)
        sink = None if kind == "unembed" else eng.heads[h]
        if on_score is not None:
            on_score((kind, s, heads, sink, other), v2)
        if len(best) == k and v2 <= best[0][0]:
            return
        item = (v2, next(tick), Circuit(kind, s, heads, sink, other, math.sqrt(max(v2, 0.0)), model))
        if len(best) < k:
            heapq.heappush(best, item)
        else:
            heapq.heapreplace(best, item)

    def threshold() -> float:
        return best[0][0] if len(best) == k else -1.0

    def allowed(r: int, n_chain: int) -> bool:
        """May a chain of ``n_chain`` heads stop at reader ``r``?"""
        kind = eng.readers[r][0]
        return n_chain <= max_heads if kind == "unembed" else n_chain + 1 <= max_heads

    # bare-source circuits, scored directly
    for s in _SOURCES:
        for r in range(R):
            kind, h, other = eng.readers[r]
            if not allowed(r, 0):
                continue
            if kind == "q" and "k" in sinks:
                continue  # the bare-bare QK term is listed once, as a key-side term
            offer(eng.bare_value(s, r), kind, s, (), r)

    # heap of (-bound², tiebreak, entry); cert: the largest bound² of an entry dropped unexplored
    heap: list[tuple[float, int, tuple]] = []
    visited = 0
    cert = 0.0

    def push(bound2: float, entry: tuple) -> None:
        nonlocal cert
        if bound2 > threshold():
            heapq.heappush(heap, (-bound2, next(tick), entry))
        else:  # pruned: its circuits are never scored, so its bound enters the certificate
            cert = max(cert, bound2)

    def add_node(s: str, chain: tuple[int, ...], K: np.ndarray) -> None:
        g = chain[-1]
        tr = max(float(np.trace(K)), 0.0)
        remaining = max_heads - len(chain)
        if any(allowed(r, len(chain)) for r in np.flatnonzero(eng.valid[g])):
            push(tr * eng.sigma[g].max(initial=0.0), ("stops", s, chain, K, tr))
        if remaining >= 1 and np.any(eng.layer > eng.layer[g]):
            ext = (eng.M_norm2[g] * B[remaining - 1]).max(initial=0.0) * _SAFETY
            push(tr * ext, ("expand", s, chain, K, tr))

    if max_heads >= 1:
        for s in _SOURCES:
            for g in range(n):
                visited += 1
                add_node(s, (g,), eng.K1[s][g])

    while heap:
        neg, _, entry = heapq.heappop(heap)
        if -neg <= threshold():
            cert = max(cert, -neg)  # it and everything left on the heap stay unexplored
            break
        tag = entry[0]
        if tag == "stops":
            _, s, chain, K, tr = entry
            g = chain[-1]
            for r in np.flatnonzero(eng.valid[g]):
                if allowed(int(r), len(chain)):
                    push(tr * eng.sigma[g, r], ("stop", s, chain, K, int(r)))
        elif tag == "stop":
            _, s, chain, K, r = entry
            offer(float(np.sum(K * eng.Zmat(chain[-1], r))), eng.readers[r][0], s, chain, r)
        elif tag == "expand":
            _, s, chain, K, tr = entry
            g = chain[-1]
            remaining = max_heads - len(chain)
            for g2 in np.flatnonzero(eng.layer > eng.layer[g]):
                push(tr * eng.M_norm2[g, g2] * B[remaining - 1][g2] * _SAFETY, ("child", s, chain, K, int(g2)))
        else:  # child
            _, s, chain, K, g2 = entry
            M = eng.M[(chain[-1], g2)]
            visited += 1
            add_node(s, chain + (g2,), M @ K @ M.T)
    circuits = [c for _, _, c in sorted(best, key=lambda t: (-t[0], t[1]))]
    total = count_circuits(model, max_heads, sinks)
    bound = 0.0 if evaluated == total else math.sqrt(max(cert, 0.0))
    return CircuitSearch(circuits, visited, evaluated, total, bound)
