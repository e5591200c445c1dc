"""Reading tensors out of a state dict: shapes checked, names in every message."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from circuitalg.errors import LoadError
from circuitalg.model.params import to_numpy

__all__ = ["as_array", "get_tensor", "tensor_shape", "count_layers", "check_no_extra", "TensorReader"]


def as_array(value: Any) -> np.ndarray:
    """``value`` (numpy or torch) as a numpy array."""
    return np.asarray(to_numpy(value))


def get_tensor(sd: Mapping[str, Any], key: str, shape: tuple[int, ...], source: str) -> np.ndarray:
    if key not in sd:
        raise LoadError(f"{source}: missing tensor {key!r}; the checkpoint is incomplete or not this layout.")
    arr = as_array(sd[key])
    if arr.shape != shape:
        raise LoadError(f"{source}: tensor {key!r} has shape {arr.shape}, expected {shape}.")
    return arr


def tensor_shape(sd: Mapping[str, Any], key: str, ndim: int, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise LoadError(f"{source}: missing tensor {key!r}; the checkpoint is incomplete or not this layout.")
    shape = tuple(int(s) for s in getattr(sd[key], "shape", np.shape(sd[key])))
    if len(shape) != ndim:
        raise LoadError(f"{source}: tensor {key!r} has shape {shape}, expected a {ndim}-D tensor.")
    return shape


def count_layers(keys: Any, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    n = max(found) + 1 if found else 0
    missing = sorted(set(range(n)) - found)
    if missing:
        raise LoadError(f"blocks {missing} are missing (found blocks {sorted(found)}).")
    return n


def check_no_extra(sd: Mapping[str, Any], used: set[str], buffers: re.Pattern[str], source: str) -> None:
    extra = sorted(k for k in sd if k not in used and not buffers.match(k))
    if extra:
        raise LoadError(
            f"{source}: unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''}; the architecture "
            "is not one circuitalg supports (GPT-2 style: learned positions, LayerNorm, GELU MLP) or the "
            "config does not match the checkpoint."
        )


class TensorReader:
    """Reads tensors of one state dict by name and expected shape (``reader(key, shape)``),
    remembering which were read, so :meth:`check_all_read` can refuse the rest."""

    def __init__(self, sd: Mapping[str, Any], source: str) -> None:
        self.sd, self.source = sd, source
        self.used: set[str] = set()

    def __call__(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        self.used.add(key)
        return get_tensor(self.sd, key, shape, self.source)

    def check_all_read(self, buffers: re.Pattern[str]) -> None:
        """Raise if a tensor was neither read nor a known buffer (see :func:`check_no_extra`)."""
        check_no_extra(self.sd, self.used, buffers, self.source)
