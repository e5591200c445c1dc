"""Weight transforms that keep what a model computes: layer-norm folding and centring.

The mathematics is TransformerLens's weight processing, in column layout:

- :func:`fold_layer_norm`: a layer norm ``w * centre(x) / scale + b`` followed by a reading
  weight ``W`` (and bias ``b_W``) equals ``centre(x) / scale`` followed by ``W diag(w)`` with
  bias ``b_W + W b``. The model becomes ``LNPre``. With ``center_reads`` the reading weights
  are also centred over ``d_model`` (``W - mean_row(W) 1ᵀ``), exact because their input is
  centred. Logits are unchanged.
- :func:`center_writing_weights`: subtracting each written vector's mean over ``d_model``
  (``W_E, W_pos, W_O, b_O, W_out, b_out``) changes the residual stream only along the
  all-ones direction, which every layer norm removes. Logits are unchanged; needs LN.
- :func:`center_unembed`: subtracting the mean over the vocabulary from ``W_U`` and ``b_U``
  shifts each position's logits by a constant: log-probabilities are unchanged.
- :func:`fold_value_biases`: since each attention pattern row sums to 1, ``b_V`` contributes
  ``W_O b_V`` at every position; it moves into ``b_O``. Logits are unchanged.
- :func:`rotate_residual`: an orthogonal change of the residual basis ``r -> Q r`` (writers
  ``Q W``, readers ``W Qᵀ``). The function, every path term and every circuit are unchanged;
  invariance tests use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from circuitalg.errors import ConfigError, InvalidArgumentError
from circuitalg.model.folding import fold_dtype, fold_params
from circuitalg.model.weights import Transformer, require_model

__all__ = [
    "fold_layer_norm", "center_writing_weights", "center_unembed", "fold_value_biases",
    "rotate_residual",
]


def fold_layer_norm(model: Transformer, *, center_reads: bool = True, dtype: Any = None) -> Transformer:
    """Fold each layer norm's weight and bias into the weights that read it (model becomes
    ``LNPre``; an RMSNorm model becomes ``RMSPre``: its weights fold the same way, without a bias
    and without centring, since RMSNorm does not centre).

    A model without normalisation is returned unchanged (converted to ``dtype`` if given); an
    ``LNPre`` model only has its reading weights centred (when ``center_reads``; weights already
    centred to rounding are kept as they are, so folding twice copies nothing). ``dtype``
    (default: the model's) is the folded model's dtype; folding a float32 model into float64
    does the arithmetic in float64. ``ca.load(path, fold=True)`` folds while loading, so the
    unfolded model never exists in memory.
    """
    require_model(model, "fold_layer_norm")
    if not isinstance(center_reads, (bool, np.bool_)):
        raise InvalidArgumentError(f"fold_layer_norm: center_reads={center_reads!r}; pass True or False.")
    dtype = model.dtype if dtype is None else fold_dtype(dtype)
    if model.config.normalization is None:
        return model if dtype == model.dtype else model.with_params(model.params, dtype=dtype)
    p = dict(model.params)
    normalization = fold_params(model.config, p, center_reads=center_reads, dtype=dtype)
    if (normalization == model.config.normalization and dtype == model.dtype and p.keys() == model.params.keys()
            and all(v is model.params[k] for k, v in p.items())):
        return model  # already folded (and centred): nothing changed
    return model.with_params(p, normalization=normalization, dtype=dtype)


def center_writing_weights(model: Transformer) -> Transformer:
    """Centre every weight that writes to the residual stream over ``d_model`` (needs LN or LNPre)."""
    require_model(model, "center_writing_weights")
    c = model.config
    if not c.centred_norm:
        raise ConfigError(
            f"{model.name}: center_writing_weights is exact only when every reader sits behind a layer norm "
            f"(which removes the mean); this model has normalization={c.normalization!r}."
        )
    p = dict(model.params)
    p["W_E"] = p["W_E"] - p["W_E"].mean(axis=0, keepdims=True)
    if "W_pos" in p:
        p["W_pos"] = p["W_pos"] - p["W_pos"].mean(axis=0, keepdims=True)
    for layer in range(c.n_layers):
        a = f"blocks.{layer}.attn."
        p[a + "W_O"] = p[a + "W_O"] - p[a + "W_O"].mean(axis=1, keepdims=True)
        p[a + "b_O"] = p[a + "b_O"] - p[a + "b_O"].mean()
        if c.d_mlp is not None:
            m = f"blocks.{layer}.mlp."
            p[m + "W_out"] = p[m + "W_out"] - p[m + "W_out"].mean(axis=0, keepdims=True)
            p[m + "b_out"] = p[m + "b_out"] - p[m + "b_out"].mean()
    return model.with_params(p)


def center_unembed(model: Transformer) -> Transformer:
    """Centre ``W_U`` and ``b_U`` over the vocabulary; logits shift by a per-position constant
    (which the softmax ignores; refused with final-logit soft-capping, which it does not commute with)."""
    require_model(model, "center_unembed")
    if model.config.final_softcap is not None:
        raise ConfigError(
            f"{model.name}: center_unembed shifts every logit of a position by one constant, which the softmax "
            f"ignores but the final soft-cap c·tanh(logit/c) (final_softcap={model.config.final_softcap:g}) does not."
        )
    p = dict(model.params)
    p["W_U"] = p["W_U"] - p["W_U"].mean(axis=0, keepdims=True)
    p["b_U"] = p["b_U"] - p["b_U"].mean()
    return model.with_params(p)


def fold_value_biases(model: Transformer) -> Transformer:
    """Move each head's value bias into the layer's output bias: ``b_O += Σ_h W_O^h b_V^h``, ``b_V = 0``."""
    require_model(model, "fold_value_biases")
    p = dict(model.params)
    c = model.config
    kv = np.array([c.kv_head(h) for h in range(c.n_heads)])
    for layer in range(c.n_layers):
        a = f"blocks.{layer}.attn."
        # from the stored (raw) weights: with post_norms the view's W_O carries the norm weight,
        # which the stored b_O must not (the norm applies it)
        p[a + "b_O"] = p[a + "b_O"] + np.einsum("hmd,hd->m", p[a + "W_O"], p[a + "b_V"][kv])
        p[a + "b_V"] = np.zeros_like(p[a + "b_V"])
    return model.with_params(p)


def rotate_residual(model: Transformer, Q: np.ndarray, *, atol: float = 1e-10) -> Transformer:
    """The same model in the residual basis ``r' = Q r`` (``Q`` orthogonal, ``d_model x d_model``).

    Writers become ``Q W`` (``W_E, W_pos, W_O, b_O, W_out, b_out``) and readers ``W Qᵀ``
    (``W_Q, W_K, W_V, W_in, W_gate, W_U``). RMSNorm commutes with every orthogonal ``Q`` once its
    weight is folded (``RMSPre``). Logits, attention patterns, path terms and composition
    scores are unchanged (up to rounding). A layer norm commutes with ``Q`` only when its
    weight is folded and ``Q`` fixes the all-ones direction: ``LN`` models are refused (fold
    them with :func:`fold_layer_norm` first), ``LNPre`` models need ``Q 1 = 1``.

    Parameters
    ----------
    model : Transformer
    Q : (d_model, d_model) array
        Orthogonal to ``atol`` (``‖QᵀQ - I‖_max <= atol``).
    atol : float
    """
    require_model(model, "rotate_residual")
    c = model.config
    D = c.d_model
    try:
        Q = np.asarray(Q, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"rotate_residual: Q must be a {D} x {D} array of numbers ({exc}).") from None
    if Q.shape != (D, D):
        raise InvalidArgumentError(f"rotate_residual: Q has shape {Q.shape}; pass a {D} x {D} orthogonal matrix (d_model={D}).")
    if not np.all(np.isfinite(Q)) or np.abs(Q.T @ Q - np.eye(D)).max() > atol:
        raise InvalidArgumentError(
            f"rotate_residual: Q is not orthogonal to atol={atol:g}; make one with "
            "scipy.stats.special_ortho_group.rvs(d_model) or np.linalg.qr of a random matrix."
        )
    if c.normalization in ("LN", "RMS"):
        raise ConfigError(
            f"{model.name}: rotate_residual does not commute with a norm's elementwise weight; fold it first "
            "(ca.fold_layer_norm(model)); for layer norms rotate with a Q that fixes the all-ones vector."
        )
    if c.post_norms:
        raise ConfigError(
            f"{model.name}: rotate_residual cannot rotate a model with post_norms: the norm of each sublayer's "
            "output applies its elementwise weight after the scale it computes, so no weight folding makes it "
            "commute with a change of residual basis."
        )
    if c.normalization == "LNPre" and np.abs(Q @ np.ones(D) - np.ones(D)).max() > atol * np.sqrt(D):
        raise InvalidArgumentError(
            f"rotate_residual: {model.name} has layer norms (LNPre), which centre along the all-ones vector; "
            "Q must map it to itself (Q @ ones == ones)."
        )
    p = dict(model.params)
    dt = {k: np.asarray(v).dtype for k, v in p.items()}
    p["W_E"], p["W_U"] = Q @ p["W_E"], p["W_U"] @ Q.T
    if "W_pos" in p:
        p["W_pos"] = Q @ p["W_pos"]
    for layer in range(c.n_layers):
        a = f"blocks.{layer}.attn."
        for w in ("W_Q", "W_K", "W_V"):
            p[a + w] = p[a + w] @ Q.T
        p[a + "W_O"] = Q @ p[a + "W_O"]
        p[a + "b_O"] = Q @ p[a + "b_O"]
        if c.d_mlp is not None:
            m = f"blocks.{layer}.mlp."
            p[m + "W_in"] = p[m + "W_in"] @ Q.T
            if c.gated_mlp:
                p[m + "W_gate"] = p[m + "W_gate"] @ Q.T
            p[m + "W_out"] = Q @ p[m + "W_out"]
            p[m + "b_out"] = Q @ p[m + "b_out"]
    return model.with_params({k: np.asarray(v, dtype=dt[k]) for k, v in p.items()})
