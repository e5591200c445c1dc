"""Weight-based circuits between dictionary features: lazy factored maps, exact top entries.

Every function here returns a lazy :class:`~circuitalg.maps.nodes.LinearMap` between typed spaces
(a dictionary's feature space ``Space(name, F)``, the vocabulary, positions), so ``.symbol``,
:func:`~circuitalg.linalg.plan.plan`, :func:`~circuitalg.linalg.accuracy.accuracy`, ``.svd()``
and ``.to_dense(max_bytes=...)`` work on it; none builds an ``F x F`` matrix. The maps (column
convention: rows index the codomain, the reading side):

- :func:`virtual_weights`: the residual-direct path ``enc_t · dec_s`` (``F_s -> F_t``), summed over
  every pair of a hook ``s`` writes and a hook ``t`` reads where the writer feeds the reader
  (strictly before it by :attr:`~circuitalg.features.hooks.Hook.depth`, or a residual hook at the
  depth where an MLP input reads the stream: ``resid_mid`` L feeds ``mlp_in`` L); a cross-layer
  transcoder member writes several layers, and only the decoders that feed the target's reads
  count. The encoder includes the map from the stream to its hook (the MLP input's norm weight,
  centring and frozen scale: :meth:`~circuitalg.features.binding.BoundDictionary.encoder_from_resid`).
- :func:`head_virtual_weights`: through one head's OV circuit, ``enc_t W_O^h W_V^h dec_s``
  (rank at most ``d_head``); :func:`layer_virtual_weights` sums a layer's heads.
- :func:`feature_qk`: the QK bilinear form between a query side and a key side (features,
  tokens or learned positions), ``dec_qᵀ W_Qᵀ R(Δ) W_K dec_k``, unscaled (scores divide it by
  ``model.config.attn_scale``).
- :func:`feature_logits` (``W_U · dec``, features -> logits: the direct path, the final norm's
  weight and centring inside ``W_U``), :func:`token_features` (``enc · W_E``) and
  :func:`position_features` (``enc · W_pos``).

Every weight-based number freezes what a weight cannot carry: norm scales (the model view's
convention: maps carry norm weights, not the per-token scale), attention patterns and biases.

:func:`top_feature_weights` ranks the entries of any such map from its factors (the map split at
its narrowest space, ``L @ V``, never formed) with :func:`~circuitalg.linalg.topk.top_entries`:
exact in float64, with a certificate of the rows it did not evaluate and the bound that excludes
them (:class:`WeightCertificate`). :func:`top_feature_logits` gives every feature's top tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, NamedTuple

import numpy as np

from circuitalg import runtime
from circuitalg.errors import ConfigError, InvalidArgumentError, ShapeError, TooLargeError, check_int
from circuitalg.features.binding import BoundDictionary
from circuitalg.features.dictionary import Dictionary, DictionarySet
from circuitalg.features.hooks import Hook, HookKind
from circuitalg.features.streaming import top_entries_per_row
from circuitalg.linalg.apply import evaluate, matmat, rmatmat
from circuitalg.linalg.budget import DEFAULT_MAX_BYTES, nbytes
from circuitalg.linalg.svd import svd
from circuitalg.linalg.topk import top_entries
from circuitalg.maps.chain import as_chain
from circuitalg.maps.nodes import Dense, LinearMap, Sum
from circuitalg.maps.rules import add, compose, transpose
from circuitalg.model.ids import EMBED, POS, FeatureId, Source
from circuitalg.model.weights import Head, Transformer
from circuitalg.runtime import Runtime
from circuitalg.spaces import POS_SPACE, VOCAB_SPACE, Space

__all__ = [
    "FeatureId",
    "TokenId",
    "PositionId",
    "FeatureWeight",
    "WeightCertificate",
    "FeatureWeights",
    "FeatureLogits",
    "virtual_weights",
    "head_virtual_weights",
    "layer_virtual_weights",
    "feature_qk",
    "feature_logits",
    "token_features",
    "position_features",
    "weight_factors",
    "weight_entries",
    "pair_dots",
    "top_feature_weights",
    "top_feature_logits",
    "axis_id",
]


# --- typed ids of the axes (features: circuitalg.model.ids.FeatureId) ----------------------------
class TokenId(NamedTuple):
    """Token ``index``, with its string where the model has a vocabulary; printed ``'the'`` or
    ``#123``."""

    index: int
    token: str | None = None

    def __str__(self) -> str:
        return repr(self.token) if self.token is not None else f"#{self.index}"


class PositionId(NamedTuple):
    """Position ``index``; printed ``pos i``."""

    index: int

    def __str__(self) -> str:
        return f"pos {self.index}"


AxisId = FeatureId | TokenId | PositionId


def axis_id(space: Space, i: int, vocab: Sequence[str] | None = None) -> AxisId:
    """The typed id of index ``i`` on an axis of ``space``: a token (``vocab``, ``vocab_out``), a
    position (``pos``) or a feature of the dictionary the space is named after."""
    i = int(i)
    if space.name == VOCAB_SPACE or space.name == "vocab_out":
        tok = vocab[i] if vocab is not None and space.name == VOCAB_SPACE and i < len(vocab) else None
        return TokenId(i, tok)
    if space.name == POS_SPACE:
        return PositionId(i)
    return FeatureId(space.name, i)


# --- inputs ---------------------------------------------------------------------------------------
def _bound(x: Any, what: str) -> BoundDictionary:
    if isinstance(x, BoundDictionary):
        return x
    if isinstance(x, (Dictionary, DictionarySet)):
        raise InvalidArgumentError(
            f"{what}: {x!r} is not bound to a model; bind it first: circuitalg.features.bind(d, model) "
            "(a DictionarySet binds to a tuple, one per member)."
        )
    raise InvalidArgumentError(f"{what} takes a BoundDictionary (circuitalg.features.bind(d, model)), got {type(x).__name__}.")


def _members(x: Any, what: str) -> tuple[BoundDictionary, ...]:
    if isinstance(x, (tuple, list)):
        if not x:
            raise InvalidArgumentError(f"{what}: an empty sequence of dictionaries.")
        return tuple(_bound(m, what) for m in x)
    return (_bound(x, what),)


def _distinct_names(what: str, *groups: Sequence[BoundDictionary]) -> None:
    """Refuse names that repeat: within one group, any two members; across groups (the source
    and target sides), two different dictionaries (one dictionary on both sides is its own
    source and target). Results are keyed and features labelled by name."""
    if len(groups) == 1:
        names = [b.name for b in groups[0]]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InvalidArgumentError(
                f"{what}: dictionary names repeat ({', '.join(map(repr, dup))}); each needs its own name "
                "(results are keyed by name). Rename one: dataclasses.replace(d, name=...)."
            )
        return
    seen: dict[str, Dictionary] = {}
    for group in groups:
        for b in group:
            d = seen.setdefault(b.name, b.dictionary)
            if d is not b.dictionary:
                raise InvalidArgumentError(
                    f"{what}: two different dictionaries are named {b.name!r}; their features would carry the "
                    "same ids. Rename one: dataclasses.replace(d, name=...)."
                )


def _model_of(bounds: Sequence[BoundDictionary], what: str) -> Transformer:
    model = bounds[0].model
    for b in bounds[1:]:
        if b.model is not model:
            raise ConfigError(
                f"{what}: {b.name!r} is bound to {b.model.name!r} and {bounds[0].name!r} to another model "
                f"({model.name!r}); bind every dictionary to the same model object."
            )
    return model


def _head(model: Transformer, head: Any, what: str) -> Head:
    """The model's head for ``head`` (a Head of this model, a HeadId or ``(layer, index)``)."""
    if isinstance(head, Head):
        mine = model.head(head.layer, head.index) if head.layer < model.config.n_layers else None
        if mine is not head:
            raise ConfigError(
                f"{what}: head {head.name} belongs to another model than {model.name!r}, the one the dictionaries "
                f"are bound to; pass model.head({head.layer}, {head.index}) or HeadId({head.layer}, {head.index})."
            )
        return head
    if isinstance(head, tuple) and len(head) == 2:
        return model.head(*head)
    raise InvalidArgumentError(f"{what}: head must be a Head, a HeadId or (layer, index), got {head!r}.")


def _read_depth(model: Transformer, hook: Hook) -> float:
    """Where ``hook`` reads the stream: its depth, except that the MLP of a parallel block reads
    the stream its attention reads (before that attention's output)."""
    if model.config.parallel_attn_mlp and hook.kind in (HookKind.MLP_IN, HookKind.MLP_NORMALIZED):
        return hook.layer + 0.1
    return hook.depth


def _feeds(writer: Hook, read_depth: float, reader_on_stream: bool) -> bool:
    """Whether what ``writer`` adds to the residual stream reaches a reader at ``read_depth``.

    ``reader_on_stream``: the reader is a hook on the stream itself (``RESID_*``); otherwise it
    reads the stream through a sublayer's norm (``MLP_IN``/``MLP_NORMALIZED`` at ``l + 0.5``
    read ``resid_mid`` of ``l``; attention ``l`` reads ``resid_pre`` of ``l`` at depth ``l``).

    ===============================  ======================  =========================
    writer (depth ``w``)             reader on the stream    reader through a norm
    ===============================  ======================  =========================
    ``RESID_*`` (on the stream)      ``w < r``               ``w <= r``
    ``ATTN_OUT``, ``MLP_OUT``        ``w < r``               ``w < r``
    ===============================  ======================  =========================

    A residual hook at the depth a sublayer reads is that sublayer's input (an SAE at
    ``resid_mid`` L feeds MLP L's transcoder); two stream hooks at one depth are the same point
    of the stream (neither is the other's input), and an output is added after whatever reads
    at its own depth.
    """
    w = writer.depth
    if writer.on_residual and not reader_on_stream:
        return w <= read_depth
    return w < read_depth


def _writers(b: BoundDictionary, keep: Callable[[Hook], bool]) -> list[LinearMap]:
    """The decoders of ``b`` into the stream whose written hook passes ``keep``."""
    d = b.dictionary
    return [b.decoder_to_resid(j) for j, h in enumerate(d.writes) if keep(h)]


def _readers(b: BoundDictionary, keep: Callable[[Hook, float], bool]) -> list[LinearMap]:
    """The encoders of ``b`` from the stream whose read hook and read depth pass ``keep``."""
    d = b.dictionary
    return [b.encoder_from_resid(i) for i, h in enumerate(d.reads) if keep(h, _read_depth(b.model, h))]


def _hooks(hooks: Sequence[Hook]) -> str:
    return ", ".join(str(h) for h in hooks)


# --- the maps -------------------------------------------------------------------------------------
def _pair_weights(s: BoundDictionary, t: BoundDictionary) -> LinearMap | None:
    terms = []
    for i, h in enumerate(t.dictionary.reads):
        r = _read_depth(t.model, h)
        decs = _writers(s, lambda w, r=r, on=h.on_residual: _feeds(w, r, on))
        if decs:
            terms.append(compose(t.encoder_from_resid(i), add(*decs)))
    return add(*terms) if terms else None


def virtual_weights(source: Any, target: Any) -> Any:
    """The residual-direct virtual weights ``enc_t · dec_s`` between two dictionaries' features.

    Parameters
    ----------
    source, target : BoundDictionary or sequence of BoundDictionary
        Dictionaries bound to the same model (:func:`~circuitalg.features.binding.bind`); a
        sequence (a bound :class:`~circuitalg.features.dictionary.DictionarySet`, e.g. a
        cross-layer transcoder) on either side gives every pair of members.

    Returns
    -------
    LinearMap or dict
        For two dictionaries, the map ``F_s -> F_t``: ``sum_(j, i) W_enc,i^t N_i W_dec,j^s`` over
        the written hooks ``j`` of ``source`` and read hooks ``i`` of ``target`` with the writer
        feeding the reader (strictly before it, or a residual hook at the depth where the reader
        reads the stream through a norm: ``resid_mid`` L feeds ``mlp_in`` L; ``N_i`` the map from
        the stream to the read hook); for sequences, ``{(source name, target name): map}`` over
        the pairs with a path.

    Raises
    ------
    InvalidArgumentError
        No written hook of ``source`` lies before a read hook of ``target`` (no path), or two
        different dictionaries share a name (the result is keyed, and its features labelled, by
        name).
    ConfigError
        The dictionaries are bound to different models, or a hook is off the stream.
    """
    srcs, tgts = _members(source, "virtual_weights source"), _members(target, "virtual_weights target")
    _model_of(srcs + tgts, "virtual_weights")
    _distinct_names("virtual_weights source", srcs)
    _distinct_names("virtual_weights target", tgts)
    _distinct_names("virtual_weights", srcs, tgts)
    if len(srcs) == 1 and len(tgts) == 1 and not isinstance(source, (tuple, list)) and not isinstance(target, (tuple, list)):
        m = _pair_weights(srcs[0], tgts[0])
        if m is None:
            s, t = srcs[0].dictionary, tgts[0].dictionary
            raise InvalidArgumentError(
                f"virtual_weights: no residual path from {s.name!r} (writes {_hooks(s.writes)}) to {t.name!r} (reads "
                f"{_hooks(t.reads)}): the target reads before (or where) the source writes. Swap them?"
            )
        return m
    out = {}
    for s in srcs:
        for t in tgts:
            m = _pair_weights(s, t)
            if m is not None:
                out[(s.name, t.name)] = m
    if not out:
        raise InvalidArgumentError(
            f"virtual_weights: no member of {[s.name for s in srcs]} writes before a member of {[t.name for t in tgts]} "
            "reads: the targets read before the sources write. Swap them?"
        )
    return out


def _ov_parts(source: BoundDictionary, target: BoundDictionary, layer: int, what: str) -> tuple[LinearMap, LinearMap]:
    """``(sum of target encoders reading after layer's attention, sum of source decoders before it)``."""
    model = _model_of((source, target), what)
    _distinct_names(what, (source,), (target,))
    if not 0 <= layer < model.config.n_layers:
        raise InvalidArgumentError(f"{what}: layer {layer} out of range for {model.name} (0..{model.config.n_layers - 1}).")
    # attention ``layer`` reads the stream at depth ``layer`` (a residual hook there is its input)
    # and adds its output at ``layer + 0.25``
    decs = _writers(source, lambda w: _feeds(w, layer, False))
    out = Hook(HookKind.ATTN_OUT, layer)  # the attention's output, added at layer + 0.25
    encs = _readers(target, lambda h, r: _feeds(out, r, h.on_residual))
    if not decs:
        raise InvalidArgumentError(
            f"{what}: {source.name!r} writes {_hooks(source.dictionary.writes)}, none before layer {layer}'s attention; "
            "no path through its heads."
        )
    if not encs:
        raise InvalidArgumentError(
            f"{what}: {target.name!r} reads {_hooks(target.dictionary.reads)}, none after layer {layer}'s attention "
            "output; no path through its heads."
        )
    return add(*encs), add(*decs)


def head_virtual_weights(source: BoundDictionary, target: BoundDictionary, head: Any) -> LinearMap:
    """The virtual weights through one head's OV circuit, ``enc_t W_O^h W_V^h dec_s`` (``F_s -> F_t``,
    rank at most ``d_head``; its SVD comes from the ``d_head x d_head`` core).

    Parameters
    ----------
    source, target : BoundDictionary
    head : Head, HeadId or (layer, index)
        A head of the model the dictionaries are bound to.

    Notes
    -----
    Only the decoders of ``source`` that write before the head's layer (a residual hook at the
    layer's input counts) and the encoders of ``target`` that read after the attention's output
    enter. ``W_V`` carries the attention norm's weight; the attention pattern is not part of the
    map (a weight-based number: the value a query would get from a key it attends to fully).

    Raises
    ------
    InvalidArgumentError
        No path: the source writes after the head reads, or the target reads before it writes.
    """
    s, t = _bound(source, "head_virtual_weights source"), _bound(target, "head_virtual_weights target")
    model = _model_of((s, t), "head_virtual_weights")
    h = _head(model, head, "head_virtual_weights")
    enc, dec = _ov_parts(s, t, h.layer, "head_virtual_weights")
    return compose(enc, h.W_O, h.W_V, dec)


def layer_virtual_weights(source: BoundDictionary, target: BoundDictionary, layer: int) -> LinearMap:
    """``sum_h enc_t W_O^h W_V^h dec_s`` over the heads of ``layer`` (``F_s -> F_t``), held as
    ``enc_t (sum_h W_O^h W_V^h) dec_s``; the path conditions of :func:`head_virtual_weights`."""
    s, t = _bound(source, "layer_virtual_weights source"), _bound(target, "layer_virtual_weights target")
    model = _model_of((s, t), "layer_virtual_weights")
    layer = check_int("layer", layer, 0, model.config.n_layers - 1)
    enc, dec = _ov_parts(s, t, layer, "layer_virtual_weights")
    ovs = add(*(compose(h.W_O, h.W_V) for h in model.layers[layer].heads))
    return compose(enc, ovs, dec)


def _qk_side(x: Any, model: Transformer | None, layer: int, role: str) -> tuple[LinearMap, Transformer | None]:
    """The map a query or key side writes into the stream before ``layer``'s attention."""
    if isinstance(x, str):
        x = Source.parse(x) if x in ("embed", "pos") else x
    if isinstance(x, Source):
        if model is None:
            raise InvalidArgumentError(f"feature_qk: the {role} side is {x}; the other side must be a dictionary.")
        if x == EMBED:
            return model.W_E, model
        if x == POS:
            if model.W_pos is None:
                raise ConfigError(f"feature_qk: {model.name} has rotary positions (no W_pos); 'pos' is not a {role} side.")
            return model.W_pos, model
        raise InvalidArgumentError(f"feature_qk: the {role} side must be a dictionary, 'embed' or 'pos', got {x}.")
    b = _bound(x, f"feature_qk {role}")
    if model is not None and b.model is not model:
        raise ConfigError("feature_qk: the query and key dictionaries are bound to different models; bind both to one.")
    decs = _writers(b, lambda w: _feeds(w, layer, False))
    if not decs:
        raise InvalidArgumentError(
            f"feature_qk: the {role} dictionary {b.name!r} writes {_hooks(b.dictionary.writes)}, none before layer "
            f"{layer}'s attention reads; no path into its queries or keys."
        )
    return add(*decs), b.model


def feature_qk(query: Any, key: Any, head: Any, delta: int = 0) -> LinearMap:
    """The QK bilinear form of one head between a query side and a key side, as a map
    ``key space -> query space``: ``Qᵀ W_Qᵀ R(Δ) W_K K``.

    Parameters
    ----------
    query, key : BoundDictionary, "embed" or "pos"
        A dictionary (its decoders that write before the head's layer: ``dec``), the token
        embedding (``W_E``) or learned positions (``W_pos``); at least one side a dictionary.
    head : Head, HeadId or (layer, index)
    delta : int
        The rotary offset ``Δ = key position - query position`` (ignored without rotary
        embeddings: ``R = I``).

    Returns
    -------
    LinearMap
        Entry ``[q, k]`` is the attention score (before the ``1 / attn_scale`` and the biases) of
        a query that is query-feature ``q`` at unit activation on a key that is key-feature ``k``.
        q/k norm weights are inside ``W_Q``/``W_K``; their scales are frozen at 1.
    """
    delta_ok = not isinstance(delta, bool) and isinstance(delta, (int, np.integer))
    if not delta_ok:
        raise InvalidArgumentError(f"feature_qk: delta={delta!r}; pass an integer offset key - query (e.g. -1).")
    model = next((x.model for x in (query, key) if isinstance(x, BoundDictionary)), None)
    if model is None:
        for x in (query, key):
            if not isinstance(x, (str, Source)):
                _bound(x, "feature_qk")  # raises, saying what was passed
        raise InvalidArgumentError("feature_qk: one side must be a bound dictionary (tokens x tokens is ca.top_tokens' map).")
    h = _head(model, head, "feature_qk")
    _distinct_names("feature_qk", *([x] for x in (query, key) if isinstance(x, BoundDictionary)))
    q, _ = _qk_side(query, model, h.layer, "query")
    k, _ = _qk_side(key, model, h.layer, "key")
    return compose(transpose(q), h.qk_at(int(delta)), k)


def _writer_sum(b: BoundDictionary, j: int | None, what: str) -> LinearMap:
    d = b.dictionary
    if j is None:
        return add(*(b.decoder_to_resid(i) for i in range(len(d.writes))))
    return b.decoder_to_resid(check_int("j", j, 0, len(d.writes) - 1))


def _reader_sum(b: BoundDictionary, i: int | None) -> LinearMap:
    d = b.dictionary
    if i is None:
        return add(*(b.encoder_from_resid(r) for r in range(len(d.reads))))
    return b.encoder_from_resid(check_int("i", i, 0, len(d.reads) - 1))


def feature_logits(source: BoundDictionary, j: int | None = None) -> LinearMap:
    """The direct effect of features on the logits, ``W_U · dec`` (``F -> vocab_out``).

    ``W_U`` of the model view carries the final norm's weight (and centring behind a layer
    norm); its scale is frozen at 1, and ``b_U`` and a final soft-cap are left out. ``j``: one
    written hook; ``None`` (default) sums every decoder (all of them reach the unembedding).
    """
    b = _bound(source, "feature_logits")
    return compose(b.model.W_U, _writer_sum(b, j, "feature_logits"))


def token_features(target: BoundDictionary, i: int | None = None) -> LinearMap:
    """The direct path from tokens to features, ``enc · W_E`` (``vocab -> F``; every read hook,
    or read hook ``i``)."""
    b = _bound(target, "token_features")
    return compose(_reader_sum(b, i), b.model.W_E)


def position_features(target: BoundDictionary, i: int | None = None) -> LinearMap:
    """The direct path from learned positions to features, ``enc · W_pos`` (``pos -> F``)."""
    b = _bound(target, "position_features")
    if b.model.W_pos is None:
        raise ConfigError(f"position_features: {b.model.name} has rotary positions: no W_pos writes into the stream.")
    return compose(_reader_sum(b, i), b.model.W_pos)


# --- factors and exact entries --------------------------------------------------------------------
def _as_f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _check_factor(shape: tuple[int, int], dtype: Any, what: Callable[[], str], budget: int | None, keyword: str) -> None:
    """Raise :class:`TooLargeError` if a factor of ``shape`` and ``dtype`` exceeds ``budget``,
    naming the keyword that raises the budget."""
    limit = DEFAULT_MAX_BYTES if budget is None else check_int(keyword, budget, 0, hint=" or None (1 GiB)")
    need = nbytes(shape, dtype)
    if need > limit:
        raise TooLargeError(
            f"{what()} needs a {shape[0]} x {shape[1]} {np.dtype(dtype).name} array of {need / 1e9:.3g} GB, above the "
            f"factor budget of {limit / 1e9:.3g} GB; pass {keyword}={need} (bytes) or more to allow it."
        )


def _leaf_dtype(f: LinearMap, keep32: bool) -> Any:
    """The dtype a factor is handed out in: a float32 dense leaf kept with ``keep32`` (its array as
    it is), anything else float64."""
    return np.float32 if keep32 and isinstance(f, Dense) and np.dtype(f.dtype) == np.float32 else np.float64


def _factor_parts(m: LinearMap, max_bytes: int | None, keep32: bool = False,
                  keyword: str = "max_bytes") -> list[tuple[np.ndarray, np.ndarray]]:
    """The factors ``(L, V)`` of ``m`` (one pair per term of a sum without a common factor);
    with ``keep32`` a side that is one float32 leaf is handed out as it is (no float64 copy),
    any product of leaves is formed in float64."""
    chain = as_chain(m)
    fs = chain.factors
    n, mm = m.shape
    if len(fs) >= 2:
        j = chain.bottleneck
        r = chain.dims[j]
        if 0 < j < len(fs) and r < min(n, mm):
            left_dt = _leaf_dtype(fs[0], keep32) if j == 1 else np.float64
            right_dt = _leaf_dtype(fs[j], keep32) if j == len(fs) - 1 else np.float64
            _check_factor((n, r), left_dt, lambda: f"the left factor of {m.symbol}", max_bytes, keyword)
            _check_factor((r, mm), right_dt, lambda: f"the right factor of {m.symbol}", max_bytes, keyword)
            L = np.asarray(evaluate(fs[j - 1], max_bytes), dtype=left_dt)
            for f in reversed(fs[: j - 1]):
                L = matmat(f, L)
            if right_dt == np.float32:  # one float32 leaf: V as it is
                V = np.asarray(evaluate(fs[j], max_bytes))
            else:
                # V is handed out as the transpose of a C-ordered (domain, r) array: top_entries
                # gathers columns of V from V.T, which is then no copy
                Rt = np.array(evaluate(fs[j], max_bytes).T, dtype=np.float64, order="C")
                for f in fs[j + 1:]:
                    Rt = rmatmat(f, Rt)
                V = np.ascontiguousarray(Rt, dtype=np.float64).T
            L = np.asarray(L, dtype=left_dt)
            return [(L if chain.scalar == 1 else chain.scalar * _as_f64(L), V)]  # a scale: in float64
    if len(fs) == 1 and isinstance(fs[0], Sum):
        return [(L if chain.scalar == 1 else chain.scalar * _as_f64(L), V) for t in fs[0].terms
                for L, V in _factor_parts(t, max_bytes, keep32, keyword)]
    what = lambda: f"{m.symbol} (no factored form)"  # noqa: E731
    _check_factor((n, mm), np.float64, what, max_bytes, keyword)
    _check_factor((mm, mm), np.float64, what, max_bytes, keyword)
    return [(_as_f64(evaluate(m, max_bytes)).copy(), np.eye(mm))]


def _factors(m: LinearMap, max_bytes: int | None, keep32: bool = False,
             keyword: str = "max_bytes") -> tuple[np.ndarray, np.ndarray]:
    """:func:`weight_factors`, float32 leaves kept with ``keep32``; the budget error names ``keyword``."""
    if not isinstance(m, LinearMap):
        raise InvalidArgumentError(f"weight_factors takes a ca.LinearMap, got {type(m).__name__}.")
    parts = _factor_parts(m, max_bytes, keep32, keyword)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=0)


def weight_factors(m: LinearMap, *, max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``m`` as ``L @ V`` in float64, without forming it: the map's chain split at its narrowest
    space (``enc_t`` and ``dec_s`` for :func:`virtual_weights`), sums of chains without a common
    factor as the concatenation ``[L1 L2 ...] [V1; V2; ...]``.

    Returns
    -------
    L : (codomain.dim, r) float64 array
    V : (r, domain.dim) float64 array

    Raises
    ------
    TooLargeError
        A factor (or a map with no factored form) exceeds ``max_bytes`` (default 1 GiB).
    """
    L, V = _factors(m, max_bytes)
    return _as_f64(L), _as_f64(V)


#: Bytes of gathered factor rows one chunk of :func:`pair_dots` holds.
PAIR_CHUNK_BYTES = 32 << 20


def pair_dots(L: np.ndarray, V: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``L[rows[i]] · V[:, cols[i]]`` in float64 for every pair, gathered in chunks of at most
    :data:`PAIR_CHUNK_BYTES` (no ``n_pairs x r`` array)."""
    r = max(1, L.shape[1])
    step = max(1, PAIR_CHUNK_BYTES // (16 * r))
    out = np.empty(rows.size, dtype=np.float64)
    for s in range(0, rows.size, step):
        a, b = rows[s:s + step], cols[s:s + step]
        out[s:s + step] = np.einsum("ij,ji->i", np.asarray(L[a], dtype=np.float64), np.asarray(V[:, b], dtype=np.float64))
    return out


def weight_entries(m: LinearMap, rows: Any, cols: Any) -> np.ndarray:
    """Entries ``m[rows[i], cols[i]]`` in float64, each the dot product of a row of ``L`` and a
    column of ``V`` (:func:`weight_factors`): exact to float64 rounding, zero exactly where the
    factors' supports are disjoint."""
    L, V = weight_factors(m)
    r = np.asarray(rows, dtype=np.int64).ravel()
    c = np.asarray(cols, dtype=np.int64).ravel()
    if r.shape != c.shape:
        raise ShapeError(f"weight_entries: {r.size} rows and {c.size} columns; pass one of each per entry.")
    if r.size and (r.min() < 0 or r.max() >= L.shape[0] or c.min() < 0 or c.max() >= V.shape[1]):
        raise InvalidArgumentError(f"weight_entries: an index is out of range for the {m.shape[0]} x {m.shape[1]} map.")
    return pair_dots(L, V, r, c)


# --- top entries with a certificate ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FeatureWeight:
    """One entry of a feature map: ``row`` (the reading side: target feature, logit token) from
    ``col`` (the writing side), and its float64 value."""

    row: AxisId
    col: AxisId
    value: float

    def __str__(self) -> str:
        return f"{self.row} <- {self.col}: {self.value:+.6g}"


@dataclasses.dataclass(frozen=True, eq=False)
class WeightCertificate:
    """How the top entries of one map were found.

    Attributes
    ----------
    symbol : str
        The map.
    n_rows, n_cols : int
    rows_scanned : int
        Rows evaluated (every entry of them ranked exactly), strongest (largest ``‖L_i‖``) first.
    unscanned_rows : int array
        The rows not evaluated.
    bound : float
        Every entry of the unscanned rows has magnitude at most ``bound`` (Cauchy-Schwarz,
        ``‖L_i‖ max_j ‖V_j‖`` of the factors ranked, with room for rounding); 0.0 when none is
        left.
    kth : float
        The smallest ranking key (value, or magnitude with ``by_abs``) of the entries returned.
    exact : bool
        Whether no unscanned entry can enter the result (``bound < kth`` or none unscanned).
    note : str
        How the entries not evaluated are excluded, when not by the bound (e.g. TWERA's zeros).
    """

    symbol: str
    n_rows: int
    n_cols: int
    rows_scanned: int
    unscanned_rows: np.ndarray
    bound: float
    kth: float
    exact: bool
    note: str = ""

    @property
    def n_unevaluated(self) -> int:
        """Entries never evaluated (the unscanned rows' entries)."""
        return int(self.unscanned_rows.size) * self.n_cols

    def __str__(self) -> str:
        if self.note:
            return f"{self.symbol}: {self.note}"
        if self.rows_scanned >= self.n_rows:
            return f"{self.symbol}: exact (all {self.n_rows:,} rows evaluated)"
        # the bound printed rounded up and the k-th value rounded down, with the digits that keep
        # them apart: the printed inequality is true as printed
        digits = 4
        while self.exact and digits < 17 and not float(_decimal(self.bound, digits, True)) < float(_decimal(self.kth, digits, False)):
            digits += 1
        bound, kth = _decimal(self.bound, digits, True), _decimal(self.kth, digits, False)
        left = f"{self.n_unevaluated:,} entries of {self.n_rows - self.rows_scanned:,} rows not evaluated, each <= {bound}"
        if self.exact:
            return f"{self.symbol}: exact ({left} < the k-th value {kth})"
        return f"{self.symbol}: NOT exact ({left}, the k-th value is {kth}: an unevaluated entry could rank)"


def _decimal(x: float, digits: int, up: bool) -> str:
    """``x`` with ``digits`` significant digits, rounded up (``up``) or down: a printed bound stays a bound."""
    if x == 0 or not np.isfinite(x):
        return f"{x:g}"
    d = Decimal(float(x))
    q = Decimal(1).scaleb(d.adjusted() - digits + 1)
    r = d.quantize(q, rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return f"{r:.{digits}g}"


class FeatureWeights(Sequence[FeatureWeight]):
    """The top entries of one or several feature maps (:func:`top_feature_weights`), best first,
    with a certificate per map.

    Attributes
    ----------
    entries : tuple of FeatureWeight
    certificates : tuple of WeightCertificate
    by_abs : bool
        Ranked by magnitude (else by value).
    """

    def __init__(self, entries: Sequence[FeatureWeight], certificates: Sequence[WeightCertificate], by_abs: bool) -> None:
        self.entries = tuple(entries)
        self.certificates = tuple(certificates)
        self.by_abs = bool(by_abs)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: Any) -> Any:
        return self.entries[i]

    def __iter__(self) -> Iterator[FeatureWeight]:
        return iter(self.entries)

    @property
    def exact(self) -> bool:
        """Whether these are the top entries of the whole map(s)."""
        return all(c.exact for c in self.certificates)

    @property
    def values(self) -> np.ndarray:
        """The values, best first."""
        return np.array([e.value for e in self.entries], dtype=np.float64)

    def certificate(self) -> str:
        """The certificates, one line per map."""
        return "\n".join(str(c) for c in self.certificates)

    def __str__(self) -> str:
        how = "|value|" if self.by_abs else "value"
        lines = [f"top {len(self.entries)} entries by {how}:"]
        lines += [f"  {e}" for e in self.entries]
        lines.append(self.certificate())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<FeatureWeights: {len(self.entries)} entries, {'exact' if self.exact else 'NOT exact'}>"


def _vocab_of(vocab: Any) -> Sequence[str] | None:
    if isinstance(vocab, Transformer):
        return vocab.vocab
    return vocab


def _top_one(m: LinearMap, k: int, by_abs: bool, rt: Runtime, max_rows: int | None, max_bytes: int | None,
             vocab: Sequence[str] | None, rotate: bool,
             factor_bytes: int | None = None) -> tuple[list[FeatureWeight], WeightCertificate, list[float]]:
    n_rows, n_cols = m.shape
    kk = min(k, n_rows * n_cols)
    # float32 leaves stay float32 (top_entries widens only what it gathers); the SVD of rotate
    # is formed in float64
    L_raw, V_raw = _factors(m, factor_bytes, keep32=not rotate, keyword="factor_bytes")
    if kk == 0:
        cert = WeightCertificate(str(m.symbol), n_rows, n_cols, n_rows, np.empty(0, dtype=np.int64), 0.0, 0.0, True)
        return [], cert, []
    if rotate:  # ranked from the factored SVD (U S)(Vᵀ), its leading directions first
        space = Space("factor", L_raw.shape[1])
        U, S, Vh = svd(compose(Dense(L_raw, space, m.codomain, "L"), Dense(V_raw, m.domain, space, "V")))
        L = np.ascontiguousarray(U * S, dtype=np.float64)
        V = np.ascontiguousarray(Vh, dtype=np.float64)
    else:
        L, V = L_raw, V_raw
    top = top_entries(L, V, kk, rt, by_abs=by_abs, max_rows=max_rows, max_bytes=max_bytes)
    rows, cols = top.rows.astype(np.int64), top.cols.astype(np.int64)
    vals = pair_dots(L_raw, V_raw, rows, cols)  # the map's own factors, in float64
    keys = np.abs(vals) if by_abs else vals
    order = np.lexsort((cols, rows, -keys))
    rows, cols, vals, keys = rows[order], cols[order], vals[order], keys[order]
    unscanned = top.unscanned_rows
    if not unscanned.size:
        bound = 0.0
    elif rotate:  # top_entries bounds the rotated factors' entries; the values are the map's own factors'
        r = L_raw.shape[1]
        room = 1.0 + max(1e-12, 4.0 * (r + 4) * float(np.finfo(np.float64).eps))
        col_max = float(np.linalg.norm(V_raw, axis=0).max()) if V_raw.size else 0.0
        bound = float(np.linalg.norm(L_raw[unscanned], axis=1).max()) * col_max * room
    else:
        bound = top.unscanned_bound
    kth = float(keys[-1]) if keys.size else 0.0
    # exact only if the printed inequality holds: every unevaluated entry <= bound < k-th key
    exact = bool(top.exact) and (not unscanned.size or bound < kth)
    cert = WeightCertificate(str(m.symbol), n_rows, n_cols, int(top.rows_scanned), unscanned, bound, kth, exact)
    entries = [FeatureWeight(axis_id(m.codomain, i, vocab), axis_id(m.domain, j, vocab), float(v))
               for i, j, v in zip(rows, cols, vals)]
    return entries, cert, [float(x) for x in keys]


def top_feature_weights(
    m: LinearMap | Mapping[Any, LinearMap], k: int = 10, *, by_abs: bool = True, rt: Runtime | None = None,
    vocab: Sequence[str] | Transformer | None = None, max_rows: int | None = None, max_bytes: int | None = None,
    rotate: bool = False, factor_bytes: int | None = None,
) -> FeatureWeights:
    """The ``k`` largest entries of a feature map (``F_t x F_s``, ``vocab x F``, ...) without
    forming it, ranked in float64, with a certificate.

    The map is split into its factors ``L @ V`` (:func:`weight_factors`: e.g. ``enc_t`` and
    ``dec_s``), and :func:`~circuitalg.linalg.topk.top_entries` ranks the entries of the
    product: rows strongest first, each block screened in float32 with a rigorous bound, the
    survivors in float64, the scan stopped when the Cauchy-Schwarz bound excludes every remaining
    row. The values returned are the float64 dot products of the map's own factors (exactly 0
    where their supports are disjoint). The memory is that of the factors (float32 ones as they
    are), float32 copies for the screen and one block of rows.

    Parameters
    ----------
    m : LinearMap or mapping of LinearMap
        One map, or several (e.g. :func:`virtual_weights` of a cross-layer transcoder: every pair
        of members), ranked together.
    k : int
        Entries to return (all of them when the maps have fewer).
    by_abs : bool
        Rank by magnitude (default) or by signed value.
    rt : Runtime, optional
        Threads for the screen (default :func:`circuitalg.runtime.current`).
    vocab : sequence of str or Transformer, optional
        Token strings for token axes.
    max_rows : int, optional
        Evaluate at most this many rows per map (the certificate says whether the result is
        still exact).
    max_bytes : int, optional
        Size of one block of rows scanned (:data:`~circuitalg.linalg.topk.SCAN_BYTES` by default).
    rotate : bool
        Rank from the map's factored SVD ``(U S) Vᵀ`` instead of its own factors: its leading
        directions let the float32 screen rule entries out from a prefix of the rank when the
        singular values decay fast, at the cost of two thin QR factorisations (the values are
        still those of the map's own factors).
    factor_bytes : int, optional
        Budget for each of the map's factors ``L`` and ``V`` (default 1 GiB): a 65,536-feature
        encoder reading ``d_model = 2304`` is 0.6 GB in float32 (kept as it is: only the rows and
        columns evaluated are widened to float64) and 1.2 GB in float64. Raise it for larger
        dictionaries; ``max_bytes`` sets only the scan's block.

    Returns
    -------
    FeatureWeights

    Raises
    ------
    TooLargeError
        A factor exceeds ``factor_bytes``.
    """
    maps = dict(m) if isinstance(m, Mapping) else {None: m}
    if not maps:
        raise InvalidArgumentError("top_feature_weights: no maps given.")
    for key, x in maps.items():
        if not isinstance(x, LinearMap):
            raise InvalidArgumentError(f"top_feature_weights takes a ca.LinearMap (or a mapping of them), got {type(x).__name__}"
                                       + (f" at {key!r}" if key is not None else "") + ".")
    k = check_int("k", k, 1)
    if not isinstance(by_abs, (bool, np.bool_)):
        raise InvalidArgumentError(f"top_feature_weights: by_abs={by_abs!r}; pass True or False.")
    if rt is None:
        rt = runtime.current()
    elif not isinstance(rt, Runtime):
        raise InvalidArgumentError(f"top_feature_weights: rt must be a ca.Runtime, got {type(rt).__name__}.")
    words = _vocab_of(vocab)
    pooled: list[tuple[float, int, FeatureWeight]] = []
    certs = []
    for n, x in enumerate(maps.values()):
        entries, cert, keys = _top_one(x, k, bool(by_abs), rt, max_rows, max_bytes, words, bool(rotate), factor_bytes)
        certs.append(cert)
        pooled += [(key, n, e) for key, e in zip(keys, entries)]
    pooled.sort(key=lambda t: (-t[0], t[1], t[2].row.index, t[2].col.index))
    best = [e for _, _, e in pooled[:k]]
    if len(maps) > 1 and best:  # the certificates hold against the pooled k-th value, which is no smaller
        kth = abs(best[-1].value) if by_abs else best[-1].value
        certs = [dataclasses.replace(c, kth=kth) if c.exact else c for c in certs]
    return FeatureWeights(best, certs, bool(by_abs))


# --- every feature's top tokens -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class FeatureLogits:
    """Every feature's top logit tokens (:func:`top_feature_logits`).

    Attributes
    ----------
    dictionary : str
    features : (n,) int array
    tokens : (n, k) int array
        Token ids, best first per feature.
    values : (n, k) float64 array
        The direct logit effects ``(W_U dec)[token, feature]``.
    vocab : tuple of str or None
    by : str
    """

    dictionary: str
    features: np.ndarray
    tokens: np.ndarray
    values: np.ndarray
    vocab: tuple[str, ...] | None
    by: str

    def __len__(self) -> int:
        return int(self.features.size)

    def of(self, feature: int) -> list[tuple[TokenId, float]]:
        """``[(token, value), ...]`` of feature ``feature``, best first."""
        where = np.flatnonzero(self.features == int(feature))
        if not where.size:
            raise InvalidArgumentError(f"feature {feature} of {self.dictionary!r} is not in this table.")
        r = int(where[0])
        return [(TokenId(int(t), self.vocab[t] if self.vocab is not None else None), float(v))
                for t, v in zip(self.tokens[r], self.values[r])]

    def __str__(self) -> str:
        lines = [f"top {self.tokens.shape[1]} logit tokens by {self.by} of {len(self)} features of {self.dictionary!r}:"]
        for r, f in enumerate(self.features[:20]):
            toks = ", ".join(f"{t} {v:+.3g}" for t, v in self.of(int(f)))
            lines.append(f"  {FeatureId(self.dictionary, int(f))}: {toks}")
        if len(self) > 20:
            lines.append(f"  ... ({len(self) - 20} more)")
        return "\n".join(lines)


def top_feature_logits(
    source: BoundDictionary, k: int = 10, *, j: int | None = None, by: str = "value", features: Any = None,
    max_bytes: int | None = None,
) -> FeatureLogits:
    """Every feature's ``k`` top tokens of :func:`feature_logits`, exact in float64.

    Ranked by :func:`~circuitalg.features.streaming.top_entries_per_row` on the factors
    ``decᵀ`` and ``W_Uᵀ``: blocks of features (``max_bytes`` of float32 logits each) multiplied
    in float32, the tokens the float32 error bound cannot rule out evaluated in float64, so the
    result is each feature's float64 ranking exactly (ties by token id).

    Parameters
    ----------
    source : BoundDictionary
    k : int
    j : int, optional
        One written hook (default: every decoder, all of which reach the logits).
    by : {"value", "abs", "negative"}
        Largest logits, largest magnitudes, or most negative logits.
    features : sequence of int, optional
        The features to rank (default: all).
    max_bytes : int, optional
        The float32 block of logits (default 64 MiB).
    """
    b = _bound(source, "top_feature_logits")
    if by not in ("value", "abs", "negative"):
        raise InvalidArgumentError(f"top_feature_logits: by={by!r}; use 'value', 'abs' or 'negative'.")
    m = feature_logits(b, j)
    n_vocab, F = m.shape
    k = check_int("k", k, 1, n_vocab, " (the vocabulary size)")
    feats = np.arange(F) if features is None else np.asarray(features, dtype=np.int64).ravel()
    if feats.size and (feats.min() < 0 or feats.max() >= F):
        raise InvalidArgumentError(f"top_feature_logits: a feature index is out of range 0..{F - 1}.")
    W = np.asarray(evaluate(b.model.W_U))  # (vocab_out, d), the final norm's weight inside
    dec = _as_f64(evaluate(_writer_sum(b, j, "top_feature_logits")))  # (d, F)
    rows = dec[:, feats].T
    sign = -1.0 if by == "negative" else 1.0
    top = top_entries_per_row(sign * rows if sign < 0 else rows, W.T, k, by_abs=by == "abs", max_bytes=max_bytes)
    tokens, values = top.cols, sign * top.values
    vocab = b.model.vocab if m.codomain.name == VOCAB_SPACE else None
    return FeatureLogits(b.name, feats, tokens, values, vocab, by)
