"""OpenMOSS lm-saes / Llama Scope sparse autoencoders and transcoders (``llamascopium``, pinned
against 2.0.0b34; Llama Scope's released layout as SAELens 6.54 reads it).

llamascopium (``SparseAutoEncoder.save_pretrained`` + ``SAEConfig.save_hyperparameters``)
    ``config.json`` with ``sae_type: "sae"``, ``d_model``, ``expansion_factor``, ``act_fn``
    (``relu``, ``jumprelu``, ``topk``), ``top_k``, ``norm_activation``,
    ``sparsity_include_decoder_norm``, ``use_decoder_bias``, ``hook_point_in``,
    ``hook_point_out``; weights in ``sae_weights.safetensors`` (or ``sae_weights.pt``,
    ``checkpoints/final.safetensors``...): ``W_E (d, F)``, ``b_E (F,)``, ``W_D (F, d)``,
    ``b_D (d,)``, ``activation_function.log_jumprelu_threshold (F,)``,
    ``dataset_average_activation_norm.<hook> ()``. ``hook_point_in != hook_point_out`` is a
    transcoder.

    ``SparseAutoEncoder.encode``: ``h = x W_E + b_E``; with ``sparsity_include_decoder_norm``
    the activation sees ``h * ||W_D[i]||`` and its result is divided back, so JumpReLU keeps
    ``h > exp(log_threshold) / ||W_D[i]||`` and TopK ranks by ``h * ||W_D[i]||`` (``TopK`` with
    ``rank_weights``); ``relu`` is unaffected. ``dataset-wise`` normalization multiplies the input
    by ``s_in = sqrt(d_model) / norm[hook_point_in]`` before encoding and the reconstruction is
    divided by ``s_out`` (``normalize_activations`` / ``denormalize_activations``): the loader
    folds ``s_in`` into ``W_enc`` and ``1 / s_out`` into ``W_dec`` and ``b_dec``, so the
    dictionary maps raw activations to raw activations and its features are the library's
    (normalized-scale) feature activations. ``inference`` needs no scaling; ``token-wise`` and
    ``batch-wise`` are not affine in the input and are refused, as are ``batchtopk`` (a batch
    operation at inference), GLU encoders and other ``sae_type``s.

llamascopium cross-layer transcoders (``sae_type: "clt"``)
    ``hook_points_in`` / ``hook_points_out`` (one each per layer); ``W_E (L, d, F)``,
    ``b_E (L, F)``, ``W_D.j (j + 1, F, d)`` (layers ``0..j``'s features into layer ``j``),
    ``b_D.j (d,)``, ``activation_function.log_jumprelu_threshold (L, F)``. -> a
    :class:`DictionarySet`, member ``l`` reading ``hook_points_in[l]`` and writing
    ``hook_points_out[l..L-1]``; ``b_D.j`` is member ``j``'s first decoder bias, the other
    members' are zero. ``sparsity_include_decoder_norm`` uses each feature's norm over all its
    decoders (``decoder_norm_per_feature``); ``topk`` is per layer; normalization per hook as above.

Llama Scope on the Hugging Face Hub (``hyperparams.json`` + ``checkpoints/final.safetensors``)
    torch ``Linear`` names: ``encoder.weight (F, d)``, ``encoder.bias``, ``decoder.weight (d, F)``,
    ``decoder.bias``, and in ``hyperparams.json`` a scalar ``jump_relu_threshold``,
    ``norm_activation: "dataset-wise"`` and ``dataset_average_activation_norm`` (``in``,
    ``out``). The released weights expect the dataset-wise normalised input: ``x`` is scaled by
    ``s = sqrt(d_model) / dataset_average_activation_norm["in"]`` before encoding and the
    reconstruction is divided by ``s``. The factor lives only in ``hyperparams.json`` (SAELens's
    release table repeats it as each SAE's ``norm_scaling_factor``). What the two libraries
    compute from these files, and circuitalg with them: SAELens's ``llama_scope`` loader takes the
    threshold ``jump_relu_threshold * s`` and ``SAE.from_pretrained`` then folds ``s`` into the
    weights (``fold_activation_norm_scaling_factor``: ``W_enc * s``, ``W_dec / s``, ``b_dec /
    s``); llamascopium loads a Llama Scope release through exactly that (``from_pretrained
    ("release:sae_id")`` calls ``SAE.from_pretrained`` and converts). So the dictionary here maps
    raw activations to raw activations: ``pre = s (x @ encoder.weightᵀ) + encoder.bias``,
    ``f = pre * (pre > jump_relu_threshold * s)``, ``x̂ = (f @ decoder.weightᵀ + decoder.bias) /
    s``; ``meta["norm_scaling_factor"]`` is ``s``. ``norm_activation`` other than
    ``dataset-wise`` (``inference``: nothing to fold, ``s = 1``) is taken as it says; the
    per-token kinds are refused. ``dataset_average_activation_norm["out"]`` is recorded but, as
    in SAELens, only ``in`` scales (the releases' SAEs read and write one hook).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, LoadError
from circuitalg.features.activations import JumpReLU, ReLU, TopK
from circuitalg.features.dictionary import Dictionary, DictionaryKind, DictionarySet
from circuitalg.features.hooks import Hook
from circuitalg.model.tensorfiles import read_bytes, read_json, read_tensors
from circuitalg.features.formats.tensors import as_numpy, take_tensor

__all__ = ["NAME", "detect", "load"]

NAME = "lm_saes"
CONFIG = "config.json"
LLAMA_SCOPE_CONFIG = "hyperparams.json"
#: where llamascopium's ``from_local`` looks for the weights, in its order
WEIGHT_FILES = (
    "sae_weights.safetensors", "sae_weights.pt", "checkpoints/pruned.safetensors", "checkpoints/pruned.pt",
    "checkpoints/final.safetensors", "checkpoints/final.pt",
)


def _weights(p: Path) -> Path | None:
    return next((p / w for w in WEIGHT_FILES if (p / w).is_file()), None)


def detect(path: Path) -> bool:
    """A directory with llamascopium's ``config.json`` (``sae_type``) and weights, or Llama
    Scope's ``hyperparams.json`` and ``checkpoints/final.safetensors``."""
    p = Path(path)
    if not p.is_dir() or _weights(p) is None:
        return False
    for name, key in ((CONFIG, "sae_type"), (LLAMA_SCOPE_CONFIG, "d_model")):
        f = p / name
        if f.is_file():
            try:
                cfg = read_json(read_bytes(f), str(f))
            except LoadError:
                continue
            if isinstance(cfg, dict) and key in cfg and ("hook_point_in" in cfg or "hook_points_in" in cfg):
                return True
    return False


def _field(cfg: dict[str, Any], key: str, kinds: tuple[type, ...], source: str, default: Any = ...) -> Any:
    if key not in cfg:
        if default is ...:
            raise LoadError(f"{source}: field {key!r} is missing.")
        return default
    v = cfg[key]
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise LoadError(f"{source}: field {key!r} = {v!r}, expected {' or '.join(k.__name__ for k in kinds)}.")
    return v


def _d_sae(d: int, ef: float, source: str) -> int:
    """``int(d_model * expansion_factor)``, as SparseDictionaryConfig.d_sae computes it."""
    if not 1 <= d < 2**40 or not 0 < ef < 2**40:  # NaN and infinity fail the comparison too
        raise LoadError(f"{source}: d_model={d!r}, expansion_factor={ef!r}: expected a positive size and a positive finite factor.")
    F = int(d * ef)
    if F < 1:
        raise LoadError(f"{source}: d_model={d} x expansion_factor={ef} gives {F} features.")
    return F


def _hook(name: Any, source: str, key: str) -> Hook:
    try:
        return Hook.parse(name)
    except InvalidArgumentError as exc:
        raise LoadError(f"{source}: field {key!r}: {exc}") from None


def _torch_checkpoint(file: Path) -> dict[str, Any]:
    """llamascopium's ``save_checkpoint(".pt")``: ``{"sae": state_dict, "version": str}``, read with
    ``torch.load(weights_only=True)`` only."""
    try:
        import torch
    except ImportError:
        raise LoadError(f"{file}: reading a torch checkpoint safely needs torch (torch.load with weights_only=True), "
                        "which is not installed: pip install torch.") from None
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LoadError(f"{file}: torch.load(weights_only=True) refused or failed ({type(exc).__name__}: {str(exc)[:300]}); "
                        "circuitalg never unpickles arbitrary objects.") from None
    sd = obj.get("sae") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
        raise LoadError(f"{file}: expected llamascopium's checkpoint {{'sae': state dict of tensors, 'version': ...}}.")
    return sd


def _tensors(file: Path) -> dict[str, np.ndarray]:
    raw = _torch_checkpoint(file) if file.suffix == ".pt" else read_tensors(file)[0]
    return {k: as_numpy(v) for k, v in raw.items()}


def _positive_norm(t: dict[str, np.ndarray], hook: str, file: Path) -> float:
    key = f"dataset_average_activation_norm.{hook}"
    v = take_tensor(t, key, (), file, "the dataset-wise average activation norm at this hook (norm_activation: dataset-wise)")
    v = float(v)
    if not v > 0:
        raise LoadError(f"{file}: tensor {key!r} = {v}, expected a positive norm.")
    return v


def _decoder_norms(W_D: np.ndarray, file: Path) -> np.ndarray:
    n = np.linalg.norm(W_D.astype(np.float64), axis=1)
    if not np.all(n > 0):
        raise LoadError(f"{file}: tensor 'W_D' has zero rows (features {np.flatnonzero(n == 0)[:5].tolist()}); "
                        "sparsity_include_decoder_norm divides by the decoder norms.")
    return n


def load(path: Path, dtype: Any = np.float64) -> Dictionary | DictionarySet:
    """Read an lm-saes / Llama Scope directory (see the module docstring)."""
    p = Path(path)
    if not p.is_dir():
        raise LoadError(f"{p}: expected lm-saes's directory (config.json and sae_weights.safetensors).")
    if (p / CONFIG).is_file():
        return _load_llamascopium(p, np.dtype(dtype))
    if (p / LLAMA_SCOPE_CONFIG).is_file():
        return _load_llama_scope(p, np.dtype(dtype))
    raise LoadError(f"{p}: neither {CONFIG} (llamascopium) nor {LLAMA_SCOPE_CONFIG} (Llama Scope) is there.")


def _load_llamascopium(p: Path, dtype: np.dtype) -> Dictionary | DictionarySet:
    cfile = p / CONFIG
    source = str(cfile)
    cfg = read_json(read_bytes(cfile), source)
    if not isinstance(cfg, dict):
        raise LoadError(f"{source}: expected a JSON object (llamascopium's SAEConfig).")
    sae_type = cfg.get("sae_type")
    if sae_type not in ("sae", "clt"):
        raise LoadError(f"{source}: field 'sae_type' = {sae_type!r}; circuitalg reads llamascopium's 'sae' (SAEs and "
                        "transcoders) and 'clt' (cross-layer transcoders).")
    d = _field(cfg, "d_model", (int,), source)
    F = _d_sae(d, _field(cfg, "expansion_factor", (int, float), source), source)
    act = _field(cfg, "act_fn", (str,), source, "relu")
    norm = _field(cfg, "norm_activation", (str,), source, "dataset-wise")
    decnorm = _field(cfg, "sparsity_include_decoder_norm", (bool,), source, True)
    use_bias = _field(cfg, "use_decoder_bias", (bool,), source, True)
    if _field(cfg, "use_glu_encoder", (bool,), source, False):
        raise LoadError(f"{source}: field 'use_glu_encoder' is true; a GLU encoder is not an affine map, so circuitalg cannot read it.")
    if norm not in ("dataset-wise", "inference"):
        raise LoadError(f"{source}: field 'norm_activation' = {norm!r}; circuitalg reads 'dataset-wise' and 'inference' "
                        "(token-wise and batch-wise scaling is not an affine map of the input).")
    if act not in ("relu", "jumprelu", "topk"):
        raise LoadError(f"{source}: field 'act_fn' = {act!r}; circuitalg reads 'relu', 'jumprelu' and 'topk' "
                        "(the batch and layer variants select across tokens or layers even at inference).")
    if sae_type == "clt":
        return _load_clt(p, cfg, source, d, F, act, norm, decnorm, use_bias, dtype)
    hin_name = _field(cfg, "hook_point_in", (str,), source)
    hout_name = _field(cfg, "hook_point_out", (str,), source)
    hin, hout = _hook(hin_name, source, "hook_point_in"), _hook(hout_name, source, "hook_point_out")
    wfile = _weights(p)
    if wfile is None:
        raise LoadError(f"{p}: no weights file ({', '.join(WEIGHT_FILES)}).")
    t = _tensors(wfile)
    W_E = take_tensor(t, "W_E", (d, F), wfile, "encoder, (d_model, d_sae)")
    b_E = take_tensor(t, "b_E", (F,), wfile, "encoder bias")
    W_D = take_tensor(t, "W_D", (F, d), wfile, "decoder rows, (d_sae, d_model)")
    b_D = take_tensor(t, "b_D", (d,), wfile, "decoder bias") if use_bias else np.zeros(d, dtype=W_D.dtype)
    if norm == "dataset-wise":
        s_in = math.sqrt(d) / _positive_norm(t, hin_name, wfile)
        s_out = math.sqrt(d) / _positive_norm(t, hout_name, wfile)
    elif norm == "inference":
        s_in = s_out = 1.0
    else:
        raise LoadError(f"{source}: field 'norm_activation' = {norm!r}; circuitalg reads 'dataset-wise' and 'inference' "
                        "(token-wise and batch-wise scaling is not an affine map of the input).")
    if act == "relu":
        activation = ReLU()
    elif act == "jumprelu":
        log_thr = take_tensor(t, "activation_function.log_jumprelu_threshold", (F,), wfile, "log of the JumpReLU threshold per feature")
        thr = np.exp(log_thr)  # in the file's precision, as the library exponentiates it
        if decnorm:
            thr = thr.astype(np.float64) / _decoder_norms(W_D, wfile)
        activation = JumpReLU(thr)
    elif act == "topk":
        k = _field(cfg, "top_k", (int,), source, 50)
        if not 1 <= k <= F:
            raise LoadError(f"{source}: field 'top_k' = {k}, expected 1..{F}.")
        activation = TopK(k, relu=True, rank_weights=_decoder_norms(W_D, wfile) if decnorm else None)
    else:
        raise LoadError(f"{source}: field 'act_fn' = {act!r}; circuitalg reads 'relu', 'jumprelu' and 'topk' "
                        "('batchtopk' selects across the batch even at inference).")
    W_enc = W_E.T.astype(np.float64) * s_in
    W_dec = W_D.T.astype(np.float64) / s_out
    b_dec = b_D.astype(np.float64) / s_out
    kind = DictionaryKind.SAE if hin == hout else DictionaryKind.TRANSCODER
    return Dictionary(
        name=p.name, kind=kind, reads=(hin,), writes=(hout,), W_enc=(W_enc,), b_enc=b_E, W_dec=(W_dec,),
        b_dec=(b_dec,), activation=activation, dtype=dtype,
        meta={"format": NAME, **cfg, "input_scale": s_in, "output_scale": s_out, "weights": wfile.name},
    )


def _load_clt(p: Path, cfg: dict[str, Any], source: str, d: int, F: int, act: str, norm: str, decnorm: bool,
              use_bias: bool, dtype: np.dtype) -> DictionarySet:
    hins = _field(cfg, "hook_points_in", (list,), source)
    houts = _field(cfg, "hook_points_out", (list,), source)
    L = len(hins)
    if L == 0 or len(houts) != L:
        raise LoadError(f"{source}: fields 'hook_points_in' and 'hook_points_out' must list one hook per layer "
                        f"({len(hins)} and {len(houts)} given).")
    reads = [_hook(h, source, f"hook_points_in[{i}]") for i, h in enumerate(hins)]
    writes = [_hook(h, source, f"hook_points_out[{i}]") for i, h in enumerate(houts)]
    wfile = _weights(p)
    if wfile is None:
        raise LoadError(f"{p}: no weights file ({', '.join(WEIGHT_FILES)}).")
    t = _tensors(wfile)
    W_E = take_tensor(t, "W_E", (L, d, F), wfile, "encoders, (n_layers, d_model, d_sae)")
    b_E = take_tensor(t, "b_E", (L, F), wfile, "encoder biases, (n_layers, d_sae)")
    # W_D.j holds the decoders of layers 0..j's features into layer j
    W_D = [take_tensor(t, f"W_D.{j}", (j + 1, F, d), wfile, f"decoders from layers 0..{j} into layer {j}") for j in range(L)]
    b_D = [take_tensor(t, f"b_D.{j}", (d,), wfile, f"decoder bias of layer {j}") if use_bias else np.zeros(d) for j in range(L)]
    if norm == "dataset-wise":
        s_in = [math.sqrt(d) / _positive_norm(t, h, wfile) for h in hins]
        s_out = [math.sqrt(d) / _positive_norm(t, h, wfile) for h in houts]
    else:
        s_in = s_out = [1.0] * L
    # decoder_norm_per_feature: the norm of a feature's decoders into every layer it writes
    norms = np.zeros((L, F))
    for j in range(L):
        norms[: j + 1] += np.square(W_D[j].astype(np.float64)).sum(axis=-1)
    norms = np.sqrt(norms)
    if decnorm and not np.all(norms > 0):
        raise LoadError(f"{wfile}: a feature has all-zero decoders; sparsity_include_decoder_norm divides by their norm.")
    if act == "jumprelu":
        log_thr = take_tensor(t, "activation_function.log_jumprelu_threshold", (L, F), wfile,
                        "log of the JumpReLU threshold per layer and feature")
        thr_all = np.exp(log_thr)
    k = _field(cfg, "top_k", (int,), source, 50)
    if act == "topk" and not 1 <= k <= F:
        raise LoadError(f"{source}: field 'top_k' = {k}, expected 1..{F}.")
    members = []
    for layer in range(L):
        if act == "relu":
            activation = ReLU()
        elif act == "jumprelu":
            thr = thr_all[layer]
            activation = JumpReLU(thr.astype(np.float64) / norms[layer] if decnorm else thr)
        else:
            activation = TopK(k, relu=True, rank_weights=norms[layer] if decnorm else None)
        outs = range(layer, L)
        members.append(Dictionary(
            name=f"{p.name}.L{layer}", kind=DictionaryKind.CROSS_LAYER_TRANSCODER, reads=(reads[layer],),
            writes=tuple(writes[j] for j in outs), W_enc=(W_E[layer].T.astype(np.float64) * s_in[layer],),
            b_enc=b_E[layer], W_dec=tuple(W_D[j][layer].T.astype(np.float64) / s_out[j] for j in outs),
            b_dec=(b_D[layer].astype(np.float64) / s_out[layer],) + (np.zeros(d),) * (L - layer - 1),
            activation=activation, dtype=dtype, meta={"format": NAME, "layer": layer},
        ))
    return DictionarySet(p.name, tuple(members), meta={"format": NAME, **cfg, "weights": wfile.name,
                                                        "input_scales": s_in, "output_scales": s_out})


def _load_llama_scope(p: Path, dtype: np.dtype) -> Dictionary:
    cfile = p / LLAMA_SCOPE_CONFIG
    source = str(cfile)
    cfg = read_json(read_bytes(cfile), source)
    if not isinstance(cfg, dict):
        raise LoadError(f"{source}: expected a JSON object (Llama Scope's hyperparameters).")
    d = _field(cfg, "d_model", (int,), source)
    F = _field(cfg, "d_sae", (int,), source, None)
    if F is None:
        F = _d_sae(d, _field(cfg, "expansion_factor", (int, float), source), source)
    elif not 1 <= F < 2**40 or not 1 <= d < 2**40:
        raise LoadError(f"{source}: d_model={d}, d_sae={F}: expected positive sizes.")
    act = _field(cfg, "act_fn", (str,), source, "jumprelu")
    if act != "jumprelu":
        raise LoadError(f"{source}: field 'act_fn' = {act!r}; Llama Scope's releases are 'jumprelu'.")
    thr = _field(cfg, "jump_relu_threshold", (int, float), source)
    norms = _field(cfg, "dataset_average_activation_norm", (dict,), source)
    n_in = norms.get("in")
    if isinstance(n_in, bool) or not isinstance(n_in, (int, float)) or not n_in > 0:
        raise LoadError(f"{source}: field 'dataset_average_activation_norm.in' = {n_in!r}, expected a positive number.")
    hin = _hook(_field(cfg, "hook_point_in", (str,), source), source, "hook_point_in")
    hout = _hook(_field(cfg, "hook_point_out", (str,), source, cfg.get("hook_point_in")), source, "hook_point_out")
    wfile = p / "checkpoints" / "final.safetensors"
    if not wfile.is_file():
        raise LoadError(f"{wfile}: missing (Llama Scope keeps its weights in checkpoints/final.safetensors).")
    t = _tensors(wfile)
    W_enc = take_tensor(t, "encoder.weight", (F, d), wfile, "encoder, (d_sae, d_model)")
    b_enc = take_tensor(t, "encoder.bias", (F,), wfile, "encoder bias")
    W_dec = take_tensor(t, "decoder.weight", (d, F), wfile, "decoder, (d_model, d_sae)")
    b_dec = take_tensor(t, "decoder.bias", (d,), wfile, "decoder bias")
    norm = _field(cfg, "norm_activation", (str,), source, "dataset-wise")
    if norm == "dataset-wise":
        s = math.sqrt(d) / float(n_in)
    elif norm == "inference":
        s = 1.0
    else:
        raise LoadError(f"{source}: field 'norm_activation' = {norm!r}: a per-token or per-batch scaling is not a fixed map "
                        "(circuitalg reads 'dataset-wise' and 'inference').")
    # SAELens's llama_scope loader + from_pretrained's fold_activation_norm_scaling_factor(s)
    kind = DictionaryKind.SAE if hin == hout else DictionaryKind.TRANSCODER
    return Dictionary(
        name=p.name, kind=kind, reads=(hin,), writes=(hout,), W_enc=(W_enc.astype(np.float64) * s,), b_enc=b_enc,
        W_dec=(W_dec.astype(np.float64) / s,), b_dec=(b_dec.astype(np.float64) / s,),
        activation=JumpReLU(np.float64(float(thr) * s)), dtype=dtype,
        meta={"format": NAME, "layout": "llama_scope", **cfg, "norm_scaling_factor": s},
    )
