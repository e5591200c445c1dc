"""``top_tokens(max_rows=...)``: a scan budget with a true certificate, against the dense matrix."""

from __future__ import annotations

import numpy as np
import pytest

import circuitalg as ca


def _map(seed: int, n: int = 300, r: int = 6, row_scale: np.ndarray | None = None) -> tuple[ca.LinearMap, np.ndarray]:
    rng = np.random.default_rng(seed)
    vocab, hid = ca.Space("vocab", n), ca.Space("h", r)
    A, B = rng.normal(size=(n, r)), rng.normal(size=(r, n))
    if row_scale is not None:
        A = A * row_scale[:, None]
    m = ca.Dense(A, hid, vocab, "A") @ ca.Dense(B, vocab, hid, "B")
    return m, A @ B


def test_unbudgeted_scan_is_exact_and_says_so() -> None:
    m, dense = _map(0)
    top = ca.top_tokens(m, 5)
    assert isinstance(top, ca.TopTokens) and top.exact and top.bound == 0.0 and top.n_rows == 300
    want = np.sort(dense.ravel())[::-1][:5]
    np.testing.assert_allclose([e.value for e in top], want, rtol=1e-12)
    want = "exact (all 300 rows scanned)" if top.rows_scanned == 300 else f"exact (the {top.rows_scanned} strongest"
    assert top.certificate().startswith(want)


@pytest.mark.parametrize("seed", range(4))
def test_a_cut_scan_gives_the_top_of_the_rows_scanned_and_bounds_the_rest(seed: int) -> None:
    m, dense = _map(seed)
    top = ca.top_tokens(m, 5, max_rows=40)
    assert top.rows_scanned == 40 and not top.exact  # random rows: the rest could still rank
    norms = np.linalg.norm(dense, axis=1)  # the scan's order: by ||(US)_i||, equal to the row norms of the map
    scanned = np.argsort(-norms, kind="stable")[:40]
    want = np.sort(dense[scanned].ravel())[::-1][:5]
    np.testing.assert_allclose([e.value for e in top], want, rtol=1e-12)
    assert {e.row for e in top} <= set(scanned.tolist())
    rest = np.setdiff1d(np.arange(300), scanned)
    assert np.abs(dense[rest]).max() <= top.bound  # the certificate is true
    assert "<=" in top.certificate() and "40 strongest of 300" in top.certificate()


def test_a_cut_scan_is_exact_when_the_unscanned_rows_cannot_rank() -> None:
    """Strong rows first, then rows 1000x weaker: 20 rows suffice and the bound proves it."""
    scale = np.where(np.arange(300) < 20, 1.0, 1e-3)
    m, dense = _map(5, row_scale=scale)
    top = ca.top_tokens(m, 5, max_rows=20)
    assert top.exact and top.rows_scanned <= 20
    assert top.certificate().startswith(f"exact (the {top.rows_scanned} strongest of 300 rows scanned")
    np.testing.assert_allclose([e.value for e in top], np.sort(dense.ravel())[::-1][:5], rtol=1e-12)
    with pytest.raises(ca.InvalidArgumentError, match="max_rows"):
        ca.top_tokens(m, 5, max_rows=0)
