"""Wall time and peak RSS of ``circuitalg report`` on random real-size checkpoints.

Writes a random float32 Hugging Face checkpoint (``model.safetensors`` + ``config.json``, written
with numpy, no torch) of one of these shapes to a temporary directory and runs the command in a
child process, printing its stage timings, the wall time and the child's peak RSS:

- ``gpt2-small``: GPT-2 small (12 layers x 12 heads, d_model 768, vocab 50,257, n_ctx 1024);
- ``smollm2``: a Llama-architecture model of SmolLM2-135M's shapes (30 layers, 9 query / 3 KV
  heads, d_model 576, d_head 64, d_mlp 1536, vocab 49,152);
- ``pythia-70m``: a GPT-NeoX model of Pythia-70M's shapes (6 layers x 8 heads, d_model 512,
  vocab 50,304, partial rotary, parallel blocks);
- ``qwen2-0.5b``: a Qwen2 model of Qwen2-0.5B's shapes (24 layers, 14 query / 2 KV heads, d_head 64,
  d_model 896, d_mlp 4864, vocab 151,936, q/k/v biases, tied embeddings stored once as
  ``model.embed_tokens.weight``; the config is Qwen2-0.5B's ``config.json``);
- ``gemma3-270m``: Gemma-3-270M's shapes (18 layers, 4 query / 1 KV heads, d_head 256, d_model 640,
  d_mlp 2048, vocab 262,144, sliding window 512 on five of every six layers, q/k norms, sandwich
  norms, tied embeddings), a ``gemma3_text`` checkpoint.

The checkpoints are float32 (the real models are stored in bfloat16: the same shapes, half the file).

Usage: ``python benchmarks/bench_report.py [--model gpt2-small] [--extra "--no-figures"] [--keep DIR] [--ckpt DIR]``
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from llama_checkpoint import llama_shapes


def _gpt2(d: int = 768, L: int = 12, H: int = 12, V: int = 50257, ctx: int = 1024) -> tuple[dict, dict]:
    t = {"wte.weight": (V, d), "wpe.weight": (ctx, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for l in range(L):
        p = f"h.{l}."
        t.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
                  p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
                  p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
                  p + "mlp.c_fc.weight": (d, 4 * d), p + "mlp.c_fc.bias": (4 * d,),
                  p + "mlp.c_proj.weight": (4 * d, d), p + "mlp.c_proj.bias": (d,)})
    cfg = {"model_type": "gpt2", "n_layer": L, "n_head": H, "n_embd": d, "vocab_size": V, "n_positions": ctx,
           "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}
    return t, cfg


def _smollm2() -> tuple[dict, dict]:
    D, L, H, KV, dh, F, V = 576, 30, 9, 3, 64, 1536, 49152
    t = llama_shapes(L, H, KV, D, dh, F, V, tied=True)
    cfg = {"model_type": "llama", "hidden_size": D, "num_hidden_layers": L, "num_attention_heads": H,
           "num_key_value_heads": KV, "head_dim": dh, "intermediate_size": F, "vocab_size": V,
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "hidden_act": "silu",
           "tie_word_embeddings": True}
    return t, cfg


def _pythia() -> tuple[dict, dict]:
    D, L, H, V = 512, 6, 8, 50304
    t = {"gpt_neox.embed_in.weight": (V, D), "embed_out.weight": (V, D), "gpt_neox.final_layer_norm.weight": (D,),
         "gpt_neox.final_layer_norm.bias": (D,)}
    for l in range(L):
        p = f"gpt_neox.layers.{l}."
        t.update({p + "attention.query_key_value.weight": (3 * D, D), p + "attention.query_key_value.bias": (3 * D,),
                  p + "attention.dense.weight": (D, D), p + "attention.dense.bias": (D,),
                  p + "mlp.dense_h_to_4h.weight": (4 * D, D), p + "mlp.dense_h_to_4h.bias": (4 * D,),
                  p + "mlp.dense_4h_to_h.weight": (D, 4 * D), p + "mlp.dense_4h_to_h.bias": (D,)})
        for n in ("input_layernorm", "post_attention_layernorm"):
            t.update({p + n + ".weight": (D,), p + n + ".bias": (D,)})
    cfg = {"model_type": "gpt_neox", "hidden_size": D, "num_hidden_layers": L, "num_attention_heads": H,
           "intermediate_size": 4 * D, "vocab_size": V, "max_position_embeddings": 2048, "rotary_pct": 0.25,
           "rotary_emb_base": 10000, "use_parallel_residual": True, "hidden_act": "gelu", "layer_norm_eps": 1e-5}
    return t, cfg


def _qwen2_05b() -> tuple[dict, dict]:
    D, L, H, KV, dh, F, V = 896, 24, 14, 2, 64, 4864, 151936
    t = llama_shapes(L, H, KV, D, dh, F, V, tied=True)
    for l in range(L):  # Qwen2's q/k/v biases
        p = f"model.layers.{l}.self_attn."
        t.update({p + "q_proj.bias": (H * dh,), p + "k_proj.bias": (KV * dh,), p + "v_proj.bias": (KV * dh,)})
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": D, "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": KV, "intermediate_size": F, "vocab_size": V,
           "max_position_embeddings": 32768, "max_window_layers": 24, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
           "hidden_act": "silu", "sliding_window": 32768, "use_sliding_window": False, "tie_word_embeddings": True,
           "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16"}
    return t, cfg


def _gemma3_270m() -> tuple[dict, dict]:
    D, L, H, KV, dh, F, V, W = 640, 18, 4, 1, 256, 2048, 262144, 512
    types = ["full_attention" if (l + 1) % 6 == 0 else "sliding_attention" for l in range(L)]
    t = llama_shapes(L, H, KV, D, dh, F, V, tied=True)
    for l in range(L):  # sandwich norms and per-head q/k norms
        p = f"model.layers.{l}."
        t.update({p + "pre_feedforward_layernorm.weight": (D,), p + "post_feedforward_layernorm.weight": (D,),
                  p + "self_attn.q_norm.weight": (dh,), p + "self_attn.k_norm.weight": (dh,)})
    cfg = {"model_type": "gemma3_text", "hidden_size": D, "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": KV, "head_dim": dh, "intermediate_size": F,
           "vocab_size": V, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
           "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256, "sliding_window": W,
           "layer_types": types, "attn_logit_softcapping": None, "final_logit_softcapping": None,
           "tie_word_embeddings": True, "architectures": ["Gemma3ForCausalLM"], "rope_local_base_freq": 10000.0,
           "sliding_window_pattern": 6}
    return t, cfg


MODELS = {"gpt2-small": _gpt2, "smollm2": _smollm2, "pythia-70m": _pythia, "qwen2-0.5b": _qwen2_05b,
          "gemma3-270m": _gemma3_270m}


def write_checkpoint(path: Path, model: str, seed: int = 0) -> None:
    """A random float32 checkpoint of ``model``'s shapes (GPT-2-style initialisation: N(0, 0.02))."""
    from safetensors.numpy import save_file

    shapes, cfg = MODELS[model]()
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            # norm weights 1 (Gemma's RMSNorm multiplies by 1 + w: stored 0), biases 0
            one = name.endswith("weight") and ("ln" in name or "norm" in name) and not cfg["model_type"].startswith("gemma")
            tensors[name] = (np.ones(shape) if one else np.zeros(shape)).astype(np.float32)
        else:
            tensors[name] = (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-small", choices=sorted(MODELS))
    ap.add_argument("--extra", default="", help="extra options for circuitalg report")
    ap.add_argument("--keep", help="write the report into this folder (kept) instead of a temporary one")
    ap.add_argument("--ckpt", help="keep the checkpoint in this folder: written there if it holds none, else reused "
                                   "(for repeated or paired runs)")
    ap.add_argument("--write-only", action="store_true", help="write the checkpoint (--ckpt) and stop")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else Path(tmp) / args.model
        if not (ckpt / "config.json").exists():
            ckpt.mkdir(parents=True, exist_ok=True)
            write_checkpoint(ckpt, args.model)
        if args.write_only:
            print(f"wrote {ckpt}")
            return
        model_type = json.loads((ckpt / "config.json").read_text())["model_type"]
        cmd = [sys.executable, "-m", "circuitalg", "report", str(ckpt), "--out", args.keep or str(Path(tmp) / "out"),
               *shlex.split(args.extra)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        sys.stdout.write(proc.stderr)
        if proc.returncode:
            sys.stdout.write(proc.stdout)
            raise SystemExit(f"circuitalg report exited {proc.returncode}")
    print(f"{args.model} (model_type {model_type}): circuitalg report {args.extra} -> wall {wall:.1f} s, "
          f"peak RSS {peak:.2f} GiB ({peak * 2**30 / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
