"""EleutherAI sparsify's sparse coders (``eai-sparsify``, pinned against 1.3.3).

One hookpoint is a directory named after the hookpoint (a Hugging Face module name such as
``layers.6`` or ``layers.6.mlp``) holding ``cfg.json`` (``SparseCoderConfig`` plus ``d_in``) and
``sae.safetensors`` with ``encoder.weight (F, d)``, ``encoder.bias (F,)``, ``W_dec (F, d)``,
``b_dec (d,)`` and, with ``skip_connection``, ``W_skip (d, d)``. A directory of such hookpoint
directories (``SparseCoder.load_many``'s layout) loads as a :class:`DictionarySet`.

Semantics (``SparseCoder.encode/decode/forward``): an SAE subtracts ``b_dec`` before encoding
(``pre_shift``); a transcoder (``transcode``) does not. ``pre = encoder(x)``; the activation is
``TopK(k)`` of ``relu(pre)``; ``out = f W_dec + b_dec (+ x W_skipᵀ)``. ``groupmax`` has no
circuitalg activation and is refused.

Hookpoints map to hooks as the module's output (SAEs) or input -> output (transcoders):
``layers.N`` / ``h.N`` -> ``blocks.N.hook_resid_post`` (a transcoder: ``hook_resid_pre`` ->
``hook_resid_post``); ``layers.N.mlp`` -> ``hook_mlp_out`` (a transcoder: ``mlp.hook_in`` ->
``hook_mlp_out``); ``layers.N.self_attn`` / ``attn`` -> ``hook_attn_out`` (SAEs only).
TransformerLens names (``blocks.N.hook_resid_post``) are taken as they are.

``layers.N.mlp`` and ``layers.N.self_attn`` are the modules' outputs: on a model with post-norms
(Gemma 2 and 3, OLMo 2) they come *before* the sublayer's post-norm, which circuitalg has no hook
kind for. Such dictionaries are read as writing ``hook_mlp_out`` / ``hook_attn_out`` with
``meta["before_post_norm"] = True``: binding one to a model with post-norms must apply the
post-norm to what it writes (or refuse); on a model without them the flag changes nothing.
Dictionaries are named after their hookpoint, which is unique within a run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, LoadError
from circuitalg.features.activations import TopK
from circuitalg.features.dictionary import Dictionary, DictionaryKind, DictionarySet
from circuitalg.features.hooks import Hook, HookKind
from circuitalg.model.tensorfiles import read_bytes, read_json, read_tensors
from circuitalg.features.formats.tensors import take_tensor

__all__ = ["NAME", "detect", "load", "hookpoint_hooks"]

NAME = "sparsify"
CFG = "cfg.json"
WEIGHTS = "sae.safetensors"

_HOOKPOINT = re.compile(r"^(?:[A-Za-z_][\w]*\.)*?(?:layers|h|blocks|layer)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?$")


def _is_coder_dir(p: Path) -> bool:
    return p.is_dir() and (p / CFG).is_file() and (p / WEIGHTS).is_file()


def detect(path: Path) -> bool:
    """A hookpoint directory (``cfg.json`` + ``sae.safetensors``) or a directory of them."""
    p = Path(path)
    if _is_coder_dir(p):
        return True
    return p.is_dir() and any(_is_coder_dir(c) for c in p.iterdir())


def hookpoint_hooks(hookpoint: str, transcode: bool, source: str) -> tuple[Hook, Hook]:
    """The (read, write) hooks of sparsify hookpoint ``hookpoint`` (see the module docstring)."""
    try:
        h = Hook.parse(hookpoint)
    except InvalidArgumentError:
        h = None
    if h is not None:
        if transcode:
            raise LoadError(f"{source}: a transcoder's hookpoint must be a module (e.g. 'layers.3.mlp'), got hook {hookpoint!r}.")
        return h, h
    m = _HOOKPOINT.match(hookpoint)
    if m is None:
        raise LoadError(
            f"{source}: hookpoint {hookpoint!r} (the directory's name) is not a layer ('layers.N', 'h.N'), its MLP "
            "('layers.N.mlp') or its attention ('layers.N.self_attn'); rename the directory to the hookpoint it was trained on."
        )
    layer, sub = int(m.group(1)), m.group(2)
    if sub is None:
        out = Hook(HookKind.RESID_POST, layer)
        return (Hook(HookKind.RESID_PRE, layer) if transcode else out), out
    if sub == "mlp":
        out = Hook(HookKind.MLP_OUT, layer)
        return (Hook(HookKind.MLP_IN, layer) if transcode else out), out
    if transcode:
        raise LoadError(f"{source}: hookpoint {hookpoint!r}: circuitalg has no hook for an attention layer's input, so an attention transcoder cannot be read.")
    out = Hook(HookKind.ATTN_OUT, layer)
    return out, out


def _module_output(hookpoint: str) -> bool:
    """Whether ``hookpoint`` is an MLP or attention module (output before any post-norm)."""
    m = _HOOKPOINT.match(hookpoint)
    return m is not None and m.group(2) is not None


def _field(cfg: dict[str, Any], key: str, kind: type, source: str, default: Any = None) -> Any:
    v = cfg.get(key, default)
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        raise LoadError(f"{source}: field {key!r} = {v!r}, expected {kind.__name__}.")
    return v


def _load_one(p: Path, dtype: np.dtype) -> Dictionary:
    cfg_file, wfile = p / CFG, p / WEIGHTS
    source = str(cfg_file)
    cfg = read_json(read_bytes(cfg_file), source)
    if not isinstance(cfg, dict):
        raise LoadError(f"{source}: expected a JSON object (SparseCoderConfig and d_in).")
    d = _field(cfg, "d_in", int, source)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise LoadError(f"{source}: field 'activation' = {activation!r}; circuitalg reads sparsify's 'topk' coders only ('groupmax' has no circuitalg activation).")
    k = _field(cfg, "k", int, source)
    transcode = _field(cfg, "transcode", bool, source, False)
    skip = _field(cfg, "skip_connection", bool, source, False)
    n_lat = _field(cfg, "num_latents", int, source, 0)
    F = n_lat or d * _field(cfg, "expansion_factor", int, source, 32)
    if d < 1 or F < 1 or not 1 <= k <= F:
        raise LoadError(f"{source}: d_in={d}, num_latents={F}, k={k}: expected positive sizes with k <= num_latents.")
    tensors, _ = read_tensors(wfile)
    W_enc = take_tensor(tensors, "encoder.weight", (F, d), wfile, "encoder, (num_latents, d_in)")
    b_enc = take_tensor(tensors, "encoder.bias", (F,), wfile, "encoder bias")
    W_dec = take_tensor(tensors, "W_dec", (F, d), wfile, "decoder rows, (num_latents, d_in)")
    b_dec = take_tensor(tensors, "b_dec", (d,), wfile, "decoder bias")
    W_skip = take_tensor(tensors, "W_skip", (d, d), wfile, "skip map, used as x @ W_skip.T") if skip else None
    if not skip and "W_skip" in tensors:
        raise LoadError(f"{wfile}: tensor 'W_skip' is present but cfg.json's field 'skip_connection' is false.")
    read, write = hookpoint_hooks(p.name, transcode, source)
    if transcode:
        kind = DictionaryKind.SKIP_TRANSCODER if skip else DictionaryKind.TRANSCODER
    else:
        kind = DictionaryKind.SAE
    return Dictionary(
        name=p.name, kind=kind, reads=(read,), writes=(write,), W_enc=(W_enc,), b_enc=b_enc, W_dec=(W_dec.T,),
        b_dec=(b_dec,), activation=TopK(k, relu=True), pre_shift=not transcode, W_skip=W_skip, dtype=dtype,
        meta={"format": NAME, "hookpoint": p.name, **cfg, **({"before_post_norm": True} if _module_output(p.name) else {})},
    )


def _natural(name: str) -> list[Any]:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def load(path: Path, dtype: Any = np.float64) -> Dictionary | DictionarySet:
    """Read one hookpoint directory (a :class:`Dictionary`) or a directory of them (a
    :class:`DictionarySet`, in natural order of the hookpoints)."""
    p = Path(path)
    dt = np.dtype(dtype)
    if _is_coder_dir(p):
        return _load_one(p, dt)
    if not p.is_dir():
        raise LoadError(f"{p}: expected sparsify's hookpoint directory ({CFG} + {WEIGHTS}) or a directory of them.")
    dirs = sorted((c for c in p.iterdir() if _is_coder_dir(c)), key=lambda c: _natural(c.name))
    if not dirs:
        raise LoadError(f"{p}: no hookpoint directory with {CFG} and {WEIGHTS} in it.")
    return DictionarySet(p.name, tuple(_load_one(c, dt) for c in dirs), meta={"format": NAME})
