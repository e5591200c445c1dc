"""Exact top-k circuit search at GPT-2-small shapes: visited fraction and time.

Usage::

    python benchmarks/bench_circuits.py [--k 10] [--max-heads 3] [--sigma 0.5] [--vocab 50257]

An attention-only model with GPT-2-small shapes (12 layers x 12 heads, d_model 768, d_head 64,
vocab 50,257, 1,024 positions). Weights are Gaussian with a log-normal scale per head
(``--sigma``, the spread of log scales; trained models' heads differ in norm by factors of
several), so that some circuits are stronger than others, as in real models. With
``--sigma 0`` all heads are statistically identical, every path has nearly the same norm
(they concentrate to about 1%), and no bound-based search can prune much: that case is
reported too, honestly.

The criterion (issue 4): with max_heads=3 the search evaluates under 5% of the ~380,000
three-head OV paths (760,320 circuits from two sources and up to three heads) and finishes in
seconds. The top k is exact by construction; the small-model tests check it against brute force.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import circuitalg as ca


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-heads", type=int, default=3)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ov-std", type=float, default=1 / np.sqrt(768),
                    help="std of W_V and W_O entries (default 1/sqrt(d_model): OV maps of gain about 1, "
                         "so three-head paths compete with short ones; 0.02 is GPT-2's init)")
    args = ap.parse_args()
    cfg = ca.TransformerConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_vocab=args.vocab, n_ctx=1024,
                               normalization=None)
    rng = np.random.default_rng(args.seed)
    params = {}
    for name, shape in ca.param_shapes(cfg).items():
        params[name] = 0.02 * rng.standard_normal(shape)
    for l in range(cfg.n_layers):
        for w in ("W_V", "W_O"):
            scale = args.ov_std / 0.02 * np.exp(args.sigma * rng.standard_normal(cfg.n_heads))
            params[f"blocks.{l}.attn.{w}"] *= scale[:, None, None]
    model = ca.Transformer(cfg, params, name="gpt2-small-shapes")
    t0 = time.perf_counter()
    res = ca.top_circuits(model, args.k, args.max_heads, sinks=("unembed",))
    dt = time.perf_counter() - t0
    three = 2 * 220 * 12**3
    print(f"sigma={args.sigma}, ov-std={args.ov_std:.4g}: {res.summary()}")
    print(f"time {dt:.2f} s; evaluated {res.evaluated:,} of {res.total:,} circuits "
          f"({100 * res.evaluated / res.total:.2f}%); {three:,} of them have three heads")
    for c in res.circuits[:5]:
        print("  ", c)


if __name__ == "__main__":
    main()
