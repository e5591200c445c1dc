"""Structural views of a map as a chain of factors (no numerics).

A map is seen as a *chain* ``c * F1 @ F2 @ ... @ Fk`` (:func:`as_chain`): scalars pulled
out, products flattened, and sums whose terms share outer factors factored first
(``W_U W_E + W_U W_OV W_E -> W_U (I + W_OV) W_E``). :attr:`Sum.rank_bound` and every
factored routine of :mod:`circuitalg.linalg` read maps this way.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitalg.maps.nodes import LinearMap, Product, Scaled, Sum
from circuitalg.maps.rules import add, compose, identity, scale

__all__ = ["Chain", "as_chain"]


@dataclass(frozen=True)
class Chain:
    """``scalar * factors[0] @ ... @ factors[-1]``, with the chain's dimensions."""

    scalar: float
    factors: tuple[LinearMap, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        """``(n, d1, ..., m)``: codomain of the first factor, then each factor's domain."""
        return (self.factors[0].codomain.dim,) + tuple(f.domain.dim for f in self.factors)

    @property
    def bottleneck(self) -> int:
        """Index ``j`` (0..k) of the smallest dimension; ties go to the middle-most."""
        d = self.dims
        low = min(d)
        cands = [i for i, v in enumerate(d) if v == low]
        mid = (len(d) - 1) / 2
        return min(cands, key=lambda i: abs(i - mid))


def as_chain(m: LinearMap) -> Chain:
    """View ``m`` as a chain of factors, pulling out scalars and common outer factors."""
    if isinstance(m, Scaled):
        inner = as_chain(m.inner)
        return Chain(m.scalar * inner.scalar, inner.factors)
    if isinstance(m, Product):
        c, out = 1.0, []
        for f in m.factors:
            sub = as_chain(f)
            c *= sub.scalar
            out.extend(sub.factors)
        return Chain(c, tuple(out))
    if isinstance(m, Sum):
        return _factor_sum(m)
    return Chain(1.0, (m,))


def _factor_sum(m: Sum) -> Chain:
    """``A X1 B + A X2 B -> A (X1 + X2) B`` for the longest common outer factors."""
    chains = [as_chain(t) for t in m.terms]
    shortest = min(len(c.factors) for c in chains)
    pre = 0
    while pre < shortest and all(c.factors[pre] is chains[0].factors[pre] for c in chains):
        pre += 1
    suf = 0
    while suf < shortest - pre and all(c.factors[-1 - suf] is chains[0].factors[-1 - suf] for c in chains):
        suf += 1
    if pre == 0 and suf == 0:
        return Chain(1.0, (m,))
    prefix = chains[0].factors[:pre]
    suffix = chains[0].factors[len(chains[0].factors) - suf :]
    middles = []
    for c in chains:
        body = c.factors[pre : len(c.factors) - suf]
        space = prefix[-1].domain if prefix else suffix[0].codomain
        middles.append(scale(c.scalar, compose(*body) if body else identity(space, dtype=m.dtype)))
    return Chain(1.0, prefix + (add(*middles),) + suffix)
