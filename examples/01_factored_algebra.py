"""Factored algebra on GPT-2-sized weights: typed maps, lazy paths, exact spectra.

Builds random weights with GPT-2-small shapes (d_vocab 50257, d_model 768, d_head 64),
composes one head's full OV circuit W_U W_O W_V W_E (a 50257 x 50257 map that is never
built), and computes its singular values, Frobenius norm, eigenvalues and copying score
from small factors; then checks a few numbers against an independent numpy computation.

Run: ``python examples/01_factored_algebra.py [--vocab 50257]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import circuitalg as ca


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--d-head", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    dv, dm, dh = args.vocab, args.d_model, args.d_head
    vocab, resid, head = ca.Space("vocab", dv), ca.Space("resid", dm), ca.Space("L0H0", dh)

    # column-vector convention: a map X -> Y holds a (Y.dim, X.dim) matrix
    W_E = ca.Dense(rng.standard_normal((dm, dv)) / np.sqrt(dm), vocab, resid, "W_E")
    W_U = ca.Dense(rng.standard_normal((dv, dm)) / np.sqrt(dm), resid, vocab, "W_U")
    W_V = ca.Dense(rng.standard_normal((dh, dm)) / np.sqrt(dm), resid, head, "W_V")
    W_O = ca.Dense(rng.standard_normal((dm, dh)) / np.sqrt(dh), head, resid, "W_O")

    full_ov = W_U @ W_O @ W_V @ W_E
    print(f"full OV circuit : {full_ov.symbol}   {full_ov.domain} -> {full_ov.codomain}")
    print(f"  LaTeX         : {ca.latex(full_ov)}")
    print(f"  rank bound    : {full_ov.rank_bound}")
    print(f"  method        : {ca.plan(full_ov).detail}")
    print(f"  dense size    : {dv * dv * 8 / 1e9:.1f} GB (never built)")

    t0 = time.perf_counter()
    s = full_ov.singular_values()
    t_sv = time.perf_counter() - t0
    print(f"  top singular values: {np.array2string(s[:5], precision=4)}  ({t_sv:.2f} s, incl. W_E/W_U factors)")
    print(f"  Frobenius norm: {full_ov.norm():.6f}")
    lam = full_ov.eigenvalues()
    copying = float(np.sum(lam.real) / np.sum(np.abs(lam)))
    print(f"  copying score sum(λ)/sum|λ| = {copying:+.4f} (random weights: near 0)")

    # an independent check: QR of the two 50257 x 64 halves and an SVD of the core
    _, r_left = np.linalg.qr(W_U.array @ W_O.array)
    _, r_right = np.linalg.qr(W_E.array.T @ W_V.array.T)
    ref = np.linalg.svd(r_left @ r_right.T, compute_uv=False)
    print(f"  max relative difference from an independent QR reference: {np.max(np.abs(s - ref) / ref):.1e}")

    # a transpose is pushed to the leaves; mismatched spaces are a clear error
    print(f"  transpose     : {full_ov.T.symbol}")
    try:
        W_E @ W_U @ W_E @ W_V
    except ca.SpaceMismatchError as err:
        print(f"  a typo caught : {err}")

    # positions x residual stream: a head as A ⊗ W_OV, with the Kronecker structure kept
    pos = ca.Space("pos", 16)
    A = ca.Dense(np.tril(np.ones((16, 16))) / np.arange(1, 17)[:, None], pos, pos, "A")
    head_map = ca.kron(A, W_O @ W_V)
    print(f"head as A ⊗ W_OV: {head_map.symbol}  {head_map.shape}; top singular value "
          f"{head_map.singular_values(k=1)[0]:.4f} = {A.singular_values(k=1)[0] * (W_O @ W_V).singular_values(k=1)[0]:.4f}")


if __name__ == "__main__":
    main()
