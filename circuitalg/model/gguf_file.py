"""A fast reader of GGUF headers: the metadata and the tensor table, with the tensor data memory-mapped.

``gguf.GGUFReader`` makes a NumPy memmap view for every value it parses, several per string: a
file with a 151,936-token vocabulary and 151,387 merges (Qwen2) costs it seconds before the first
tensor is read. This reader parses the same layout (GGUF versions 2 and 3, little-endian, as
documented in ggml's ``docs/gguf.md``) with ``struct`` from one ``mmap``, keeps string arrays as
byte offsets until they are asked for, and gives the fields and tensors the attributes
``gguf.GGUFReader`` gives them that circuitalg uses: ``fields[key].contents()`` and, per tensor,
``name``, ``tensor_type``, ``shape`` (GGUF order, fastest axis first), ``n_elements``,
``n_bytes``, ``data_offset`` and ``data`` (read-only, the stored elements for F32/F16/F64 and the
integer types, raw uint8 rows for block types, as ``gguf.GGUFReader`` shapes them). A
big-endian file is read by ``gguf.GGUFReader`` itself.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import LoadError

__all__ = ["open_gguf", "GGUFFile", "GGUFField", "GGUFTensor"]

_MAGIC = b"GGUF"
#: GGUF value types: code -> (struct format, NumPy dtype) of the scalar types
_SCALARS = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"),
            5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "?"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"),
            12: ("<d", "<f8")}
_STRING, _ARRAY = 8, 9
#: element dtypes of the tensor types GGUFReader hands out element-wise (others: raw uint8 rows)
_ELEMENTS = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}


@dataclass(frozen=True)
class GGUFField:
    """One metadata value; ``contents()`` gives it as ``gguf.ReaderField.contents()`` does."""

    name: str
    value: Any = None
    strings: tuple[Any, np.ndarray, np.ndarray] | None = None  # (buffer, starts, lengths) of a string array

    def contents(self) -> Any:
        """The value: a Python scalar, a str, or a list of them."""
        if self.strings is not None:
            buf, starts, lengths = self.strings
            try:
                return [str(buf[s:s + n], "utf-8") for s, n in zip(starts.tolist(), lengths.tolist())]
            except UnicodeDecodeError as exc:
                raise LoadError(f"metadata {self.name!r} holds a string that is not UTF-8 ({exc}).") from None
        return self.value


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table, its data a read-only view of the mapped file."""

    name: str
    tensor_type: Any
    shape: np.ndarray
    n_elements: int
    n_bytes: int
    data_offset: int
    data: np.ndarray


@dataclass(frozen=True)
class GGUFFile:
    """The parsed header of a GGUF file: ``fields`` by key and ``tensors`` in file order."""

    fields: dict[str, GGUFField]
    tensors: list[GGUFTensor]


class _Cursor:
    """Sequential little-endian reads from a buffer; running past its end is a LoadError."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> int:
        at = self.pos
        if n < 0 or at + n > self.size:
            raise LoadError(f"the header ends inside {what} (byte {at} + {n} of {self.size}): "
                            "a truncated or corrupt file.")
        self.pos = at + n
        return at

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack_from(fmt, self.buf, self.need(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        at = self.need(n, what)
        try:
            return str(self.buf[at:at + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise LoadError(f"{what} is not UTF-8 ({exc}).") from None


def open_gguf(path: str | Path) -> Any:
    """The header of the GGUF file at ``path`` (a :class:`GGUFFile`, or a ``gguf.GGUFReader``
    for a big-endian file).

    Raises
    ------
    LoadError
        Not a GGUF file, an unsupported version, a truncated header, a tensor of unknown type,
        or tensor data that would lie past the end of the file (named).
    """
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except ValueError:  # an empty file cannot be mapped
        raise LoadError("an empty file, not GGUF.") from None
    size = len(buf)
    if size < 8 or buf[:4] != _MAGIC:
        raise LoadError(f"the file does not start with the GGUF magic {_MAGIC!r}.")
    version = struct.unpack_from("<I", buf, 4)[0]
    if version & 0xFFFF == 0 and version != 0:  # written on a big-endian machine
        import gguf

        return gguf.GGUFReader(str(path), "r")
    if version not in (2, 3):
        raise LoadError(f"GGUF version {version}; versions 2 and 3 are read.")
    cur = _Cursor(buf, size)
    cur.pos = 8
    n_tensors = cur.scalar("<Q", "the tensor count")
    n_kv = cur.scalar("<Q", "the metadata count")
    fields: dict[str, GGUFField] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        if key in fields:
            raise LoadError(f"metadata key {key!r} appears twice.")
        fields[key] = _read_value(cur, key, cur.scalar("<I", f"the type of {key!r}"))
    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name {i}")
        n_dims = cur.scalar("<I", f"the rank of tensor {name!r}")
        at = cur.need(8 * n_dims, f"the shape of {name!r}")
        dims = np.frombuffer(buf, dtype="<u8", count=n_dims, offset=at)
        code = cur.scalar("<I", f"the type of tensor {name!r}")
        offset = cur.scalar("<Q", f"the data offset of tensor {name!r}")
        infos.append((name, dims.copy(), code, offset))
    align = fields["general.alignment"].value if "general.alignment" in fields else 32
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise LoadError(f"general.alignment={align!r}; it must be a power of two.")
    start = -(-cur.pos // align) * align
    return GGUFFile(fields, [_tensor(buf, size, start, *info) for info in infos])


def _read_value(cur: _Cursor, key: str, code: int) -> GGUFField:
    if code in _SCALARS:
        return GGUFField(key, cur.scalar(_SCALARS[code][0], repr(key)))
    if code == _STRING:
        return GGUFField(key, cur.string(repr(key)))
    if code != _ARRAY:
        raise LoadError(f"metadata {key!r} has unknown value type {code}.")
    item = cur.scalar("<I", f"the item type of {key!r}")
    count = cur.scalar("<Q", f"the length of {key!r}")
    if item in _SCALARS:
        dtype = np.dtype(_SCALARS[item][1])
        at = cur.need(count * dtype.itemsize, repr(key))
        return GGUFField(key, np.frombuffer(cur.buf, dtype=dtype, count=count, offset=at).tolist())
    if item == _STRING:  # offsets only: a vocabulary or merges list is decoded when asked for
        if count > (cur.size - cur.pos) // 8:  # each string takes at least its 8-byte length
            raise LoadError(f"{key!r} claims {count} strings, more than the file can hold: a corrupt header.")
        starts = np.empty(count, dtype=np.int64)
        lengths = np.empty(count, dtype=np.int64)
        buf, pos, size, unpack = cur.buf, cur.pos, cur.size, struct.Struct("<Q").unpack_from
        for i in range(count):
            if pos + 8 > size:
                raise LoadError(f"the header ends inside {key!r} (string {i} of {count}): a truncated file.")
            n = unpack(buf, pos)[0]
            if pos + 8 + n > size:
                raise LoadError(f"the header ends inside {key!r} (string {i} of {count}): a truncated file.")
            starts[i], lengths[i] = pos + 8, n
            pos += 8 + n
        cur.pos = pos
        return GGUFField(key, strings=(buf, starts, lengths))
    return GGUFField(key, [_read_value(cur, key, item).contents() for _ in range(count)])


def _tensor(
    buf: Any, size: int, start: int, name: str, dims: np.ndarray, code: int, offset: int
) -> GGUFTensor:
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType(code)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise LoadError(f"tensor {name!r} has type code {code}, unknown to the gguf package; "
                        "update gguf.") from None
    shape = tuple(int(d) for d in dims[::-1])  # NumPy order: the fastest GGUF axis last
    n_elements = math.prod(shape)  # Python integers: a corrupt shape cannot wrap around
    if not shape or any(d <= 0 for d in shape) or shape[-1] % block:
        raise LoadError(f"tensor {name!r} has shape {shape}; {qtype.name} rows must be whole blocks "
                        f"of {block}.")
    n_bytes = n_elements // block * type_size
    at = start + offset
    if at + n_bytes > size:
        raise LoadError(
            f"tensor {name!r} ({qtype.name}, shape {shape}) needs bytes {at}..{at + n_bytes} but the "
            f"file has {size}: a truncated file; re-download or re-convert it."
        )
    if qtype.name in _ELEMENTS:
        data = np.frombuffer(buf, dtype=_ELEMENTS[qtype.name], count=n_elements, offset=at).reshape(shape)
    else:
        data = np.frombuffer(buf, dtype=np.uint8, count=n_bytes, offset=at).reshape(
            *shape[:-1], shape[-1] // block * type_size)
    return GGUFTensor(name, qtype, dims, n_elements, n_bytes, at, data)
