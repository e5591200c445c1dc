"""Verify factorisations symbolically: true identities are proved, false ones refuted with a counterexample.

Usage::

    python examples/04_verify_factorisation.py
"""

from __future__ import annotations

import sympy

import circuitalg as ca


def main() -> None:
    d, v, h = sympy.symbols("d_model d_vocab d_head", positive=True, integer=True)
    W_E = sympy.MatrixSymbol("W_E", d, v)
    W_U = sympy.MatrixSymbol("W_U", v, d)
    W_V = sympy.MatrixSymbol("W_V", h, d)
    W_O = sympy.MatrixSymbol("W_O", d, h)
    A = sympy.MatrixSymbol("A", 3, 3)

    # the full OV circuit regroups freely: (W_U W_O)(W_V W_E) = W_U (W_O W_V) W_E
    r = ca.verify((W_U * W_O) * (W_V * W_E), W_U * (W_O * W_V) * W_E)
    print("regrouping the full OV circuit:", r.holds, f"({r.method})")
    # its transpose reverses the product
    r = ca.verify((W_U * W_O * W_V * W_E).T, W_E.T * W_V.T * W_O.T * W_U.T)
    print("transpose of W_U W_O W_V W_E:", r.holds, f"({r.method})")
    # a head acts per position: (A ⊗ W_OV)(I ⊗ W_E) = A ⊗ (W_OV W_E)
    I = sympy.Identity(3)
    r = ca.verify(sympy.kronecker_product(A, W_O * W_V) * sympy.kronecker_product(I, W_E),
                  sympy.kronecker_product(A, W_O * W_V * W_E))
    print("mixed product (A ⊗ W_OV)(I ⊗ W_E) = A ⊗ W_OV W_E:", r.holds, f"({r.method})")
    # a tempting but false rewrite (sympy's combine_kronecker makes it, issue 30272)
    B = sympy.MatrixSymbol("B", 2, 2)
    C = sympy.MatrixSymbol("C", 3, 3)
    D = sympy.MatrixSymbol("D", 2, 2)
    r = ca.verify(sympy.kronecker_product(A, B) + sympy.kronecker_product(C, D),
                  sympy.kronecker_product(A + C, B + D))
    print("A⊗B + C⊗D = (A+C)⊗(B+D):", r.holds, f"({r.method}); counterexample found:", r.counterexample is not None)
    # the path expansion of a 2-layer, 2-head attention-only transformer (9 paths)
    e = ca.symbolic_expansion(2, 2)
    r = e.verify()
    print(f"2-layer path expansion ({len(e.paths)} paths):", r.holds, f"({r.method})")


if __name__ == "__main__":
    main()
