"""saprmarks/dictionary_learning's dictionaries (``dictionary-learning``, pinned against 0.1.0).

A directory with ``ae.pt`` (the state dict ``torch.save``'d by ``trainSAE``; read only with
``torch.load(weights_only=True)``, so torch is needed, ``pip install torch``) and ``config.json``
(``{"trainer": {"dict_class", "activation_dim", "dict_size", "layer", "submodule_name", ...}}``).

Classes, with their encode at inference exactly (tensor names in the state dict):

``AutoEncoder``
    ``relu(encoder(x - bias))``, ``decoder(f) + bias``: ``pre_shift`` with ``b_dec = bias``.
    (``AutoEncoder.from_pretrained`` rescales features to unit decoder norms by default; the
    loader keeps the weights as saved, which the class's own ``encode`` uses.)
``AutoEncoderNew``
    ``relu(encoder(x))``, ``decoder(f)`` (both Linear layers with biases).
``AutoEncoderTopK`` (trainers/top_k.py)
    ``TopK(k)`` of ``relu(encoder(x - b_dec))``; ``decoder(f) + b_dec``.
``BatchTopKSAE`` (trainers/batch_top_k.py)
    inference form (``encode``'s default ``use_threshold=True``): ``r = relu(encoder(x - b_dec))``,
    ``r * (r > threshold)`` with the learned scalar ``threshold``: :class:`BatchTopK`.
``MatryoshkaBatchTopKSAE`` (trainers/matryoshka_batch_top_k.py)
    the same inference form on ``relu((x - b_dec) @ W_enc + b_enc)`` (``W_enc (d, F)``,
    ``W_dec (F, d)``); ``from_pretrained`` activates every group (``active_groups`` is not saved).
``JumpReluAutoEncoder``
    ``relu(pre * (pre > threshold))`` with ``pre = x @ W_enc + b_enc`` (``W_enc (d, F)``,
    ``W_dec (F, d)``); ``apply_b_dec_to_input`` is not saved and defaults to False.

``GatedAutoEncoder`` (two pre-activations) is refused.
The hook comes from ``submodule_name`` (``resid_post_layer_3``, ``mlp_out_layer3``,
``attn_out_layer_3``, ``resid_pre_layer_3``, or a TransformerLens name); without it,
``trainer.layer``'s residual output (what ``dictionary_learning.utils.get_submodule`` returns).
``mlp_out`` and ``attn_out`` are the modules' outputs: on a model with post-norms (Gemma 2 and 3,
OLMo 2) they come before the post-norm, so those dictionaries carry
``meta["before_post_norm"] = True`` (binding to a model with post-norms must apply it, or refuse).

Names: a dictionary in a ``trainer_N`` folder (dictionary_learning's layout, where every layer's
run has ``trainer_0``) is named ``{hook}.trainer_N`` (``blocks.3.hook_resid_post.trainer_0``);
other folders keep their name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, LoadError
from circuitalg.features.activations import BatchTopK, JumpReLU, ReLU, TopK
from circuitalg.features.dictionary import Dictionary, DictionaryKind
from circuitalg.features.hooks import Hook, HookKind
from circuitalg.model.tensorfiles import read_bytes, read_json, read_torch
from circuitalg.features.formats.tensors import as_numpy, take_tensor

__all__ = ["NAME", "detect", "load", "submodule_hook"]

NAME = "dictionary_learning"
WEIGHTS = "ae.pt"
CONFIG = "config.json"
_SUBMODULE = re.compile(r"^(resid_post|resid_out|resid_pre|resid_in|mlp_out|attn_out)_?layer_?(\d+)$")
_KINDS = {"resid_post": HookKind.RESID_POST, "resid_out": HookKind.RESID_POST, "resid_pre": HookKind.RESID_PRE,
          "resid_in": HookKind.RESID_PRE, "mlp_out": HookKind.MLP_OUT, "attn_out": HookKind.ATTN_OUT}
_CLASSES = ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE",
            "JumpReluAutoEncoder")
#: classes holding nn.Parameter matrices W_enc (d, F) and W_dec (F, d) rather than Linear layers
_PARAMETER_CLASSES = ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE")


def _dir(path: Path) -> Path:
    p = Path(path)
    return p.parent if p.is_file() and p.name == WEIGHTS else p


def detect(path: Path) -> bool:
    """A directory (or its ``ae.pt``) with ``ae.pt`` and a ``config.json`` holding ``trainer``."""
    p = _dir(path)
    if not ((p / WEIGHTS).is_file() and (p / CONFIG).is_file()):
        return False
    try:
        cfg = read_json(read_bytes(p / CONFIG), str(p / CONFIG))
    except LoadError:
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("trainer"), dict)


def submodule_hook(trainer: dict[str, Any], source: str) -> Hook:
    """The hook a dictionary_learning trainer config read (see the module docstring)."""
    name = trainer.get("submodule_name")
    if name is None:
        layer = trainer.get("layer")
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise LoadError(f"{source}: field 'trainer.layer' = {layer!r}, expected a layer index (no submodule_name is given).")
        return Hook(HookKind.RESID_POST, layer)
    if not isinstance(name, str):
        raise LoadError(f"{source}: field 'trainer.submodule_name' = {name!r}, expected a string.")
    m = _SUBMODULE.match(name)
    if m:
        return Hook(_KINDS[m.group(1)], int(m.group(2)))
    try:
        return Hook.parse(name)
    except InvalidArgumentError:
        raise LoadError(
            f"{source}: field 'trainer.submodule_name' = {name!r} names no hook circuitalg knows (expected e.g. "
            "'resid_post_layer_3', 'mlp_out_layer_3', 'attn_out_layer_3' or 'blocks.3.hook_resid_post')."
        ) from None


def _k(t: dict[str, np.ndarray], trainer: dict[str, Any], file: Path, source: str, F: int) -> int:
    k = trainer.get("k")
    if "k" in t:
        stored = t["k"]
        if stored.shape != () or stored.dtype.kind not in "iu":
            raise LoadError(f"{file}: tensor 'k' has {stored.dtype} shape {stored.shape}, expected an integer scalar.")
        if k is not None and int(stored) != k:
            raise LoadError(f"{source}: field 'trainer.k' = {k!r} but {file.name} stores k = {int(stored)}.")
        k = int(stored)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= F:
        raise LoadError(f"{source}: field 'trainer.k' = {k!r}, expected an integer in 1..{F} (or a 'k' tensor in {file.name}).")
    return k


def load(path: Path, dtype: Any = np.float64) -> Dictionary:
    """Read a dictionary_learning directory (see the module docstring)."""
    p = _dir(path)
    wfile, cfile = p / WEIGHTS, p / CONFIG
    for f in (wfile, cfile):
        if not f.is_file():
            raise LoadError(f"{f}: missing (dictionary_learning saves ae.pt and config.json side by side).")
    source = str(cfile)
    cfg = read_json(read_bytes(cfile), source)
    trainer = cfg.get("trainer") if isinstance(cfg, dict) else None
    if not isinstance(trainer, dict):
        raise LoadError(f"{source}: field 'trainer' is missing (dictionary_learning's config.json holds the trainer's config).")
    cls = trainer.get("dict_class")
    if cls not in _CLASSES:
        raise LoadError(f"{source}: field 'trainer.dict_class' = {cls!r}; circuitalg reads {', '.join(_CLASSES)}.")
    t = {k: as_numpy(v) for k, v in read_torch(wfile).items()}
    hook = submodule_hook(trainer, source)
    if cls in _PARAMETER_CLASSES:
        if "W_enc" not in t or t["W_enc"].ndim != 2:
            raise LoadError(f"{wfile}: tensor 'W_enc' is missing or not a matrix (expected (activation_dim, dict_size)).")
        d, F = t["W_enc"].shape
    else:
        if "encoder.weight" not in t or t["encoder.weight"].ndim != 2:
            raise LoadError(f"{wfile}: tensor 'encoder.weight' is missing or not a matrix (expected (dict_size, activation_dim)).")
        F, d = t["encoder.weight"].shape
    for key, want in (("activation_dim", d), ("dict_size", F)):
        got = trainer.get(key)
        if got is not None and got != want:
            raise LoadError(f"{source}: field 'trainer.{key}' = {got!r} but {wfile.name}'s tensors give {want}.")
    pre_shift = False
    if cls in _PARAMETER_CLASSES:
        W_enc = take_tensor(t, "W_enc", (d, F), wfile, "encoder, (activation_dim, dict_size)").T
        b_enc = take_tensor(t, "b_enc", (F,), wfile, "encoder bias")
        W_dec = take_tensor(t, "W_dec", (F, d), wfile, "decoder rows, (dict_size, activation_dim)").T
        b_dec = take_tensor(t, "b_dec", (d,), wfile, "decoder bias")
        if cls == "JumpReluAutoEncoder":
            thr = take_tensor(t, "threshold", (F,), wfile, "JumpReLU threshold per feature")
            activation = JumpReLU(thr, relu=True)
        else:
            sizes = t.get("group_sizes")
            if sizes is None or sizes.ndim != 1 or sizes.dtype.kind not in "iu" or int(sizes.sum()) != F:
                raise LoadError(f"{wfile}: tensor 'group_sizes' is missing or does not sum to dict_size = {F}.")
            thr = take_tensor(t, "threshold", (), wfile, "the learned scalar threshold of BatchTopK at inference")
            _k(t, trainer, wfile, source, F)
            pre_shift, activation = True, BatchTopK(float(thr))
    else:
        W_enc = take_tensor(t, "encoder.weight", (F, d), wfile, "encoder, (dict_size, activation_dim)")
        b_enc = take_tensor(t, "encoder.bias", (F,), wfile, "encoder bias")
        W_dec = take_tensor(t, "decoder.weight", (d, F), wfile, "decoder, (activation_dim, dict_size)")
        if cls == "AutoEncoder":
            b_dec = take_tensor(t, "bias", (d,), wfile, "the bias subtracted before encoding and added after decoding")
            pre_shift, activation = True, ReLU()
        elif cls == "AutoEncoderNew":
            b_dec = take_tensor(t, "decoder.bias", (d,), wfile, "decoder bias")
            activation = ReLU()
        else:
            b_dec = take_tensor(t, "b_dec", (d,), wfile, "decoder bias, also subtracted before encoding")
            pre_shift = True
            if cls == "AutoEncoderTopK":
                activation = TopK(_k(t, trainer, wfile, source, F), relu=True)
            else:
                thr = take_tensor(t, "threshold", (), wfile, "the learned scalar threshold of BatchTopK at inference")
                _k(t, trainer, wfile, source, F)
                activation = BatchTopK(float(thr))
    name = f"{hook.hook_name}.{p.name}" if re.fullmatch(r"trainer_\d+", p.name) else p.name
    module_output = isinstance(trainer.get("submodule_name"), str) and re.match(r"(mlp|attn)_out", trainer["submodule_name"])
    return Dictionary(
        name=name, kind=DictionaryKind.SAE, reads=(hook,), writes=(hook,), W_enc=(W_enc,), b_enc=b_enc,
        W_dec=(W_dec,), b_dec=(b_dec,), activation=activation, pre_shift=pre_shift, dtype=np.dtype(dtype),
        meta={"format": NAME, **cfg, **({"before_post_norm": True} if module_output else {})},
    )
