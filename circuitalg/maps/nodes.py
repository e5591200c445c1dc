"""The nodes of the map algebra: small immutable objects.

Leaves hold data (:class:`Dense`, :class:`Identity`, :class:`Diagonal`); composite nodes
hold children (:class:`Product`, :class:`Sum`, :class:`Scaled`, :class:`Transpose`,
:class:`Kron`). Nodes check their spaces when built, but do not simplify: use the smart
constructors in :mod:`circuitalg.maps.rules` (or the operators ``@ + - * .T``), which
flatten and simplify. Algorithms live in :mod:`circuitalg.linalg` as registered
functions; the methods here are thin shortcuts to them (imported when called, so this module
needs nothing from :mod:`circuitalg.linalg` to load).

Conventions: column vectors. A map from X to Y holds a matrix of shape ``(Y.dim, X.dim)``
and ``g @ f`` is g after f.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from circuitalg.errors import (
    DTypeError,
    InvalidArgumentError,
    InvalidArrayError,
    NonFiniteError,
    ShapeError,
    SpaceMismatchError,
)
from circuitalg.spaces import Space, product_space

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse.linalg
    import sympy

    from circuitalg.linalg.factors import LeafCache

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
    "as_float_array",
]

_name_counter = itertools.count()


def check_float_dtype(dtype: Any, what: str) -> np.dtype:
    """``dtype`` as float32 or float64, else :class:`DTypeError` naming ``what``."""
    try:
        want = np.dtype(dtype)
    except TypeError:
        want = None
    if want not in (np.dtype(np.float32), np.dtype(np.float64)):
        shown = want.name if want is not None else repr(dtype)
        raise DTypeError(f"{what}: dtype {shown} requested; use numpy.float32 or numpy.float64.")
    return want


def as_float_array(
    values: Any, what: str | Callable[[], str], *, ndim: int, dtype: Any = None
) -> np.ndarray:
    """Validate and convert ``values`` to a read-only float32/float64 array.

    Integers, booleans and float16 become float64; float32 is kept (pass ``dtype`` to
    force one). Complex, object and string arrays raise :class:`DTypeError`; arrays
    with the wrong number of dimensions raise :class:`InvalidArrayError`; NaN or Inf
    raise :class:`NonFiniteError`. ``what`` names the tensor in messages (a callable is
    called only when an error is raised).
    """

    def what_str() -> str:
        return what() if callable(what) else what

    try:
        arr = np.asarray(values)
    except Exception as exc:  # ragged lists and the like
        raise InvalidArrayError(f"{what_str()}: cannot be read as an array ({exc}).") from None
    kind = arr.dtype.kind
    if kind in "biu" or arr.dtype == np.float16:
        arr = arr.astype(np.float64)
    elif kind == "f":
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
    else:
        raise DTypeError(
            f"{what_str()}: dtype {arr.dtype} is not supported; circuitalg analyses real "
            "float32/float64 weights. Convert with array.astype(numpy.float64)"
            + (" (take .real if the imaginary part is zero)." if kind == "c" else ".")
        )
    if dtype is not None:
        arr = arr.astype(check_float_dtype(dtype, what_str()), copy=False)
    if arr.ndim != ndim:
        raise InvalidArrayError(
            f"{what_str()}: expected a {ndim}-D array, got {arr.ndim}-D with shape {arr.shape}."
            + (" Stack per-head weights into separate maps, one per head." if arr.ndim > 2 else "")
        )
    if arr.size == 0:
        raise InvalidArrayError(f"{what_str()}: array of shape {arr.shape} is empty.")
    # one summing pass, no boolean temporary: NaN and Inf propagate into the sum (Inf - Inf is NaN);
    # a finite array whose sum overflows (entries near 1e308) falls through to the exact test
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum(arr, dtype=np.float64))
    if not math.isfinite(total) and not (finite := np.isfinite(arr)).all():
        bad = np.argwhere(~finite)
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(bad.shape[0] - n_nan)
        raise NonFiniteError(
            f"{what_str()}: contains {n_nan} NaN and {n_inf} infinite entries (first at index "
            f"{tuple(int(i) for i in bad[0])}); fix or clean the weights before analysing them."
        )
    if arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


def check_scalar(c: Any) -> float | int:
    """``c`` as an int or float, else :class:`DTypeError` (complex, bool, non-numbers) or
    :class:`NonFiniteError` (NaN, Inf): the scalars a map may be multiplied by."""
    if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, float, np.integer, np.floating)):
        if isinstance(c, (complex, np.complexfloating)):
            raise DTypeError(f"scalar {c!r} is complex; circuitalg maps are real.")
        raise DTypeError(f"cannot scale a map by {type(c).__name__} {c!r}; use a real number.")
    if not math.isfinite(float(c)):
        raise NonFiniteError(f"cannot scale a map by {c!r}; the scalar must be finite.")
    return int(c) if isinstance(c, (int, np.integer)) else float(c)


class LinearMap:
    """A typed linear map from ``domain`` to ``codomain``; the base of every node.

    A map is immutable and hashable by identity. Its matrix has shape
    ``(codomain.dim, domain.dim)``; nothing is materialised unless :meth:`to_dense` is
    called.
    """

    __array_ufunc__ = None  # numpy defers to us, so ``ndarray @ map`` raises TypeError

    domain: Space
    codomain: Space

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _init(self, **attrs: Any) -> None:
        for k, v in attrs.items():
            object.__setattr__(self, k, v)

    # ----- structure -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(codomain.dim, domain.dim)``."""
        return (self.codomain.dim, self.domain.dim)

    @property
    def children(self) -> tuple[LinearMap, ...]:
        """The maps this node is built from (empty for leaves)."""
        return ()

    @cached_property
    def dtype(self) -> np.dtype:
        """The result dtype: float64 unless every leaf is float32."""
        return np.result_type(*(c.dtype for c in self.children))

    @property
    def rank_bound(self) -> int:
        """An upper bound on the rank, from structure alone (no numerics)."""
        return min(self.shape)

    @property
    def is_square(self) -> bool:
        """Whether domain and codomain have the same dimension."""
        return self.domain.dim == self.codomain.dim

    def leaves(self) -> list[LinearMap]:
        """The leaf maps, left to right, with repeats."""
        if not self.children:
            return [self]
        return [leaf for c in self.children for leaf in c.leaves()]

    # ----- operators -------------------------------------------------------------
    def __matmul__(self, other: Any) -> LinearMap:
        from circuitalg.maps.rules import compose

        if isinstance(other, LinearMap):
            return compose(self, other)
        if isinstance(other, np.ndarray):
            raise InvalidArgumentError(
                "map @ ndarray is ambiguous; use map.matvec(x) to apply the map to vectors, "
                "or wrap the array as ca.Dense(array, domain=..., codomain=...) to compose."
            )
        return NotImplemented

    def __add__(self, other: Any) -> LinearMap:
        from circuitalg.maps.rules import add

        if isinstance(other, LinearMap):
            return add(self, other)
        return NotImplemented

    def __sub__(self, other: Any) -> LinearMap:
        from circuitalg.maps.rules import add, scale

        if isinstance(other, LinearMap):
            return add(self, scale(-1, other))
        return NotImplemented

    def __neg__(self) -> LinearMap:
        from circuitalg.maps.rules import scale

        return scale(-1, self)

    def __mul__(self, c: Any) -> LinearMap:
        from circuitalg.maps.rules import scale

        if isinstance(c, LinearMap):
            raise InvalidArgumentError("use @ to compose two maps; * multiplies a map by a scalar.")
        return scale(c, self)

    __rmul__ = __mul__

    def __truediv__(self, c: Any) -> LinearMap:
        from circuitalg.maps.rules import scale

        c = check_scalar(c)
        if c == 0:
            raise InvalidArgumentError("cannot divide a map by zero.")
        return scale(1.0 / c, self)

    @property
    def T(self) -> LinearMap:  # noqa: N802 - numpy's name
        """The transpose, pushed through products, sums and Kronecker products."""
        from circuitalg.maps.rules import transpose

        return transpose(self)

    # ----- numerics (thin shortcuts to circuitalg.linalg) ----------------------------------
    def matvec(self, x: Any) -> np.ndarray:
        """Apply the map to ``x`` of shape ``(domain.dim,)`` or ``(domain.dim, k)``."""
        from circuitalg.linalg.apply import matvec

        return matvec(self, x)

    def rmatvec(self, y: Any) -> np.ndarray:
        """Apply the transpose to ``y`` of shape ``(codomain.dim,)`` or ``(codomain.dim, k)``."""
        from circuitalg.linalg.apply import rmatvec

        return rmatvec(self, y)

    def to_dense(self, max_bytes: int | None = None) -> np.ndarray:
        """The dense matrix, refused with :class:`TooLargeError` above ``max_bytes``."""
        from circuitalg.linalg.apply import to_dense

        return to_dense(self, max_bytes=max_bytes)

    def as_operator(self) -> scipy.sparse.linalg.LinearOperator:
        """A :class:`scipy.sparse.linalg.LinearOperator` applying this map."""
        from circuitalg.linalg.apply import as_operator

        return as_operator(self)

    def singular_values(self, k: int | None = None) -> np.ndarray:
        """Singular values, descending: ``rank_bound`` of them, or the top ``k``."""
        from circuitalg.linalg.svd import singular_values

        return singular_values(self, k=k)

    def svd(self, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(U, S, Vh)`` with ``self ≈ U @ diag(S) @ Vh``, truncated to ``rank_bound`` or ``k``."""
        from circuitalg.linalg.svd import svd

        return svd(self, k=k)

    def eigenvalues(self, k: int | None = None) -> np.ndarray:
        """Eigenvalues of a square map: the nonzero spectrum, zero-padded to ``rank_bound``."""
        from circuitalg.linalg.eig import eigenvalues

        return eigenvalues(self, k=k)

    def norm(self) -> float:
        """The Frobenius norm, from small Gram factors (no SVD)."""
        from circuitalg.linalg.norm import norm

        return norm(self)

    def trace(self) -> float:
        """The trace of a square map, from the cyclic small product."""
        from circuitalg.linalg.norm import trace

        return trace(self)

    # ----- symbolic twin --------------------------------------------------------------
    @cached_property
    def symbol(self) -> sympy.MatrixExpr:
        """The sympy matrix expression twin (MatrixSymbols named after the leaves)."""
        from circuitalg.maps.twin import to_sympy

        return to_sympy(self)

    def latex(self) -> str:
        """LaTeX of the symbolic twin."""
        from circuitalg.maps.twin import latex

        return latex(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.symbol} : {self.domain} -> {self.codomain}>"


class Dense(LinearMap):
    """A map given by a dense array of shape ``(codomain.dim, domain.dim)``.

    The array is validated (2-D, real, finite) and stored as a read-only view, not
    copied: do not modify the original afterwards, since decompositions of this leaf are
    cached (:attr:`cache`) and reused.

    Parameters
    ----------
    array : array_like
        The matrix, column-vector convention. A row-vector weight (``x @ W``) is ``W.T``.
    domain, codomain : Space
        The spaces; ``array.shape`` must equal ``(codomain.dim, domain.dim)``.
    name : str, optional
        The symbol's name (``"W_E"``); a unique ``M<n>`` if omitted.
    dtype : numpy dtype, optional
        Force float32 or float64; by default float32 is kept and other reals become float64.
    tied_to : Dense, optional
        The embedding this leaf (an unembedding, ``n x d``) may be tied to: ``array`` is
        possibly ``tied_to.arrayᵀ diag(g) P`` (``d x n``; a folded final norm's weight ``g``,
        ``P`` the LayerNorm centring or the identity). Nothing is trusted: the numeric routines
        verify the form over every entry on first use and use it only if it holds
        (:mod:`circuitalg.linalg.ties`).
    """

    def __init__(
        self,
        array: Any,
        domain: Space,
        codomain: Space,
        name: str | None = None,
        *,
        dtype: Any = None,
        tied_to: Dense | None = None,
    ) -> None:
        if name is None:
            name = f"M{next(_name_counter)}"
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"Dense name must be a non-empty string, got {name!r}.")
        for role, s in (("domain", domain), ("codomain", codomain)):
            if not isinstance(s, Space):
                raise InvalidArgumentError(
                    f"Dense {name!r}: {role} must be a ca.Space, got {type(s).__name__}; "
                    f"e.g. ca.Space('resid', 768)."
                )
        arr = as_float_array(array, f"Dense {name!r}", ndim=2, dtype=dtype)
        expected = (codomain.dim, domain.dim)
        if arr.shape != expected:
            hint = (
                " The array looks transposed: if it is a row-vector weight (x @ W), pass array.T."
                if arr.shape == expected[::-1]
                else ""
            )
            raise ShapeError(
                f"Dense {name!r}: array shape {arr.shape} does not match (codomain.dim, domain.dim) "
                f"= {expected} for {domain} -> {codomain}.{hint}"
            )
        if tied_to is not None:
            if not isinstance(tied_to, Dense):
                raise InvalidArgumentError(
                    f"Dense {name!r}: tied_to must be a ca.Dense leaf (the embedding), got {type(tied_to).__name__}."
                )
            if tied_to.shape != arr.shape[::-1]:
                raise ShapeError(
                    f"Dense {name!r}: a {arr.shape} leaf cannot be the transpose of {tied_to.name!r} "
                    f"{tied_to.shape} times a d x d map; tie the unembedding (vocab x d_model) to the "
                    "embedding (d_model x vocab)."
                )
        self._init(array=arr, domain=domain, codomain=codomain, name=name, tied_to=tied_to)

    @property
    def dtype(self) -> np.dtype:  # type: ignore[override]
        return self.array.dtype

    @cached_property
    def cache(self) -> LeafCache:
        """What the numeric routines have computed about this leaf (Gram matrices, triangular
        factors, the verified tie, its norm bound): each entry a pure function of the array and of
        :attr:`tied_to`, filled once on first use, so it never changes a result
        (:class:`circuitalg.linalg.factors.LeafCache`)."""
        from circuitalg.linalg.factors import LeafCache

        return LeafCache()


class Identity(LinearMap):
    """The identity map on ``space``."""

    def __init__(self, space: Space, dtype: Any = np.float64) -> None:
        if not isinstance(space, Space):
            raise InvalidArgumentError(f"identity needs a ca.Space, got {type(space).__name__}; e.g. ca.identity(ca.Space('resid', 768)).")
        self._init(domain=space, codomain=space, space=space, _dtype=check_float_dtype(dtype, f"identity on {space}"))

    @property
    def dtype(self) -> np.dtype:  # type: ignore[override]
        return self._dtype


class Diagonal(LinearMap):
    """A diagonal map on ``space`` with diagonal ``values`` (for example frozen LN scales)."""

    def __init__(self, values: Any, space: Space, name: str | None = None) -> None:
        if name is None:
            name = f"D{next(_name_counter)}"
        if not isinstance(space, Space):
            raise InvalidArgumentError(f"diagonal {name!r}: space must be a ca.Space.")
        vals = as_float_array(values, f"diagonal {name!r}", ndim=1)
        if vals.shape[0] != space.dim:
            raise ShapeError(
                f"diagonal {name!r}: {vals.shape[0]} values given for space {space}; "
                f"pass exactly {space.dim}."
            )
        self._init(values=vals, domain=space, codomain=space, space=space, name=name)

    @property
    def dtype(self) -> np.dtype:  # type: ignore[override]
        return self.values.dtype

    @property
    def rank_bound(self) -> int:
        return int(np.count_nonzero(self.values))


def require_map(m: Any, what: str) -> LinearMap:
    """``m`` if it is a :class:`LinearMap`, else :class:`InvalidArgumentError` naming ``what``."""
    if not isinstance(m, LinearMap):
        raise InvalidArgumentError(
            f"{what} takes a ca.LinearMap, got {type(m).__name__}; wrap arrays as "
            "ca.Dense(array, domain=..., codomain=...)."
        )
    return m


def _composition_hint(left: LinearMap, right: LinearMap) -> str:
    a, b = left.domain, right.codomain
    if right.domain == a:
        return " Did you mean to transpose the right-hand map (right.T)?"
    if left.codomain == b:
        return " Did you mean to transpose the left-hand map (left.T)?"
    if a.dim == b.dim:
        return (
            " The dimensions agree but the names differ: if these are the same space, "
            "build both maps on one Space object."
        )
    return " Check the order of the factors (g @ f means g after f)."


def _short(m: LinearMap) -> str:
    try:
        return str(m.symbol)
    except Exception:  # pragma: no cover - symbol of a valid map never fails
        return type(m).__name__


def label(m: LinearMap) -> str:
    """The map as text, as ``str(m.symbol)`` prints it, without building the sympy twin for the
    common shapes (leaves, their transposes and products of those): messages about per-head
    results name thousands of maps."""
    def leaf(f: LinearMap) -> str | None:
        if isinstance(f, (Dense, Diagonal)):
            return f.name
        if isinstance(f, Transpose) and isinstance(f.inner, (Dense, Diagonal)):
            return f.inner.name + ".T"
        return None

    names = [leaf(f) for f in m.factors] if isinstance(m, Product) else [leaf(m)]
    return str(m.symbol) if None in names else "*".join(names)  # type: ignore[arg-type]


def check_composable(left: LinearMap, right: LinearMap) -> None:
    """Raise :class:`SpaceMismatchError` unless ``left.domain == right.codomain``."""
    if left.domain != right.codomain:
        raise SpaceMismatchError(
            f"cannot compose {_short(left)} @ {_short(right)}: {_short(left)} reads from "
            f"{left.domain} but {_short(right)} writes to {right.codomain}."
            + _composition_hint(left, right)
        )


class Product(LinearMap):
    """The composition ``factors[0] @ factors[1] @ ... @ factors[-1]`` (at least two)."""

    def __init__(self, factors: Sequence[LinearMap]) -> None:
        factors = tuple(factors)
        if len(factors) < 2:
            raise InvalidArgumentError("Product needs at least two factors; use ca.compose.")
        for f in factors:
            if not isinstance(f, LinearMap):
                raise InvalidArgumentError(f"cannot compose a {type(f).__name__}; wrap arrays in ca.Dense.")
        for left, right in zip(factors, factors[1:]):
            check_composable(left, right)
        self._init(factors=factors, domain=factors[-1].domain, codomain=factors[0].codomain)

    @property
    def children(self) -> tuple[LinearMap, ...]:
        return self.factors

    @property
    def dims(self) -> tuple[int, ...]:
        """``(codomain.dim, inner dims..., domain.dim)``: the chain's k+1 dimensions."""
        return (self.codomain.dim,) + tuple(f.domain.dim for f in self.factors)

    @property
    def rank_bound(self) -> int:
        return min(min(self.dims), *(f.rank_bound for f in self.factors))


class Sum(LinearMap):
    """The sum of ``terms`` (at least two), all on the same domain and codomain."""

    def __init__(self, terms: Sequence[LinearMap]) -> None:
        terms = tuple(terms)
        if len(terms) < 2:
            raise InvalidArgumentError("Sum needs at least two terms; use ca.add.")
        first = terms[0]
        for t in terms[1:]:
            if not isinstance(t, LinearMap):
                raise InvalidArgumentError(f"cannot add a {type(t).__name__} to a map.")
            if t.domain != first.domain or t.codomain != first.codomain:
                raise SpaceMismatchError(
                    f"cannot add {_short(first)} + {_short(t)}: {_short(first)} maps "
                    f"{first.domain} -> {first.codomain} but {_short(t)} maps {t.domain} -> "
                    f"{t.codomain}. Terms of a sum must share domain and codomain."
                )
        self._init(terms=terms, domain=first.domain, codomain=first.codomain)

    @property
    def children(self) -> tuple[LinearMap, ...]:
        return self.terms

    @cached_property
    def rank_bound(self) -> int:  # type: ignore[override]
        bound = min(min(self.shape), sum(t.rank_bound for t in self.terms))
        from circuitalg.maps.chain import as_chain

        chain = as_chain(self)  # common outer factors bound the rank too
        if len(chain.factors) > 1:
            bound = min(bound, min(chain.dims), *(f.rank_bound for f in chain.factors))
        return bound


class Scaled(LinearMap):
    """``scalar * inner`` for a real, finite scalar."""

    def __init__(self, scalar: Any, inner: LinearMap) -> None:
        require_map(inner, "Scaled")
        self._init(scalar=check_scalar(scalar), inner=inner, domain=inner.domain, codomain=inner.codomain)

    @property
    def children(self) -> tuple[LinearMap, ...]:
        return (self.inner,)

    @property
    def rank_bound(self) -> int:
        return 0 if self.scalar == 0 else self.inner.rank_bound


class Transpose(LinearMap):
    """The transpose of a leaf; smart constructors push transposes down to leaves."""

    def __init__(self, inner: LinearMap) -> None:
        require_map(inner, "Transpose")
        self._init(inner=inner, domain=inner.codomain, codomain=inner.domain)

    @property
    def children(self) -> tuple[LinearMap, ...]:
        return (self.inner,)

    @property
    def rank_bound(self) -> int:
        return self.inner.rank_bound


class Kron(LinearMap):
    """The Kronecker product ``factors[0] ⊗ factors[1] ⊗ ...`` on product spaces.

    ``(A ⊗ W) vec(x) = vec(A x Wᵀ)`` for ``x`` of shape ``(A.domain.dim, W.domain.dim)``
    and row-major ``vec``, exactly as :func:`numpy.kron`.
    """

    def __init__(self, factors: Sequence[LinearMap]) -> None:
        factors = tuple(factors)
        if len(factors) < 2:
            raise InvalidArgumentError("Kron needs at least two factors; use ca.kron.")
        self._init(
            factors=factors,
            domain=product_space(*(f.domain for f in factors)),
            codomain=product_space(*(f.codomain for f in factors)),
        )

    @property
    def children(self) -> tuple[LinearMap, ...]:
        return self.factors

    @property
    def rank_bound(self) -> int:
        return math.prod(f.rank_bound for f in self.factors)
