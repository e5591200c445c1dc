"""Plans are types: each problem dispatches on the plan's type, never on its ``method`` string."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

import circuitalg as ca
from circuitalg.linalg.eig import planned_eigenvalues
from circuitalg.linalg.factors import Side
from circuitalg.linalg.norm import planned_norm, planned_trace
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
    structural_plan,
)
from circuitalg.linalg.svd import planned_singular_values, planned_svd
from circuitalg.runtime import SERIAL

DISPATCH = {
    "singular_values": planned_singular_values,
    "svd": planned_svd,
    "eigenvalues": planned_eigenvalues,
    "norm": planned_norm,
    "trace": planned_trace,
}
RULES = {
    "singular_values": lambda p: planned_singular_values(p, SERIAL),
    "svd": lambda p: planned_svd(p, SERIAL),
    "eigenvalues": lambda p: planned_eigenvalues(p, SERIAL),
    "norm": lambda p: planned_norm(p, [], SERIAL),
    "trace": lambda p: planned_trace(p, SERIAL),
}


def _maps() -> dict[str, ca.LinearMap]:
    rng = np.random.default_rng(0)
    s3, s4, s5 = ca.Space("s3", 3), ca.Space("s4", 4), ca.Space("s5", 5)
    big, r = ca.Space("big", 3000), ca.Space("r", 3)
    vocab, d, h = ca.Space("vocab", 400), ca.Space("d", 20), ca.Space("h", 4)
    E = ca.Dense(rng.standard_normal((20, 400)), vocab, d, "E")
    U = ca.Dense(rng.standard_normal((400, 20)), d, vocab, "U")
    O = ca.Dense(rng.standard_normal((20, 4)), h, d, "O")
    V = ca.Dense(rng.standard_normal((4, 20)), d, h, "V")
    P, Q = (ca.Dense(rng.standard_normal((5, 5)), s5, s5, n) for n in "PQ")
    a1, b1, a2, b2 = (rng.standard_normal(s) for s in ((3000, 3), (3, 3000), (3000, 3), (3, 3000)))
    A1, B1, A2, B2 = (ca.Dense(a1, r, big, "A1"), ca.Dense(b1, big, r, "B1"), ca.Dense(a2, r, big, "A2"),
                      ca.Dense(b2, big, r, "B2"))
    big_sum = A1 @ B1 + A2 @ B2
    return {
        "tall": ca.Dense(rng.standard_normal((5, 3)), s3, s5, "T"),
        "wide": ca.Dense(rng.standard_normal((3, 5)), s5, s3, "W"),
        "square": P,
        "identity": ca.identity(s4),
        "diagonal": ca.diagonal(np.array([3.0, -1.0, 0.5, 2.0]), s4, "D"),
        "kron": ca.kron(ca.Dense(rng.standard_normal((3, 3)), s3, s3, "K"), P),
        "ov": U @ O @ V @ E,
        "plain-sum": P + Q - P @ Q,
        "big-sum": big_sum,
    }


EXPECTED = {  # (map, problem): plan type
    ("tall", "singular_values"): LeafPlan,
    ("square", "norm"): LeafPlan,
    ("identity", "svd"): IdentityPlan,
    ("diagonal", "eigenvalues"): DiagonalPlan,
    ("kron", "trace"): KronPlan,
    ("ov", "svd"): ChainPlan,
    ("ov", "eigenvalues"): ChainPlan,
    ("plain-sum", "singular_values"): DensePlan,
    ("plain-sum", "trace"): SumPlan,
    ("big-sum", "norm"): GramTracesPlan,
    ("big-sum", "singular_values"): IterativePlan,
}


@pytest.mark.parametrize(("name", "problem"), list(EXPECTED), ids=[f"{n}-{p}" for n, p in EXPECTED])
def test_each_plan_type_dispatches_to_its_own_rule(name, problem) -> None:
    m = _maps()[name]
    p = ca.plan(m, problem, 2 if problem == "singular_values" and name == "big-sum" else None)
    assert type(p) is EXPECTED[(name, problem)] and p.problem == problem
    rules = DISPATCH[problem]
    assert rules.dispatch(type(p)) is rules.registry[type(p)] is not rules.registry[object]  # its own rule
    out = RULES[problem](p)  # the rule of the plan's type computes what the public routine returns
    if problem == "singular_values":
        np.testing.assert_array_equal(abs(p.scalar) * out[:2], ca.singular_values(m, 2)[:2])
    elif problem == "norm":
        assert abs(p.scalar) * out == ca.norm(m)
    elif problem == "trace":
        assert p.scalar * out == ca.trace(m)
    elif problem == "eigenvalues":
        w = p.scalar * out[0]
        np.testing.assert_allclose(np.sort_complex(w[np.abs(w) > 1e-9]), np.sort_complex(
            (v := ca.eigenvalues(m))[np.abs(v) > 1e-9]), rtol=1e-12)
    else:
        np.testing.assert_array_equal(out[1][: len(ca.svd(m)[1])], ca.svd(m)[1])


def test_plans_record_their_structural_sub_choices() -> None:
    maps = _maps()
    assert ca.plan(maps["tall"], "singular_values").factor_side == Side.COLS  # its triangular factor
    assert ca.plan(maps["wide"], "singular_values").factor_side == Side.ROWS
    assert ca.plan(maps["square"], "singular_values").factor_side is None  # its own array
    assert ca.plan(maps["tall"], "norm").factor_side is None  # the norm reads the array
    ov_svd = ca.plan(maps["ov"], "svd")
    assert ov_svd.qr == ("cholesky-qr2", "cholesky-qr2")  # 400 x 4 halves
    assert ca.plan(maps["ov"], "singular_values").qr is None
    assert ca.plan(maps["square"] @ maps["square"], "svd").qr == ("householder", "householder")
    kron = ca.plan(maps["kron"], "singular_values")
    assert [type(q) for q in kron.parts] == [LeafPlan, LeafPlan]
    sums = ca.plan(maps["plain-sum"], "trace")
    assert [q.method for q in sums.parts] == ["leaf", "leaf", "chain"]
    assert ca.plan(maps["big-sum"], "svd", 2).k == 2


def test_method_names_are_the_short_names() -> None:
    names = {cls: cls.method for cls in (LeafPlan, IdentityPlan, DiagonalPlan, KronPlan, ChainPlan, DensePlan,
                                         SumPlan, GramTracesPlan, IterativePlan)}
    assert list(names.values()) == ["leaf", "identity", "diagonal", "kron", "chain", "dense", "sum",
                                    "gram-traces", "iterative"]


@dataclass(frozen=True, kw_only=True)
class Impostor(Plan):
    """A plan type with no rules, claiming the method name of a dense leaf."""

    method: ClassVar[str] = "leaf"


@pytest.mark.parametrize("problem", list(RULES))
def test_an_unknown_plan_type_is_an_error_naming_it(problem) -> None:
    leaf = _maps()["square"]
    p = Impostor(problem=problem, target=leaf, detail="no rule")
    message = rf"^{problem}: no rule for plan type Impostor \(method 'leaf'\)"
    with pytest.raises(ca.InvalidArgumentError, match=message):
        RULES[problem](p)


class Signs(ca.Diagonal):
    """A diagonal of ±1: a map kind of its own, to show what adding one takes."""


@dataclass(frozen=True, kw_only=True)
class SignsPlan(Plan):
    method: ClassVar[str] = "signs"
    target: Signs


@structural_plan.register
def _(m: Signs, problem: str) -> Plan:
    return SignsPlan(problem=problem, target=m, detail=f"signs on {m.space}")


@planned_norm.register
def _(p: SignsPlan, gram_err: list[float], rt) -> float:
    return math.sqrt(p.target.shape[0])


def test_a_new_map_kind_needs_one_plan_rule_and_one_rule_per_problem() -> None:
    s = Signs(np.array([1.0, -1.0, -1.0, 1.0]), ca.Space("s4", 4), "S")
    p = ca.plan(-2.0 * s, "norm")
    assert (type(p), p.method, p.scalar) == (SignsPlan, "signs", -2.0)
    assert p.detail == f"scalar -2 times signs on {s.space}"
    assert ca.norm(-2.0 * s) == 4.0
    with pytest.raises(ca.InvalidArgumentError, match="singular_values: no rule for plan type SignsPlan"):
        ca.singular_values(s)
