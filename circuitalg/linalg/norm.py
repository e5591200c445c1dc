"""Frobenius norms and traces from small factors (no SVD, nothing vocab x vocab)."""

from __future__ import annotations

import math

import numpy as np

from circuitalg.errors import TooLargeError
from circuitalg.linalg.accuracy import accuracy, magnitude, unit_roundoff, warn_if_imprecise
from circuitalg.linalg.apply import evaluate
from circuitalg.linalg.common import require_square
from circuitalg.linalg.factors import core, cyclic_core
from circuitalg.linalg.plan import Plan, plan
from circuitalg.maps.chain import Chain
from circuitalg.maps.nodes import LinearMap, require_map
from circuitalg.maps.rules import compose, transpose

__all__ = ["norm", "trace"]


def trace(m: LinearMap) -> float:
    """The trace of a square map.

    Chains use the cyclic small product (``tr(W_U W_OV W_E) = tr(W_V W_E W_U W_O)``),
    sums add their terms' traces, Kronecker products multiply their factors' traces.
    The error is at most ``rank_bound * accuracy(m)`` (:mod:`circuitalg.linalg.accuracy`);
    no warning is given because a small trace is not a sign of lost precision.
    """
    require_map(m, "trace")
    require_square(m, "trace")
    return float(_trace(m))


def _trace(m: LinearMap) -> float:
    p = plan(m, "trace")
    return p.scalar * _target_trace(p)


def _target_trace(p: Plan) -> float:
    m: LinearMap = p.target  # type: ignore[assignment]
    if p.method == "leaf":
        return float(np.trace(m.array))  # type: ignore[attr-defined]
    if p.method == "identity":
        return float(m.shape[0])
    if p.method == "diagonal":
        return float(np.sum(m.values))  # type: ignore[attr-defined]
    if p.method == "kron":
        return math.prod(_trace(f) for f in m.factors)  # type: ignore[attr-defined]
    if p.method == "chain":
        chain: Chain = p.chain  # type: ignore[assignment]
        return chain.scalar * float(np.trace(cyclic_core(chain)))
    if p.method == "sum":
        return sum(_trace(t) for t in m.terms)  # type: ignore[attr-defined]
    if p.method == "dense":
        return float(np.trace(evaluate(m)))
    raise TooLargeError(
        f"trace of {m.symbol} {m.shape}: no structural rule applies and the map is too large to "
        "evaluate densely; express it as a product, sum or Kronecker product of smaller maps."
    )


def norm(m: LinearMap) -> float:
    """The Frobenius norm.

    Chains: ``‖S_L S_Rᵀ‖_F`` from the triangular factors of the two halves (each from a
    cached Gram factor of the outer leaves and small QRs); Kronecker products: the
    product of the factors' norms; sums with no common factor: small maps densely,
    larger ones from the Gram traces ``Σ_ij tr(T_iᵀ T_j)`` (which may lose relative
    accuracy when the terms cancel).

    The error is at most ``sqrt(rank_bound) * accuracy(m)`` (see
    :mod:`circuitalg.linalg.accuracy`), or for the Gram-trace route
    ``sqrt(g)`` at worst with ``g = 4 n_terms rank_bound eps (Σ magnitude(T_i))²``; a
    :class:`~circuitalg.errors.PrecisionWarning` says when the bound exceeds
    ``eps^(1/3)`` times the result.
    """
    require_map(m, "norm")
    gram_err: list[float] = []
    out = float(_norm(m, gram_err))
    bound = math.sqrt(max(m.rank_bound, 1)) * accuracy(m)
    if gram_err:  # the Gram-trace route: its error enters squared
        g = sum(gram_err)
        bound = max(bound, min(math.sqrt(g), g / (2 * out)) if out > 0 else math.sqrt(g))
    warn_if_imprecise(m, "norm", bound, out, zero_is_exact=not gram_err)
    return out


def _norm(m: LinearMap, gram_err: list[float]) -> float:
    """The norm; appends to ``gram_err`` the error of each squared norm summed from traces."""
    p = plan(m, "norm")
    c = abs(p.scalar)
    inner: list[float] = []
    out = c * _target_norm(p, inner)
    gram_err.extend(c * c * e for e in inner)
    return out


def _target_norm(p: Plan, gram_err: list[float]) -> float:
    m: LinearMap = p.target  # type: ignore[assignment]
    if p.method == "leaf":
        return float(np.linalg.norm(m.array))  # type: ignore[attr-defined]
    if p.method == "identity":
        return math.sqrt(m.shape[0])
    if p.method == "diagonal":
        return float(np.linalg.norm(m.values))  # type: ignore[attr-defined]
    if p.method == "kron":
        errs: list[list[float]] = [[] for _ in m.factors]  # type: ignore[attr-defined]
        vals = [_norm(f, e) for f, e in zip(m.factors, errs)]  # type: ignore[attr-defined]
        out = math.prod(vals)
        for i, e in enumerate(errs):  # a factor's squared-norm error, times the others' squares
            rest = math.prod(v * v for j, v in enumerate(vals) if j != i)
            gram_err.extend(x * rest for x in e)
        return out
    if p.method == "chain":
        chain: Chain = p.chain  # type: ignore[assignment]
        return abs(chain.scalar) * float(np.linalg.norm(core(chain)))
    if p.method == "dense":
        return float(np.linalg.norm(evaluate(m)))
    if p.method == "gram-traces":
        terms = m.terms  # type: ignore[attr-defined]
        total = 0.0
        for i, a in enumerate(terms):
            total += _trace(compose(transpose(a), a))
            for b in terms[i + 1 :]:
                total += 2.0 * _trace(compose(transpose(a), b))
        mags = sum(magnitude(t) for t in terms)
        gram_err.append(4.0 * len(terms) * m.rank_bound * unit_roundoff(m.dtype) * mags * mags)
        return math.sqrt(max(total, 0.0))
    raise TooLargeError(
        f"norm of {m.symbol} {m.shape}: no structural rule applies and the map is too large to "
        "evaluate densely."
    )
