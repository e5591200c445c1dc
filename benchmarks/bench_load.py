"""Load time and peak memory of a bf16 Hugging Face checkpoint (Llama layout, SmolLM2-135M shapes).

Writes a random bf16 ``model.safetensors`` (streamed tensor by tensor, never held whole) and its
``config.json`` to a temporary directory, then, in a fresh child process (so the writer's memory
does not count), runs ``ca.load(dir, dtype=...)`` and reports the wall time, the peak RSS, the
bytes of the loaded model's parameters and the bf16 file, and the peak RSS above the
interpreter's baseline in units of the model's size (one extra copy of the weights: < 2).

Usage: ``python benchmarks/bench_load.py [--dtype float32|float64] [--layers 30]``
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = dict(layers=30, heads=9, kv_heads=3, d_model=576, d_head=64, d_mlp=1536, vocab=49152, ctx=2048)


def tensor_shapes(s: dict) -> dict[str, tuple[int, ...]]:
    D, dh = s["d_model"], s["d_head"]
    out = {"model.embed_tokens.weight": (s["vocab"], D), "model.norm.weight": (D,)}
    for l in range(s["layers"]):
        p = f"model.layers.{l}."
        out.update({
            p + "self_attn.q_proj.weight": (s["heads"] * dh, D), p + "self_attn.k_proj.weight": (s["kv_heads"] * dh, D),
            p + "self_attn.v_proj.weight": (s["kv_heads"] * dh, D), p + "self_attn.o_proj.weight": (D, s["heads"] * dh),
            p + "mlp.gate_proj.weight": (s["d_mlp"], D), p + "mlp.up_proj.weight": (s["d_mlp"], D),
            p + "mlp.down_proj.weight": (D, s["d_mlp"]),
            p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
        })
    return out


def write_checkpoint(path: Path, s: dict) -> int:
    """A random bf16 checkpoint, written one tensor at a time; returns the file size."""
    shapes = tensor_shapes(s)
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    with open(path / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            w = (rng.standard_normal(shape, dtype=np.float32) * (0.02 if len(shape) == 2 else 1.0)).astype(np.float32)
            if len(shape) == 1:
                w = 1.0 + 0.1 * w
            f.write((w.view(np.uint32) >> 16).astype("<u2").tobytes())  # bf16: the top 16 bits
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": s["d_model"],
        "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
        "head_dim": s["d_head"], "intermediate_size": s["d_mlp"], "vocab_size": s["vocab"],
        "max_position_embeddings": s["ctx"], "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "hidden_act": "silu",
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    }
    (path / "config.json").write_text(json.dumps(config))
    return (path / "model.safetensors").stat().st_size


def child(path: str, dtype: str) -> None:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    import circuitalg as ca

    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    model = ca.load(path, dtype=dtype)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(v.nbytes for k, v in model.params.items() if not k.startswith("blocks.") or ".attn." not in k)
    params += sum(getattr(model.head_weights, f).nbytes for f in ("W_Q", "W_K", "W_V", "W_O"))
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "after_import_rss": imported, "start_rss": base,
                      "model_bytes": params, "name": model.name}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--layers", type=int, default=SHAPES["layers"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dtype)
        return
    s = {**SHAPES, "layers": args.layers}
    with tempfile.TemporaryDirectory() as tmp:
        size = write_checkpoint(Path(tmp), s)
        out = subprocess.run([sys.executable, __file__, "--child", tmp, "--dtype", args.dtype],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    gb = 2**30
    extra = (r["peak_rss"] - r["after_import_rss"] - r["model_bytes"]) / r["model_bytes"]
    print(f"SmolLM2-135M shapes ({s['layers']} layers x {s['heads']} heads / {s['kv_heads']} KV, d_model {s['d_model']}, "
          f"vocab {s['vocab']}), bf16 file {size / gb:.3f} GiB, loaded as {args.dtype}")
    print(f"  load time        {r['seconds']:.2f} s")
    print(f"  model parameters {r['model_bytes'] / gb:.3f} GiB (W_K/W_V stored once per KV head, the view repeats them)")
    print(f"  peak RSS         {r['peak_rss'] / gb:.3f} GiB ({r['after_import_rss'] / gb:.3f} GiB after import)")
    print(f"  above the model  {extra:.2f} model copies held at the peak (the criterion: at most 1)")


if __name__ == "__main__":
    main()
