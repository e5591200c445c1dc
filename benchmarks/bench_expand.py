"""Path expansion at GPT-2-small shapes: how long building and iterating the lazy PathSum takes.

Usage::

    python benchmarks/bench_expand.py [--max-heads 2]

The criterion (issue 3): ``expand`` at order 2 (1 + 144 + 9,504 token paths) builds lazily in
under a second and is iterable. Weights are random float32 (their values do not matter here).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import circuitalg as ca


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-heads", type=int, default=2)
    args = parser.parse_args()
    cfg = ca.TransformerConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_vocab=50257, n_ctx=1024,
                               normalization=None)
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s, dtype=np.float32) for k, s in ca.param_shapes(cfg).items()}
    model = ca.Transformer(cfg, params, dtype=np.float32, name="gpt2-small-shapes")

    t0 = time.perf_counter()
    paths = ca.expand(model, max_heads=args.max_heads)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_embed = sum(1 for _ in paths.terms(source="embed"))
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_all = sum(1 for _ in paths)
    t_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    weights = [p.weight for p in paths.terms(source="embed", n_heads=args.max_heads)]
    t_weights = time.perf_counter() - t0
    print(f"expand(max_heads={args.max_heads}) built in {t_build * 1e3:.2f} ms")
    print(f"iterated {n_embed} token paths in {t_embed:.3f} s; all {n_all} terms (every source) in {t_all:.3f} s")
    print(
        f"built all {len(weights)} lazy {args.max_heads}-head path weights in {t_weights:.3f} s; "
        f"e.g. {weights[0].symbol}, shape {weights[0].shape} (never materialised)"
    )


if __name__ == "__main__":
    main()
