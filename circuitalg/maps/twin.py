"""The sympy twin of a map: a matrix expression over MatrixSymbols named after the leaves.

The twin has the same shape as the numeric map and is never expanded to entries
(no ``as_explicit``). Two leaves with the same name and shape share one symbol, so name
distinct weights distinctly.
"""

from __future__ import annotations

from fractions import Fraction
from functools import singledispatch

import sympy

from circuitalg.errors import InvalidArgumentError
from circuitalg.maps.nodes import Dense, Diagonal, Identity, Kron, LinearMap, Product, Scaled, Sum, Transpose

__all__ = ["to_sympy", "latex", "sympy_scalar"]


def sympy_scalar(c: float | int) -> sympy.Expr:
    """An exact sympy number for ``c``: integers and short binary fractions stay exact."""
    if isinstance(c, int) or float(c).is_integer():
        return sympy.Integer(int(c))
    frac = Fraction(c).limit_denominator(10**6)
    if float(frac) == c:
        return sympy.Rational(frac.numerator, frac.denominator)
    return sympy.Float(c)


@singledispatch
def to_sympy(m: LinearMap) -> sympy.MatrixExpr:
    """The sympy matrix expression twin of ``m``."""
    raise InvalidArgumentError(f"no sympy twin for {type(m).__name__}; register one with to_sympy.register.")


@to_sympy.register
def _(m: Dense) -> sympy.MatrixExpr:
    return sympy.MatrixSymbol(m.name, *m.shape)


@to_sympy.register
def _(m: Diagonal) -> sympy.MatrixExpr:
    return sympy.MatrixSymbol(m.name, *m.shape)


@to_sympy.register
def _(m: Identity) -> sympy.MatrixExpr:
    return sympy.Identity(m.shape[0])


@to_sympy.register
def _(m: Product) -> sympy.MatrixExpr:
    return sympy.MatMul(*(f.symbol for f in m.factors))


@to_sympy.register
def _(m: Sum) -> sympy.MatrixExpr:
    return sympy.MatAdd(*(t.symbol for t in m.terms))


@to_sympy.register
def _(m: Scaled) -> sympy.MatrixExpr:
    return sympy_scalar(m.scalar) * m.inner.symbol


@to_sympy.register
def _(m: Transpose) -> sympy.MatrixExpr:
    return sympy.Transpose(m.inner.symbol)


@to_sympy.register
def _(m: Kron) -> sympy.MatrixExpr:
    return sympy.KroneckerProduct(*(f.symbol for f in m.factors))


def latex(x: object) -> str:
    """LaTeX for a map (through its twin), a sympy expression, or any object with ``.latex()``."""
    if isinstance(x, LinearMap):
        return sympy.latex(x.symbol)
    if isinstance(x, sympy.Basic):
        return sympy.latex(x)
    method = getattr(x, "latex", None)
    if callable(method):
        return method()
    raise InvalidArgumentError(f"cannot render {type(x).__name__} as LaTeX; pass a map or a sympy expression.")
