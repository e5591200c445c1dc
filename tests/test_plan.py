"""``plan`` is the one place a method is chosen: what it names is what runs."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import circuitalg as ca

norm_module = importlib.import_module("circuitalg.linalg.norm")


def _big_sum() -> tuple[ca.LinearMap, np.ndarray]:
    rng = np.random.default_rng(0)
    big, r = ca.Space("big", 3000), ca.Space("r", 3)
    a1, b1, a2, b2 = (rng.standard_normal(s) for s in ((3000, 3), (3, 3000), (3000, 3), (3, 3000)))
    m = ca.Dense(a1, r, big, "A1") @ ca.Dense(b1, big, r, "B1") + ca.Dense(a2, r, big, "A2") @ ca.Dense(b2, big, r, "B2")
    return m, a1 @ b1 + a2 @ b2


def test_plan_names_gram_traces_and_norm_uses_them(monkeypatch) -> None:
    m, dense = _big_sum()
    p = ca.plan(m, "norm")
    assert p.method == "gram-traces" and "tr(T_iᵀ T_j)" in p.detail
    calls = []
    original = norm_module._trace
    monkeypatch.setattr(norm_module, "_trace", lambda x, rt: calls.append(x) or original(x, rt))
    assert m.norm() == pytest.approx(np.linalg.norm(dense), rel=1e-10)
    assert len(calls) == 3  # tr(A1ᵀA1), tr(A2ᵀA2), tr(A1ᵀA2): the traces the plan announced
    assert ca.plan(m, "trace").method == "sum"
    assert m.trace() == pytest.approx(np.trace(dense), rel=1e-10)


def test_plan_strips_scalars_and_transposes() -> None:
    m = ca.zoo.load("attn2l")
    ov = m.W_U @ m.head(1, 1).ov @ m.W_E
    p = ca.plan(-3.0 * ov.T, "singular_values")  # the transpose of a product is a product of transposes
    assert (p.method, p.scalar) == ("chain", -3.0) and p.detail.startswith("scalar -3 times factored chain")
    t = ca.plan(-3.0 * m.W_E.T, "singular_values")
    assert (t.method, t.scalar, t.transposed, t.target) == ("leaf", -3.0, True, m.W_E)
    assert t.detail.startswith("scalar -3 times transpose of dense leaf W_E")
    U, S, Vh = ca.svd(-3.0 * m.W_E.T)
    np.testing.assert_allclose((U * S) @ Vh, -3.0 * m.W_E.array.T, atol=1e-10)
    np.testing.assert_allclose((-3.0 * ov.T).singular_values(), 3.0 * ov.singular_values(), rtol=1e-12)
    np.testing.assert_allclose(np.sort_complex((-3.0 * ov.T).eigenvalues()), np.sort_complex(-3.0 * ov.eigenvalues()),
                               rtol=1e-10, atol=1e-12)
    U, S, Vh = ca.svd(-3.0 * ov.T)
    dense = -3.0 * ca.to_dense(ov).T
    np.testing.assert_allclose((U * S) @ Vh, dense, atol=1e-9 * np.abs(dense).max())
    leaf = ca.plan(2.0 * m.W_E, "norm")
    assert (leaf.method, leaf.scalar, leaf.target) == ("leaf", 2.0, m.W_E)
