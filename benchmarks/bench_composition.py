"""All-pairs composition scores at GPT-2-small shapes: circuitalg against TransformerLens.

Usage::

    python benchmarks/bench_composition.py [--kind k] [--repeats 3] [--no-tl]

Builds one random attention-only model with GPT-2-small attention shapes (12 layers x 12
heads, d_model 768, d_head 64; TransformerLens's own initialisation when it is installed),
then times, in the same process:

- ``ca.composition_scores(model, kind)`` (float64), with its peak allocation measured by
  ``tracemalloc`` (numpy reports its buffers there);
- ``HookedTransformer.all_composition_scores(KIND)`` under ``torch.no_grad()`` (float32),
  with the growth of the process's peak resident memory.

Both sides are timed ``--repeats`` times; the script prints two ratios: first call against first
call (cold: TransformerLens's first call also pays for touching about 8 GB of fresh memory) and
best run against best run (warm).

The criterion (issue 4): circuitalg at least 20x faster, under 1 GB peak, and equal to
TransformerLens to 1e-5. Without transformer-lens (``pip install transformer-lens==3.9.0``;
4.x has no HookedTransformer) only circuitalg's figures are printed.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

import circuitalg as ca

CFG = dict(n_layers=12, n_heads=12, d_model=768, d_head=64, d_vocab=1000, n_ctx=1024)


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", default="k", choices=["q", "k", "v"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-tl", action="store_true", help="skip TransformerLens")
    args = parser.parse_args()

    tl_model = None
    if not args.no_tl:
        try:
            import torch
            from transformer_lens import HookedTransformer, HookedTransformerConfig

            torch.manual_seed(0)
            tl_cfg = HookedTransformerConfig(
                n_layers=CFG["n_layers"], n_heads=CFG["n_heads"], d_model=CFG["d_model"], d_head=CFG["d_head"],
                d_vocab=CFG["d_vocab"], n_ctx=CFG["n_ctx"], attn_only=True, normalization_type=None,
                act_fn="gelu",
            )
            tl_model = HookedTransformer(tl_cfg)
            model = ca.Transformer.from_hooked_transformer(tl_model)
        except ImportError as e:
            print(f"TransformerLens not available ({e}); timing circuitalg only.")
    if tl_model is None:
        cfg = ca.TransformerConfig(normalization=None, **CFG)
        rng = np.random.default_rng(0)
        params = {k: 0.02 * rng.standard_normal(s) for k, s in ca.param_shapes(cfg).items()}
        model = ca.Transformer(cfg, params, name="gpt2-small-attention-shapes")

    ours = []
    for _ in range(args.repeats):
        fresh = model.with_params(model.params)  # a new head-weights view: composition parts are cached per view
        tracemalloc.start()
        t0 = time.perf_counter()
        scores = ca.composition_scores(fresh, args.kind)
        ours.append(time.perf_counter() - t0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    t_ours = min(ours)
    print(f"circuitalg composition_scores({args.kind!r}) [12,12,12,12] float64: {t_ours:.3f} s "
          f"(best of {args.repeats}), peak allocation {peak / 1e9:.3f} GB")

    if tl_model is not None:
        import torch

        rss0 = rss_gb()
        theirs = []
        with torch.no_grad():
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ref = tl_model.all_composition_scores(args.kind.upper())
                theirs.append(time.perf_counter() - t0)
        t_tl = min(theirs)
        cold_ours, cold_tl = ours[0], theirs[0]
        ref = ref.double().numpy()
        print(f"TransformerLens all_composition_scores({args.kind.upper()!r}) float32: {t_tl:.3f} s "
              f"(best of {args.repeats}; runs {', '.join(f'{t:.1f}' for t in theirs)} s), "
              f"peak RSS grew by {max(rss_gb() - rss0, 0):.2f} GB")
        print(f"speed-up, first call each (cold: allocation and caches included): {cold_tl / cold_ours:.1f}x; "
              f"best of {args.repeats} each (warm): {t_tl / t_ours:.1f}x; max |difference|: "
              f"{np.abs(scores - ref).max():.2e}")


if __name__ == "__main__":
    main()
