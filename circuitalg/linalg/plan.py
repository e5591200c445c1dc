"""The one place where a numeric routine chooses its method for a map.

:func:`plan` inspects structure only (no numerics) and returns a :class:`Plan`; the
routines in :mod:`circuitalg.linalg` follow it, and users can call it to see how a number
will be computed before paying for it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from circuitalg.errors import InvalidArgumentError
from circuitalg.linalg.budget import DEFAULT_MAX_BYTES, SMALL_DENSE_BYTES, nbytes
from circuitalg.maps.chain import Chain, as_chain
from circuitalg.maps.nodes import (
    Dense,
    Diagonal,
    Identity,
    Kron,
    LinearMap,
    Scaled,
    Sum,
    Transpose,
    require_map,
)

__all__ = ["Plan", "plan", "PROBLEMS"]

PROBLEMS = ("singular_values", "svd", "eigenvalues", "norm", "trace")


@dataclass(frozen=True)
class Plan:
    """How a numeric routine will treat a map.

    Attributes
    ----------
    method : str
        ``"leaf"`` (a dense leaf's own array, tall leaves via their cached triangular
        factor), ``"identity"``, ``"diagonal"``, ``"kron"`` (factor-wise), ``"chain"`` (the
        factored small-core algorithm), ``"dense"`` (a map under
        :data:`~circuitalg.linalg.budget.SMALL_DENSE_BYTES` with no structural rule),
        ``"sum"`` (a trace: the sum of the terms' traces), ``"gram-traces"`` (a norm: the
        squared norm ``Σ_ij tr(T_iᵀ T_j)`` over the terms) or ``"iterative"``
        (``scipy.sparse.linalg`` on the operator; needs ``k``).
    detail : str
        A human-readable explanation (bottleneck, core size, ...).
    chain : Chain or None
        The chain, for ``method == "chain"``.
    scalar : float
        Outer scalars stripped before choosing (the result scales by it).
    transposed : bool
        Whether an odd number of outer transposes was stripped.
    target : LinearMap or None
        The map the method applies to: ``m`` without its outer scalars and transposes.
    """

    method: str
    detail: str
    chain: Chain | None = None
    scalar: float = 1.0
    transposed: bool = False
    target: LinearMap | None = None


def _sweep_bytes(chain: Chain, itemsize: int) -> int:
    """Largest intermediate the two sweeps of a chain allocate (see ``factors.sweep``)."""
    d, j, fs = chain.dims, chain.bottleneck, chain.factors
    worst = 0
    for dims, first in ((d[: j + 1], fs[0]), (d[j:][::-1], fs[-1])):
        if len(dims) < 2:
            continue
        low = min(dims[0], dims[1])
        worst = max(worst, low * dims[1])
        for nxt in dims[2:]:
            worst = max(worst, low * nxt)
            low = min(low, nxt)
        if not isinstance(first, (Dense, Transpose, Identity)):
            worst = max(worst, dims[0] * dims[1])
    return worst * itemsize


def _structural(m: LinearMap, problem: str) -> Plan | None:
    if isinstance(m, Dense):
        return Plan("leaf", f"dense leaf {m.name} {m.shape[0]}x{m.shape[1]}")
    if isinstance(m, Identity):
        return Plan("identity", f"identity on {m.space}")
    if isinstance(m, Diagonal):
        return Plan("diagonal", f"diagonal {m.name} on {m.space}")
    if isinstance(m, Kron):
        if problem in ("eigenvalues", "trace") and not all(f.is_square for f in m.factors):
            return None
        return Plan("kron", "Kronecker product: factor-wise, " + " ⊗ ".join(f"{f.shape}" for f in m.factors))
    return None


def _strip(m: LinearMap) -> tuple[LinearMap, float, bool]:
    """``(target, scalar, transposed)`` with ``m = scalar * target`` (transposed if odd)."""
    scalar, transposed = 1.0, False
    while isinstance(m, (Scaled, Transpose)):
        if isinstance(m, Scaled):
            scalar *= m.scalar
        else:
            transposed = not transposed
        m = m.inner
    return m, scalar, transposed


def plan(m: LinearMap, problem: str = "singular_values", k: int | None = None) -> Plan:
    """Choose the method ``problem`` (one of :data:`PROBLEMS`) will use on ``m``.

    Outer scalars and transposes are stripped first (``Plan.scalar``, ``Plan.transposed``,
    ``Plan.target``); every routine in :mod:`circuitalg.linalg` follows the plan, so what it
    names is what runs.
    """
    require_map(m, "plan")
    if problem not in PROBLEMS:
        raise InvalidArgumentError(f"unknown problem {problem!r}; expected one of {PROBLEMS}.")
    target, scalar, transposed = _strip(m)
    p = _plan_target(target, problem, k)
    prefix = "".join(
        (f"scalar {scalar:g} times " if scalar != 1.0 else "", "transpose of " if transposed else "")
    )
    return replace(
        p, detail=prefix + p.detail, scalar=scalar * p.scalar, transposed=transposed != p.transposed,
        target=target if p.target is None else p.target,
    )


def _plan_target(m: LinearMap, problem: str, k: int | None) -> Plan:
    hit = _structural(m, problem)
    if hit is not None:
        return hit
    chain = as_chain(m)
    if len(chain.factors) >= 2:
        work = _sweep_bytes(chain, m.dtype.itemsize)
        r = chain.dims[chain.bottleneck]
        if work <= DEFAULT_MAX_BYTES:
            return Plan(
                "chain",
                f"factored chain of {len(chain.factors)} factors, dims {chain.dims}, "
                f"bottleneck {r} at position {chain.bottleneck}: core at most {r}x{r}",
                chain,
            )
    if len(chain.factors) == 1 and chain.factors[0] is not m:  # a scalar pulled out of a product
        inner = plan(chain.factors[0], problem, k)
        return replace(inner, scalar=inner.scalar * chain.scalar)
    if isinstance(m, Sum) and problem == "trace":
        return Plan("sum", f"sum of the traces of {len(m.terms)} terms")
    small = nbytes(m.shape, m.dtype) <= SMALL_DENSE_BYTES
    if small:
        return Plan("dense", f"no structural rule; {m.shape[0]}x{m.shape[1]} is small, evaluated densely")
    if isinstance(m, Sum) and problem == "norm":
        n = len(m.terms)
        return Plan("gram-traces", f"squared norm as Σ_ij tr(T_iᵀ T_j) over {n} terms ({n * (n + 1) // 2} traces)")
    return Plan(
        "iterative",
        f"no structural rule; scipy.sparse.linalg on the {m.shape[0]}x{m.shape[1]} operator"
        + ("" if k is not None else " (pass k)"),
    )
