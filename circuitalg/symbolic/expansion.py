"""The symbolic path expansion of an attention-only transformer, proved with :func:`verify`.

With patterns frozen, layer ``l`` maps the residual stream (on ``pos ⊗ resid``) by
``R_l = I + Σ_h A^{l.h} ⊗ W_O^{l.h} W_V^{l.h}``, and the logits are
``(I_pos ⊗ W_U) R_{L-1} ... R_0 (I_pos ⊗ W_E)``. Expanding gives one term per chain of heads in
strictly increasing layers: ``(A^{hk} ... A^{h1}) ⊗ (W_U W_OV^{hk} ... W_OV^{h1} W_E)``, the
direct path ``I_pos ⊗ W_U W_E`` included. Dimensions are sympy symbols, so a rewrite proof
holds for every size.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import sympy

from circuitalg.errors import InvalidArgumentError
from circuitalg.model.ids import HeadId
from circuitalg.symbolic.verification import Verification, verify

__all__ = ["SymbolicExpansion", "symbolic_expansion"]


@dataclasses.dataclass(frozen=True)
class SymbolicExpansion:
    """The nested product form, its path terms and their sum, for a given architecture.

    Attributes
    ----------
    product : sympy expression
        ``(I_pos ⊗ W_U) R_{L-1} ... R_0 (I_pos ⊗ W_E)``.
    paths : tuple of (chain, term)
        One term per chain of heads (a tuple of :class:`~circuitalg.model.ids.HeadId` in
        strictly increasing layers; empty for the direct path).
    expanded : sympy expression
        The sum of the terms.
    """

    product: Any
    paths: tuple[tuple[tuple[HeadId, ...], Any], ...]
    expanded: Any

    def verify(self, **kwargs: Any) -> Verification:
        """Prove ``product = expanded`` (see :func:`circuitalg.verify`)."""
        return verify(self.product, self.expanded, **kwargs)


def symbolic_expansion(n_layers: int, heads_per_layer: int | Sequence[int]) -> SymbolicExpansion:
    """The symbolic logits of an attention-only transformer as a product and as a sum of paths."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise InvalidArgumentError(f"n_layers={n_layers!r}; pass a positive integer.")
    heads = [heads_per_layer] * n_layers if isinstance(heads_per_layer, int) else list(heads_per_layer)
    if len(heads) != n_layers or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in heads):
        raise InvalidArgumentError(f"heads_per_layer={heads_per_layer!r}; one positive integer, or one per layer.")
    n, d, dh, v = sympy.symbols("n_ctx d_model d_head d_vocab", positive=True, integer=True)
    W_E, W_U = sympy.MatrixSymbol("W_E", d, v), sympy.MatrixSymbol("W_U", v, d)
    ids = [HeadId(l, h) for l in range(n_layers) for h in range(heads[l])]
    A = {i: sympy.MatrixSymbol(f"A^{i.tag}", n, n) for i in ids}
    OV = {i: sympy.MatrixSymbol(f"W_O^{i.tag}", d, dh) * sympy.MatrixSymbol(f"W_V^{i.tag}", dh, d) for i in ids}
    K, I_n = sympy.KroneckerProduct, sympy.Identity(n)
    product: Any = K(I_n, W_E)
    for l in range(n_layers):
        update = sympy.MatAdd(sympy.Identity(n * d), *(K(A[(l, h)], OV[(l, h)]) for h in range(heads[l])))
        product = update * product
    product = K(I_n, W_U) * product
    paths = []
    for k in range(n_layers + 1):
        for layers in itertools.combinations(range(n_layers), k):
            for hs in itertools.product(*(range(heads[l]) for l in layers)):
                chain = tuple(HeadId(l, h) for l, h in zip(layers, hs))
                pos = sympy.MatMul(*(A[c] for c in reversed(chain))) if chain else I_n
                content = sympy.MatMul(W_U, *(OV[c] for c in reversed(chain)), W_E)
                paths.append((chain, K(pos, content)))
    expanded = sympy.MatAdd(*(term for _, term in paths))
    return SymbolicExpansion(product, tuple(paths), expanded)
