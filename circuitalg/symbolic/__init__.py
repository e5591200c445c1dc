"""The sympy twin, LaTeX, verification of identities and the symbolic path expansion."""

from circuitalg.maps.twin import latex, to_sympy
from circuitalg.symbolic.expansion import SymbolicExpansion, symbolic_expansion
from circuitalg.symbolic.verification import RULES, Rules, Verification, normal_form, verify, verify_numeric

__all__ = [
    "to_sympy",
    "latex",
    "verify",
    "verify_numeric",
    "Verification",
    "normal_form",
    "Rules",
    "RULES",
    "symbolic_expansion",
    "SymbolicExpansion",
]
