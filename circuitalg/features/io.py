"""Reading and writing dictionaries: one module per format in :mod:`circuitalg.features.formats`.

Each format module exposes ``NAME``, ``detect(path) -> bool`` (from the files, never from the
path's name alone), ``load(path, dtype) -> Dictionary | DictionarySet`` and, where circuitalg
writes the format, ``save(d, path)``. :data:`FORMATS` is the one list of them, in detection order.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, LoadError
from circuitalg.features.dictionary import Dictionary, DictionarySet

__all__ = ["FORMATS", "load_dictionary", "save_dictionary", "detect_format"]

#: the formats, in detection order (the most specific files first)
FORMATS = ("circuit_tracer", "gemma_scope", "saelens", "sparsify", "dictionary_learning", "lm_saes")


def format_module(name: str) -> ModuleType:
    """The module implementing format ``name``."""
    if name not in FORMATS:
        raise InvalidArgumentError(f"unknown dictionary format {name!r}; use one of {', '.join(FORMATS)}.")
    return importlib.import_module(f"circuitalg.features.formats.{name}")


def detect_format(path: str | Path) -> str:
    """The name of the format the files at ``path`` are in; LoadError if none matches."""
    p = Path(path)
    if not p.exists():
        raise LoadError(f"{p}: no such file or directory (expected a dictionary's directory or file).")
    for mod in map(format_module, FORMATS):
        if mod.detect(p):
            return mod.NAME
    listing = sorted(x.name for x in p.iterdir())[:12] if p.is_dir() else [p.name]
    raise LoadError(
        f"{p}: not a dictionary circuitalg recognises (files: {listing}). Expected SAELens (cfg.json + "
        "sae_weights.safetensors), Gemma Scope (params.npz, or params.safetensors + config.json), "
        "circuit-tracer (config.yaml + transcoder files), sparsify (cfg.json + sae.safetensors), "
        "dictionary_learning (ae.pt + config.json) or lm-saes (config.json + safetensors); pass "
        "format=... to say which."
    )


def load_dictionary(path: str | Path, *, format: str = "auto", dtype: Any = np.float64) -> Dictionary | DictionarySet:
    """Load a dictionary (or a set, e.g. a cross-layer transcoder) from its files.

    Parameters
    ----------
    path : str or Path
        The dictionary's directory (or file, for single-file formats).
    format : str
        ``"auto"`` (detect from the files) or one of :data:`FORMATS`.
    dtype : numpy dtype
        float64 (default) or float32.

    Raises
    ------
    LoadError
        The files are missing, malformed, or disagree with their configuration.
    """
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise InvalidArgumentError(f"load_dictionary: dtype must be numpy.float32 or numpy.float64, got {dtype!r}.")
    name = detect_format(path) if format == "auto" else format
    return format_module(name).load(Path(path), dt)


def save_dictionary(d: Dictionary | DictionarySet, path: str | Path, *, format: str) -> Path:
    """Write ``d`` at ``path`` in ``format`` (``"saelens"`` or ``"circuit_tracer"``); returns the path."""
    if not isinstance(d, (Dictionary, DictionarySet)):
        raise InvalidArgumentError(f"save_dictionary takes a Dictionary or DictionarySet, got {type(d).__name__}.")
    mod = format_module(format)
    if not hasattr(mod, "save"):
        writers = [n for n in FORMATS if hasattr(format_module(n), "save")]
        raise InvalidArgumentError(f"circuitalg does not write the {format!r} format; it writes {', '.join(writers)}.")
    out = Path(path)
    mod.save(d, out)
    return out
