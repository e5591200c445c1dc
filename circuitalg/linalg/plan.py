"""The one place where a numeric routine chooses its method for a map.

:func:`plan` inspects structure only (no numerics) and returns a :class:`Plan`; the
routines in :mod:`circuitalg.linalg` follow it, and users can call it to see how a number
will be computed before paying for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitalg.errors import InvalidArgumentError
from circuitalg.linalg.budget import DEFAULT_MAX_BYTES, SMALL_DENSE_BYTES, nbytes
from circuitalg.linalg.factors import Chain, as_chain
from circuitalg.maps.nodes import Dense, Diagonal, Identity, Kron, LinearMap, Scaled, Transpose, require_map

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
        :data:`~circuitalg.linalg.budget.SMALL_DENSE_BYTES` with no structural rule) or
        ``"iterative"`` (``scipy.sparse.linalg`` on the operator; needs ``k``).
    detail : str
        A human-readable explanation (bottleneck, core size, ...).
    chain : Chain or None
        The chain, for ``method == "chain"``.
    """

    method: str
    detail: str
    chain: Chain | None = None


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
    if isinstance(m, (Scaled, Transpose)):
        inner = _structural(m.inner, problem)
        if inner is not None and inner.method != "chain":
            return Plan(inner.method, f"{type(m).__name__.lower()} of: {inner.detail}", inner.chain)
        return None
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


def plan(m: LinearMap, problem: str = "singular_values", k: int | None = None) -> Plan:
    """Choose the method ``problem`` (one of :data:`PROBLEMS`) will use on ``m``."""
    require_map(m, "plan")
    if problem not in PROBLEMS:
        raise InvalidArgumentError(f"unknown problem {problem!r}; expected one of {PROBLEMS}.")
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
    if len(chain.factors) == 1 and chain.factors[0] is not m:
        inner = plan(chain.factors[0], problem, k)
        return Plan(inner.method, f"scaled: {inner.detail}", inner.chain)
    if nbytes(m.shape, m.dtype) <= SMALL_DENSE_BYTES:
        return Plan("dense", f"no structural rule; {m.shape[0]}x{m.shape[1]} is small, evaluated densely")
    return Plan(
        "iterative",
        f"no structural rule; scipy.sparse.linalg on the {m.shape[0]}x{m.shape[1]} operator"
        + ("" if k is not None else " (pass k)"),
    )
