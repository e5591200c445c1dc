"""Reading and writing checkpoints, without ever unpickling.

Formats:

- **safetensors** (preferred): the header is parsed and checked against the file size before
  any tensor is read, so a hostile header cannot make the loader allocate more than the file
  holds; each tensor is read when the layout asks for it. circuitalg's own files keep the
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

The files are read by :mod:`circuitalg.model.tensorfiles`, and opened (tensors, layout, config)
by :func:`~circuitalg.model.checkpoint.open_checkpoint`, which :mod:`circuitalg.streaming` uses to
read a range of layers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, LoadError, check_int
from circuitalg.files import atomic_write
from circuitalg.model.checkpoint import errors_named, open_checkpoint
from circuitalg.model.layouts import LAYOUTS
from circuitalg.model.tensorfiles import CONFIG_META, DEFAULT_LOAD_BYTES, NPZ_META, VOCAB_META, read_tensors
from circuitalg.model.transforms import fold_params
from circuitalg.model.params import validate_params
from circuitalg.model.weights import Transformer, require_model

__all__ = ["load", "save", "read_tensors", "DEFAULT_LOAD_BYTES"]


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

    Notes
    -----
    A load writes a model's worth of new arrays once: where free memory is fragmented, entering
    ``circuitalg.runtime.Runtime(hugepage_advice=False)`` around it (as the command, the report
    and :mod:`circuitalg.streaming` do) avoids the kernel's synchronous huge-page compaction.

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
    # a GGUF file is decoded straight into a float64 model's dtype (the same float32 values); a fold converts itself
    wide = not fold and not isinstance(dtype, str) and np.dtype(dtype) == np.float64
    ckpt = open_checkpoint(p, layout=layout, config=config, max_bytes=budget,
                           gguf_dtype=np.float64 if wide else np.float32)
    with errors_named(ckpt.source):
        params = ckpt.read_all()
        cfg, vocab, name, source, stored = ckpt.config, ckpt.vocab, ckpt.name, ckpt.source, ckpt.stored_dtype()
        del ckpt  # from here on each raw tensor is freed when nothing but params holds it
        if isinstance(dtype, str) and dtype == "auto":
            dtype = stored
        if fold and cfg.normalization is not None:  # each raw tensor is freed when its folded array replaces it
            params = validate_params(cfg, params, biases="required", source=source, dtype=stored)
            cfg = dataclasses.replace(cfg, normalization=fold_params(cfg, params, dtype=dtype))
        return Transformer(cfg, params, name=name, vocab=vocab, dtype=dtype)


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

        meta = {"format": "circuitalg", CONFIG_META: config_json}
        if model.vocab is not None:
            meta[VOCAB_META] = json.dumps(list(model.vocab))
        atomic_write(p, lambda tmp: save_file(arrays, str(tmp), metadata=meta))
    elif p.suffix == ".npz":
        blob = json.dumps({"config": json.loads(config_json), "vocab": model.vocab}).encode()
        extra = {NPZ_META: np.frombuffer(blob, dtype=np.uint8)}
        atomic_write(p, lambda tmp: np.savez(tmp, **arrays, **extra))
    else:
        raise InvalidArgumentError(f"save: unsupported suffix {p.suffix!r} for {p}; use .safetensors or .npz.")
    return p
