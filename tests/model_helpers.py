"""Random models for the model and path tests (shared helpers, not a test module)."""

from __future__ import annotations

import numpy as np

import circuitalg as ca


def random_model(
    *,
    n_layers: int = 2,
    n_heads: int = 3,
    d_model: int = 16,
    d_head: int = 4,
    d_vocab: int = 13,
    n_ctx: int = 10,
    d_mlp: int | None = None,
    normalization: str | None = None,
    seed: int = 0,
    scale: float = 0.5,
    biases: bool = True,
) -> ca.Transformer:
    """A model with Gaussian weights (and LN weights around 1 when it has LN)."""
    cfg = ca.TransformerConfig(
        n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=d_head, d_vocab=d_vocab,
        n_ctx=n_ctx, d_mlp=d_mlp, normalization=normalization,
    )
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in ca.param_shapes(cfg).items():
        if key.endswith(".w"):
            params[key] = 1.0 + 0.2 * rng.normal(size=shape)
        elif key.rsplit(".", 1)[-1] in ca.model.weights.BIAS_KEYS and not biases:
            params[key] = np.zeros(shape)
        else:
            params[key] = scale * rng.normal(size=shape)
    return ca.Transformer(cfg, params, name=f"random-{seed}")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
