"""The one place where a numeric routine chooses its method for a map.

:func:`plan` inspects structure only (no numerics) and returns a :class:`Plan`: one type per
method, holding the sub-choices of that method that structure decides (which triangular factor
of a dense leaf, the chain and its bottleneck, the QR of each half of a chain's SVD, the plans of a
Kronecker product's factors or of a sum's terms). Each problem of :data:`PROBLEMS` is a
``functools.singledispatch`` function over the plan types (``planned_singular_values`` and
``planned_svd`` in :mod:`~circuitalg.linalg.svd`, ``planned_eigenvalues`` in
:mod:`~circuitalg.linalg.eig`, ``planned_norm`` and ``planned_trace`` in
:mod:`~circuitalg.linalg.norm`), so what a plan names is what runs. A new map kind needs one
plan rule (:func:`structural_plan`) and one rule per problem.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import singledispatch
from typing import ClassVar

from circuitalg.errors import InvalidArgumentError
from circuitalg.linalg.budget import DEFAULT_MAX_BYTES, SMALL_DENSE_BYTES, nbytes
from circuitalg.linalg.factors import Side
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

__all__ = [
    "Plan",
    "LeafPlan",
    "IdentityPlan",
    "DiagonalPlan",
    "KronPlan",
    "ChainPlan",
    "DensePlan",
    "SumPlan",
    "GramTracesPlan",
    "IterativePlan",
    "plan",
    "structural_plan",
    "no_rule",
    "tall_qr_method",
    "PROBLEMS",
    "CHOLQR_MIN_ASPECT",
]

PROBLEMS = ("singular_values", "svd", "eigenvalues", "norm", "trace")

#: A tall ``n x r`` half of a chain's SVD takes CholeskyQR2 when ``n >= CHOLQR_MIN_ASPECT * r``
#: (and ``r > 0``), Householder QR otherwise (:func:`tall_qr_method`).
CHOLQR_MIN_ASPECT = 8


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How a numeric routine will treat a map; the base of one type per method.

    Attributes
    ----------
    method : str
        The method's short name (a class attribute of each plan type): ``"leaf"``,
        ``"identity"``, ``"diagonal"``, ``"kron"``, ``"chain"``, ``"dense"``, ``"sum"``,
        ``"gram-traces"`` or ``"iterative"``.
    problem : str
        The problem planned for, one of :data:`PROBLEMS`.
    target : LinearMap
        The map the method applies to: ``m`` without its outer scalars and transposes.
    detail : str
        A human-readable explanation (bottleneck, core size, ...).
    scalar : float
        Outer scalars stripped before choosing (the result scales by it).
    transposed : bool
        Whether an odd number of outer transposes was stripped.
    """

    method: ClassVar[str] = "plan"
    problem: str
    target: LinearMap
    detail: str
    scalar: float = 1.0
    transposed: bool = False


@dataclass(frozen=True, kw_only=True)
class LeafPlan(Plan):
    """A dense leaf's own array, or for the singular values of a tall (wide) leaf its cached
    triangular factor ``gram_factor(target, factor_side)``.

    Attributes
    ----------
    factor_side : Side or None
        ``Side.COLS`` (a tall leaf), ``Side.ROWS`` (a wide leaf), or None (the array itself).
    """

    method: ClassVar[str] = "leaf"
    target: Dense
    factor_side: Side | None = None


@dataclass(frozen=True, kw_only=True)
class IdentityPlan(Plan):
    """An identity map: closed forms."""

    method: ClassVar[str] = "identity"
    target: Identity


@dataclass(frozen=True, kw_only=True)
class DiagonalPlan(Plan):
    """A diagonal map: from its diagonal values."""

    method: ClassVar[str] = "diagonal"
    target: Diagonal


@dataclass(frozen=True, kw_only=True)
class KronPlan(Plan):
    """A Kronecker product, factor-wise.

    Attributes
    ----------
    parts : tuple of Plan
        The plan of each factor for the same problem (without ``k``).
    """

    method: ClassVar[str] = "kron"
    target: Kron
    parts: tuple[Plan, ...]


@dataclass(frozen=True, kw_only=True)
class ChainPlan(Plan):
    """The factored small-core algorithm on ``chain`` (the target seen as a product).

    Singular values and norms use the core ``S_L S_Rᵀ`` of the two halves split at the
    bottleneck; eigenvalues and traces the cyclic product from the bottleneck on; the SVD the
    thin QR of the two halves.

    Attributes
    ----------
    chain : Chain
        The chain (its own scalar included).
    qr : tuple of str or None
        For ``svd``: the QR of the left and right half, each ``"cholesky-qr2"`` (CholeskyQR2,
        Householder QR if a round's Cholesky factor is ill-conditioned) or ``"householder"``
        (:func:`tall_qr_method`); None for the other problems.
    """

    method: ClassVar[str] = "chain"
    chain: Chain
    qr: tuple[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class DensePlan(Plan):
    """A map under :data:`~circuitalg.linalg.budget.SMALL_DENSE_BYTES` with no structural rule,
    evaluated densely."""

    method: ClassVar[str] = "dense"


@dataclass(frozen=True, kw_only=True)
class SumPlan(Plan):
    """A trace of a sum: the sum of the terms' traces.

    Attributes
    ----------
    parts : tuple of Plan
        The trace plan of each term.
    """

    method: ClassVar[str] = "sum"
    target: Sum
    parts: tuple[Plan, ...]


@dataclass(frozen=True, kw_only=True)
class GramTracesPlan(Plan):
    """A norm of a sum: the squared norm ``Σ_ij tr(T_iᵀ T_j)`` over its terms."""

    method: ClassVar[str] = "gram-traces"
    target: Sum


@dataclass(frozen=True, kw_only=True)
class IterativePlan(Plan):
    """``scipy.sparse.linalg`` on the operator (singular values, SVD, eigenvalues; needs ``k``).

    Attributes
    ----------
    k : int or None
        How many values were asked for.
    """

    method: ClassVar[str] = "iterative"
    k: int | None = None


def no_rule(problem: str, p: Plan) -> InvalidArgumentError:
    """The error of a problem's dispatch when no rule is registered for the type of ``p``."""
    return InvalidArgumentError(
        f"{problem}: no rule for plan type {type(p).__name__} (method {p.method!r}); "
        f"register one with planned_{problem}.register."
    )


def tall_qr_method(rows: int, cols: int) -> str:
    """``"cholesky-qr2"`` for a thin QR of a tall ``rows x cols`` matrix with
    ``rows >= CHOLQR_MIN_ASPECT * cols > 0``, else ``"householder"``."""
    return "householder" if rows < CHOLQR_MIN_ASPECT * cols or cols == 0 else "cholesky-qr2"


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


@singledispatch
def structural_plan(m: LinearMap, problem: str) -> Plan | None:
    """The plan of a map kind with a rule of its own for ``problem``, or None (then chains, sums,
    dense evaluation and the iterative route are considered, in that order). One rule per map
    kind, registered with ``structural_plan.register``."""
    return None


@structural_plan.register
def _(m: Dense, problem: str) -> Plan:
    side = Side.tall(m) if problem == "singular_values" else None
    detail = f"dense leaf {m.name} {m.shape[0]}x{m.shape[1]}"
    return LeafPlan(problem=problem, target=m, detail=detail, factor_side=side)


@structural_plan.register
def _(m: Identity, problem: str) -> Plan:
    return IdentityPlan(problem=problem, target=m, detail=f"identity on {m.space}")


@structural_plan.register
def _(m: Diagonal, problem: str) -> Plan:
    return DiagonalPlan(problem=problem, target=m, detail=f"diagonal {m.name} on {m.space}")


@structural_plan.register
def _(m: Kron, problem: str) -> Plan | None:
    if problem in ("eigenvalues", "trace") and not all(f.is_square for f in m.factors):
        return None
    return KronPlan(
        problem=problem, target=m,
        detail="Kronecker product: factor-wise, " + " ⊗ ".join(f"{f.shape}" for f in m.factors),
        parts=tuple(plan(f, problem) for f in m.factors),
    )


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
        p, detail=prefix + p.detail, scalar=scalar * p.scalar, transposed=transposed != p.transposed
    )


def _plan_target(m: LinearMap, problem: str, k: int | None) -> Plan:
    hit = structural_plan(m, problem)
    if hit is not None:
        return hit
    chain = as_chain(m)
    if len(chain.factors) >= 2:
        work = _sweep_bytes(chain, m.dtype.itemsize)
        r = chain.dims[chain.bottleneck]
        if work <= DEFAULT_MAX_BYTES:
            qr = None
            if problem == "svd":
                qr = (tall_qr_method(m.shape[0], r), tall_qr_method(m.shape[1], r))
            return ChainPlan(
                problem=problem, target=m,
                detail=f"factored chain of {len(chain.factors)} factors, dims {chain.dims}, "
                f"bottleneck {r} at position {chain.bottleneck}: core at most {r}x{r}",
                chain=chain, qr=qr,
            )
    if len(chain.factors) == 1 and chain.factors[0] is not m:  # a scalar pulled out of a product
        inner = plan(chain.factors[0], problem, k)
        return replace(inner, scalar=inner.scalar * chain.scalar)
    if isinstance(m, Sum) and problem == "trace":
        return SumPlan(
            problem=problem, target=m, detail=f"sum of the traces of {len(m.terms)} terms",
            parts=tuple(plan(t, problem) for t in m.terms),
        )
    small = nbytes(m.shape, m.dtype) <= SMALL_DENSE_BYTES
    if small:
        return DensePlan(
            problem=problem, target=m,
            detail=f"no structural rule; {m.shape[0]}x{m.shape[1]} is small, evaluated densely",
        )
    if isinstance(m, Sum) and problem == "norm":
        n = len(m.terms)
        return GramTracesPlan(
            problem=problem, target=m,
            detail=f"squared norm as Σ_ij tr(T_iᵀ T_j) over {n} terms ({n * (n + 1) // 2} traces)",
        )
    return IterativePlan(
        problem=problem, target=m, k=k,
        detail=f"no structural rule; scipy.sparse.linalg on the {m.shape[0]}x{m.shape[1]} operator"
        + ("" if k is not None else " (pass k)"),
    )
