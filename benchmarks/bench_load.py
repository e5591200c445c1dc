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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llama_checkpoint import llama_shapes, write_bf16_checkpoint

SHAPES = dict(layers=30, heads=9, kv_heads=3, d_model=576, d_head=64, d_mlp=1536, vocab=49152, ctx=2048)


def write_checkpoint(path: Path, s: dict) -> int:
    """A random bf16 checkpoint of shapes ``s`` (tied embeddings, as SmolLM2); returns the file size."""
    shapes = llama_shapes(s["layers"], s["heads"], s["kv_heads"], s["d_model"], s["d_head"], s["d_mlp"], s["vocab"],
                          tied=True)
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": s["d_model"],
        "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
        "head_dim": s["d_head"], "intermediate_size": s["d_mlp"], "vocab_size": s["vocab"],
        "max_position_embeddings": s["ctx"], "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "hidden_act": "silu",
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    }
    return write_bf16_checkpoint(path, shapes, config)


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
