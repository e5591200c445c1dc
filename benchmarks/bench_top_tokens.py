"""``top_tokens`` on a GPT-2-small full OV circuit ``W_U W_O W_V W_E`` (50,257 x 50,257), against
a blocked float64 brute force that evaluates every entry.

Random float32 weights of GPT-2-small shapes (N(0, 0.02), as GPT-2 is initialised); the OV
circuit of one head. Times ``ca.top_tokens(ov, k)`` from cold caches (its factored SVD included)
and warm, then the brute force (row blocks of ``U S`` times ``Vᵀ`` in float64, the top ``k`` of
each block merged), and checks that both give the same entries in the same order.

Usage: ``python benchmarks/bench_top_tokens.py [--k 20] [--by value|abs]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import circuitalg as ca

V, D, DH = 50257, 768, 64


def brute_force(L: np.ndarray, R: np.ndarray, k: int, by_abs: bool, block: int = 512) -> list[tuple[int, int]]:
    """Every entry of ``L @ R`` in float64, block by block; the top ``k`` (ties by row, col)."""
    vals, ii, jj = np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    for s in range(0, L.shape[0], block):
        b = L[s:s + block] @ R
        b = np.abs(b) if by_abs else b
        top = np.argpartition(-b.ravel(), k - 1)[:k]
        r, c = np.unravel_index(top, b.shape)
        vals, ii, jj = np.concatenate([vals, b[r, c]]), np.concatenate([ii, r + s]), np.concatenate([jj, c])
        keep = np.lexsort((jj, ii, -vals))[:k]
        vals, ii, jj = vals[keep], ii[keep], jj[keep]
    return list(zip(ii.tolist(), jj.tolist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--by", default="value", choices=["value", "abs"])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    f32 = lambda *shape: (0.02 * rng.standard_normal(shape, dtype=np.float32))  # noqa: E731
    resid, head, vocab = ca.Space("resid", D), ca.Space("L0H0", DH), ca.Space("vocab", V)
    W_E, W_U = ca.Dense(f32(D, V), vocab, resid, "W_E"), ca.Dense(f32(V, D), resid, vocab, "W_U")
    W_V, W_O = ca.Dense(f32(DH, D), resid, head, "W_V"), ca.Dense(f32(D, DH), head, resid, "W_O")
    ov = W_U @ W_O @ W_V @ W_E
    t = time.perf_counter()
    got = ca.top_tokens(ov, args.k, by=args.by)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    ca.top_tokens(ov, args.k, by=args.by)
    warm = time.perf_counter() - t
    U, S, Vh = ca.svd(ov)
    t = time.perf_counter()
    ref = brute_force(np.asarray(U * S, dtype=np.float64), np.asarray(Vh, dtype=np.float64), args.k, args.by == "abs")
    brute = time.perf_counter() - t
    same = [(e.row, e.col) for e in got] == ref
    print(f"top_tokens(k={args.k}, by={args.by}) on a {V} x {V} OV circuit (float32 GPT-2-small shapes):")
    print(f"  circuitalg  {cold:.2f} s cold (factored SVD included), {warm:.2f} s warm")
    print(f"  brute force {brute:.2f} s (every entry in float64, blocks of 512 rows)")
    print(f"  same {args.k} entries in the same order: {same}; largest {got[0].value:.6g}")
    if not same:
        raise SystemExit("top_tokens disagrees with the brute force")


if __name__ == "__main__":
    main()
