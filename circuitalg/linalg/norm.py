"""Frobenius norms and traces from small factors (no SVD, nothing vocab x vocab)."""

from __future__ import annotations

import math
from functools import singledispatch

import numpy as np

from circuitalg import runtime
from circuitalg.errors import TooLargeError
from circuitalg.linalg.accuracy import accuracy, magnitude, unit_roundoff, warn_if_imprecise
from circuitalg.linalg.apply import evaluate
from circuitalg.linalg.common import require_square
from circuitalg.linalg.factors import core, cyclic_core
from circuitalg.linalg.plan import (
    ChainPlan,
    DensePlan,
    DiagonalPlan,
    GramTracesPlan,
    IdentityPlan,
    IterativePlan,
    KronPlan,
    LeafPlan,
    Plan,
    SumPlan,
    no_rule,
    plan,
)
from circuitalg.maps.nodes import LinearMap, require_map
from circuitalg.maps.rules import compose, transpose
from circuitalg.runtime import Runtime

__all__ = ["norm", "trace", "planned_norm", "planned_trace"]


def trace(m: LinearMap) -> float:
    """The trace of a square map.

    Chains use the cyclic small product (``tr(W_U W_OV W_E) = tr(W_V W_E W_U W_O)``),
    sums add their terms' traces, Kronecker products multiply their factors' traces.
    The error is at most ``rank_bound * accuracy(m, gram_factors=False)`` (:mod:`circuitalg.linalg.accuracy`);
    no warning is given because a small trace is not a sign of lost precision.
    """
    require_map(m, "trace")
    require_square(m, "trace")
    return float(_trace(m, runtime.current()))


def _trace(m: LinearMap, rt: Runtime) -> float:
    return _scaled_trace(plan(m, "trace"), rt)


def _scaled_trace(p: Plan, rt: Runtime) -> float:
    return p.scalar * planned_trace(p, rt)


@singledispatch
def planned_trace(p: Plan, rt: Runtime) -> float:
    """The trace of ``p.target`` (without ``p.scalar``): one rule per plan type
    (``planned_trace.register``)."""
    raise no_rule("trace", p)


@planned_trace.register
def _(p: LeafPlan, rt: Runtime) -> float:
    return float(np.trace(p.target.array))


@planned_trace.register
def _(p: IdentityPlan, rt: Runtime) -> float:
    return float(p.target.shape[0])


@planned_trace.register
def _(p: DiagonalPlan, rt: Runtime) -> float:
    return float(np.sum(p.target.values))


@planned_trace.register
def _(p: KronPlan, rt: Runtime) -> float:
    return math.prod(_scaled_trace(part, rt) for part in p.parts)


@planned_trace.register
def _(p: ChainPlan, rt: Runtime) -> float:
    return p.chain.scalar * float(np.trace(cyclic_core(p.chain, rt)))


@planned_trace.register
def _(p: SumPlan, rt: Runtime) -> float:
    return sum(_scaled_trace(part, rt) for part in p.parts)


@planned_trace.register
def _(p: DensePlan, rt: Runtime) -> float:
    return float(np.trace(evaluate(p.target)))


@planned_trace.register
def _(p: IterativePlan, rt: Runtime) -> float:
    m = p.target
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
    out = float(_norm(m, gram_err, runtime.current()))
    bound = math.sqrt(max(m.rank_bound, 1)) * accuracy(m)
    if gram_err:  # the Gram-trace route: its error enters squared
        g = sum(gram_err)
        bound = max(bound, min(math.sqrt(g), g / (2 * out)) if out > 0 else math.sqrt(g))
    warn_if_imprecise(m, "norm", bound, out, zero_is_exact=not gram_err)
    return out


def _norm(m: LinearMap, gram_err: list[float], rt: Runtime) -> float:
    """The norm; appends to ``gram_err`` the error of each squared norm summed from traces."""
    return _scaled_norm(plan(m, "norm"), gram_err, rt)


def _scaled_norm(p: Plan, gram_err: list[float], rt: Runtime) -> float:
    c = abs(p.scalar)
    inner: list[float] = []
    out = c * planned_norm(p, inner, rt)
    gram_err.extend(c * c * e for e in inner)
    return out


@singledispatch
def planned_norm(p: Plan, gram_err: list[float], rt: Runtime) -> float:
    """The Frobenius norm of ``p.target`` (without ``p.scalar``); appends to ``gram_err`` the error
    of each squared norm summed from traces: one rule per plan type (``planned_norm.register``)."""
    raise no_rule("norm", p)


@planned_norm.register
def _(p: LeafPlan, gram_err: list[float], rt: Runtime) -> float:
    return float(np.linalg.norm(p.target.array))


@planned_norm.register
def _(p: IdentityPlan, gram_err: list[float], rt: Runtime) -> float:
    return math.sqrt(p.target.shape[0])


@planned_norm.register
def _(p: DiagonalPlan, gram_err: list[float], rt: Runtime) -> float:
    return float(np.linalg.norm(p.target.values))


@planned_norm.register
def _(p: KronPlan, gram_err: list[float], rt: Runtime) -> float:
    errs: list[list[float]] = [[] for _ in p.parts]
    vals = [_scaled_norm(part, e, rt) for part, e in zip(p.parts, errs)]
    out = math.prod(vals)
    for i, e in enumerate(errs):  # a factor's squared-norm error, times the others' squares
        rest = math.prod(v * v for j, v in enumerate(vals) if j != i)
        gram_err.extend(x * rest for x in e)
    return out


@planned_norm.register
def _(p: ChainPlan, gram_err: list[float], rt: Runtime) -> float:
    return abs(p.chain.scalar) * float(np.linalg.norm(core(p.chain, rt=rt)))


@planned_norm.register
def _(p: DensePlan, gram_err: list[float], rt: Runtime) -> float:
    return float(np.linalg.norm(evaluate(p.target)))


@planned_norm.register
def _(p: GramTracesPlan, gram_err: list[float], rt: Runtime) -> float:
    m = p.target
    terms = m.terms
    total = 0.0
    for i, a in enumerate(terms):
        total += _trace(compose(transpose(a), a), rt)
        for b in terms[i + 1 :]:
            total += 2.0 * _trace(compose(transpose(a), b), rt)
    mags = sum(magnitude(t) for t in terms)
    gram_err.append(4.0 * len(terms) * m.rank_bound * unit_roundoff(m.dtype) * mags * mags)
    return math.sqrt(max(total, 0.0))


@planned_norm.register
def _(p: IterativePlan, gram_err: list[float], rt: Runtime) -> float:
    m = p.target
    raise TooLargeError(
        f"norm of {m.symbol} {m.shape}: no structural rule applies and the map is too large to "
        "evaluate densely."
    )
