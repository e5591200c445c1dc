"""Named heads and significant compositions: the claims a report makes, each with its evidence.

A head is *named* only when its behavioural score clears a stated threshold, and the
threshold and the chance level (uniform causal attention) are reported beside it; a
composition is called significant only against the null of the *maximum* over every valid
pair (writer in an earlier layer than reader), not against one random pair. Where the
evidence is absent the finding says "none found", and where the notion does not apply (a
one-layer model has no composition and no induction head) it says "not applicable".

Definitions
-----------
- Previous-token score: mean attention to the previous position on repeated random tokens
  (:attr:`HeadTable.prev_token`). Chance level: uniform causal attention, mean of
  ``1 / (i + 1)`` over query positions ``i >= 1``.
- Induction score: mean attention on the ``1 - seq_len`` diagonal over the repeated half
  (:attr:`HeadTable.induction`). Only heads in layer >= 1 are candidates: the mechanism
  needs an earlier head (K-composition with a previous-token head). Chance level: mean of
  ``1 / (i + 1)`` over query positions ``seq_len .. 2 seq_len - 1``.
- A head is named when its score is at least :data:`PATTERN_THRESHOLD`.
- Composition significance: z-score against random heads of the model's shapes, and the
  family-wise p-value of the maximum over all ``n_pairs`` valid pairs
  (:meth:`CompositionBaseline.family_p`: Šidák over an exponential tail fitted to the
  baseline); significant when below :data:`FAMILY_ALPHA`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from circuitalg.circuits.composition import CompositionBaseline, valid_pairs
from circuitalg.circuits.diagnostics import HeadTable
from circuitalg.errors import InvalidArgumentError
from circuitalg.model.ids import HeadId

__all__ = [
    "PATTERN_THRESHOLD",
    "FAMILY_ALPHA",
    "HeadFinding",
    "CompositionFinding",
    "CompositionPair",
    "CompositionPairs",
    "previous_token_head",
    "induction_head",
    "composition_finding",
    "composition_pairs",
    "earlier_to_later",
    "uniform_attention",
    "describe_missing_composition",
]

#: Mean attention to the target position above which a head is named (previous-token, induction).
PATTERN_THRESHOLD: float = 0.4
#: Family-wise level at which a composition is called significant.
FAMILY_ALPHA: float = 0.01


def uniform_attention(seq_len: int, which: str, causal: bool = True) -> float:
    """The score of uniform attention over repeated sequences of ``2 seq_len`` tokens:
    ``which="prev_token"`` (queries ``1 .. 2 seq_len - 1``) or ``"induction"`` (queries
    ``seq_len .. 2 seq_len - 1``); the attention to one key is ``1 / (i + 1)`` at query ``i``
    under causal attention, ``1 / (2 seq_len)`` under bidirectional attention."""
    if which == "prev_token":
        queries = np.arange(1, 2 * seq_len)
    elif which == "induction":
        queries = np.arange(seq_len, 2 * seq_len)
    else:
        raise InvalidArgumentError(f"which={which!r}; use 'prev_token' or 'induction'.")
    return float(np.mean(1.0 / (queries + 1))) if causal else 1.0 / (2 * seq_len)


@dataclasses.dataclass(frozen=True)
class HeadFinding:
    """A named head, or why none is named.

    Attributes
    ----------
    role : str
        ``"previous-token head"`` or ``"induction head"``.
    head : HeadId or None
        The named head; None when no candidate clears the threshold or none applies.
    best : HeadId or None
        The best-scoring candidate (named or not); None when not applicable.
    score, chance, threshold : float
        The best candidate's score, the uniform-attention level and the naming threshold.
    reason : str
        Empty when a head is named; otherwise "none found" or "not applicable: ...".
    """

    role: str
    head: HeadId | None
    best: HeadId | None
    score: float
    chance: float
    threshold: float
    reason: str = ""

    def __str__(self) -> str:
        if self.best is None:
            return f"{self.role}: {self.reason}"
        detail = (f"attention to the target position {self.score:.3f} on repeated random tokens; named at >= "
                  f"{self.threshold:.2f}, uniform attention gives {self.chance:.3f}")
        if self.head is None:
            return f"{self.role}: none found (best {self.best.name}: {detail})"
        return f"{self.role}: {self.head.name} ({detail})"


def _behaviour(table: object, field: str, what: str) -> np.ndarray:
    if not isinstance(table, HeadTable):
        raise InvalidArgumentError(f"{what} takes a ca.HeadTable, got {type(table).__name__}; make one with ca.head_table(model, tokens).")
    a = getattr(table, field)
    if a is None or table.seq_len is None:
        raise InvalidArgumentError(
            f"{what}: the head table has no behavioural scores; make it with "
            "ca.head_table(model, ca.repeated_random_tokens(model, seq_len))."
        )
    return a


def _best(score: np.ndarray, mask: np.ndarray) -> tuple[HeadId, float]:
    a = np.where(mask, score, -np.inf)
    i = int(np.argmax(a))
    l, h = np.unravel_index(i, a.shape)
    return HeadId(int(l), int(h)), float(a.flat[i])


def previous_token_head(table: HeadTable, threshold: float = PATTERN_THRESHOLD) -> HeadFinding:
    """The head attending most to the previous token, named if its score reaches ``threshold``
    (the table's behavioural scores: ``ca.head_table(model, ca.repeated_random_tokens(model))``)."""
    a = _behaviour(table, "prev_token", "previous_token_head")
    best, score = _best(a, np.ones(a.shape, dtype=bool))
    chance = uniform_attention(table.seq_len, "prev_token", table.causal)  # type: ignore[arg-type]
    named = best if score >= threshold else None
    return HeadFinding("previous-token head", named, best, score, chance, threshold, "" if named else "none found")


def induction_head(table: HeadTable, threshold: float = PATTERN_THRESHOLD) -> HeadFinding:
    """The layer >= 1 head with the largest induction score, named if it reaches ``threshold``."""
    a = _behaviour(table, "induction", "induction_head")
    chance = uniform_attention(table.seq_len, "induction", table.causal)  # type: ignore[arg-type]
    L = a.shape[0]
    if L < 2:
        return HeadFinding("induction head", None, None, float("nan"), chance, threshold,
                           "not applicable (one layer: an induction head reads an earlier head)")
    mask = np.zeros(a.shape, dtype=bool)
    mask[1:] = True
    best, score = _best(a, mask)
    named = best if score >= threshold else None
    return HeadFinding("induction head", named, best, score, chance, threshold, "" if named else "none found")


@dataclasses.dataclass(frozen=True)
class CompositionFinding:
    """One writer -> reader composition score with its significance.

    Attributes
    ----------
    kind : {"q", "k", "v"}
    writer, reader : HeadId
    score, z : float
        The score and its z-score against random heads (one pair).
    family_p : float
        Chance that the largest of ``n_pairs`` random pairs reaches ``score``.
    n_pairs : int
        Valid pairs (writer layer < reader layer) the maximum is taken over.
    threshold : float
        The score at which the maximum becomes significant at ``alpha``.
    alpha : float
    chosen : str
        How the pair was chosen (``"strongest valid pair"`` or ``"named heads"``).
    """

    kind: str
    writer: HeadId
    reader: HeadId
    score: float
    z: float
    family_p: float
    n_pairs: int
    threshold: float
    alpha: float
    chosen: str

    @property
    def significant(self) -> bool:
        return self.family_p < self.alpha

    def __str__(self) -> str:
        verdict = "significant" if self.significant else "not significant"
        return (f"{self.kind.upper()}-composition {self.writer.name} -> {self.reader.name} ({self.chosen}): "
                f"{self.score:.3f}, {self.z:+.1f} std above random heads; family-wise p = {self.family_p:.2g} "
                f"over {self.n_pairs:,} earlier->later pairs ({verdict} at {self.alpha:g}: needs >= {self.threshold:.3f})")


def composition_finding(
    scores: np.ndarray, baseline: CompositionBaseline, *, pair: tuple[HeadId, HeadId] | None = None,
    alpha: float = FAMILY_ALPHA,
) -> CompositionFinding | None:
    """The composition of ``pair`` (writer, reader), or the strongest valid pair; None when the
    model has no valid pair (one layer). Raises when ``pair`` is not earlier -> later."""
    scores = _checked_scores(scores, baseline, "composition_finding")
    L, H = scores.shape[0], scores.shape[1]
    n = valid_pairs(L, H)
    if n == 0:
        return None
    if pair is None:
        a = np.where(earlier_to_later(scores.shape), scores, -np.inf)
        l1, h1, l2, h2 = (int(x) for x in np.unravel_index(int(np.argmax(a)), a.shape))
        writer, reader, chosen = HeadId(l1, h1), HeadId(l2, h2), "strongest valid pair"
    else:
        writer, reader = pair
        if not writer.layer < reader.layer:
            raise InvalidArgumentError(
                f"{writer.name} -> {reader.name}: a composition needs the writer in an earlier layer than the reader."
            )
        chosen = "named heads"
    s = float(scores[writer.layer, writer.head, reader.layer, reader.head])
    return CompositionFinding(
        baseline.kind, writer, reader, s, baseline.z(s), baseline.family_p(s, n), n,
        baseline.threshold(n, alpha), alpha, chosen,
    )


def _checked_scores(scores: np.ndarray, baseline: CompositionBaseline, what: str) -> np.ndarray:
    """``scores`` as an array of composition scores, or an error naming ``what``."""
    if not isinstance(baseline, CompositionBaseline):
        raise InvalidArgumentError(
            f"{what}: baseline must be a ca.CompositionBaseline, got {type(baseline).__name__}; "
            "make it with ca.composition_baseline(model, kind)."
        )
    scores = np.asarray(scores)
    if scores.ndim != 4 or scores.shape[:2] != scores.shape[2:]:
        raise InvalidArgumentError(
            f"{what}: scores has shape {scores.shape}; pass ca.composition_scores(model, kind) "
            "(n_layers, n_heads, n_layers, n_heads)."
        )
    return scores


def earlier_to_later(shape: tuple[int, ...]) -> np.ndarray:
    """The valid pairs of a ``(n_layers, n_heads, n_layers, n_heads)`` score array (writer in an
    earlier layer than the reader), as a read-only boolean array of that shape."""
    L = shape[0]
    return np.broadcast_to(np.arange(L)[:, None, None, None] < np.arange(L)[None, None, :, None], shape)


class CompositionPair(NamedTuple):
    """One writer -> later-reader composition score (a row of :class:`CompositionPairs`).

    Attributes
    ----------
    kind : {"q", "k", "v"}
    writer, reader : HeadId
    score : float
    z : float
        Standard deviations above the random-head mean (:meth:`CompositionBaseline.z`).
    significant : bool
        Whether ``score`` reaches the family-wise threshold (:attr:`CompositionPairs.threshold`).
    """

    kind: str
    writer: HeadId
    reader: HeadId
    score: float
    z: float
    significant: bool


@dataclasses.dataclass(frozen=True)
class CompositionPairs:
    """Every writer -> later-reader pair of one composition kind, strongest first, each judged
    against the maximum over all the model's valid pairs.

    Attributes
    ----------
    kind : {"q", "k", "v"}
    baseline : CompositionBaseline
    n_pairs : int
        Valid pairs in the whole model (writer layer < reader layer): the family.
    threshold : float
        The score at which the largest of ``n_pairs`` random pairs has family-wise p-value
        ``alpha`` (:meth:`CompositionBaseline.threshold`); inf without valid pairs.
    alpha : float
    pairs : tuple of CompositionPair
        Score descending, ties in (writer, reader) order.
    """

    kind: str
    baseline: CompositionBaseline
    n_pairs: int
    threshold: float
    alpha: float
    pairs: tuple[CompositionPair, ...]

    def family_p(self, pair: CompositionPair) -> float:
        """The chance that the largest of ``n_pairs`` random pairs reaches ``pair``'s score."""
        return self.baseline.family_p(pair.score, self.n_pairs)

    @property
    def n_significant(self) -> int:
        """How many of :attr:`pairs` are significant."""
        return sum(p.significant for p in self.pairs)


def composition_pairs(
    scores: np.ndarray, baseline: CompositionBaseline, *, layers: Sequence[int] | None = None,
    alpha: float = FAMILY_ALPHA,
) -> CompositionPairs:
    """Every writer -> later-reader pair of ``scores`` (``ca.composition_scores(model, kind)``)
    with its z-score and whether it is significant at family-wise level ``alpha`` over all the
    model's valid pairs; with ``layers``, only pairs whose writer and reader both lie in them (the
    family stays the whole model's)."""
    scores = _checked_scores(scores, baseline, "composition_pairs")
    L, H = scores.shape[0], scores.shape[1]
    n_pairs = valid_pairs(L, H)
    threshold = baseline.threshold(n_pairs, alpha) if n_pairs else math.inf
    keep = earlier_to_later(scores.shape)
    if layers is not None:
        shown = np.zeros(L, dtype=bool)
        shown[list(layers)] = True
        keep = keep & shown[:, None, None, None] & shown[None, None, :, None]
    flat = np.flatnonzero(keep)
    values = scores.ravel()[flat].astype(np.float64)
    order = np.argsort(-values, kind="stable")
    flat, values = flat[order], values[order]
    z = (values - baseline.mean) / baseline.std if baseline.std > 0 else np.zeros(len(values))
    ids = [[HeadId(l, h) for h in range(H)] for l in range(L)]  # each head's id made once
    heads = zip(*(i.tolist() for i in np.unravel_index(flat, scores.shape)))  # (l1, h1, l2, h2) of each pair
    pairs = tuple(CompositionPair(baseline.kind, ids[l1][h1], ids[l2][h2], v, zv, v >= threshold)
                  for (l1, h1, l2, h2), v, zv in zip(heads, values.tolist(), z.tolist()))
    return CompositionPairs(baseline.kind, baseline, n_pairs, threshold, alpha, pairs)


def describe_missing_composition(n_layers: int, kind: str = "k") -> str:
    """The line a report prints when no composition applies."""
    return f"{kind.upper()}-composition: not applicable ({n_layers} layer{'s' if n_layers != 1 else ''}: no head reads a head of an earlier layer)"
