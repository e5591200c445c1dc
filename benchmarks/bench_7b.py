"""Full-OV spectra or all-pairs composition scores of every head of a Llama-2-7B-shaped bf16
checkpoint, streamed from disk.

Writes a random bf16 Hugging Face checkpoint of Llama-2-7B shapes (32 layers x 32 heads, d_model
4096, d_head 128, d_mlp 11008, vocab 32,000: 13.5 GB with the MLPs) into a temporary folder,
streaming each tensor to disk (never held whole; never committed), then runs
``ca.stream_full_ov`` (``--task full-ov``) or ``ca.stream_composition`` (``--task composition``: Q-, K- and
V-composition of every pair of heads) on it in a fresh child process within ``--budget-gb`` and reports the plan
(FLOPs, peak array memory), the wall time and the child's peak RSS. ``--layers N`` writes and
analyses only the first N layers (the per-layer cost is the same for every layer);
``--workers K`` runs the layers on a local dask cluster of K worker processes.

Usage: ``python benchmarks/bench_7b.py [--task full-ov|composition] [--layers 32] [--budget-gb 8] [--workers 0]
[--dir DIR]``
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

import numpy as np
from llama_checkpoint import llama_shapes, write_bf16_checkpoint

SHAPES = dict(layers=32, heads=32, kv_heads=32, d_model=4096, d_head=128, d_mlp=11008, vocab=32000)


def write(path: Path, s: dict) -> int:
    """The checkpoint (untied, as Llama 2), one row block at a time; returns its size in bytes."""
    shapes = llama_shapes(s["layers"], s["heads"], s["kv_heads"], s["d_model"], s["d_head"], s["d_mlp"], s["vocab"],
                          tied=False)
    config = {"model_type": "llama", "hidden_size": s["d_model"], "num_hidden_layers": s["layers"],
              "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"], "intermediate_size": s["d_mlp"],
              "vocab_size": s["vocab"], "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu",
              "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    return write_bf16_checkpoint(path, shapes, config)


def child(path: str, budget: int, workers: int, task: str) -> None:
    import circuitalg as ca

    client = cluster = None
    if workers:
        import distributed

        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
    t = time.perf_counter()
    log = lambda m: print(m, flush=True)
    if task == "composition":
        res = ca.stream_composition(path, budget_bytes=budget, client=client, log=log)
        heads = int(res.scores["k"].shape[0] * res.scores["k"].shape[1])
        summary = {"max_k_score": float(res.scores["k"].max())}
    else:
        res = ca.stream_full_ov(path, budget_bytes=budget, client=client, log=log)
        heads = int(res.copying.size)
        summary = {"max_copying": float(np.abs(res.copying).max())}
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if client is not None:
        workers_peak = max(client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024).values())
        client.close()
        cluster.close()
    else:
        workers_peak = 0
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "workers_peak_rss": workers_peak, "heads": heads,
                      **summary, "flops": res.plan.flops, "plan_peak": res.plan.peak_bytes}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["full-ov", "composition"], default="full-ov")
    ap.add_argument("--layers", type=int, default=SHAPES["layers"])
    ap.add_argument("--budget-gb", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=0, help="dask worker processes (0: in process)")
    ap.add_argument("--dir", help="write the checkpoint here (kept) instead of a temporary folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    budget = int(args.budget_gb * 2**30)
    if args.child:
        child(args.child, budget, args.workers, args.task)
        return
    s = {**SHAPES, "layers": args.layers}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.dir or tmp)
        path.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        size = write(path, s)
        print(f"wrote {size / 1e9:.1f} GB of bf16 weights ({args.layers} layers) in {time.perf_counter() - t:.0f} s")
        out = subprocess.run([sys.executable, __file__, "--child", str(path), "--budget-gb", str(args.budget_gb),
                              "--workers", str(args.workers), "--task", args.task], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        lines = out.stdout.strip().splitlines()
        print("\n".join(lines[:-1]))
        r = json.loads(lines[-1])
    gib = 2**30
    print(f"{args.task}, {r['heads']} heads: {r['seconds']:.0f} s, {r['flops'] / r['seconds'] / 1e9:.0f} GFLOP/s; peak RSS "
          f"{r['peak_rss'] / gib:.2f} GiB" + (f" (workers up to {r['workers_peak_rss'] / gib:.2f} GiB each)"
                                               if args.workers else "")
          + f"; planned array peak {r['plan_peak'] / gib:.2f} GiB within a {args.budget_gb:g} GiB budget")


if __name__ == "__main__":
    main()
