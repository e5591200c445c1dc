"""The numpy reference forward pass of a transformer.

Architecture: token embeddings plus learned positional embeddings, or rotary embeddings of
queries and keys (one per layer where local and global layers differ, Gemma 3); per block,
pre-norm attention (no input norm in post-norm-only models, OLMo 2; causal, optionally local:
:func:`blocked`; scores ``q·k / attn_scale``, optionally soft-capped; optional q/k RMSNorms, per
head or over the whole projection, and a norm of the attention output) then, unless
attention-only, a pre-norm MLP (reading the same residual stream as the attention in parallel
blocks; optionally followed by its own output norm); a final
layer norm (when the model has normalisation) and the unembedding. Computed in the model's
dtype (float64 by default), row layout internally (one row per position).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, ShapeError
from circuitalg.linalg.budget import check_budget

__all__ = ["Cache", "run", "run_batch", "check_tokens", "activation", "blocked"]


@dataclasses.dataclass(frozen=True, eq=False)
class Cache:
    """Activations of one forward pass (arrays are read-only; ``seq`` is the number of tokens).

    Attributes
    ----------
    tokens : (seq,) int array
    resid : (n_layers + 1, seq, d_model)
        ``resid[l]`` is the residual stream entering layer ``l``; ``resid[n_layers]`` is
        the final residual stream (before the final layer norm).
    resid_mid : (n_layers, seq, d_model)
        The residual stream after layer ``l``'s attention, before its MLP.
    pattern : (n_layers, n_heads, seq, seq)
        Attention patterns, ``pattern[l, h, query, key]``; rows sum to 1.
    z : (n_layers, n_heads, seq, d_head)
        Each head's attention-weighted values (``pattern @ v``, before ``W_O``).
    attn_out : (n_layers, seq, d_model)
        Each layer's attention output, ``b_O`` included.
    mlp_out : (n_layers, seq, d_model) or None
        Each layer's MLP output, ``b_out`` included; ``None`` for attention-only models.
    ln1_scale, ln2_scale : (n_layers, seq) or None
        The layer-norm scales ``sqrt(var + eps)`` before attention and before the MLP.
    ln_final_scale : (seq,) or None
        The scale of the final layer norm.
    q_scale, k_scale : (n_layers, n_heads, seq), (n_layers, n_kv_heads, seq) or None
        The RMS scales of queries and keys (``qk_norm`` models; with ``qk_norm_scope="all"`` the one
        scale of the whole projection, repeated for every head).
    ln1_post_scale, ln2_post_scale : (n_layers, seq) or None
        The scales of the norms of the attention and MLP outputs (``post_norms`` models).
    logits_precap : (seq, d_vocab_out) or None
        The logits before final soft-capping (``final_softcap`` models): what path terms add up to.
    """

    tokens: np.ndarray
    resid: np.ndarray
    resid_mid: np.ndarray
    pattern: np.ndarray
    z: np.ndarray
    attn_out: np.ndarray
    mlp_out: np.ndarray | None
    ln1_scale: np.ndarray | None
    ln2_scale: np.ndarray | None
    ln_final_scale: np.ndarray | None
    q_scale: np.ndarray | None = None
    k_scale: np.ndarray | None = None
    ln1_post_scale: np.ndarray | None = None
    ln2_post_scale: np.ndarray | None = None
    logits_precap: np.ndarray | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v.flags.writeable = False

    @property
    def seq(self) -> int:
        """The number of positions."""
        return int(self.tokens.shape[-1])

    def first(self) -> Cache:
        """The cache of the first sequence of a batch (:func:`run_batch`), without the batch axis."""
        return Cache(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[0]
                        for f in dataclasses.fields(self)})


def check_tokens(tokens: Any, model: Any) -> np.ndarray:
    """Validate a 1-D sequence of token ids for ``model``; returns an int64 array."""
    arr = np.asarray(tokens)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InvalidArgumentError(
                f"tokens must be integer token ids, got dtype {arr.dtype}; e.g. numpy.array([3, 14, 15])."
            )
    if arr.ndim != 1:
        raise ShapeError(
            f"tokens must be a 1-D sequence of ids, got shape {arr.shape}; run one sequence at a time "
            "(loop over the batch)."
        )
    c = model.config
    if not 1 <= arr.shape[0] <= c.n_ctx:
        raise ShapeError(f"{model.name}: {arr.shape[0]} tokens given; the model takes 1 to n_ctx={c.n_ctx}.")
    bad = (arr < 0) | (arr >= c.d_vocab)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidArgumentError(
            f"{model.name}: token id {int(arr[i])} at position {i} is outside the vocabulary 0..{c.d_vocab - 1}."
        )
    return arr.astype(np.int64)


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """The MLP activation ``name`` applied to ``x``."""
    if name == "gelu_new":  # 0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³))), without a pow and in place
        t = x * x
        t *= 0.044715
        t += 1.0
        t *= x
        t *= math.sqrt(2.0 / math.pi)
        np.tanh(t, out=t)
        t += 1.0
        t *= x
        t *= 0.5
        return t
    if name == "gelu":
        from scipy.special import erf

        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    raise InvalidArgumentError(f"unknown activation {name!r}; use gelu_new, gelu, relu or silu.")


def blocked(n_queries: int, n_keys: int, window: int | None = None, causal: bool = True) -> np.ndarray:
    """``(n_queries, n_keys)`` boolean mask of the key positions a query may *not* attend to:
    later keys (causal; nothing for bidirectional attention), and with a ``window`` keys at
    least ``window`` positions back (local attention: query ``i`` sees keys ``i - window < j <= i``)."""
    q = np.arange(n_queries)[:, None]
    k = np.arange(n_keys)[None, :]
    out = k > q if causal else np.zeros((n_queries, n_keys), dtype=bool)
    if window is not None:
        out |= q - k >= window
    return out


def _project(W: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``(batch, heads, seq, d_head)``: every head's ``W x`` for the rows of ``x`` (``(batch, seq,
    d_model)``): one matrix product for all heads and positions (numpy's stacked matmul is several
    times slower)."""
    B, seq, D = x.shape
    H, dh = W.shape[0], W.shape[1]
    y = x.reshape(B * seq, D) @ W.reshape(H * dh, D).T
    return y.reshape(B, seq, H, dh).transpose(0, 2, 1, 3)


def _write(W_O: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``(batch, seq, d_model)``: ``Σ_h W_O^h z_h`` for ``z`` of shape ``(batch, heads, seq, d_head)``."""
    B, H, seq, dh = z.shape
    return z.transpose(0, 2, 1, 3).reshape(B, seq, H * dh) @ W_O.transpose(0, 2, 1).reshape(H * dh, -1)


def _qk_norm(norm: Any, x: np.ndarray, whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """``norm`` applied to projections ``x`` (``(batch, heads, seq, d_head)``): per head, or with
    ``whole`` over all heads' coordinates at once (OLMo 2), whose one scale per position is
    returned for every head. Returns ``(normed x, scales (batch, heads, seq))``."""
    if not whole:
        return norm(x)
    B, H, seq, dh = x.shape
    y, scale = norm(x.transpose(0, 2, 1, 3).reshape(B, seq, H * dh))
    return y.reshape(B, seq, H, dh).transpose(0, 2, 1, 3), np.broadcast_to(scale[:, None, :], (B, H, seq))


def _raw(model: Any, layer: int) -> dict[str, np.ndarray]:
    """Layer ``layer``'s attention weights as the q/k norms and the output norm see them: the
    input norm folded in (as in the view), their own weights not (the forward pass applies them)."""
    a = f"blocks.{layer}.attn."
    return {k: model.norm_inputs.get(a + k, model.params[a + k]) for k in ("W_Q", "b_Q", "W_K", "b_K", "W_O", "b_O")}


def run(model: Any, tokens: Any, *, unembed: bool = True) -> tuple[np.ndarray | None, Cache]:
    """Run ``model`` on one sequence of token ids.

    ``unembed=False`` stops at the final residual stream (no logits: ``None``, and no final
    layer-norm scale), for analyses that read only attention patterns and activations.

    Returns
    -------
    logits : (seq, d_vocab) array, or None with ``unembed=False``
    cache : Cache
    """
    tok = check_tokens(tokens, model)
    logits, cache = _forward(model, tok[None], unembed)
    return (None if logits is None else logits[0]), cache.first()


def run_batch(model: Any, tokens: Any, *, unembed: bool = True) -> tuple[np.ndarray | None, Cache]:
    """Run ``model`` on a batch of sequences of equal length (``(batch, seq)`` token ids) in one
    pass: every array of the returned :class:`Cache` (and the logits) has a leading batch axis.
    The same computation as :func:`run` on each row."""
    arr = np.asarray(tokens)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ShapeError(f"run_batch: tokens must be (batch, seq) token ids, got shape {arr.shape}.")
    tok = np.stack([check_tokens(row, model) for row in arr])
    return _forward(model, tok, unembed)


def _forward(model: Any, tok: np.ndarray, unembed: bool) -> tuple[np.ndarray | None, Cache]:
    """The forward pass on checked ``(batch, seq)`` token ids (arrays with a leading batch axis)."""
    c = model.config
    B, seq = tok.shape
    hw = model.head_weights
    dt = model.dtype
    check_budget((B * c.n_layers * c.n_heads * seq, seq), dt, "the attention patterns of this forward pass", None)
    x = model.W_E.array.T[tok]  # (batch, seq, d_model)
    if model.W_pos is not None:
        x = x + model.W_pos.array[:, :seq].T
    positions = np.arange(seq)
    kv = hw.kv_head[0] if c.n_layers else np.arange(c.n_heads)
    resid = [x]
    resid_mid, patterns, zs, attn_outs, mlp_outs = [], [], [], [], []
    ln1s, ln2s, q_scales, k_scales, post1s, post2s = [], [], [], [], [], []
    for layer in model.layers:
        l = layer.index
        if layer.ln1 is not None:
            xn, s1 = layer.ln1(x)
            ln1s.append(s1)
        else:
            xn = x
        if layer.q_norm is not None and layer.k_norm is not None:
            # RMSNorm of the raw projections (the view's W_Q, W_K have the weights folded)
            raw = _raw(model, l)
            whole = c.qk_norm_scope == "all"
            q, sq = _qk_norm(layer.q_norm, _project(raw["W_Q"], xn) + raw["b_Q"][:, None, :], whole)
            k, sk = _qk_norm(layer.k_norm, _project(raw["W_K"], xn) + raw["b_K"][:, None, :], whole)
            q_scales.append(sq)
            k_scales.append(sk)
            k = np.take(k, kv, axis=1)
        else:
            q = _project(hw.W_Q[l], xn) + hw.b_Q[l][:, None, :]
            k = _project(hw.W_K[l], xn) + hw.b_K[l][:, None, :]
        v = _project(hw.W_V[l], xn) + hw.b_V[l][:, None, :]
        rotary = c.layer_rotary(l)
        if rotary is not None:
            q, k = rotary.apply(q, positions, seq), rotary.apply(k, positions, seq)
        scores = q @ np.swapaxes(k, -1, -2) / c.attn_scale
        if c.attn_softcap is not None:
            scores = c.attn_softcap * np.tanh(scores / c.attn_softcap)
        scores = np.where(blocked(seq, seq, c.window(l), c.causal), -np.inf, scores)
        scores = scores - scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        pattern = weights / weights.sum(axis=-1, keepdims=True)
        z = pattern @ v
        if layer.ln1_post is not None:
            raw = _raw(model, l)
            attn_out, sp = layer.ln1_post(_write(raw["W_O"], z) + raw["b_O"])
            post1s.append(sp)
        else:
            attn_out = _write(hw.W_O[l], z) + hw.b_O[l]
        mlp_in = x  # parallel blocks: the MLP reads the residual stream the attention read
        x = x + attn_out
        patterns.append(pattern)
        zs.append(z)
        attn_outs.append(attn_out)
        resid_mid.append(x)
        if layer.mlp is not None:
            if not c.parallel_attn_mlp:
                mlp_in = x
            if layer.ln2 is not None:
                xn2, s2 = layer.ln2(mlp_in)
                ln2s.append(s2)
            else:
                xn2 = mlp_in
            mlp_out = layer.mlp(xn2)
            if layer.mlp.post is not None:
                mlp_out, sp2 = layer.mlp.post(mlp_out)
                post2s.append(sp2)
            x = x + mlp_out
            mlp_outs.append(mlp_out)
        resid.append(x)
    if model.ln_final is not None and unembed:
        xf, sf = model.ln_final(x)
    else:
        xf, sf = x, None
    logits = xf @ model.W_U.array.T + model.b_U if unembed else None
    precap = None
    if c.final_softcap is not None and logits is not None:
        precap = logits
        logits = c.final_softcap * np.tanh(precap / c.final_softcap)

    def stacked(xs: list[np.ndarray]) -> np.ndarray | None:
        return np.stack(xs, axis=1) if xs else None  # (batch, n_layers, ...)

    cache = Cache(
        tokens=tok,
        resid=np.stack(resid, axis=1),
        resid_mid=np.stack(resid_mid, axis=1),
        pattern=np.stack(patterns, axis=1),
        z=np.stack(zs, axis=1),
        attn_out=np.stack(attn_outs, axis=1),
        mlp_out=stacked(mlp_outs),
        ln1_scale=stacked(ln1s),
        ln2_scale=stacked(ln2s),
        ln_final_scale=sf,
        q_scale=stacked(q_scales),
        k_scale=stacked(k_scales),
        ln1_post_scale=stacked(post1s),
        ln2_post_scale=stacked(post2s),
        logits_precap=precap,
    )
    return logits, cache
