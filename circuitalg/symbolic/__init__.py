"""The symbolic twin of maps (sympy matrix expressions) and LaTeX rendering."""

from circuitalg.symbolic.twin import latex, to_sympy

__all__ = ["to_sympy", "latex"]
