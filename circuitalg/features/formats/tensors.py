"""What every dictionary format does with the tensors it reads: convert them to numpy and check
each against the shape its configuration implies."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import LoadError

__all__ = ["as_numpy", "take_tensor"]


def as_numpy(v: Any) -> np.ndarray:
    """``v`` as a numpy array; a torch tensor (from a torch file) is detached, and its 16-bit
    floats widened to float32 exactly (numpy has no bfloat16)."""
    if hasattr(v, "detach"):
        import torch

        t = v.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.to(torch.float32)
        return t.numpy()
    return np.asarray(v)


def take_tensor(tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...], file: Path, why: str) -> np.ndarray:
    """``tensors[name]``, checked: present, floating point, of ``shape`` and finite; else LoadError
    naming ``file``, the tensor and ``why`` it has that shape."""
    if name not in tensors:
        raise LoadError(f"{file}: tensor {name!r} is missing (expected shape {shape}: {why}).")
    a = np.asarray(tensors[name])
    if a.dtype.kind != "f":
        raise LoadError(f"{file}: tensor {name!r} has dtype {a.dtype}, expected floating point.")
    if tuple(a.shape) != shape:
        raise LoadError(f"{file}: tensor {name!r} has shape {tuple(a.shape)}, expected {shape} ({why}).")
    if not np.all(np.isfinite(a)):
        raise LoadError(f"{file}: tensor {name!r} holds non-finite values (NaN or infinity).")
    return a
