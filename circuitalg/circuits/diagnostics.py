"""Per-head diagnostics (copying, positional and behavioural scores) and top token mappings.

Everything static is computed from factored maps: the full OV circuit ``W_U W_OV W_E`` is
never built (its eigenvalues come from the ``d_head x d_head`` matrix ``W_V (W_E W_U) W_O``,
with ``W_E W_U`` formed once), and :func:`top_tokens` labels the largest entries of a thin
factorisation (found by :func:`~circuitalg.linalg.topk.top_entries`) with tokens and positions.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from circuitalg import runtime
from circuitalg.circuits.composition import check_model
from circuitalg.errors import (
    DTypeError,
    InvalidArgumentError,
    InvalidArrayError,
    NonFiniteError,
    ShapeError,
    check_int,
)
from circuitalg.linalg.accuracy import eigen_noise_floor
from circuitalg.linalg.eig import eigenvalues_with_bounds
from circuitalg.linalg.svd import singular_values, svd
from circuitalg.linalg.topk import count_entries, top_entries
from circuitalg.maps.nodes import LinearMap
from circuitalg.model.forward import blocked, run_batch
from circuitalg.model.ids import HeadId
from circuitalg.model.weights import Transformer
from circuitalg.spaces import POS_SPACE, VOCAB_SPACE

__all__ = [
    "HeadTable",
    "TokenEntry",
    "TopTokens",
    "copying_score",
    "effective_rank",
    "head_table",
    "positional_pattern",
    "rotary_offset_pattern",
    "repeated_random_tokens",
    "top_tokens",
]


def _vector(x: Any, name: str, what: str, complex_ok: bool) -> np.ndarray:
    """``x`` as a finite 1-D numeric array, or a circuitalg error naming ``what``."""
    kinds = "biufc" if complex_ok else "biuf"
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise InvalidArrayError(f"{what}: {name} must be a 1-D array of numbers ({exc}).") from None
    if arr.dtype.kind not in kinds:
        raise DTypeError(
            f"{what}: {name} has dtype {arr.dtype}; pass a 1-D array of {'complex or ' if complex_ok else ''}real numbers."
        )
    if arr.ndim != 1:
        raise ShapeError(f"{what}: {name} has shape {arr.shape}; pass a 1-D array (one value per entry).")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{what}: {name} contains NaN or Inf; pass finite values.")
    return arr


def copying_score(eigs: np.ndarray) -> float:
    """``Σ Re λ / Σ |λ|`` over eigenvalues (1 for a pure copier, -1 for an anti-copier, 0 if all vanish)."""
    eigs = _vector(eigs, "eigs", "copying_score", complex_ok=True)
    den = float(np.abs(eigs).sum())
    return float(np.real(eigs).sum() / den) if den > 0 else 0.0


def _significant_eigenvalues(m: LinearMap, lam: np.ndarray) -> np.ndarray:
    """``m``'s eigenvalues ``lam`` above the noise floor: those below
    :func:`~circuitalg.linalg.accuracy.eigen_noise_floor` are rounding artefacts of a zero
    spectrum (an exactly zero circuit would otherwise get a random copying score in a rotated basis)."""
    return lam[np.abs(lam) > eigen_noise_floor(m)]


def effective_rank(s: np.ndarray) -> float:
    """Entropy effective rank ``exp(-Σ p log p)`` with ``p = σ / Σσ`` (Roy & Vetterli, 2007)."""
    s = _vector(s, "s", "effective_rank", complex_ok=False).astype(np.float64)
    if np.any(s < 0):
        raise InvalidArgumentError("effective_rank: s has negative entries; pass singular values (>= 0).")
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def repeated_random_tokens(model: Transformer, seq_len: int = 20, n_seqs: int = 8, *, seed: int = 0) -> np.ndarray:
    """``n_seqs`` sequences of ``seq_len`` uniform random tokens, each repeated once: ``(n_seqs, 2 seq_len)``."""
    check_model(model)
    seq_len, n_seqs = check_int("seq_len", seq_len, 1), check_int("n_seqs", n_seqs, 1)
    if 2 * seq_len > model.config.n_ctx:
        raise InvalidArgumentError(
            f"seq_len={seq_len}: the repeated sequence has {2 * seq_len} tokens but n_ctx={model.config.n_ctx}; "
            f"use seq_len <= {model.config.n_ctx // 2}."
        )
    half = np.random.default_rng(seed).integers(0, model.config.d_vocab, size=(n_seqs, seq_len))
    return np.concatenate([half, half], axis=1)


@dataclasses.dataclass(frozen=True)
class HeadTable:
    """Diagnostics of every head, as ``[n_layers, n_heads]`` arrays.

    Attributes
    ----------
    copying : full OV circuit ``W_U W_OV W_E``, ``Σ Re λ / Σ |λ|`` over the eigenvalues above
        the noise floor (0 when none is: the circuit is zero to rounding); NaN (not defined) when
        the output vocabulary differs from the input one (``d_vocab_out``).
    copying_ov : the same for the ``d_model``-sized ``W_OV``.
    positional_prev_token : mean attention to the previous position of a softmax over the
        positional scores ``(W_Q W_pos)ᵀ (W_K W_pos) / attn_scale`` (causal; tokens, biases and
        the norms' per-token scales ignored, their weights included), over the first ``n_positions`` positions. For rotary models (no
        ``W_pos``) the same statistic of :func:`rotary_offset_pattern`: attention by offset
        alone, through ``W_QK(Δ)`` with the mean token embedding on both sides.
    ov_effective_rank, qk_effective_rank : entropy effective rank of ``W_OV`` and ``W_QK``.
    ov_singular_values, qk_singular_values : ``[n_layers, n_heads, k]``, the top ``k``.
    induction, prev_token : measured on repeated random tokens (``None`` unless tokens were
        given): mean attention on the ``1 - seq_len`` diagonal (the token after the previous
        occurrence) and on the ``-1`` diagonal, over the second half of each sequence
        (induction) and all positions after the first (previous token).
    seq_len : int or None
        The length of the repeated half of those sequences (``None`` without tokens).
    causal : bool
        Whether the model's attention is causal (the chance level of the scores depends on it).
    ov_eigenvalues : dict of (layer, head) -> complex array, or None
        The eigenvalues of each full OV circuit above the noise floor (those the copying score
        sums); None with a separate output vocabulary.
    copying_bound, copying_ov_bound : the a-priori error bound of the eigenvalues ``copying``
        and ``copying_ov`` are computed from, relative to the largest magnitude
        (:func:`~circuitalg.linalg.eig.eigenvalues_with_bounds`; NaN where ``copying`` is). Heads
        whose bound exceeds ``warn_rtol`` (6.1e-6 in float64) are counted in one
        :class:`~circuitalg.errors.PrecisionWarning` per column.
    """

    copying: np.ndarray
    copying_ov: np.ndarray
    positional_prev_token: np.ndarray
    ov_effective_rank: np.ndarray
    qk_effective_rank: np.ndarray
    ov_singular_values: np.ndarray
    qk_singular_values: np.ndarray
    induction: np.ndarray | None = None
    prev_token: np.ndarray | None = None
    seq_len: int | None = None
    causal: bool = True
    ov_eigenvalues: dict[tuple[int, int], np.ndarray] | None = None
    copying_bound: np.ndarray | None = None
    copying_ov_bound: np.ndarray | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the scalar columns present."""
        names = ["copying", "copying_ov", "positional_prev_token", "ov_effective_rank", "qk_effective_rank"]
        names += [n for n in ("induction", "prev_token", "copying_bound", "copying_ov_bound")
                  if getattr(self, n) is not None]
        return tuple(names)

    def records(self) -> list[dict[str, Any]]:
        """One dict per head (``head``, ``layer``, ``index`` and every column), layer by layer."""
        L, H = self.copying.shape
        out = []
        for l in range(L):
            for h in range(H):
                rec: dict[str, Any] = {"head": HeadId(l, h).name, "layer": l, "index": h}
                for f in self.fields:
                    rec[f] = float(getattr(self, f)[l, h])
                rec["ov_singular_values"] = [float(x) for x in self.ov_singular_values[l, h]]
                rec["qk_singular_values"] = [float(x) for x in self.qk_singular_values[l, h]]
                out.append(rec)
        return out

    def top(self, field: str, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` heads with the largest ``field``, as ``("L1H2", value)`` pairs."""
        if field not in self.fields:
            raise InvalidArgumentError(f"field={field!r}; this table has {', '.join(self.fields)}.")
        a = getattr(self, field)
        order = np.argsort(-a, axis=None, kind="stable")[:k]
        H = a.shape[1]
        return [(HeadId(*divmod(int(i), H)).name, float(a.flat[i])) for i in order]


def positional_pattern(model: Transformer, head: Any, n_positions: int) -> np.ndarray:
    """The causal (and, in a local layer, windowed) softmax of a head's positional scores
    ``(W_Q W_pos)ᵀ (W_K W_pos) / attn_scale`` (soft-capped where the model caps scores) over the
    first ``n_positions`` positions (query
    rows, key columns; tokens, biases and layer norms ignored). Defined for learned positions
    only: a rotary model has no ``W_pos`` (its positional structure is in ``head.qk_at(Δ)``)."""
    if model.W_pos is None:
        raise InvalidArgumentError(
            f"{model.name} has rotary position embeddings: there is no W_pos to form positional scores from; "
            "use head.qk_at(delta) for the QK form at an offset."
        )
    n = min(n_positions, model.config.n_ctx)
    P = np.asarray(model.W_pos.array[:, :n], dtype=np.float64)
    q = np.asarray(head.W_Q.array, dtype=np.float64) @ P
    k = np.asarray(head.W_K.array, dtype=np.float64) @ P
    s = (q.T @ k) / model.config.attn_scale
    if model.config.attn_softcap is not None:  # as the model caps its scores
        s = model.config.attn_softcap * np.tanh(s / model.config.attn_softcap)
    s[blocked(n, n, model.config.window(head.layer), model.config.causal)] = -np.inf
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=1, keepdims=True)


def mean_embedding(model: Transformer) -> np.ndarray:
    """``μ``, the mean of ``W_E``'s columns in float64 (a pass over the vocabulary)."""
    return np.asarray(model.W_E.array, dtype=np.float64).mean(axis=1)


def rotary_offset_pattern(model: Transformer, head: Any, n_positions: int, *,
                          mu: np.ndarray | None = None) -> np.ndarray:
    """A rotary head's attention as a function of offset alone: the causal (windowed) softmax of
    ``μᵀ W_QK(j - i) μ / attn_scale`` (soft-capped where the model caps scores) over the first ``n_positions`` positions (query rows, key
    columns), ``μ`` the mean token embedding (the content every position shares on average;
    biases and norm scales ignored). It is exactly the pattern a model whose every token embeds
    as ``μ`` would compute; the counterpart of :func:`positional_pattern` for rotary models.
    ``mu``: :func:`mean_embedding` of ``model``, when the caller has it (one vocabulary pass for many heads)."""
    c = model.config
    rotary = head.rotary  # the layer's own (Gemma 3's local layers rotate with their own base)
    if rotary is None:
        raise InvalidArgumentError(f"{model.name} has learned positions; use positional_pattern(model, head, n).")
    n = min(n_positions, c.n_ctx)
    mu = mean_embedding(model) if mu is None else mu
    q = np.asarray(head.W_Q.array, dtype=np.float64) @ mu
    k = np.asarray(head.W_K.array, dtype=np.float64) @ mu
    # qᵀ R(Δ) k for Δ = 0, -1, ..., -(n-1): k rotated to every offset in one vectorised pass
    q0 = rotary.apply(q[None, :], np.zeros(1))[0]  # the query at its own position (YaRN's factor)
    by_offset = rotary.apply(np.tile(k, (n, 1)), -np.arange(n)) @ q0 / c.attn_scale
    if c.attn_softcap is not None:
        by_offset = c.attn_softcap * np.tanh(by_offset / c.attn_softcap)
    back = np.arange(n)[:, None] - np.arange(n)[None, :]
    s = by_offset[np.clip(back, 0, n - 1)]
    s[blocked(n, n, c.window(head.layer), c.causal)] = -np.inf
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=1, keepdims=True)


def _positional_prev_token(model: Transformer, n_positions: int) -> np.ndarray:
    c = model.config
    out = np.zeros((c.n_layers, c.n_heads))
    if min(n_positions, c.n_ctx) < 2:
        return out
    if model.W_pos is not None:
        pattern = positional_pattern
    else:  # the mean embedding once for every head
        pattern = functools.partial(rotary_offset_pattern, mu=mean_embedding(model))
    for head in model.heads():
        out[head.layer, head.index] = float(np.diagonal(pattern(model, head, n_positions), offset=-1).mean())
    return out


def _behaviour(model: Transformer, tokens: Any) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(tokens)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[1] % 2:
        raise ShapeError(
            f"tokens must be (n_seqs, 2 * seq_len) repeated sequences, got shape {arr.shape}; "
            "make them with ca.repeated_random_tokens(model)."
        )
    T = arr.shape[1] // 2
    if not np.array_equal(arr[:, :T], arr[:, T:]):
        raise InvalidArgumentError(
            "tokens must repeat: each row's second half must equal its first half "
            "(the induction score reads attention to the previous occurrence); use ca.repeated_random_tokens(model)."
        )
    c = model.config
    ind = np.zeros((c.n_layers, c.n_heads))
    prev = np.zeros((c.n_layers, c.n_heads))
    for start in range(0, len(arr), 4):  # one batched forward pass per 4 sequences, patterns only
        _, cache = run_batch(model, arr[start:start + 4], unembed=False)
        pat = cache.pattern  # (batch, L, H, 2T, 2T)
        # diagonal entry i is pattern[i + T - 1, i]; queries T .. 2T-1 are entries 1 .. T
        ind += np.diagonal(pat, offset=1 - T, axis1=3, axis2=4)[..., 1:].mean(axis=-1).sum(axis=0)
        prev += np.diagonal(pat, offset=-1, axis1=3, axis2=4).mean(axis=-1).sum(axis=0)
    return ind / len(arr), prev / len(arr)


#: How head_table's summary PrecisionWarnings name the maps whose eigenvalues they count.
FULL_OV_FAMILY, OV_FAMILY = "heads' full OV circuits W_U W_OV W_E", "heads' W_OV"


def head_table(model: Transformer, tokens: Any = None, *, k: int = 4, n_positions: int = 256) -> HeadTable:
    """Diagnostics of every head of ``model`` (see :class:`HeadTable`).

    Parameters
    ----------
    model : Transformer
    tokens : (n_seqs, 2 seq_len) int array, optional
        Repeated random sequences (:func:`repeated_random_tokens`); when given, the
        induction and previous-token scores are measured with forward passes.
    k : int
        How many top singular values of ``W_OV`` and ``W_QK`` to keep.
    n_positions : int
        Positions used by the positional previous-token score.
    """
    check_model(model)
    c = model.config
    k = check_int("k", k, 1, c.d_head, " (d_head)")
    L, H = c.n_layers, c.n_heads
    copying = np.zeros((L, H))
    copying_ov = np.zeros((L, H))
    ov_rank = np.zeros((L, H))
    qk_rank = np.zeros((L, H))
    ov_sv = np.zeros((L, H, k))
    qk_sv = np.zeros((L, H, k))
    eigs: dict[tuple[int, int], np.ndarray] = {}
    heads = list(model.heads())
    full = [model.W_U @ head.ov @ model.W_E for head in heads]
    square = model.vocab_out_space == model.vocab_space
    # every head's spectra at once: the full OV cores share W_E W_U (one product with all W_O)
    # one PrecisionWarning per family, counting the heads over the threshold; each head's bound in the table
    full_lams, full_rel = (eigenvalues_with_bounds(full, what=FULL_OV_FAMILY) if square
                           else ([None] * len(heads), np.full(len(heads), np.nan)))
    ov_lams, ov_rel = eigenvalues_with_bounds([head.ov for head in heads], what=OV_FAMILY)
    for head, full_ov, lam, ov_lam in zip(heads, full, full_lams, ov_lams):
        i = (head.layer, head.index)
        if square:
            eigs[i] = _significant_eigenvalues(full_ov, lam)
            copying[i] = copying_score(eigs[i])
        else:
            copying[i] = np.nan  # a separate output vocabulary
        copying_ov[i] = copying_score(_significant_eigenvalues(head.ov, ov_lam))
        s_ov = singular_values(head.ov)
        s_qk = singular_values(head.qk)
        ov_rank[i], qk_rank[i] = effective_rank(s_ov), effective_rank(s_qk)
        ov_sv[i], qk_sv[i] = s_ov[:k], s_qk[:k]
    induction = prev = seq_len = None
    if tokens is not None:
        induction, prev = _behaviour(model, tokens)
        seq_len = int(np.shape(tokens)[-1]) // 2
    return HeadTable(
        copying, copying_ov, _positional_prev_token(model, n_positions), ov_rank, qk_rank, ov_sv, qk_sv,
        induction, prev, seq_len, c.causal, eigs or None,
        np.asarray(full_rel, dtype=np.float64).reshape(L, H), ov_rel.reshape(L, H),
    )


@dataclasses.dataclass(frozen=True)
class TokenEntry:
    """One entry ``m[row, col]`` of a map between token or position spaces, with both axes named.

    The row indexes the codomain and the column the domain. ``row_role``/``col_role`` say what
    they are: ``"query"``/``"key"`` for a QK circuit (``W_Eᵀ W_QK W_E``: query rows, key
    columns), ``"output"``/``"input"`` for an OV circuit (``W_U W_OV W_E``: promoted token rows,
    attended token columns). Printed as ``query 'a', key 'b': +1.2`` (row first, always).

    Attributes
    ----------
    row, col : int
        Token ids or positions.
    value : float
    row_token, col_token : str or None
        Token strings (token axes of a model with a vocabulary); ``None`` otherwise.
    row_label, col_label : str
        What is printed: ``'the'`` (a token string), ``#123`` (a token id without vocabulary)
        or ``pos 13`` (a position).
    row_role, col_role : str
    """

    row: int
    col: int
    value: float
    row_token: str | None = None
    col_token: str | None = None
    row_label: str = ""
    col_label: str = ""
    row_role: str = "output"
    col_role: str = "input"

    def __str__(self) -> str:
        return f"{self.row_role} {self.row_label}, {self.col_role} {self.col_label}: {self.value:+.4g}"


def _axis_label(space: Any, i: int, vocab: Sequence[str] | None) -> tuple[str | None, str]:
    """``(token string or None, printed label)`` of index ``i`` on an axis of ``space``."""
    if space.name == POS_SPACE:
        return None, f"pos {i}"
    if space.name == VOCAB_SPACE and vocab is not None:
        return vocab[i], repr(vocab[i])
    return None, f"#{i}"


class TopTokens(list):
    """The entries :func:`top_tokens` found (a list of :class:`TokenEntry`, largest first) and how
    they were found: ``rows_scanned`` of ``n_rows`` rows (strongest first), and ``bound``, a bound
    on every entry of the rows not scanned. ``exact`` (``bound == 0``): the scan proved that no
    other entry enters the top ``k``; otherwise (a ``max_rows`` budget cut the scan) the entries
    are the top ``k`` of the rows scanned and every other entry is at most ``bound``."""

    def __init__(self, entries: Sequence[TokenEntry], rows_scanned: int, n_rows: int, bound: float) -> None:
        super().__init__(entries)
        self.rows_scanned, self.n_rows, self.bound = int(rows_scanned), int(n_rows), float(bound)

    @property
    def exact(self) -> bool:
        """Whether these are the top entries of the whole map (not only of the rows scanned)."""
        return self.bound == 0.0

    def certificate(self) -> str:
        """One line: exact, or how much was scanned and the bound on the rest."""
        if self.exact and self.rows_scanned >= self.n_rows:
            return f"exact (all {self.n_rows:,} rows scanned)"
        if self.exact:
            return (f"exact (the {self.rows_scanned:,} strongest of {self.n_rows:,} rows scanned; the norm bound "
                    "proves no other row reaches the table)")
        return (f"top entries of the {self.rows_scanned:,} strongest of {self.n_rows:,} rows; every entry of the other "
                f"rows is <= {self.bound:.4g} (Cauchy-Schwarz bound), so an unscanned entry could still rank")


def top_tokens(
    m: LinearMap, k: int = 10, *, vocab: Sequence[str] | Transformer | None = None, by: str = "value",
    roles: tuple[str, str] | None = None, causal: bool | None = None, window: int | None = None,
    max_bytes: int | None = None, max_rows: int | None = None,
) -> TopTokens:
    """The ``k`` largest entries of a map between token or position spaces, without building it.

    ``m`` is factored once as ``U S Vᵀ`` (the factored SVD) and the entries of ``(U S) Vᵀ``
    are ranked by :func:`~circuitalg.linalg.topk.top_entries`: rows in blocks of at most
    ``max_bytes`` (default 64 MiB), strongest first, stopping as soon as the Cauchy-Schwarz
    bound ``|m[i, j]| <= ||(US)_i|| max_j ||V_j||`` shows that no remaining row can enter the
    top ``k``; each block screened in float32 with a rigorous error bound, so the result is the
    float64 ranking exactly. Entries agree with the dense matrix to about ``1e-15 * σ_max``.

    Parameters
    ----------
    m : LinearMap
        Any map, e.g. ``W_U @ head.ov @ W_E`` or ``W_E.T @ head.qk @ W_E``; rows index its
        codomain, columns its domain.
    k : int
    vocab : sequence of str or Transformer, optional
        Token strings (a model's ``vocab``) to label token axes; without them token ids are
        printed (``#123``). Position axes (space ``pos``) are labelled ``pos i``.
    by : {"value", "abs"}
        Largest values, or largest magnitudes.
    roles : (str, str), optional
        Names of the row and column axes. Default: ``("query", "key")`` for a map from
        positions to positions (the QK form ``W_posᵀ W_QK W_pos``: the only such map a
        transformer has), else ``("output", "input")``. Pass ``("query", "key")`` for a
        token-to-token QK circuit.
    causal : bool, optional
        Keep only pairs with key position <= query position, the pairs causal attention can
        use. Default: True for a ``("query", "key")`` map between positions; it needs one.
    window : int, optional
        With ``causal``: keep only keys less than ``window`` positions back (a local attention
        layer's pairs, ``query - window < key <= query``).
    max_rows : int, optional
        Scan at most this many rows (the strongest): a budget for very large vocabularies, where
        the exact scan costs ``n_rows * n_cols * p`` (``p`` the screen's rank prefix). The result
        says whether it is still exact (:class:`TopTokens`: ``exact``, ``bound``).
    max_bytes : int, optional
        Size of one block of rows scanned (default
        :data:`~circuitalg.linalg.topk.SCAN_BYTES`, 64 MiB).

    Returns
    -------
    TopTokens
        A list of :class:`TokenEntry`, largest first, with the scan's certificate.
    """
    if not isinstance(m, LinearMap):
        raise InvalidArgumentError(f"top_tokens takes a ca.LinearMap, got {type(m).__name__}.")
    n_rows, n_cols = m.shape
    both_pos = m.codomain.name == POS_SPACE and m.domain.name == POS_SPACE
    if roles is None:
        roles = ("query", "key") if both_pos else ("output", "input")
    elif not (isinstance(roles, tuple) and len(roles) == 2 and all(isinstance(r, str) and r for r in roles)):
        raise InvalidArgumentError(f"roles={roles!r}; pass two axis names, e.g. ('query', 'key').")
    if causal is None:
        causal = both_pos and roles == ("query", "key")
    elif causal and not (both_pos and roles == ("query", "key")):
        raise InvalidArgumentError(
            f"causal=True masks key positions after the query position; this map is {m.codomain} x {m.domain} with "
            f"roles {roles}: it needs a pos -> pos QK map with roles ('query', 'key')."
        )
    if window is not None:
        window = check_int("window", window, 1)
        if not causal:
            raise InvalidArgumentError("window restricts the pairs of a causal position table; pass causal=True with it.")
    n_entries = count_entries(n_rows, n_cols, causal=causal, window=window)
    k = check_int("k", k, 1, n_entries, " (the number of entries" + (" causal attention can use)" if causal else ")"))
    if by not in ("value", "abs"):
        raise InvalidArgumentError(f"by={by!r}; use 'value' or 'abs'.")
    if isinstance(vocab, Transformer):
        vocab = vocab.vocab
    n_tok = max([d.dim for d in (m.codomain, m.domain) if d.name == VOCAB_SPACE], default=0)
    if vocab is not None and len(vocab) < n_tok:
        raise InvalidArgumentError(f"vocab has {len(vocab)} strings but the map's token axis has {n_tok}.")
    U, S, Vh = svd(m)
    top = top_entries(np.asarray(U * S, dtype=np.float64), np.asarray(Vh, dtype=np.float64), k, runtime.current(),
                      by_abs=by == "abs", causal=causal, window=window, max_rows=max_rows, max_bytes=max_bytes)
    out = []
    for i, j, v in zip(top.rows, top.cols, top.values):
        row_token, row_label = _axis_label(m.codomain, int(i), vocab)
        col_token, col_label = _axis_label(m.domain, int(j), vocab)
        out.append(TokenEntry(int(i), int(j), float(v), row_token, col_token, row_label, col_label, *roles))
    return TopTokens(out, top.rows_scanned, n_rows, top.bound)
