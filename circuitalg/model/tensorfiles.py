"""Checkpoint files read safely (no unpickling): safetensors, npz and torch state dicts.

- **safetensors**: the header is parsed and checked against the file size before any tensor is
  read, so a hostile header cannot make the loader allocate more than the file holds; tensors
  are read one at a time, when a layout asks for them (:class:`SafetensorsSource`).
- **npz**: every member's ``.npy`` header is checked against the member's size first; arrays are
  read with ``allow_pickle=False``. circuitalg's own files store the config JSON as a ``uint8``
  array named ``__circuitalg__``.
- **torch** (``.pt .pth .bin .ckpt``): only with torch installed, through
  ``torch.load(weights_only=True)``; otherwise :class:`LoadError` suggests safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import LoadError
from circuitalg.model.statedict import TensorSource

__all__ = [
    "DEFAULT_LOAD_BYTES", "SafetensorsEntry", "SafetensorsSource", "read_tensors", "safetensors_index", "widen_bf16",
    "read_torch", "read_json", "read_bytes", "CONFIG_META", "VOCAB_META", "NPZ_META", "TORCH_SUFFIXES",
]

#: The most bytes of tensor data a load may read unless ``max_bytes`` says otherwise.
DEFAULT_LOAD_BYTES = 16 * 2**30
_MAX_HEADER_BYTES = 100 * 2**20
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
#: The suffixes of torch checkpoint files.
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: The metadata keys of circuitalg's own files: the config JSON and the token strings.
CONFIG_META = "circuitalg_config"
VOCAB_META = "circuitalg_vocab"
#: The member of circuitalg's own ``.npz`` files that holds the config and the token strings.
NPZ_META = "__circuitalg__"


def read_tensors(path: str | Path, *, max_bytes: int = DEFAULT_LOAD_BYTES) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and string metadata of one file, read safely (no unpickling)."""
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"{p}: not a file.")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        source = SafetensorsSource([p], max_bytes)
        return {name: source[name] for name in source}, source.metadata
    if suffix == ".npz":
        return _read_npz(p, max_bytes)
    if suffix in TORCH_SUFFIXES:
        return read_torch(p), {}
    raise LoadError(
        f"{p}: unknown checkpoint suffix {suffix!r}; circuitalg reads .safetensors, .npz, a torch file "
        f"({', '.join(TORCH_SUFFIXES)}) or a Hugging Face checkpoint directory."
    )


@dataclasses.dataclass(frozen=True)
class SafetensorsEntry:
    """One tensor of a safetensors file: its dtype code, shape and absolute byte range in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int


def safetensors_index(p: Path) -> tuple[dict[str, SafetensorsEntry], dict[str, str]]:
    """The tensors (validated against the file before any data is read) and the metadata of
    safetensors file ``p``; :class:`LoadError` naming the file and tensor on anything corrupt."""
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LoadError(f"{p}: truncated safetensors file ({size} bytes; the 8-byte header length is missing).")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER_BYTES):
            raise LoadError(
                f"{p}: corrupt or truncated safetensors file: the header claims {n} bytes but the file has "
                f"{size} bytes."
            )
        raw = f.read(n)
    header = read_json(raw, f"{p} (safetensors header)")
    if not isinstance(header, dict):
        raise LoadError(f"{p}: corrupt safetensors header (not a JSON object).")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise LoadError(f"{p}: corrupt safetensors metadata (must map strings to strings).")
    data_size = size - 8 - n
    entries: dict[str, SafetensorsEntry] = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise LoadError(f"{p}: tensor {name!r}: corrupt header entry.")
        dt, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dt not in _SAFETENSORS_DTYPES:
            raise LoadError(f"{p}: tensor {name!r}: unsupported dtype {dt!r}.")
        if (
            not isinstance(shape, list)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise LoadError(f"{p}: tensor {name!r}: corrupt shape {shape!r} or offsets {offsets!r}.")
        nbytes = math.prod(shape) * np.dtype(_SAFETENSORS_DTYPES[dt]).itemsize
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise LoadError(
                f"{p}: tensor {name!r}: shape {shape} ({dt}, {nbytes} bytes) does not match its data offsets "
                f"{offsets} in a data section of {data_size} bytes; the file is truncated or corrupt."
            )
        entries[name] = SafetensorsEntry(dt, tuple(shape), 8 + n + begin, nbytes)
    covered = 0  # the format indexes its data section entirely, without holes (no polyglot files)
    for e in sorted(entries.values(), key=lambda e: (e.start, e.nbytes)):
        if e.start - 8 - n != covered:
            break
        covered += e.nbytes
    if covered != data_size:
        raise LoadError(
            f"{p}: the tensors cover {covered} bytes of a data section of {data_size} bytes (the format indexes "
            "it entirely, without holes or overlaps); the file is corrupt or has bytes appended."
        )
    return entries, meta


def widen_bf16(words: np.ndarray) -> np.ndarray:
    """bfloat16 values stored as 16-bit words, widened exactly to float32 (numpy has no bfloat16)."""
    return (np.asarray(words).astype(np.uint32) << 16).view(np.float32)


class SafetensorsSource(TensorSource):
    """The tensors of one or more safetensors files (the shards of one checkpoint), each read from
    its file when asked for: every header is validated against its file, and each file's tensors
    counted against ``max_bytes``, before anything is read. bfloat16 is widened exactly to
    float32 (numpy has no bfloat16); :meth:`rows` reads a row range through a memory map.

    Attributes
    ----------
    index : dict of str to (Path, SafetensorsEntry)
        Where each tensor is (a later file's tensor of the same name wins).
    metadata : dict of str to str
        The string metadata of a single file (empty for shards).
    """

    def __init__(self, files: Sequence[Path], max_bytes: int = DEFAULT_LOAD_BYTES) -> None:
        self.index: dict[str, tuple[Path, SafetensorsEntry]] = {}
        self.metadata: dict[str, str] = {}
        for f in files:
            entries, meta = safetensors_index(f)
            _check_total(f, sum(e.nbytes for e in entries.values()), max_bytes)
            self.index.update((name, (f, e)) for name, e in entries.items())
            self.metadata = meta if len(files) == 1 else {}
        super().__init__(self.index)

    def read(self, name: str) -> np.ndarray:
        path, e = self.index[name]
        try:
            with open(path, "rb") as f:
                f.seek(e.start)
                if e.dtype == "BF16":
                    return widen_bf16(np.frombuffer(f.read(e.nbytes), dtype="<u2")).reshape(e.shape)
                out = np.empty(e.shape, dtype=_SAFETENSORS_DTYPES[e.dtype])
                got = f.readinto(out.reshape(-1).view(np.uint8))
        except OSError as exc:
            raise LoadError(
                f"{path}: cannot read tensor {name!r} of the safetensors file ({type(exc).__name__}: {exc})."
            ) from None
        if got != e.nbytes:
            raise LoadError(
                f"{path}: cannot read tensor {name!r} of the safetensors file ({e.nbytes} bytes expected at "
                f"offset {e.start}, {got} read: the file is truncated)."
            )
        return out

    def shape(self, name: str) -> tuple[int, ...]:
        return self.index[name][1].shape

    def dtype(self, name: str) -> np.dtype:
        code = self.index[name][1].dtype
        return np.dtype(np.float32 if code == "BF16" else _SAFETENSORS_DTYPES[code])

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of tensor ``name`` (its first axis), read through a memory map: a
        read-only view of the file's pages (bfloat16: widened into a new float32 array)."""
        path, e = self.index[name]
        mm = np.memmap(path, dtype=_SAFETENSORS_DTYPES[e.dtype], mode="r", offset=e.start, shape=e.shape)
        block = np.asarray(mm[start:stop])
        return widen_bf16(block) if e.dtype == "BF16" else block


def _read_npz(p: Path, max_bytes: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    fmt = np.lib.format
    tensors: dict[str, np.ndarray] = {}
    meta: dict[str, str] = {}
    try:
        with zipfile.ZipFile(p) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            total = 0
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise LoadError(f"{p}: member {info.filename!r} is not a .npy array.")
                with zf.open(info) as f:
                    version = fmt.read_magic(f)
                    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _, dtype = reader(f)
                    header_len = f.tell() if hasattr(f, "tell") else None
                name = info.filename[: -len(".npy")]
                if dtype.hasobject:
                    raise LoadError(
                        f"{p}: array {name!r} holds Python objects (pickled); circuitalg never unpickles. "
                        "Save plain numeric arrays, or use safetensors."
                    )
                nbytes = math.prod(shape) * dtype.itemsize
                if header_len is not None and nbytes != info.file_size - header_len:
                    raise LoadError(
                        f"{p}: array {name!r}: header shape {shape} ({dtype}) needs {nbytes} bytes but the member "
                        f"holds {info.file_size - header_len}; the file is corrupt."
                    )
                total += nbytes
            _check_total(p, total, max_bytes)
            for info in infos:
                name = info.filename[: -len(".npy")]
                with zf.open(info) as f:
                    arr = fmt.read_array(f, allow_pickle=False)
                if name == NPZ_META:
                    if arr.dtype != np.uint8 or arr.ndim != 1:
                        raise LoadError(f"{p}: {NPZ_META!r} must be a 1-D uint8 array of JSON.")
                    meta_json = read_json(arr.tobytes(), f"{p} ({NPZ_META})")
                    if not isinstance(meta_json, dict):
                        raise LoadError(f"{p}: {NPZ_META!r} must hold a JSON object.")
                    meta[CONFIG_META] = json.dumps(meta_json.get("config"))
                    if meta_json.get("vocab") is not None:
                        meta[VOCAB_META] = json.dumps(meta_json["vocab"])
                else:
                    tensors[name] = arr
    except LoadError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, KeyError, struct.error) as exc:
        raise LoadError(f"{p}: not a readable .npz file ({type(exc).__name__}: {exc}).") from None
    except Exception as exc:  # zlib.error and other decompression failures
        raise LoadError(f"{p}: corrupt .npz file ({type(exc).__name__}: {exc}).") from None
    return tensors, meta


def read_torch(p: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise LoadError(
            f"{p}: reading a torch checkpoint safely needs torch (torch.load with weights_only=True), which "
            "is not installed. Install it (pip install torch) or convert the file to safetensors "
            "(safetensors.torch.save_file(state_dict, 'model.safetensors'))."
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols; failures raise below
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LoadError(
            f"{p}: torch.load(weights_only=True) refused or failed ({type(exc).__name__}: {str(exc)[:300]}). "
            "circuitalg never unpickles arbitrary objects; re-save the state dict with safetensors."
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(hasattr(v, "shape") for v in obj.values()):
        raise LoadError(f"{p}: expected a state dict of tensors, got {type(obj).__name__}.")
    return dict(obj)


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LoadError(f"{path}: cannot read ({exc}).") from None


def read_json(raw: bytes | str, source: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoadError(f"{source}: invalid JSON ({exc}).") from None


def _check_total(p: Path, total: int, max_bytes: int) -> None:
    if total > max_bytes:
        raise LoadError(
            f"{p}: the tensors need {total / 2**30:.2f} GiB, above the load budget of {max_bytes / 2**30:.2f} GiB; "
            "pass max_bytes= to allow it."
        )
