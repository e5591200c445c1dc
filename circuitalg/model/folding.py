"""Norm folding on parameter dicts: the arithmetic behind every norm-weighted map.

A norm ``w * centre(x) / scale + b`` followed by a reading weight ``W`` (bias ``b_W``) equals
``centre(x) / scale`` followed by ``W diag(w)`` with bias ``b_W + W b``; for a layer norm the
reading weight may also be centred over ``d_model`` (``W P``, ``P = I - 11ᵀ/d``), exact because
its input is centred. :func:`fold_params` does this on a canonical parameter dict. The model
view (:class:`~circuitalg.model.weights.Transformer`) applies it to every model, folded or not,
so each map an analysis reads carries its norm weights; :func:`~circuitalg.model.transforms.fold_layer_norm`
applies it to the stored parameters (a change of representation only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError
from circuitalg.model.view import HEAD_STACKED

__all__ = ["fold_params", "fold_attention_reads", "fold_head_norms", "fold_dtype", "is_centred"]


def _centre_in_place(W: np.ndarray) -> np.ndarray:
    """Subtract the mean over the last axis (the ``d_model`` input axis of a reading weight) from
    ``W`` itself, a fresh array; returns it."""
    W -= W.mean(axis=-1, keepdims=True)
    return W


def fold_dtype(dtype: Any) -> np.dtype:
    try:
        out = np.dtype(dtype)
    except TypeError:
        out = None
    if out not in (np.float32, np.float64):
        raise InvalidArgumentError(f"fold_layer_norm: dtype={dtype!r}; use numpy.float32 or numpy.float64.")
    return out


def fold_params(config: Any, p: dict[str, np.ndarray], *, center_reads: bool = True, dtype: Any = np.float64) -> str:
    """:func:`fold_layer_norm` on a parameter dict, in place: each entry is replaced by its folded
    (or converted) array as soon as that is made, so a caller that holds no other reference
    never has the unfolded and the folded weights in memory at once. Returns the new
    ``normalization`` (``"LNPre"`` or ``"RMSPre"``). ``config`` must have a normalization."""
    c = config
    dtype = fold_dtype(dtype)
    done: set[str] = set()
    centred = c.centred_norm  # only a layer norm's output is centred, so only then may reads be centred
    stacks: dict[str, np.ndarray] = {}

    def new_array(key: str, like: np.ndarray) -> np.ndarray:
        """A fresh array for ``key`` in ``like``'s memory layout (``W_E`` stays the transposed view
        of the checkpoint's ``vocab x d_model`` rows, so its tokens stay contiguous); a head weight
        (``blocks.{l}.attn.W_Q`` ...) gets layer ``l``'s slot of one C-ordered stack over layers,
        which the model's head view then uses as it is (no second copy)."""
        parts = key.split(".")
        if len(parts) == 4 and parts[0] == "blocks" and parts[2] == "attn" and parts[3] in HEAD_STACKED:
            st = stacks.get(parts[3])
            if st is None or st.shape[1:] != like.shape:
                st = stacks[parts[3]] = np.empty((c.n_layers, *like.shape), dtype=dtype)
            return st[int(parts[1])]
        return np.empty_like(like, dtype=dtype)

    def fold(ln: str, weight_keys: list[tuple[str, str]]) -> None:
        done.update(_fold_norm(p, ln, weight_keys, centred=centred, center_reads=center_reads, dtype=dtype,
                               new_array=new_array))

    for layer in range(c.n_layers):
        a = f"blocks.{layer}.attn."
        fold(f"blocks.{layer}.ln1", [(a + "W_Q", a + "b_Q"), (a + "W_K", a + "b_K"), (a + "W_V", a + "b_V")])
        if c.d_mlp is not None:
            m = f"blocks.{layer}.mlp."
            reads = [(m + "W_in", m + "b_in")] + ([(m + "W_gate", m + "b_gate")] if c.gated_mlp else [])
            fold(f"blocks.{layer}.ln2", reads)
    fold("ln_final", [("W_U", "b_U")])
    for k in sorted(p.keys() - done):  # the rest converted (read-only: no second copy in the new model)
        v = p[k]
        if v.dtype != dtype:
            v = new_array(k, v)
            v[...] = p[k]
            v.flags.writeable = False
        p[k] = v
    return "LNPre" if centred else "RMSPre"


def _fold_norm(
    p: dict[str, np.ndarray], ln: str, weight_keys: list[tuple[str, str]], *, centred: bool, center_reads: bool,
    dtype: np.dtype, new_array: Callable[[str, np.ndarray], np.ndarray],
) -> list[str]:
    """Fold the norm ``ln`` (``p[ln + ".w"]``, ``p[ln + ".b"]``, popped) into the reading weights
    ``weight_keys`` (``(W key, b key)``) of ``p``, in place: ``W diag(w)``, ``b_W + W b``, rows
    centred behind a layer norm with ``center_reads``. Returns the keys it replaced or kept."""
    w, b = p.pop(ln + ".w", None), p.pop(ln + ".b", None)
    done = []
    for wk, bk in weight_keys:
        raw = p[wk]
        done.append(wk)
        if w is None and b is None and raw.dtype == dtype and (not (center_reads and centred) or is_centred(raw)):
            continue  # nothing to fold and already centred: kept as it is
        W = new_array(wk, raw)  # one new array per folded weight (C order: rows reshape as views)
        if w is not None and b is None:  # one pass: converted to dtype, then scaled, as below
            np.multiply(raw, np.asarray(w, dtype=dtype), out=W, dtype=dtype, casting="unsafe")
        else:
            W[...] = raw
            if b is not None:
                p[bk] = np.asarray(p[bk], dtype=dtype) + W @ np.asarray(b, dtype=dtype)
                done.append(bk)
            if w is not None:
                W *= np.asarray(w, dtype=dtype)
        del raw
        if center_reads and centred:
            _centre_in_place(W)
        W.flags.writeable = False  # nobody else holds it: the new model keeps it uncopied
        p[wk] = W
    return done


def fold_attention_reads(config: Any, p: dict[str, np.ndarray], layer: int, *, dtype: Any = np.float64) -> None:
    """:func:`fold_params` on layer ``layer``'s attention inputs only, in place: its input norm
    (``ln1``, popped) folded into whichever of ``W_Q, W_K, W_V`` ``p`` holds, reads centred behind a
    layer norm, each weight converted to ``dtype`` (the same arithmetic on C-ordered arrays, as
    :func:`fold_params` makes the model view's head weights, so the same arrays bit for bit)."""
    a = f"blocks.{layer}.attn."
    reads = [(a + "W_" + s, a + "b_" + s) for s in "QKV" if a + "W_" + s in p]
    _fold_norm(p, f"blocks.{layer}.ln1", reads, centred=config.centred_norm, center_reads=True,
               dtype=fold_dtype(dtype), new_array=lambda _key, like: np.empty(like.shape, dtype=dtype))


def fold_head_norms(config: Any, params: Mapping[str, np.ndarray], layers: Iterable[int] | None = None
                    ) -> dict[str, np.ndarray]:
    """The attention weights of the model view where a norm weight multiplies a projection:
    ``diag(w_q) W_Q``, ``diag(w_k) W_K`` (``qk_norm``) and ``diag(w) W_O``, ``w ⊙ b_O``
    (``post_norms``), for ``layers`` (default all) and the projections ``params`` holds; exact up
    to the norms' per-token scales, which are frozen. New read-only arrays; ``params`` is unchanged."""
    out: dict[str, np.ndarray] = {}
    for l in range(config.n_layers) if layers is None else layers:
        a = f"blocks.{l}.attn."
        if config.qk_norm:
            for s in ("Q", "K"):  # one (d_head,) weight for every head, or a (heads, d_head) one
                if a + "W_" + s not in params:
                    continue
                w = params[a + f"{s.lower()}_norm.w"].reshape(-1, config.d_head)
                out[a + "W_" + s] = w[:, :, None] * params[a + "W_" + s]
                out[a + "b_" + s] = w * params[a + "b_" + s]
        if config.post_norms and a + "W_O" in params:
            w = params[f"blocks.{l}.ln1_post.w"]
            out[a + "W_O"] = w[None, :, None] * params[a + "W_O"]
            out[a + "b_O"] = w * params[a + "b_O"]
    for v in out.values():
        v.flags.writeable = False
    return out


def is_centred(W: np.ndarray) -> bool:
    """Whether every row of the reading weight ``W`` (last axis ``d_model``) sums to zero up to
    the rounding of a centring (``d_model`` ulps of its largest entry)."""
    if W.size == 0:
        return True
    d = W.shape[-1]
    tol = 4 * d * np.finfo(W.dtype).eps * max(float(W.max()), -float(W.min()))  # no |W| temporary
    return bool(np.max(np.abs(W.mean(axis=-1))) <= tol / d)
