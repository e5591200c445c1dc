"""circuitalg: the mathematics of transformer circuits as typed, factored linear maps.

Conventions: column vectors (a map X -> Y has a matrix of shape ``(Y.dim, X.dim)``,
``g @ f`` is g after f), spaces as types, float64 by default.
"""

from circuitalg.errors import (
    CircuitAlgError,
    ConfigError,
    DTypeError,
    InvalidArgumentError,
    InvalidArrayError,
    LoadError,
    NonFiniteError,
    ShapeError,
    SpaceMismatchError,
    TooLargeError,
)
from circuitalg.linalg import (
    Plan,
    as_operator,
    eigenvalues,
    matvec,
    norm,
    plan,
    rmatvec,
    singular_values,
    svd,
    to_dense,
    trace,
)
from circuitalg.maps import (
    Dense,
    Diagonal,
    Identity,
    Kron,
    LinearMap,
    Product,
    Scaled,
    Sum,
    Transpose,
    add,
    compose,
    diagonal,
    identity,
    kron,
    scale,
    transpose,
)
from circuitalg.spaces import ProductSpace, Space, product_space
from circuitalg.symbolic import latex, to_sympy

__version__ = "0.1.0"

__all__ = [
    # spaces
    "Space",
    "ProductSpace",
    "product_space",
    # maps
    "LinearMap",
    "Dense",
    "Identity",
    "Diagonal",
    "Product",
    "Sum",
    "Scaled",
    "Transpose",
    "Kron",
    "compose",
    "add",
    "scale",
    "transpose",
    "kron",
    "identity",
    "diagonal",
    # numerics
    "matvec",
    "rmatvec",
    "to_dense",
    "as_operator",
    "singular_values",
    "svd",
    "eigenvalues",
    "norm",
    "trace",
    "plan",
    "Plan",
    # symbolic
    "to_sympy",
    "latex",
    # errors
    "CircuitAlgError",
    "InvalidArgumentError",
    "SpaceMismatchError",
    "ShapeError",
    "InvalidArrayError",
    "NonFiniteError",
    "DTypeError",
    "TooLargeError",
    "LoadError",
    "ConfigError",
    "__version__",
]
