"""Reading and writing checkpoints, without ever unpickling.

Formats:

- **safetensors** (preferred): the header is parsed and checked against the file size before
  any tensor is read, so a hostile header cannot make the loader allocate more than the file
  holds; tensors are read with the safetensors numpy API. circuitalg's own files keep the
  config JSON in the safetensors metadata (``circuitalg_config``).
- **npz**: every member's ``.npy`` header is checked against the member's size first;
  arrays are read with ``allow_pickle=False``. circuitalg's own files store the config
  JSON as a ``uint8`` array named ``__circuitalg__``.
- **torch** (``.pt .pth .bin .ckpt``): only with torch installed, through
  ``torch.load(weights_only=True)``; otherwise :class:`LoadError` suggests safetensors.
- **GGUF** (``.gguf``): llama.cpp's files, through the ``gguf`` package (:mod:`circuitalg.model.gguf`):
  Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3 and GPT-2 architectures, quantised
  tensors dequantised one at a time.
- **Directories**: a Hugging Face checkpoint (``config.json`` and ``model.safetensors``,
  sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``), optionally with
  ``vocab.json`` for token strings. The family comes from ``config.json`` (``model_type``, or
  ``architectures``), else from the tensor names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import CircuitAlgError, ConfigError, InvalidArgumentError, LoadError, check_int
from circuitalg.files import atomic_write
from circuitalg.linalg.budget import without_hugepage_advice
from circuitalg.model.config import TransformerConfig
from circuitalg.model.gguf import read_gguf
from circuitalg.model.hf import HF_MODEL_TYPES
from circuitalg.model.layouts import LAYOUTS, convert_state_dict, detect_layout
from circuitalg.model.transforms import fold_params
from circuitalg.model.vocab import decode_byte_level
from circuitalg.model.weights import Transformer, _validate_params, require_model

__all__ = ["load", "save", "read_tensors", "DEFAULT_LOAD_BYTES"]

#: The most bytes of tensor data a load may read unless ``max_bytes`` says otherwise.
DEFAULT_LOAD_BYTES = 16 * 2**30
_MAX_HEADER_BYTES = 100 * 2**20
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_CONFIG_META = "circuitalg_config"
_VOCAB_META = "circuitalg_vocab"
_NPZ_META = "__circuitalg__"


@without_hugepage_advice()  # a model's worth of new arrays, written once
def load(
    path: str | Path,
    *,
    layout: str = "auto",
    config: Any = None,
    dtype: Any = np.float64,
    max_bytes: int | None = None,
    fold: bool = False,
) -> Transformer:
    """Load a model from a checkpoint file or directory (see the module docstring for formats).

    Parameters
    ----------
    path : str or Path
        A ``.safetensors``, ``.npz``, ``.gguf`` or torch file, or a Hugging Face checkpoint directory.
    layout : {"auto", "circuitalg", "transformer_lens", "hf_gpt2", "hf_gpt_neo", "hf_gpt_neox", "hf_gptj", "hf_llama"}
        The key layout; by default detected from ``config.json`` (``model_type``, ``architectures``)
        when the checkpoint has one, else from the keys.
    config : TransformerConfig or dict, optional
        Overrides or completes the config found beside the weights.
    dtype : numpy dtype or "auto"
        float64 (default) or float32 for the loaded parameters; ``"auto"``: float32 when every
        tensor is stored in 32 bits or fewer (float32, float16, bfloat16, GGUF: all convert to
        float32 exactly), else float64.
    max_bytes : int, optional
        The most tensor bytes to read (default :data:`DEFAULT_LOAD_BYTES`).
    fold : bool
        Fold the layer norms while loading: the same model as ``ca.fold_layer_norm(ca.load(path,
        dtype=dtype))``, but each tensor is replaced by its folded, converted array as soon as
        that is made, so the unfolded model never exists in memory (a float32 checkpoint folded
        into float64 peaks near the float64 model's size, not the sum of both).

    Raises
    ------
    LoadError
        The file is missing, truncated, corrupt, of an unknown layout, or its tensors are
        missing, mis-shaped or not finite. The message names the file and the tensor.
    ConfigError
        The config is missing, inconsistent or unsupported.
    """
    if not isinstance(path, (str, Path)) or not str(path):
        raise InvalidArgumentError(
            f"load: path must be a file or directory name (str or Path), got {type(path).__name__}; "
            "a model that is already loaded needs no loading."
        )
    if layout not in ("auto",) + LAYOUTS:
        raise InvalidArgumentError(f"load: layout={layout!r}; use one of {('auto',) + LAYOUTS}.")
    if not (isinstance(dtype, str) and dtype == "auto"):
        try:
            ok = np.dtype(dtype) in (np.float32, np.float64)
        except TypeError:
            ok = False
        if not ok:
            raise InvalidArgumentError(f"load: dtype={dtype!r}; use numpy.float64 (default), numpy.float32 or 'auto'.")
    if not isinstance(fold, (bool, np.bool_)):
        raise InvalidArgumentError(f"load: fold={fold!r}; pass True (fold the layer norms while loading) or False.")
    p = Path(path)
    budget = DEFAULT_LOAD_BYTES if max_bytes is None else check_int("max_bytes", max_bytes, 1)
    if not p.exists():
        raise LoadError(f"{p}: no such file or directory.")
    vocab = None
    if p.is_dir():
        tensors, meta, sidecar, vocab = _read_directory(p, budget)
    elif p.suffix.lower() == ".gguf":
        # decoded straight into a float64 model's dtype (the same float32 values); a fold converts itself
        wide = not fold and not isinstance(dtype, str) and np.dtype(dtype) == np.float64
        tensors, gguf_config, vocab = read_gguf(p, budget, dtype=np.float64 if wide else np.float32)
        meta, sidecar = {}, None
        if layout == "auto":
            layout = HF_MODEL_TYPES[gguf_config["model_type"]]
        if config is None:
            config = gguf_config
    else:
        tensors, meta = read_tensors(p, max_bytes=budget)
        sidecar = _sidecar_config(p)
    source = str(p)
    try:
        found_layout = (detect_layout(tensors.keys(), source, config if config is not None else sidecar)
                        if layout == "auto" else layout)
        cfg_arg: Any = config
        if found_layout == "circuitalg":
            cfg_arg = _own_config(meta, config, sidecar, source)
            if _VOCAB_META in meta and vocab is None:
                vocab = _parse_json(meta[_VOCAB_META], f"{source} (metadata {_VOCAB_META})")
        elif config is None and sidecar is not None:
            cfg_arg = sidecar
        elif config is None and _CONFIG_META in meta:  # e.g. a TL state dict saved with its config
            cfg_arg = _parse_json(meta[_CONFIG_META], f"{source} (metadata {_CONFIG_META})")
        cfg, params = convert_state_dict(tensors, layout=found_layout, config=cfg_arg, source=source)
        for v in params.values():  # read from the file by us: nobody else can change them, so no defensive copy
            if isinstance(v, np.ndarray):
                v.flags.writeable = False
        if vocab is not None and len(vocab) != cfg.d_vocab:
            vocab = None  # a tokenizer with added tokens: keep the model, drop the strings
        stored = _stored_dtype(tensors)
        if isinstance(dtype, str) and dtype == "auto":
            dtype = stored
        if fold and cfg.normalization is not None:
            del tensors  # from here on each raw tensor is freed when its folded array replaces it
            params = _validate_params(cfg, params, biases="required", source=source, dtype=stored)
            cfg = dataclasses.replace(cfg, normalization=fold_params(cfg, params, dtype=dtype))
        return Transformer(cfg, params, name=p.name or source, vocab=vocab, dtype=dtype)
    except LoadError:
        raise
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if source in msg else f"{source}: {msg}") from None
    except CircuitAlgError as exc:
        raise LoadError(f"{source}: {exc}") from None


def save(model: Transformer, path: str | Path) -> Path:
    """Write ``model`` in circuitalg's own format (``.safetensors`` or ``.npz``, by suffix)."""
    require_model(model, "save")
    if not isinstance(path, (str, Path)) or not str(path):
        raise InvalidArgumentError(f"save: path must be a file name (str or Path), got {path!r}.")
    p = Path(path)
    arrays = {k: np.ascontiguousarray(v) for k, v in model.params.items()}
    config_json = model.config.to_json()
    if p.suffix == ".safetensors":
        from safetensors.numpy import save_file

        meta = {"format": "circuitalg", _CONFIG_META: config_json}
        if model.vocab is not None:
            meta[_VOCAB_META] = json.dumps(list(model.vocab))
        atomic_write(p, lambda tmp: save_file(arrays, str(tmp), metadata=meta))
    elif p.suffix == ".npz":
        blob = json.dumps({"config": json.loads(config_json), "vocab": model.vocab}).encode()
        extra = {_NPZ_META: np.frombuffer(blob, dtype=np.uint8)}
        atomic_write(p, lambda tmp: np.savez(tmp, **arrays, **extra))
    else:
        raise InvalidArgumentError(f"save: unsupported suffix {p.suffix!r} for {p}; use .safetensors or .npz.")
    return p


# -- reading tensors ------------------------------------------------------------------------


def read_tensors(path: str | Path, *, max_bytes: int = DEFAULT_LOAD_BYTES) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and string metadata of one file, read safely (no unpickling)."""
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"{p}: not a file.")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(p, max_bytes)
    if suffix == ".npz":
        return _read_npz(p, max_bytes)
    if suffix in _TORCH_SUFFIXES:
        return _read_torch(p), {}
    raise LoadError(
        f"{p}: unknown checkpoint suffix {suffix!r}; circuitalg reads .safetensors, .npz, a torch file "
        f"({', '.join(_TORCH_SUFFIXES)}) or a Hugging Face checkpoint directory."
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
    header = _parse_json(raw, f"{p} (safetensors header)")
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
    return entries, meta


def widen_bf16(words: np.ndarray) -> np.ndarray:
    """bfloat16 values stored as 16-bit words, widened exactly to float32 (numpy has no bfloat16)."""
    return (np.asarray(words).astype(np.uint32) << 16).view(np.float32)


def _read_safetensors(p: Path, max_bytes: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    entries, meta = safetensors_index(p)
    total = sum(e.nbytes for e in entries.values())
    bf16 = [name for name, e in entries.items() if e.dtype == "BF16"]
    _check_total(p, total, max_bytes)
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    try:
        if bf16:  # numpy has no bfloat16: read the raw 16-bit words and widen them exactly
            with open(p, "rb") as f:
                for name in bf16:
                    e = entries[name]
                    f.seek(e.start)
                    tensors[name] = widen_bf16(np.frombuffer(f.read(e.nbytes), dtype="<u2")).reshape(e.shape)
        with safe_open(str(p), framework="np") as st:
            for name in st.keys():
                if name not in tensors:
                    tensors[name] = st.get_tensor(name)
    except Exception as exc:  # the library's own errors: SafetensorError, OSError...
        raise LoadError(f"{p}: cannot read safetensors file ({type(exc).__name__}: {exc}).") from None
    return tensors, meta


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
                if name == _NPZ_META:
                    if arr.dtype != np.uint8 or arr.ndim != 1:
                        raise LoadError(f"{p}: {_NPZ_META!r} must be a 1-D uint8 array of JSON.")
                    meta_json = _parse_json(arr.tobytes(), f"{p} ({_NPZ_META})")
                    if not isinstance(meta_json, dict):
                        raise LoadError(f"{p}: {_NPZ_META!r} must hold a JSON object.")
                    meta[_CONFIG_META] = json.dumps(meta_json.get("config"))
                    if meta_json.get("vocab") is not None:
                        meta[_VOCAB_META] = json.dumps(meta_json["vocab"])
                else:
                    tensors[name] = arr
    except LoadError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, KeyError, struct.error) as exc:
        raise LoadError(f"{p}: not a readable .npz file ({type(exc).__name__}: {exc}).") from None
    except Exception as exc:  # zlib.error and other decompression failures
        raise LoadError(f"{p}: corrupt .npz file ({type(exc).__name__}: {exc}).") from None
    return tensors, meta


def _read_torch(p: Path) -> dict[str, Any]:
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


def _read_directory(
    d: Path, budget: int
) -> tuple[dict[str, Any], dict[str, str], Any, list[str] | None]:
    cfg_path = d / "config.json"
    sidecar = _parse_json(_read_bytes(cfg_path), str(cfg_path)) if cfg_path.is_file() else None
    index = d / "model.safetensors.index.json"
    tensors: dict[str, Any] = {}
    meta: dict[str, str] = {}
    if (d / "model.safetensors").is_file():
        tensors, meta = _read_safetensors(d / "model.safetensors", budget)
    elif index.is_file():
        spec = _parse_json(_read_bytes(index), str(index))
        weight_map = spec.get("weight_map") if isinstance(spec, dict) else None
        if not isinstance(weight_map, dict):
            raise LoadError(f"{index}: missing 'weight_map'.")
        for shard in sorted(set(weight_map.values())):
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
                raise LoadError(f"{index}: invalid shard name {shard!r}.")
            part, _ = _read_safetensors(d / shard, budget)
            tensors.update(part)
    elif any((d / n).is_file() for n in ("pytorch_model.bin", "model.pt")):
        name = "pytorch_model.bin" if (d / "pytorch_model.bin").is_file() else "model.pt"
        tensors = _read_torch(d / name)
    else:
        raise LoadError(
            f"{d}: no checkpoint found; expected model.safetensors (with config.json), "
            "model.safetensors.index.json, or pytorch_model.bin."
        )
    vocab = _read_vocab(d / "vocab.json")
    return tensors, meta, sidecar, vocab


def _read_vocab(path: Path) -> list[str] | None:
    """Token strings by id from a GPT-2 ``vocab.json`` (byte-level symbols decoded), or None."""
    if not path.is_file():
        return None
    try:
        mapping = json.loads(_read_bytes(path))
        ids = {int(i): t for t, i in mapping.items()}
        n = max(ids) + 1
        if set(ids) != set(range(n)):
            return None
    except (ValueError, TypeError, AttributeError):
        return None  # a vocabulary is a convenience; never fail a load over it
    return [decode_byte_level(ids[i]) for i in range(n)]


def _stored_dtype(tensors: Mapping[str, Any]) -> Any:
    """float32 when no stored floating tensor is wider than 32 bits (GGUF tensors dequantise to
    float32), else float64."""
    if not isinstance(tensors, dict):
        return np.float32  # a GGUF file's lazily dequantised tensors
    wide = any(getattr(v, "dtype", None) is not None and np.dtype(v.dtype).kind == "f" and np.dtype(v.dtype).itemsize > 4
               for v in tensors.values())
    return np.float64 if wide else np.float32


def _sidecar_config(p: Path) -> Any:
    for cand in (p.with_suffix(".json"), p.parent / "config.json"):
        if cand.is_file() and cand != p:
            return _parse_json(_read_bytes(cand), str(cand))
    return None


def _own_config(meta: Mapping[str, str], config: Any, sidecar: Any, source: str) -> Any:
    if config is not None:
        return config
    if _CONFIG_META in meta:
        cfg = _parse_json(meta[_CONFIG_META], f"{source} (metadata {_CONFIG_META})")
        return TransformerConfig.from_dict(cfg, source=source)
    if sidecar is not None:
        return TransformerConfig.from_dict(sidecar, source=source)
    raise ConfigError(
        f"{source}: circuitalg-layout arrays without a config; the file has no '{_CONFIG_META}' metadata and "
        "no config.json beside it. Pass config=TransformerConfig(...)."
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LoadError(f"{path}: cannot read ({exc}).") from None


def _parse_json(raw: bytes | str, source: str) -> Any:
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
