"""A hand-built two-layer attention-only model whose induction circuit is known exactly."""

from __future__ import annotations

import numpy as np

from circuitalg.errors import InvalidArgumentError
from circuitalg.model.config import TransformerConfig
from circuitalg.model.params import param_shapes
from circuitalg.model.weights import Transformer

__all__ = ["planted_induction"]


def planted_induction(
    *,
    d_vocab: int = 32,
    n_ctx: int = 24,
    d_model: int = 96,
    n_heads: int = 3,
    prev_token_head: int = 1,
    induction_head: int = 2,
    strength: float = 12.0,
    distractor_scale: float = 0.3,
    seed: int = 0,
) -> Transformer:
    """A 2-layer attention-only model (no layer norm, zero biases) with a planted induction circuit.

    The residual stream has three named blocks: one-hot tokens (``d_vocab`` dims), one-hot
    positions (``n_ctx`` dims) and a "previous token" block (``d_vocab`` dims); the rest is free.

    - ``L0H{prev_token_head}``: positional QK ``strength·[key = query - 1]``; OV copies the token
      block into the previous-token block.
    - ``L1H{induction_head}``: QK matches the query's token block against the key's
      previous-token block (K-composition with the head above); OV copies the attended token to
      the output (``W_U`` reads the token block), with gain 2.
    - Every other head is a distractor with Gaussian weights of scale ``distractor_scale``.

    So the K-composition ``L0H{prev} -> L1H{ind}`` is ``1/sqrt(d_vocab)`` while random pairs
    sit near ``1/sqrt(d_model)``, and the induction head's full OV circuit is ``2·I`` (copying 1).
    """
    V, N, D = d_vocab, n_ctx, d_model
    if min(V, N, n_heads) < 1 or 2 * V + N > D:
        raise InvalidArgumentError(
            f"planted_induction needs d_model >= 2 d_vocab + n_ctx = {2 * V + N}, got d_model={D}."
        )
    for name, h in (("prev_token_head", prev_token_head), ("induction_head", induction_head)):
        if not 0 <= h < n_heads:
            raise InvalidArgumentError(f"{name}={h} is out of range for n_heads={n_heads}.")
    dh = max(V, N)
    cfg = TransformerConfig(
        n_layers=2, n_heads=n_heads, d_model=D, d_head=dh, d_vocab=V, n_ctx=N, normalization=None
    )
    rng = np.random.default_rng(seed)
    p = {k: np.zeros(s) for k, s in param_shapes(cfg).items()}
    tok, pos, prev = np.arange(V), V + np.arange(N), V + N + np.arange(V)
    p["W_E"][tok, np.arange(V)] = 1.0
    p["W_pos"][pos, np.arange(N)] = 1.0
    p["W_U"][np.arange(V), tok] = 1.0
    scale = np.sqrt(cfg.attn_scale)
    for l in range(2):
        a = f"blocks.{l}.attn."
        for h in range(n_heads):
            if (l, h) in ((0, prev_token_head), (1, induction_head)):
                continue
            for w in ("W_Q", "W_K", "W_V"):
                p[a + w][h] = distractor_scale * rng.standard_normal((dh, D)) / np.sqrt(D)
            p[a + "W_O"][h] = distractor_scale * rng.standard_normal((D, dh)) / np.sqrt(dh)
    # previous-token head: q_i . k_j = strength * [j == i - 1] (times attn_scale, undone by it)
    a = "blocks.0.attn."
    h = prev_token_head
    p[a + "W_Q"][h][np.arange(N - 1) + 1, pos[1:]] = np.sqrt(strength) * scale
    p[a + "W_K"][h][np.arange(N - 1) + 1, pos[:-1]] = np.sqrt(strength) * scale
    p[a + "W_V"][h][np.arange(V), tok] = 1.0
    p[a + "W_O"][h][prev, np.arange(V)] = 1.0
    # induction head: query token block . key previous-token block
    a = "blocks.1.attn."
    h = induction_head
    p[a + "W_Q"][h][np.arange(V), tok] = np.sqrt(strength) * scale
    p[a + "W_K"][h][np.arange(V), prev] = np.sqrt(strength) * scale
    p[a + "W_V"][h][np.arange(V), tok] = 1.0
    p[a + "W_O"][h][tok, np.arange(V)] = 2.0
    return Transformer(cfg, p, vocab=[f"t{i}" for i in range(V)], name="planted_induction")
