"""Spaces: the types of linear maps.

A :class:`Space` is a name and a dimension; two spaces are equal when both are equal.
A :class:`ProductSpace` is the space of a Kronecker product (for instance positions x
resid for ``A ⊗ W_OV``); its coordinates are ordered row-major, so a vector on
``pos ⊗ resid`` is ``x.reshape(n_pos * d_model)`` of an array ``x`` of shape
``(n_pos, d_model)``, matching ``numpy.kron``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from circuitalg.errors import InvalidArgumentError

__all__ = ["Space", "ProductSpace", "product_space", "VOCAB_SPACE", "POS_SPACE"]


@dataclass(frozen=True)
class Space:
    """A named vector space of dimension ``dim``.

    Parameters
    ----------
    name : str
        What the space is, in the paper's vocabulary (``"vocab"``, ``"resid"``, ``"L0H3"``).
    dim : int
        Its dimension, a positive integer.
    """

    name: str
    dim: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(
                f"Space name must be a non-empty string, got {self.name!r}; "
                "name the space after what it is, e.g. Space('resid', 768)."
            )
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            try:
                as_int = int(self.dim)  # numpy integers are accepted
            except (TypeError, ValueError):
                as_int = None
            if as_int is None or as_int != self.dim or as_int < 1 or isinstance(self.dim, bool):
                raise InvalidArgumentError(
                    f"Space {self.name!r}: dim must be a positive integer, got {self.dim!r}."
                )
            object.__setattr__(self, "dim", as_int)

    def __str__(self) -> str:
        return f"{self.name}[{self.dim}]"


@dataclass(frozen=True)
class ProductSpace(Space):
    """The tensor product of ``factors`` (at least two spaces, none itself a product).

    Build it with :func:`product_space`, which flattens nested products.
    """

    factors: tuple[Space, ...] = field(default=())

    def __post_init__(self) -> None:
        super().__post_init__()
        fs = self.factors
        if (
            not isinstance(fs, tuple)
            or len(fs) < 2
            or not all(isinstance(f, Space) and not isinstance(f, ProductSpace) for f in fs)
        ):
            raise InvalidArgumentError(
                f"ProductSpace {self.name!r}: factors must be a tuple of at least two plain Spaces, got "
                f"{fs!r}; build products with ca.product_space(a, b)."
            )
        if math.prod(f.dim for f in fs) != self.dim:
            raise InvalidArgumentError(
                f"ProductSpace {self.name!r}: dim={self.dim} is not the product of its factors' dims "
                f"{[f.dim for f in fs]}; build products with ca.product_space(a, b)."
            )

    def __str__(self) -> str:
        return "(" + " ⊗ ".join(str(f) for f in self.factors) + ")"


def product_space(*spaces: Space) -> Space:
    """The tensor product of ``spaces``, flattened; a single space is returned unchanged.

    Raises
    ------
    InvalidArgumentError
        If no space is given or an argument is not a :class:`Space`.
    """
    flat: list[Space] = []
    for s in spaces:
        if not isinstance(s, Space):
            raise InvalidArgumentError(f"product_space expects Space objects, got {type(s).__name__}; make each with ca.Space(name, dim).")
        flat.extend(s.factors if isinstance(s, ProductSpace) else (s,))
    if not flat:
        raise InvalidArgumentError("product_space needs at least one space.")
    if len(flat) == 1:
        return flat[0]
    name = "⊗".join(s.name for s in flat)
    return ProductSpace(name, math.prod(s.dim for s in flat), tuple(flat))


#: Names of a model's token and position spaces (``W_E: vocab -> resid``, ``W_pos: pos -> resid``).
VOCAB_SPACE = "vocab"
POS_SPACE = "pos"
