"""Gemma Scope dictionaries: Gemma Scope 1 (``params.npz``) and Gemma Scope 2
(``params.safetensors`` + ``config.json``).

Both are JumpReLU dictionaries, ``f = relu(pre) * (pre > threshold)`` with ``pre = x W_enc +
b_enc`` (no decoder-bias pre-shift), stored row-wise: ``W_enc (d_in, F)``, ``W_dec (F, d_out)``,
``b_enc (F,)``, ``b_dec (d_out,)``, ``threshold (F,)`` (Gemma Scope 1 names them ``W_enc`` ...,
Gemma Scope 2 ``w_enc`` ...). Gemma Scope 2's transcoders may carry ``affine_skip_connection``
``(d_in, d_out)``, added as ``x @ affine_skip_connection`` (SAELens's ``W_skip`` is its transpose,
and so is circuitalg's column-convention ``W_skip``).

Hooks. Gemma Scope 2's ``config.json`` names the Hugging Face module read
(``hf_hook_point_in``) and, for transcoders, written (``hf_hook_point_out``):

- ``model.layers.L.output``: ``blocks.L.hook_resid_post``;
- ``model.layers.L.self_attn.o_proj.input``: ``blocks.L.attn.hook_z``;
- ``model.layers.L.pre_feedforward_layernorm.output``: the MLP's input (``MLP_IN``);
- ``model.layers.L.post_feedforward_layernorm.output``: ``blocks.L.hook_mlp_out``.

Gemma Scope 1's files name no hook: it is read from the path as the release is laid out
(``.../gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71``: ``res`` is
``hook_resid_post``, ``mlp`` ``hook_mlp_out``, ``att`` ``attn.hook_z``, ``transcoders`` read
``ln2.hook_normalized`` and write ``hook_mlp_out``), as SAELens does. The Gemma Scope 1
transcoders read the MLP's input norm *before* its weight (``MLP_NORMALIZED``): circuit-tracer's
Gemma 2 configuration reads them at ``ln2.hook_normalized`` on an unfolded model (its Hugging
Face mapping: the output of ``pre_feedforward_layernorm``'s normalisation, before the weight
multiplies), and SAELens names the same hook (``blocks.L.ln2.hook_normalized``; its models load
with ``fold_ln``, which moves the weight into ``W_in``, so that hook is before the weight there
too). Where the path does not say, or to override it, put ``circuitalg.json`` beside the weights: ``{"hook_name": "blocks.20.hook_resid_post"}`` (a
transcoder adds ``"hook_name_out"``). The embedding SAEs (``embedding`` in the path) are refused:
circuitalg has no hook for the embedding.

Names. A dictionary is named after its place in the release, so that different layers' and
widths' dictionaries never share a name (their feature spaces are told apart by it):
``gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`` is ``res20_16k_l0_71``,
``gemma-scope-2b-pt-transcoders/layer_3/width_16k/average_l0_5`` ``transcoders3_16k_l0_5``;
Gemma Scope 2 folders (``transcoder/layer_5_width_16k_l0_small``) are ``transcoder5_16k_l0_small``.
Other leaves keep their name (``.../res-canonical/layer_9/width_131k/canonical``:
``res9_131k_canonical``); where the path has no layer and width, the last two folders are joined
(``parent/leaf``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, InvalidArrayError, LoadError, ShapeError
from circuitalg.features.activations import JumpReLU
from circuitalg.features.dictionary import Dictionary, DictionaryKind
from circuitalg.features.hooks import Hook, HookKind
from circuitalg.features.formats.saelens import hf_hook, parse_hook
from circuitalg.model.tensorfiles import read_bytes, read_json, read_tensors

__all__ = ["NAME", "OVERRIDE_FILENAME", "detect", "load", "dictionary_name"]

NAME = "gemma_scope"
#: the optional file naming the hooks (``hook_name``, ``hook_name_out``)
OVERRIDE_FILENAME = "circuitalg.json"

_SITES = {"res": HookKind.RESID_POST, "mlp": HookKind.MLP_OUT, "att": HookKind.ATTN_Z}


def detect(path: Path) -> bool:
    """A directory with ``params.npz``, or with ``params.safetensors`` and ``config.json``."""
    p = Path(path)
    return p.is_dir() and ((p / "params.npz").is_file() or ((p / "params.safetensors").is_file() and (p / "config.json").is_file()))


def _override(p: Path) -> tuple[Hook | None, Hook | None]:
    f = p / OVERRIDE_FILENAME
    if not f.is_file():
        return None, None
    data = read_json(read_bytes(f), str(f))
    if not isinstance(data, Mapping) or "hook_name" not in data:
        raise LoadError(f"{f}: expected a JSON object with hook_name (and hook_name_out for a transcoder).")
    reads = parse_hook(data["hook_name"], str(f), "hook_name")
    writes = parse_hook(data["hook_name_out"], str(f), "hook_name_out") if data.get("hook_name_out") is not None else None
    return reads, writes


def _layer_from_path(p: Path) -> int | None:
    for part in reversed(p.resolve().parts):
        m = re.search(r"layer_(\d+)", part)
        if m:
            return int(m.group(1))
    return None


def _hooks_from_path(p: Path, source: str) -> tuple[Hook, Hook | None]:
    """Gemma Scope 1: the hooks as the release's repository and folder names say."""
    parts = [x.lower() for x in p.resolve().parts]
    hint = f"put {OVERRIDE_FILENAME} beside the weights, e.g. {{\"hook_name\": \"blocks.20.hook_resid_post\"}}"
    if any("embedding" in x for x in parts):
        raise LoadError(f"{source}: an embedding SAE (the path says 'embedding'); circuitalg has no hook for the embedding.")
    layer = _layer_from_path(p)
    site = None
    for part in reversed(parts):
        m = re.search(r"gemma-scope-[^/]*?-(res|mlp|att|transcoders?)(?:$|[-_])", part)
        if m:
            site = m.group(1)
            break
    if layer is None or site is None:
        raise LoadError(
            f"{source}: Gemma Scope 1 files do not name their hook and the path does not say it (expected a "
            f"'gemma-scope-...-res|mlp|att|transcoders' folder and a 'layer_N' folder); {hint}."
        )
    if site.startswith("transcoder"):
        # ln2.hook_normalized: the norm's output before its weight (circuit-tracer and SAELens)
        return Hook(HookKind.MLP_NORMALIZED, layer), Hook(HookKind.MLP_OUT, layer)
    return Hook(_SITES[site], layer), None


def _take(tensors: dict[str, np.ndarray], names: tuple[str, ...], shape: tuple[int | None, ...], file: Path,
          why: str) -> np.ndarray:
    name = next((n for n in names if n in tensors), None)
    if name is None:
        raise LoadError(f"{file}: tensor {names[0]!r} is missing (expected {why}).")
    a = tensors.pop(name)
    if a.dtype.kind != "f":
        raise LoadError(f"{file}: tensor {name!r} has dtype {a.dtype}, expected floating point.")
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        raise LoadError(f"{file}: tensor {name!r} has shape {tuple(a.shape)}, expected {why}.")
    if not np.all(np.isfinite(a)):
        raise LoadError(f"{file}: tensor {name!r} holds non-finite values (NaN or infinity).")
    return a


def load(path: Path, dtype: Any = np.float64) -> Dictionary:
    """Read a Gemma Scope 1 or 2 directory (see the module docstring)."""
    p = Path(path)
    dt = np.dtype(dtype)
    if (p / "params.npz").is_file():
        w_file = p / "params.npz"
        src = str(w_file)
        version, cfg = 1, {}
        names = {"W_enc": ("W_enc", "w_enc"), "W_dec": ("W_dec", "w_dec"), "b_enc": ("b_enc",), "b_dec": ("b_dec",)}
    else:
        w_file, c_file = p / "params.safetensors", p / "config.json"
        for f in (w_file, c_file):
            if not f.is_file():
                raise LoadError(f"{f}: missing (a Gemma Scope 2 dictionary has params.safetensors and config.json).")
        src = str(c_file)
        cfg = read_json(read_bytes(c_file), src)
        if not isinstance(cfg, dict):
            raise LoadError(f"{src}: expected a JSON object, got {type(cfg).__name__}.")
        if cfg.get("architecture", "jump_relu") != "jump_relu":
            raise LoadError(f"{src}: architecture {cfg.get('architecture')!r}; Gemma Scope 2 dictionaries are 'jump_relu'.")
        version = 2
        names = {"W_enc": ("w_enc", "W_enc"), "W_dec": ("w_dec", "W_dec"), "b_enc": ("b_enc",), "b_dec": ("b_dec",)}
    tensors, _ = read_tensors(w_file)

    W_enc = _take(tensors, names["W_enc"], (None, None), w_file, "(d_in, F)")
    d_in, F = W_enc.shape
    if "w_dec" in tensors and tensors["w_dec"].ndim == 3:
        raise LoadError(f"{w_file}: tensor 'w_dec' is 3-D {tensors['w_dec'].shape}: a cross-layer transcoder's decoder, not read here.")
    W_dec = _take(tensors, names["W_dec"], (F, None), w_file, f"(F, d_out) with F = {F} from the encoder")
    d_out = W_dec.shape[1]
    b_enc = _take(tensors, names["b_enc"], (F,), w_file, f"({F},)")
    b_dec = _take(tensors, names["b_dec"], (d_out,), w_file, f"({d_out},)")
    threshold = _take(tensors, ("threshold",), (F,), w_file, f"({F},): the JumpReLU thresholds")
    skip = None
    if "affine_skip_connection" in tensors:
        skip = _take(tensors, ("affine_skip_connection",), (d_in, d_out), w_file, f"({d_in}, {d_out}) = (d_in, d_out)")
        if cfg.get("affine_connection") is False:
            raise LoadError(f"{src}: affine_connection is false but {w_file.name} holds affine_skip_connection.")
    elif cfg.get("affine_connection") is True:
        raise LoadError(f"{w_file}: tensor 'affine_skip_connection' is missing but {Path(src).name} says affine_connection is true.")
    if "scaling_factor" in tensors:
        s = _take(tensors, ("scaling_factor",), (F,), w_file, f"({F},)")
        if not np.allclose(s, 1.0):
            raise LoadError(f"{w_file}: tensor 'scaling_factor' is not all ones (SAELens refuses it too: the Gemma Scope releases have none).")
    if tensors:
        raise LoadError(f"{w_file}: unexpected tensor(s) {sorted(tensors)} for a Gemma Scope dictionary.")

    reads, writes = _override(p)
    if reads is None:
        if version == 2 and cfg.get("hf_hook_point_in") is not None:
            reads = hf_hook(cfg["hf_hook_point_in"], src, "hf_hook_point_in")
            if cfg.get("hf_hook_point_out") is not None:
                writes = hf_hook(cfg["hf_hook_point_out"], src, "hf_hook_point_out")
            elif reads.kind is HookKind.MLP_IN:
                writes = Hook(HookKind.MLP_OUT, reads.layer)
        elif version == 2:
            layer = _layer_from_path(p)
            folder = str(p.resolve()).lower()
            kinds = (("transcoder", HookKind.MLP_IN), ("clt", HookKind.MLP_IN), ("resid_post", HookKind.RESID_POST),
                     ("attn_out", HookKind.ATTN_Z), ("mlp_out", HookKind.MLP_OUT))
            kind = next((k for key, k in kinds if key in folder), None)
            if layer is None or kind is None:
                raise LoadError(f"{src}: hf_hook_point_in is missing and the path names no hook; put {OVERRIDE_FILENAME} beside the weights.")
            reads = Hook(kind, layer)
            writes = Hook(HookKind.MLP_OUT, layer) if kind is HookKind.MLP_IN else None
        else:
            reads, writes = _hooks_from_path(p, src)
    transcoder = writes is not None and writes != reads
    if skip is not None and not transcoder:
        raise LoadError(f"{w_file}: affine_skip_connection in a dictionary that reads and writes {reads} (expected a transcoder).")
    if not transcoder and d_out != d_in:
        raise LoadError(f"{w_file}: an SAE at {reads} with W_enc {W_enc.shape} and W_dec {W_dec.shape} (d_in != d_out).")
    kind = DictionaryKind.SAE if not transcoder else (DictionaryKind.SKIP_TRANSCODER if skip is not None else DictionaryKind.TRANSCODER)
    cast = (lambda a: a.astype(dt, copy=False))
    try:
        return _dictionary(p, kind, reads, writes if transcoder else reads, cast(W_enc), cast(b_enc), cast(W_dec),
                           cast(b_dec), cast(threshold), None if skip is None else cast(skip), dt,
                           {"format": NAME, "gemma_scope_version": version, "config": cfg})
    except (InvalidArgumentError, ShapeError, InvalidArrayError) as e:
        raise LoadError(f"{p}: the files do not make a valid dictionary: {e}") from None


def dictionary_name(path: Path) -> str:
    """The name of the Gemma Scope dictionary in directory ``path`` (see the module docstring)."""
    parts = Path(path).resolve().parts
    site = layer = width = None
    for part in parts:
        low = part.lower()
        m = re.search(r"gemma-scope-(?:2-)?[^/]*?-(res|mlp|att|transcoders?|clt)(?:$|[-_])", low)
        if m:
            site = m.group(1)
        m = re.fullmatch(r"(resid_post|attn_out|mlp_out|transcoder|clt)(?:_.*)?", low)
        if m and site is None:
            site = m.group(1)
        m = re.fullmatch(r"layer_(\d+)(?:_width_(\w+?))?(?:_(l0_.*))?", low)
        if m:
            layer, width = m.group(1), m.group(2) or width
            if m.group(3):
                return f"{site or 'layer'}{layer}_{width}_{m.group(3)}" if width else f"{site or 'layer'}{layer}_{m.group(3)}"
        m = re.fullmatch(r"width_(\w+)", low)
        if m:
            width = m.group(1)
    leaf = parts[-1] if parts else NAME
    m = re.fullmatch(r"average_(l0_\w+)", leaf.lower())
    if layer is not None and width is not None and parts and parts[-1] != f"width_{width}":
        return f"{site or 'layer'}{layer}_{width}_{m.group(1) if m else leaf}"
    return "/".join(parts[-2:]) if len(parts) >= 2 else leaf


def _dictionary(p, kind, reads, writes, W_enc, b_enc, W_dec, b_dec, threshold, skip, dt, meta) -> Dictionary:
    return Dictionary(
        name=dictionary_name(p),
        kind=kind,
        reads=(reads,),
        writes=(writes,),
        W_enc=(W_enc.T,),
        b_enc=b_enc,
        W_dec=(W_dec.T,),
        b_dec=(b_dec,),
        activation=JumpReLU(threshold, relu=True),
        W_skip=None if skip is None else skip.T,
        dtype=dt,
        meta=meta,
    )
