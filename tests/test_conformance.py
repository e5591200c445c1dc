"""Every map kind against its dense matrix, through the conformance harness."""

import numpy as np
import pytest

import circuitalg as ca
from circuitalg.testing import CHECKS, Case, check_dense, check_singular_values, standard_cases

CASES = standard_cases(seed=0)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, check) -> None:
    check(case)


def test_cases_cover_every_map_kind() -> None:
    kinds = set()

    def walk(m: ca.LinearMap) -> None:
        kinds.add(type(m))
        for c in m.children:
            walk(c)

    for case in CASES:
        walk(case.map)
    assert kinds >= {ca.Dense, ca.Identity, ca.Diagonal, ca.Product, ca.Sum, ca.Scaled, ca.Transpose, ca.Kron}
    dtypes = {case.map.dtype for case in CASES}
    assert dtypes == {np.dtype(np.float32), np.dtype(np.float64)}
    shapes = {case.map.shape for case in CASES}
    assert (1, 1) in shapes
    assert any(r > c for r, c in shapes) and any(r < c for r, c in shapes)


def test_harness_detects_wrong_dense() -> None:
    """The harness can fail: a map paired with the wrong matrix is caught."""
    case = CASES[0]
    wrong = Case(case.name, case.map, case.dense + 1e-3)
    with pytest.raises(AssertionError):
        check_dense(wrong)
    with pytest.raises(AssertionError):
        check_singular_values(wrong)
