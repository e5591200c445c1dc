"""Full-OV singular values and copying eigenvalues for all heads at GPT-2-small shapes.

Reports, in one run, circuitalg against a baseline computed head by head:

- TransformerLens's ``FactoredMatrix`` when ``transformer_lens`` is installed (weights
  converted to its row-vector layout): ``(W_E @ OV @ W_U).S`` and ``.eigenvalues``, head by head
  and batched over the timed heads (as ``model.OV`` is); the speedup is against the faster;
- otherwise the obvious per-head factored computation in numpy: ``A = W_U W_O`` and
  ``B = W_V W_E`` (``50257 x 64`` each), thin QR of both and an SVD of the 64 x 64 core,
  and ``eig(B A)`` for the eigenvalues.

The baseline has no shared work, so its cost is linear in the number of heads: by default
it is timed on ``--baseline-heads`` heads and scaled to all heads (the scaling is printed);
``--baseline-heads 144`` times every head. circuitalg is timed on all heads from cold
caches (fresh leaf objects), so its figure includes the two large decompositions. Both sides are
warmed up untimed first (two heads each): TransformerLens's first calls in a process take about
twice as long as later ones, and timing them would overstate the speedup.

Two weight sets are timed, with the same heads (``--embeddings`` picks one): **tied**, GPT-2-small's
own structure (its checkpoint ties ``lm_head`` to ``wte``; ``W_U`` is stored as a loader folds it,
``W_Eᵀ diag(g)`` with centred rows, and declared tied as ``ca.load`` declares it, so circuitalg's time
includes verifying the tie), and **untied**, an independent ``W_U``.

The eigenvalues are also timed through ``ca.eigenvalues_many`` (all heads at once: the cores from one
product with every ``W_O`` side by side, stacked leaf norms and eigensolves), circuitalg's counterpart
of TransformerLens's batched form.

A last line times both spectra of every head in one pass (singular values, then eigenvalues,
from cold caches: the eigenvalues then reuse the leaf norms that the singular values' factors
give), against the sum of the baseline's faster times for each. The eigenvalues' arithmetic of
both sides is printed after it (:func:`eigen_flops`): its ratio bounds the speedup at equal
arithmetic speed.

Usage: ``python benchmarks/bench_full_ov.py [--layers 12 --heads 12 --baseline-heads 12 --embeddings both]``
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings

import numpy as np

import circuitalg as ca
from circuitalg.testing import match_spectra

D_VOCAB, D_MODEL, D_HEAD = 50257, 768, 64


def make_weights(n_heads: int, seed: int = 0, dtype: str = "float32", embeddings: str = "untied") -> dict:
    """Random weights at GPT-2-small shapes, ``W_E`` in a checkpoint's memory layout (the transpose
    of a row-major ``vocab x d_model`` array, as ``ca.load`` keeps it). ``embeddings="tied"``: ``W_U`` is GPT-2's tied
    unembedding as a loader folds it, ``W_Eᵀ diag(g)`` with its rows centred (``g`` the final
    LayerNorm's weight, drawn around 1), stored as its own array in ``dtype``; the other weights
    are the same draws as untied."""
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(D_MODEL)

    def draw(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(dtype)

    w = {
        "W_E": draw(D_VOCAB, D_MODEL).T,  # a checkpoint's layout: wte is vocab x d_model, row-major
        "W_U": draw(D_VOCAB, D_MODEL),
        "W_V": [draw(D_HEAD, D_MODEL) for _ in range(n_heads)],
        "W_O": [draw(D_MODEL, D_HEAD) for _ in range(n_heads)],
        "tied": embeddings == "tied",
    }
    if w["tied"]:
        g = (1 + 0.1 * rng.standard_normal(D_MODEL)).astype(dtype)
        U = w["W_E"].T * g
        U -= U.mean(axis=1, keepdims=True)
        w["W_U"] = U
    return w


def circuitalg_maps(w: dict) -> list[ca.LinearMap]:
    """Fresh leaves (cold caches) and every head's full OV circuit W_U W_O W_V W_E. Tied weights
    are declared tied (as the model loader does); circuitalg verifies the tie on first use."""
    vocab, resid = ca.Space("vocab", D_VOCAB), ca.Space("resid", D_MODEL)
    W_E = ca.Dense(w["W_E"], vocab, resid, "W_E")
    W_U = ca.Dense(w["W_U"], resid, vocab, "W_U")
    if w["tied"]:
        W_U = ca.declare_tied(W_U, W_E)
    out = []
    for h, (wv, wo) in enumerate(zip(w["W_V"], w["W_O"])):
        space = ca.Space(f"H{h}", D_HEAD)
        out.append(W_U @ ca.Dense(wo, space, resid, f"W_O{h}") @ ca.Dense(wv, resid, space, f"W_V{h}") @ W_E)
    return out


def baseline_numpy(w: dict, heads: range, what: str) -> list[np.ndarray]:
    res = []
    for h in heads:
        A = w["W_U"] @ w["W_O"][h]
        B = w["W_V"][h] @ w["W_E"]
        if what == "svd":
            _, ra = np.linalg.qr(A)
            _, rb = np.linalg.qr(B.T)
            res.append(np.linalg.svd(ra @ rb.T, compute_uv=False))
        else:
            res.append(np.linalg.eigvals(B @ A))
    return res


def baseline_transformer_lens(w: dict, heads: range, what: str) -> list[np.ndarray]:
    import torch
    from transformer_lens import FactoredMatrix

    res = []
    with torch.no_grad():
        W_E = torch.from_numpy(np.ascontiguousarray(w["W_E"].T))  # [d_vocab, d_model]
        W_U = torch.from_numpy(np.ascontiguousarray(w["W_U"].T))  # [d_model, d_vocab]
        for h in heads:
            W_V = torch.from_numpy(np.ascontiguousarray(w["W_V"][h].T))  # [d_model, d_head]
            W_O = torch.from_numpy(np.ascontiguousarray(w["W_O"][h].T))  # [d_head, d_model]
            full = W_E @ FactoredMatrix(W_V, W_O) @ W_U
            res.append((full.S if what == "svd" else full.eigenvalues).numpy())
    return res


def baseline_transformer_lens_batched(w: dict, heads: range, what: str) -> list[np.ndarray]:
    """The same, with all ``heads`` in one ``FactoredMatrix`` with a head dimension (as ``model.OV``
    is): one batched product instead of a Python loop (faster for the eigenvalues; it holds two
    ``len(heads) x d_vocab x d_head`` tensors)."""
    import torch
    from transformer_lens import FactoredMatrix

    with torch.no_grad():
        W_E = torch.from_numpy(np.ascontiguousarray(w["W_E"].T))
        W_U = torch.from_numpy(np.ascontiguousarray(w["W_U"].T))
        W_V = torch.from_numpy(np.stack([np.ascontiguousarray(w["W_V"][h].T) for h in heads]))
        W_O = torch.from_numpy(np.stack([np.ascontiguousarray(w["W_O"][h].T) for h in heads]))
        full = W_E @ FactoredMatrix(W_V, W_O) @ W_U
        return list((full.S if what == "svd" else full.eigenvalues).numpy())


def eigen_flops(n_heads: int, tied: bool = False) -> dict[str, float]:
    """Floating-point operations (a multiply-add counts 2) of the full-OV eigenvalues of every head.

    circuitalg: the product ``W_E W_U`` (``2 d² V``), the two float32 Gram matrices of its precision
    check (``d² V`` each: symmetric, half a product) and per head ``W_V (W_E W_U) W_O``; with tied
    embeddings only ``W_E``'s Gram matrix (``W_E W_U`` and ``W_U``'s Gram matrix follow from it in
    ``O(d³)``; the tie's verification is ``O(V d)``). The baseline
    (TransformerLens's batched ``FactoredMatrix``): ``W_E W_V`` and ``W_O W_U`` for every head
    (``2 V d d_head`` each) and ``B A`` (``2 d_head² V``). The eigenproblems themselves are negligible.
    At equal arithmetic speed, the ratio is the largest speedup any implementation of either side
    can show."""
    V, d, dh = D_VOCAB, D_MODEL, D_HEAD
    # tied: W_E's Gram matrix is the product and the check's norms at once
    product, grams = (1.0 * d * d * V, 0.0) if tied else (2.0 * d * d * V, 2.0 * d * d * V)
    heads = n_heads * 2.0 * (dh * d * d + dh * dh * d)
    baseline = n_heads * (2 * 2.0 * V * d * dh + 2.0 * dh * dh * V)
    return {"circuitalg": product + grams + heads, "circuitalg_without_check": product + heads, "baseline": baseline}


def max_rel_diff(what: str, ours: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """The largest difference between circuitalg's and the baseline's spectra of a head, relative
    to the baseline's largest value (eigenvalues matched pairwise first)."""
    if what == "svd":
        return max(float(np.max(np.abs(o - np.sort(r)[::-1][: len(o)])) / np.max(r)) for o, r in zip(ours, ref))
    return max(float(np.max(np.abs(np.subtract(*match_spectra(o, np.asarray(r, complex))[:2]))) / np.max(np.abs(r)))
               for o, r in zip(ours, ref))


def run_task(w: dict, n: int, nb: int, kind: str) -> dict:
    """Singular values, eigenvalues and both spectra of every head on the weights ``w``: circuitalg
    against the baseline (``kind``), in one process."""
    base_fn = baseline_transformer_lens if kind == "transformer_lens" else baseline_numpy
    report: dict = {}
    for what in ("svd", "eig"):
        # Warm both sides up untimed first: the baseline's first calls in a process are about twice
        # as slow as its later ones (allocator and thread-pool start-up), which would flatter us.
        base_fn(w, range(min(2, n)), what)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ca.PrecisionWarning)
            [m.singular_values() if what == "svd" else m.eigenvalues() for m in circuitalg_maps(w)[:2]]
        maps = circuitalg_maps(w)  # fresh leaves: cold caches, so the large decompositions are timed
        with warnings.catch_warnings(record=True) as caught:  # counted, not printed 144 times
            warnings.simplefilter("always", ca.PrecisionWarning)
            t0 = time.perf_counter()
            ours = [m.singular_values() if what == "svd" else m.eigenvalues() for m in maps]
            t_ours = time.perf_counter() - t0
        precision_warnings = sum(issubclass(w.category, ca.PrecisionWarning) for w in caught)
        t0 = time.perf_counter()
        ref = base_fn(w, range(nb), what)
        t_base = (time.perf_counter() - t0) * n / nb
        t_batched = None
        if kind == "transformer_lens":  # TransformerLens's batched form too; the faster one is the baseline
            baseline_transformer_lens_batched(w, range(min(2, n)), what)
            t0 = time.perf_counter()
            baseline_transformer_lens_batched(w, range(nb), what)
            t_batched = (time.perf_counter() - t0) * n / nb
        err = max_rel_diff(what, ours, ref)
        faster = min(t_base, t_batched or t_base)  # the baseline every speedup is against
        report[what] = {
            "circuitalg_s": round(t_ours, 3),
            "baseline_s_all_heads": round(t_base, 2),
            "baseline_batched_s_all_heads": None if t_batched is None else round(t_batched, 2),
            "baseline_faster_s": round(faster, 2),
            "speedup": round(faster / t_ours, 1),
            "max_rel_diff": err,
            "precision_warnings": precision_warnings,
        }
        if what == "eig":  # circuitalg's batched form too (as TransformerLens's batched form): all heads at once
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ca.PrecisionWarning)  # the same as the loop's, counted above
                ca.eigenvalues_many(circuitalg_maps(w)[:2])
                maps = circuitalg_maps(w)
                t0 = time.perf_counter()
                many = ca.eigenvalues_many(maps)
                t_many = time.perf_counter() - t0
            err_many = max_rel_diff(what, many, ref)
            report[what].update({"circuitalg_batched_s": round(t_many, 3), "speedup_batched": round(faster / t_many, 1),
                                 "max_rel_diff_batched": err_many})
    # both spectra of every head, as an analysis computes them (the report: copying eigenvalues and
    # singular values): from cold caches, the eigenvalues reuse the norms the singular values' factors give
    maps = circuitalg_maps(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.PrecisionWarning)  # counted above
        t0 = time.perf_counter()
        for m in maps:
            m.singular_values()
        for m in maps:
            m.eigenvalues()
        t_both = time.perf_counter() - t0
    base_both = report["svd"]["baseline_faster_s"] + report["eig"]["baseline_faster_s"]
    report["both"] = {"circuitalg_s": round(t_both, 3), "baseline_s_all_heads": round(base_both, 2),
                      "speedup": round(base_both / t_both, 1)}
    report["eig_flops"] = eigen_flops(n, w["tied"])
    return report


def print_task(label: str, report: dict) -> None:
    print(f" {label}:")
    for what, name in (("svd", "full-OV singular values"), ("eig", "full-OV eigenvalues")):
        r = report[what]
        batched = r["baseline_batched_s_all_heads"]
        print(
            f"  {name:26s} circuitalg {r['circuitalg_s']:7.2f} s   baseline {r['baseline_s_all_heads']:8.1f} s"
            + ("" if batched is None else f" (batched {batched:.1f} s)")
            + f"   speedup {r['speedup']:6.1f}x (against the faster)"
            + f"   max rel diff {r['max_rel_diff']:.1e}"
            + (f"   ({r['precision_warnings']} PrecisionWarnings: a-priori bound above u^(1/3) of the scale)"
               if r["precision_warnings"] else "")
        )
        if "circuitalg_batched_s" in r:
            print(f"  {'  batched (eigenvalues_many)':26s} circuitalg {r['circuitalg_batched_s']:7.2f} s   "
                  f"speedup {r['speedup_batched']:6.1f}x (against the faster baseline)   "
                  f"max rel diff {r['max_rel_diff_batched']:.1e}")
    b = report["both"]
    print(f"  {'both spectra':26s} circuitalg {b['circuitalg_s']:7.2f} s   "
          f"baseline {b['baseline_s_all_heads']:8.1f} s (the faster form of each)   "
          f"speedup {b['speedup']:6.1f}x")
    f = report["eig_flops"]
    batched = report["eig"]["baseline_batched_s_all_heads"]
    print(f"  eigenvalues' arithmetic: circuitalg {f['circuitalg'] / 1e9:.0f} GFLOP (of which the precision check's "
          f"separate Gram matrices {(f['circuitalg'] - f['circuitalg_without_check']) / 1e9:.0f}), baseline "
          f"{f['baseline'] / 1e9:.0f} GFLOP: at equal GFLOP/s at most {f['baseline'] / f['circuitalg']:.1f}x "
          f"({f['baseline'] / f['circuitalg_without_check']:.1f}x without the check); achieved "
          f"{f['circuitalg'] / report['eig']['circuitalg_s'] / 1e9:.0f} GFLOP/s against the batched baseline's "
          + (f"{f['baseline'] / batched / 1e9:.0f} GFLOP/s" if batched else "(no batched baseline)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--baseline-heads", type=int, default=12)
    ap.add_argument("--baseline", choices=["auto", "numpy", "transformer_lens"], default="auto")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="dtype of the weights, on both sides (checkpoints are float32)")
    ap.add_argument("--embeddings", choices=["both", "tied", "untied"], default="both",
                    help="tied: W_U is GPT-2's folded tied unembedding (GPT-2-small ties its embeddings); "
                         "untied: an independent W_U (as Pythia's); both: one after the other")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.layers * args.heads
    nb = min(args.baseline_heads, n)
    kind = args.baseline
    if kind == "auto":
        try:
            import transformer_lens  # noqa: F401

            kind = "transformer_lens"
        except ImportError:
            kind = "numpy"
    modes = ("tied", "untied") if args.embeddings == "both" else (args.embeddings,)
    report: dict = {"heads": n, "baseline": kind, "baseline_heads_timed": nb, "dtype": args.dtype}
    for mode in modes:
        report[mode] = run_task(make_weights(n, dtype=args.dtype, embeddings=mode), n, nb, kind)
    report["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)
    if args.json:
        print(json.dumps(report))
        return
    print(f"GPT-2-small shapes, {n} heads, {args.dtype} weights; baseline: {kind} ({nb} heads timed, scaled x{n / nb:.1f})")
    for mode in modes:
        print_task({"tied": "tied embeddings (GPT-2-small's W_U: W_E^T with the final LayerNorm folded in)",
                    "untied": "untied embeddings (an independent W_U)"}[mode], report[mode])
    print(f"  peak RSS {report['peak_rss_gb']} GB (all runs' weights included)")


if __name__ == "__main__":
    main()
