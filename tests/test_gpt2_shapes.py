"""GPT-2-small shapes: accuracy against an independent QR reference, memory, factor reuse."""

import json
import subprocess
import sys
import textwrap

import numpy as np

import circuitalg as ca
from circuitalg.linalg import leaf_factor_method
from circuitalg.linalg.factors import Side, gram_factor

SCRIPT = textwrap.dedent(
    """
    import json, numpy as np, circuitalg as ca
    rng = np.random.default_rng(0)
    vocab, resid, head = ca.Space("vocab", 50257), ca.Space("resid", 768), ca.Space("L0H0", 64)
    W_E = ca.Dense(rng.standard_normal((768, 50257)) / 30, vocab, resid, "W_E")
    W_U = ca.Dense(rng.standard_normal((50257, 768)) / 30, resid, vocab, "W_U")
    W_V = ca.Dense(rng.standard_normal((64, 768)) / 30, resid, head, "W_V")
    W_O = ca.Dense(rng.standard_normal((768, 64)) / 30, head, resid, "W_O")
    full_ov = W_U @ W_O @ W_V @ W_E
    s = full_ov.singular_values()
    # independent reference: thin Householder QR of the two 50257 x 64 halves, SVD of the core
    _, r_left = np.linalg.qr(W_U.array @ W_O.array)
    _, r_right = np.linalg.qr(W_E.array.T @ W_V.array.T)
    ref = np.linalg.svd(r_left @ r_right.T, compute_uv=False)
    # this process's own high-water mark: ru_maxrss would also count the parent's peak, which
    # Linux carries across fork and exec (so a test run that used more memory would fail this)
    peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) * 1024
    print(json.dumps({"rel": float(np.max(np.abs(s - ref) / ref)), "n": len(s), "peak": peak}))
    """
)


def test_full_ov_singular_values_at_gpt2_small_shapes() -> None:
    """Singular values of one head's full OV circuit agree with a QR reference to 1e-10
    relative, and the whole process (weights included) peaks under 1.5 GB."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n"] == 64
    assert res["rel"] < 1e-10, res
    assert res["peak"] < 1.5e9, res


def test_outer_factors_are_decomposed_once_and_reused() -> None:
    rng = np.random.default_rng(0)
    vocab, resid = ca.Space("vocab", 600), ca.Space("resid", 48)
    W_E = ca.Dense(rng.standard_normal((48, 600)), vocab, resid, "W_E")
    W_U = ca.Dense(rng.standard_normal((600, 48)), resid, vocab, "W_U")
    heads = []
    for h in range(4):
        hs = ca.Space(f"L0H{h}", 8)
        heads.append(
            (
                ca.Dense(rng.standard_normal((8, 48)), resid, hs, f"W_V{h}"),
                ca.Dense(rng.standard_normal((48, 8)), hs, resid, f"W_O{h}"),
            )
        )
    first_r = None
    for W_V, W_O in heads:
        full_ov = W_U @ W_O @ W_V @ W_E
        s = full_ov.singular_values()
        ref = np.linalg.svd(W_U.array @ W_O.array @ W_V.array @ W_E.array, compute_uv=False)[:8]
        np.testing.assert_allclose(s, ref, rtol=1e-10)
        lam = full_ov.eigenvalues()
        np.testing.assert_allclose(np.sum(lam), np.trace(W_V.array @ W_E.array @ W_U.array @ W_O.array), rtol=1e-10)
        if first_r is None:
            first_r = gram_factor(W_U, Side.COLS)
        assert gram_factor(W_U, Side.COLS) is first_r  # the same object: computed once
    assert set(W_U.cache.factors) == {Side.COLS}
    assert set(W_E.cache.factors) == {Side.ROWS}
    assert len(W_E.cache.pairs) == 1  # W_E W_U for the eigenvalues
    assert leaf_factor_method(W_U, "cols") == "gram-cholesky"


def test_ill_conditioned_leaf_falls_back_to_householder_qr() -> None:
    rng = np.random.default_rng(1)
    big, small = ca.Space("big", 400), ca.Space("small", 20)
    q, _ = np.linalg.qr(rng.standard_normal((400, 20)))
    a = q * np.logspace(0, -8, 20)  # condition number 1e8
    A = ca.Dense(a, small, big, "A")
    B = ca.Dense(rng.standard_normal((20, 30)), ca.Space("c", 30), small, "B")
    s = (A @ B).singular_values()
    ref = np.linalg.svd(a @ B.array, compute_uv=False)
    np.testing.assert_allclose(s, ref[:20], rtol=1e-6)
    assert leaf_factor_method(A, "cols") == "qr"
