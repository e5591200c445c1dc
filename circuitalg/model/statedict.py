"""Reading tensors out of a state dict: shapes checked, names in every message.

A state dict is any mapping of tensor names to arrays. A :class:`TensorSource` is one whose
tensors are read from their file only when asked for (``source[name]``), so a checkpoint's
layout can be read part by part: a :class:`LayoutReader` turns a layout's tensors into
circuitalg's canonical parameters (names from :func:`~circuitalg.model.params.param_shapes`)
one part at a time: the embeddings, each layer's attention and MLP, the final norm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import numpy as np

from circuitalg.errors import ConfigError, LoadError
from circuitalg.model.config import TransformerConfig
from circuitalg.model.params import to_numpy

__all__ = [
    "as_array", "get_tensor", "tensor_shape", "tensor_dtype", "count_layers", "check_no_extra", "TensorReader",
    "TensorSource", "RenamedSource", "read_rows", "LayoutReader", "ATTENTION_WEIGHTS",
]

#: The attention projections a :class:`LayoutReader` reads: ``W_Q, W_K, W_V, W_O`` by their letter.
ATTENTION_WEIGHTS = ("Q", "K", "V", "O")


def as_array(value: Any) -> np.ndarray:
    """``value`` (numpy or torch) as a numpy array."""
    return np.asarray(to_numpy(value))


class TensorSource(Mapping[str, Any]):
    """Named tensors read from a checkpoint file one at a time, when asked for (``source[name]``).

    Subclasses give :meth:`read`; :meth:`shape`, :meth:`dtype` and :meth:`rows` read the whole
    tensor unless a subclass knows better (a safetensors file's header, a memory map). Membership
    and iteration never read a tensor."""

    def __init__(self, names: Collection[str]) -> None:
        self._names = names

    @abstractmethod
    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a new numpy array."""
        ...  # pragma: no cover

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name``."""
        return tuple(np.shape(self[name]))

    def dtype(self, name: str) -> np.dtype:
        """The dtype tensor ``name`` is read in."""
        return np.asarray(self[name]).dtype

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (the first axis) of tensor ``name``."""
        return self[name][start:stop]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return self.read(name)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class RenamedSource(TensorSource):
    """The tensors of ``base`` under new names (``names``: new name -> name in ``base``), read lazily."""

    def __init__(self, base: Mapping[str, Any], names: Mapping[str, str]) -> None:
        super().__init__(names)
        self.base, self.names = base, names

    def read(self, name: str) -> Any:
        return self.base[self.names[name]]

    def shape(self, name: str) -> tuple[int, ...]:
        return tensor_shape(self.base, self.names[name])

    def dtype(self, name: str) -> np.dtype:
        return tensor_dtype(self.base, self.names[name])

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return read_rows(self.base, self.names[name], start, stop)


def get_tensor(sd: Mapping[str, Any], key: str, shape: tuple[int, ...], source: str) -> np.ndarray:
    if key not in sd:
        raise LoadError(f"{source}: missing tensor {key!r}; the checkpoint is incomplete or not this layout.")
    arr = as_array(sd[key])
    if arr.shape != shape:
        raise LoadError(f"{source}: tensor {key!r} has shape {arr.shape}, expected {shape}.")
    return arr


def tensor_shape(
    sd: Mapping[str, Any], key: str, ndim: int | None = None, source: str = "state dict"
) -> tuple[int, ...]:
    """The shape of ``sd[key]`` (read from a :class:`TensorSource`'s index, not its data);
    :class:`LoadError` when it is missing or not ``ndim``-dimensional."""
    if key not in sd:
        raise LoadError(f"{source}: missing tensor {key!r}; the checkpoint is incomplete or not this layout.")
    if isinstance(sd, TensorSource):
        shape = tuple(int(s) for s in sd.shape(key))
    else:
        shape = tuple(int(s) for s in getattr(sd[key], "shape", np.shape(sd[key])))
    if ndim is not None and len(shape) != ndim:
        raise LoadError(f"{source}: tensor {key!r} has shape {shape}, expected a {ndim}-D tensor.")
    return shape


def tensor_dtype(sd: Mapping[str, Any], key: str) -> np.dtype:
    """The numpy dtype ``sd[key]`` is read in (without reading a :class:`TensorSource`'s data)."""
    if isinstance(sd, TensorSource):
        return sd.dtype(key)
    return as_array(sd[key]).dtype


def read_rows(sd: Mapping[str, Any], key: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``sd[key]`` (only those rows of a memory-mapped :class:`TensorSource`)."""
    if isinstance(sd, TensorSource):
        return sd.rows(key, start, stop)
    return as_array(sd[key])[start:stop]


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


class LayoutReader(ABC):
    """A layout's key table: the canonical parameters of one state dict, read part by part.

    Subclasses (one per layout) read their tensors through :attr:`get` and give
    :meth:`embeddings`, :meth:`attention`, :meth:`mlp` and :meth:`final_norm`; :meth:`read_all`
    reads every part and refuses tensors that no part read (other than :attr:`buffers`).

    Attributes
    ----------
    config : TransformerConfig
    get : TensorReader
        The state dict, read by name and expected shape.
    buffers : re.Pattern
        Names of tensors that are not parameters (masks, rotary tables), never read.
    """

    buffers: re.Pattern[str] = re.compile(r"(?!)")

    def __init__(self, config: TransformerConfig, get: TensorReader) -> None:
        self.config, self.get = config, get

    @abstractmethod
    def embeddings(self) -> dict[str, Any]:
        """``W_E``, ``W_pos`` (learned positions), ``W_U`` and ``b_U``."""
        ...  # pragma: no cover

    @abstractmethod
    def attention(self, layer: int, which: Collection[str] = ATTENTION_WEIGHTS) -> dict[str, Any]:
        """Layer ``layer``'s attention parameters (``blocks.{l}.attn.*``) and the norms that act on
        them (``ln1``, ``ln1_post``, the q/k norms): at least the projections named in ``which``
        (of :data:`ATTENTION_WEIGHTS`) with their biases, and the norms those need (a layout that
        stores the projections fused reads them all)."""
        ...  # pragma: no cover

    @abstractmethod
    def mlp(self, layer: int) -> dict[str, Any]:
        """Layer ``layer``'s MLP parameters (``blocks.{l}.mlp.*``) and its norms (``ln2``, ``ln2_post``)."""
        ...  # pragma: no cover

    @abstractmethod
    def final_norm(self) -> dict[str, Any]:
        """``ln_final.w`` and ``ln_final.b`` where the model has them."""
        ...  # pragma: no cover

    def embedding_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``W_Eᵀ`` (tokens ``start:stop``), read without the other rows;
        layouts whose vocabulary cannot be read by rows raise :class:`ConfigError`."""
        raise ConfigError(f"{self.get.source}: reading the vocabulary by rows is not implemented for this layout.")

    def unembedding_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``W_U``, read without the other rows (see :meth:`embedding_rows`)."""
        raise ConfigError(f"{self.get.source}: reading the vocabulary by rows is not implemented for this layout.")

    def vocabulary_tied(self) -> bool:
        """Whether ``W_U = W_Eᵀ`` (tied embeddings stored once: their rows need reading once)."""
        raise ConfigError(f"{self.get.source}: reading the vocabulary by rows is not implemented for this layout.")

    def read_all(self) -> dict[str, Any]:
        """Every canonical parameter; :class:`LoadError` for a tensor that no part read."""
        c = self.config
        p = self.embeddings()
        for layer in range(c.n_layers):
            p.update(self.attention(layer))
            if c.d_mlp is not None:
                p.update(self.mlp(layer))
        p.update(self.final_norm())
        self.get.check_all_read(self.buffers)
        return p
