"""The exception family of circuitalg.

Every error a user can cause derives from :class:`CircuitAlgError`, and also from the
built-in exception a caller would naturally catch (``ValueError``, ``TypeError``,
``MemoryError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
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
    "CircuitAlgWarning",
    "PrecisionWarning",
    "check_int",
    "check_real",
]


class CircuitAlgError(Exception):
    """Base class of every exception raised by circuitalg for bad input or limits."""


class InvalidArgumentError(CircuitAlgError, ValueError):
    """An argument has a value outside what the function accepts (k, method, space name...)."""


class SpaceMismatchError(CircuitAlgError, ValueError):
    """Two maps were combined whose spaces do not meet (composition, sum, Kronecker product)."""


class ShapeError(CircuitAlgError, ValueError):
    """An array or vector has a shape that does not match the spaces it is declared on."""


class InvalidArrayError(CircuitAlgError, ValueError):
    """An array cannot be used as a weight (not 2-D, empty, not numeric...)."""


class NonFiniteError(InvalidArrayError):
    """An array contains NaN or infinite entries."""


class DTypeError(InvalidArrayError, TypeError):
    """An array or scalar has a dtype circuitalg cannot analyse (complex, object, strings...)."""


class TooLargeError(CircuitAlgError, MemoryError):
    """An operation would allocate more memory than the stated budget; nothing was allocated."""


class LoadError(CircuitAlgError, ValueError):
    """A checkpoint file or state dict cannot be read as a model."""


class ConfigError(CircuitAlgError, ValueError):
    """A model configuration is inconsistent or outside what circuitalg supports."""


class CircuitAlgWarning(UserWarning):
    """Base class of every warning circuitalg emits."""


class PrecisionWarning(CircuitAlgWarning, RuntimeWarning):
    """A result's a-priori error bound exceeds ``eps^(1/3)`` of its scale
    (see :mod:`circuitalg.linalg.accuracy`); the value is returned, but distrust it."""


def check_int(name: str, value: object, lo: int, hi: int | None = None, hint: str = "") -> int:
    """``value`` as an int if it is an integer in ``lo..hi`` (``hi=None``: no upper bound),
    else :class:`InvalidArgumentError` saying what was passed and what is accepted."""
    import numbers

    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and value >= lo and (hi is None or value <= hi):  # type: ignore[operator]
        return int(value)  # type: ignore[arg-type]
    wanted = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
    raise InvalidArgumentError(f"{name}={value!r}; pass {wanted}{hint}.")


def check_real(name: str, value: object, lo: float, hint: str = "") -> float:
    """``value`` as a float if it is a finite real number ``>= lo``, else
    :class:`InvalidArgumentError` saying what was passed and what is accepted."""
    import math
    import numbers

    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and math.isfinite(value) and value >= lo:  # type: ignore[arg-type]
        return float(value)  # type: ignore[arg-type]
    raise InvalidArgumentError(f"{name}={value!r}; pass a finite number >= {lo}{hint}.")
