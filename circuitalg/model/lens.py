"""The logit lens: each layer's residual stream read through the final layer norm and the unembedding."""

from __future__ import annotations

import numpy as np

from circuitalg.errors import InvalidArgumentError, ShapeError
from circuitalg.linalg.budget import check_budget
from circuitalg.model.forward import Cache
from circuitalg.model.weights import Transformer, require_model

__all__ = ["logit_lens"]


def logit_lens(model: Transformer, cache: Cache, *, max_bytes: int | None = None) -> np.ndarray:
    """Logits read off the residual stream entering each layer and at the end.

    Each residual stream ``cache.resid[l]`` goes through the final layer norm (with its own
    scale, as in the usual logit lens) and the unembedding, then the final soft-cap where the
    model has one. ``result[n_layers]`` equals the model's logits.

    Returns
    -------
    (n_layers + 1, seq, d_vocab) array
    """
    require_model(model, "logit_lens")
    if not isinstance(cache, Cache):
        raise InvalidArgumentError(f"cache must be the Cache from model.run(tokens), got {type(cache).__name__}.")
    c = model.config
    if cache.resid.shape[0] != c.n_layers + 1 or cache.resid.shape[2] != c.d_model:
        raise ShapeError(
            f"cache has residual streams of shape {cache.resid.shape}, which does not fit {model.name} "
            f"({c.n_layers} layers, d_model={c.d_model}); pass the cache from this model's run."
        )
    check_budget((cache.resid.shape[0] * cache.seq, c.d_vocab), model.dtype, "the logit lens", max_bytes)
    x = cache.resid
    if model.ln_final is not None:
        x, _ = model.ln_final(x)
    out = x @ model.W_U.array.T + model.b_U
    if c.final_softcap is not None:
        out = c.final_softcap * np.tanh(out / c.final_softcap)
    return out
