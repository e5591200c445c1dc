"""Random Llama-layout bf16 checkpoints for the benchmarks, streamed to disk a row block at a time
(never held whole, never committed)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np


def llama_shapes(layers: int, heads: int, kv_heads: int, d_model: int, d_head: int, d_mlp: int, vocab: int,
                 tied: bool) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Hugging Face Llama checkpoint (``lm_head`` unless ``tied``)."""
    D, dh = d_model, d_head
    out = {"model.embed_tokens.weight": (vocab, D), "model.norm.weight": (D,)}
    if not tied:
        out["lm_head.weight"] = (vocab, D)
    for l in range(layers):
        p = f"model.layers.{l}."
        out.update({
            p + "self_attn.q_proj.weight": (heads * dh, D), p + "self_attn.k_proj.weight": (kv_heads * dh, D),
            p + "self_attn.v_proj.weight": (kv_heads * dh, D), p + "self_attn.o_proj.weight": (D, heads * dh),
            p + "mlp.gate_proj.weight": (d_mlp, D), p + "mlp.up_proj.weight": (d_mlp, D),
            p + "mlp.down_proj.weight": (D, d_mlp),
            p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
        })
    return out


def write_bf16_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], config: dict, seed: int = 0) -> int:
    """``model.safetensors`` (random bf16: matrices N(0, 0.02), norm weights 1 + N(0, 0.1)) and
    ``config.json`` in ``path``; returns the safetensors file's size."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    with open(path / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            step = max(1, (32 << 20) // (4 * max(1, math.prod(shape[1:]))))
            for start in range(0, shape[0], step):
                block = rng.standard_normal((min(step, shape[0] - start), *shape[1:]), dtype=np.float32)
                block = 1.0 + 0.1 * block if len(shape) == 1 else 0.02 * block
                f.write((block.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes())  # bf16: top 16 bits
    (path / "config.json").write_text(json.dumps(config))
    return (path / "model.safetensors").stat().st_size
