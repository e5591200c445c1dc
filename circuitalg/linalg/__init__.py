"""Numerical algorithms on maps, as registered functions (one file per problem).

- :mod:`~circuitalg.linalg.apply`: ``matmat``/``rmatmat`` per node, ``matvec``,
  ``to_dense`` (size-checked), ``as_operator`` (scipy ``LinearOperator``);
- :mod:`~circuitalg.linalg.plan`: the one place a routine picks its method;
- :mod:`~circuitalg.linalg.factors`: chains, the decompositions each leaf holds, small-core
  sweeps, tied leaves (:mod:`~circuitalg.linalg.ties`);
- :mod:`~circuitalg.linalg.svd`, :mod:`~circuitalg.linalg.eig`,
  :mod:`~circuitalg.linalg.norm`: the spectral routines, one rule per plan type;
- :mod:`~circuitalg.linalg.topk`: the largest entries of a map held as two thin factors;
- :mod:`~circuitalg.linalg.accuracy`: a-priori error bounds and precision warnings.

The routines use the caller's :class:`~circuitalg.runtime.Runtime` (``runtime.current()``).
"""

from circuitalg.linalg.accuracy import accuracy, magnitude
from circuitalg.linalg.apply import as_operator, matmat, matvec, rmatmat, rmatvec, to_dense
from circuitalg.linalg.budget import DEFAULT_MAX_BYTES, SMALL_DENSE_BYTES
from circuitalg.linalg.eig import eigenvalues, eigenvalues_many, eigenvalues_with_bounds
from circuitalg.linalg.factors import (
    GRAM_COND_LIMIT,
    Side,
    declare_tied,
    gram_factor,
    leaf_factor_method,
    tied_form,
)
from circuitalg.linalg.norm import norm, trace
from circuitalg.linalg.plan import Plan, plan
from circuitalg.linalg.svd import singular_values, svd
from circuitalg.linalg.topk import TopEntries, top_entries
from circuitalg.maps.chain import as_chain

__all__ = [
    "accuracy",
    "magnitude",
    "matmat",
    "rmatmat",
    "matvec",
    "rmatvec",
    "to_dense",
    "as_operator",
    "singular_values",
    "svd",
    "eigenvalues",
    "eigenvalues_many",
    "eigenvalues_with_bounds",
    "norm",
    "trace",
    "plan",
    "Plan",
    "top_entries",
    "TopEntries",
    "as_chain",
    "leaf_factor_method",
    "gram_factor",
    "Side",
    "declare_tied",
    "tied_form",
    "DEFAULT_MAX_BYTES",
    "SMALL_DENSE_BYTES",
    "GRAM_COND_LIMIT",
]
