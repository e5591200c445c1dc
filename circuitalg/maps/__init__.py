"""The map algebra: nodes and the smart constructors that simplify them."""

from circuitalg.maps.nodes import (
    Dense,
    Diagonal,
    Identity,
    Kron,
    LinearMap,
    Product,
    Scaled,
    Sum,
    Transpose,
)
from circuitalg.maps.rules import add, compose, diagonal, identity, kron, scale, transpose

__all__ = [
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
]
