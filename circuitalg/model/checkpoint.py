"""A checkpoint opened for reading: its config and its layout's key table over its tensors.

:func:`open_checkpoint` finds what a checkpoint file or directory holds, as
:func:`~circuitalg.model.io.load` reads it (formats in :mod:`circuitalg.model.io`), without
reading a tensor: the tensors (a :class:`~circuitalg.model.statedict.TensorSource` for
safetensors and GGUF files, read one at a time when asked for), the layout's reader
(:class:`~circuitalg.model.statedict.LayoutReader`, the key table from the checkpoint's names to
circuitalg's canonical parameters) and the config. :meth:`Checkpoint.read_all` reads the whole
model (what ``load`` does); :meth:`Checkpoint.head_weights` reads the attention weights of a
range of layers only, folded as the model view holds them (what :mod:`circuitalg.streaming`
reads, tile by tile).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import CircuitAlgError, ConfigError, LoadError
from circuitalg.model.config import TransformerConfig
from circuitalg.model.folding import fold_attention_reads, fold_head_norms
from circuitalg.model.gguf import read_gguf
from circuitalg.model.hf import HF_MODEL_TYPES
from circuitalg.model.layouts import LAYOUTS, detect_layout, state_dict_reader
from circuitalg.model.params import param_shapes, validate_param
from circuitalg.model.statedict import ATTENTION_WEIGHTS, LayoutReader
from circuitalg.model.tensorfiles import (
    CONFIG_META,
    VOCAB_META,
    SafetensorsSource,
    read_bytes,
    read_json,
    read_tensors,
    read_torch,
)
from circuitalg.model.view import HeadWeights, stack_heads
from circuitalg.model.vocab import decode_byte_level

__all__ = ["Checkpoint", "open_checkpoint", "errors_named"]


@contextlib.contextmanager
def errors_named(source: str) -> Iterator[None]:
    """Inside the block, a :class:`ConfigError` names ``source`` and any other circuitalg error
    becomes a :class:`LoadError` naming it (what a reader of ``source`` raises)."""
    try:
        yield
    except LoadError:
        raise
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if source in msg else f"{source}: {msg}") from None
    except CircuitAlgError as exc:
        raise LoadError(f"{source}: {exc}") from None


@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """A checkpoint opened for reading (:func:`open_checkpoint`); nothing is read until asked for.

    Attributes
    ----------
    name : str
        The model's name (the file or directory name).
    source : str
        The path, for messages.
    reader : LayoutReader
        The layout's key table over the tensors: the config and the canonical parameters, part by part.
    tensors : mapping of str to array
        The tensors as stored (a :class:`~circuitalg.model.statedict.TensorSource` for safetensors
        and GGUF files).
    vocab : list of str or None
        Token strings, when the checkpoint has them for every token.
    """

    name: str
    source: str
    reader: LayoutReader
    tensors: Mapping[str, Any]
    vocab: list[str] | None

    @property
    def config(self) -> TransformerConfig:
        return self.reader.config

    def read_all(self) -> dict[str, Any]:
        """Every canonical parameter (read-only arrays, as the layout stores them)."""
        with errors_named(self.source):
            params = self.reader.read_all()
        for v in params.values():  # read from the file by us: nobody else can change them, so no defensive copy
            if isinstance(v, np.ndarray):
                v.flags.writeable = False
        return params

    def stored_dtype(self) -> Any:
        """float32 when no stored floating tensor is wider than 32 bits (bfloat16 and GGUF tensors
        convert to float32 exactly), else float64."""
        t = self.tensors
        if isinstance(t, SafetensorsSource):
            wide = any(t.dtype(n).kind == "f" and t.dtype(n).itemsize > 4 for n in t)
        elif isinstance(t, dict):
            wide = any(getattr(v, "dtype", None) is not None and np.dtype(v.dtype).kind == "f"
                       and np.dtype(v.dtype).itemsize > 4 for v in t.values())
        else:
            wide = False  # a GGUF file's lazily dequantised tensors
        return np.float64 if wide else np.float32

    def attention(self, layers: range, which: Collection[str] = ATTENTION_WEIGHTS, *,
                  dtype: Any = np.float64) -> dict[str, np.ndarray]:
        """The attention parameters of ``layers`` as the model view holds them: the projections
        named in ``which`` (at least) with their biases, in ``dtype``, every norm weight that acts
        on them folded in (input norms into ``W_Q, W_K, W_V``, reads centred behind a layer norm;
        q/k norms into ``W_Q, W_K``; output norms into ``W_O``), by the folding code of the
        model view (:mod:`circuitalg.model.folding`). Only those layers' tensors are read."""
        c = self.config
        shapes = param_shapes(c)
        p: dict[str, np.ndarray] = {}
        with errors_named(self.source):
            for layer in layers:
                part = self.reader.attention(layer, which)
                while part:  # each stored tensor freed once converted (the part holds it no longer)
                    key, value = part.popitem()
                    if isinstance(value, np.ndarray):  # read from the file by us: no defensive copy
                        value.flags.writeable = False
                    p[key] = validate_param(value, key, shapes[key], source=self.source, dtype=dtype)
                    del value
            for layer in layers:
                fold_attention_reads(c, p, layer, dtype=dtype)
            p.update(fold_head_norms(c, p, layers))
        return p

    def head_weights(self, layers: range, *, dtype: Any = np.float64) -> HeadWeights:
        """The :class:`~circuitalg.model.view.HeadWeights` of ``layers`` (layer ``layers[i]`` at
        index ``i``), equal to those layers of the loaded model's ``head_weights`` in ``dtype``;
        only those layers' attention tensors are read."""
        p = self.attention(layers, dtype=dtype)
        return stack_heads(self.config, p, layers)[0]


def open_checkpoint(
    path: str | Path, *, layout: str = "auto", config: Any = None, max_bytes: int, gguf_dtype: Any = np.float32,
) -> Checkpoint:
    """Open a checkpoint file or directory as :func:`~circuitalg.model.io.load` reads it (the
    same formats, layouts, config rules and errors); no tensor is read.

    Parameters
    ----------
    path : str or Path
        An existing ``.safetensors``, ``.npz``, ``.gguf`` or torch file, or a Hugging Face directory.
    layout : str
        ``"auto"`` or one of :data:`~circuitalg.model.layouts.LAYOUTS`.
    config : TransformerConfig or dict, optional
        Overrides or completes the config found beside the weights.
    max_bytes : int
        The most tensor bytes one file may hold.
    gguf_dtype : numpy dtype
        The dtype GGUF tensors are decoded into (float32 or float64: the same values).
    """
    if layout not in ("auto",) + LAYOUTS:
        raise LoadError(f"{path}: unknown layout {layout!r}; use 'auto' or one of {LAYOUTS}.")
    p = Path(path)
    vocab = None
    meta: Mapping[str, str] = {}
    sidecar = None
    if p.is_dir():
        tensors, meta, sidecar, vocab = _read_directory(p, max_bytes)
    elif p.suffix.lower() == ".gguf":
        tensors, gguf_config, vocab = read_gguf(p, max_bytes, dtype=gguf_dtype)
        if layout == "auto":
            layout = HF_MODEL_TYPES[gguf_config["model_type"]]
        if config is None:
            config = gguf_config
    elif p.suffix.lower() == ".safetensors":
        if not p.is_file():
            raise LoadError(f"{p}: not a file.")
        tensors = SafetensorsSource([p], max_bytes)
        meta, sidecar = tensors.metadata, _sidecar_config(p)
    else:
        tensors, meta = read_tensors(p, max_bytes=max_bytes)
        sidecar = _sidecar_config(p)
    source = str(p)
    with errors_named(source):
        found_layout = (detect_layout(tensors.keys(), source, config if config is not None else sidecar)
                        if layout == "auto" else layout)
        cfg_arg: Any = config
        if found_layout == "circuitalg":
            cfg_arg = _own_config(meta, config, sidecar, source)
            if VOCAB_META in meta and vocab is None:
                vocab = read_json(meta[VOCAB_META], f"{source} (metadata {VOCAB_META})")
        elif config is None and sidecar is not None:
            cfg_arg = sidecar
        elif config is None and CONFIG_META in meta:  # e.g. a TL state dict saved with its config
            cfg_arg = read_json(meta[CONFIG_META], f"{source} (metadata {CONFIG_META})")
        reader = state_dict_reader(tensors, layout=found_layout, config=cfg_arg, source=source)
    if vocab is not None and len(vocab) != reader.config.d_vocab:
        vocab = None  # a tokenizer with added tokens: keep the model, drop the strings
    return Checkpoint(p.name or source, source, reader, tensors, vocab)


def _read_directory(d: Path, budget: int) -> tuple[Mapping[str, Any], Mapping[str, str], Any, list[str] | None]:
    """``(tensors, metadata, config.json or None, token strings or None)`` of a Hugging Face directory."""
    cfg_path = d / "config.json"
    sidecar = read_json(read_bytes(cfg_path), str(cfg_path)) if cfg_path.is_file() else None
    index = d / "model.safetensors.index.json"
    tensors: Mapping[str, Any]
    meta: Mapping[str, str] = {}
    if (d / "model.safetensors").is_file():
        source = SafetensorsSource([d / "model.safetensors"], budget)
        tensors, meta = source, source.metadata
    elif index.is_file():
        spec = read_json(read_bytes(index), str(index))
        weight_map = spec.get("weight_map") if isinstance(spec, dict) else None
        if not isinstance(weight_map, dict):
            raise LoadError(f"{index}: missing 'weight_map'.")
        shards = sorted(set(weight_map.values()), key=str)
        for shard in shards:
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
                raise LoadError(f"{index}: invalid shard name {shard!r}.")
        tensors = SafetensorsSource([d / shard for shard in shards], budget)
    elif any((d / n).is_file() for n in ("pytorch_model.bin", "model.pt")):
        name = "pytorch_model.bin" if (d / "pytorch_model.bin").is_file() else "model.pt"
        tensors = read_torch(d / name)
    else:
        raise LoadError(
            f"{d}: no checkpoint found; expected model.safetensors (with config.json), "
            "model.safetensors.index.json, or pytorch_model.bin."
        )
    return tensors, meta, sidecar, _read_vocab(d / "vocab.json")


def _read_vocab(path: Path) -> list[str] | None:
    """Token strings by id from a GPT-2 ``vocab.json`` (byte-level symbols decoded), or None."""
    if not path.is_file():
        return None
    try:
        mapping = json.loads(read_bytes(path))
        ids = {int(i): t for t, i in mapping.items()}
        n = max(ids) + 1
        if set(ids) != set(range(n)):
            return None
    except (ValueError, TypeError, AttributeError):
        return None  # a vocabulary is a convenience; never fail a load over it
    return [decode_byte_level(ids[i]) for i in range(n)]


def _sidecar_config(p: Path) -> Any:
    for cand in (p.with_suffix(".json"), p.parent / "config.json"):
        if cand.is_file() and cand != p:
            return read_json(read_bytes(cand), str(cand))
    return None


def _own_config(meta: Mapping[str, str], config: Any, sidecar: Any, source: str) -> Any:
    if config is not None:
        return config
    if CONFIG_META in meta:
        cfg = read_json(meta[CONFIG_META], f"{source} (metadata {CONFIG_META})")
        return TransformerConfig.from_dict(cfg, source=source)
    if sidecar is not None:
        return TransformerConfig.from_dict(sidecar, source=source)
    raise ConfigError(
        f"{source}: circuitalg-layout arrays without a config; the file has no '{CONFIG_META}' metadata and "
        "no config.json beside it. Pass config=TransformerConfig(...)."
    )

