"""Canonical parameter names and shapes (circuitalg's own layout, column vectors), and array intake."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArrayError, LoadError
from circuitalg.maps.nodes import as_float_array
from circuitalg.model.config import TransformerConfig, require_config

__all__ = ["param_shapes", "BIAS_KEYS", "to_numpy", "validate_param", "validate_params"]

#: Parameter-name suffixes that may be zero-filled with ``biases="zero-fill"``.
BIAS_KEYS = ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U", "b_gate")


def param_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """The canonical parameter names of a model with ``config`` and their shapes (column layout)."""
    c = require_config(config, "param_shapes")
    shapes: dict[str, tuple[int, ...]] = {"W_E": (c.d_model, c.d_vocab)}
    if c.learned_positions:
        shapes["W_pos"] = (c.d_model, c.n_ctx)
    shapes["W_U"] = (c.vocab_out, c.d_model)
    shapes["b_U"] = (c.vocab_out,)
    for layer in range(c.n_layers):
        p = f"blocks.{layer}."
        shapes[p + "attn.W_Q"] = (c.n_heads, c.d_head, c.d_model)
        for w in ("W_K", "W_V"):  # one per key/value head (grouped-query attention shares them)
            shapes[p + "attn." + w] = (c.kv_heads, c.d_head, c.d_model)
        shapes[p + "attn.W_O"] = (c.n_heads, c.d_model, c.d_head)
        shapes[p + "attn.b_Q"] = (c.n_heads, c.d_head)
        for b in ("b_K", "b_V"):
            shapes[p + "attn." + b] = (c.kv_heads, c.d_head)
        shapes[p + "attn.b_O"] = (c.d_model,)
        if c.qk_norm:  # one weight shared by the heads, or one row per head over the whole projection
            whole = c.qk_norm_scope == "all"
            shapes[p + "attn.q_norm.w"] = (c.n_heads, c.d_head) if whole else (c.d_head,)
            shapes[p + "attn.k_norm.w"] = (c.kv_heads, c.d_head) if whole else (c.d_head,)
        for ln in ("ln1", "ln2") if c.d_mlp is not None else ("ln1",):
            if c.normalization in ("LN", "RMS") and c.pre_norms:
                shapes[p + ln + ".w"] = (c.d_model,)
            if c.normalization == "LN":
                shapes[p + ln + ".b"] = (c.d_model,)
            if c.post_norms:
                shapes[p + ln + "_post.w"] = (c.d_model,)
        if c.d_mlp is not None:
            shapes[p + "mlp.W_in"] = (c.d_mlp, c.d_model)
            shapes[p + "mlp.b_in"] = (c.d_mlp,)
            shapes[p + "mlp.W_out"] = (c.d_model, c.d_mlp)
            shapes[p + "mlp.b_out"] = (c.d_model,)
            if c.gated_mlp:
                shapes[p + "mlp.W_gate"] = (c.d_mlp, c.d_model)
                shapes[p + "mlp.b_gate"] = (c.d_mlp,)
    if c.normalization in ("LN", "RMS"):
        shapes["ln_final.w"] = (c.d_model,)
    if c.normalization == "LN":
        shapes["ln_final.b"] = (c.d_model,)
    return shapes


def to_numpy(value: Any) -> Any:
    """Convert a torch tensor (duck-typed, no torch import) to numpy; pass others through."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        t = value.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return value


def validate_param(value: Any, key: str, shape: tuple[int, ...], *, source: str, dtype: Any,
                   config: TransformerConfig | None = None) -> np.ndarray:
    """Parameter ``key`` as a model holds it: a read-only ``dtype`` array of ``shape``, the caller's
    data copied unless it is a read-only numpy array; :class:`LoadError` naming the tensor (and
    ``config``) when it is not finite, not real or of another shape."""
    value = to_numpy(value)
    if not (isinstance(value, np.ndarray) and not value.flags.writeable):
        # Own the data: a caller (or TransformerLens processing weights in place) could
        # otherwise change the weights under cached decompositions.
        value = np.array(value, copy=True)
    try:
        arr = as_float_array(value, f"{source}: tensor {key!r}", ndim=len(shape), dtype=dtype)
    except InvalidArrayError as exc:
        raise LoadError(str(exc)) from None
    if arr.shape != shape:
        raise LoadError(
            f"{source}: tensor {key!r} has shape {arr.shape}, expected {shape}"
            + (f" for config {config.to_json()}." if config is not None else ".")
        )
    return arr


def validate_params(
    config: TransformerConfig, params: Mapping[str, Any], *, biases: str, source: str, dtype: Any,
) -> dict[str, np.ndarray]:
    """Every canonical parameter of ``config`` (:func:`param_shapes`) validated by
    :func:`validate_param`; missing biases are zeros with ``biases="zero-fill"``. :class:`LoadError`
    for a missing or an unexpected parameter, naming them."""
    if not isinstance(params, Mapping):
        raise LoadError(f"{source}: parameters must be a mapping of names to arrays, got {type(params).__name__}.")
    shapes = param_shapes(config)
    extra = sorted(set(params) - set(shapes))
    if extra:
        raise LoadError(
            f"{source}: unexpected parameters {extra[:8]}{' ...' if len(extra) > 8 else ''} for a model with "
            f"config {config.to_json()}; check the layout and the config (normalization, d_mlp, n_layers)."
        )
    out: dict[str, np.ndarray] = {}
    missing = []
    for key, shape in shapes.items():
        if key not in params:
            if biases == "zero-fill" and key.rsplit(".", 1)[-1] in BIAS_KEYS:
                out[key] = np.zeros(shape, dtype=dtype)
                out[key].flags.writeable = False
                continue
            missing.append(key)
            continue
        out[key] = validate_param(params[key], key, shape, source=source, dtype=dtype, config=config)
    if missing:
        raise LoadError(
            f"{source}: missing parameters {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            "the checkpoint is incomplete or its config does not match it."
        )
    return out
