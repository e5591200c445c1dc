"""SAELens dictionaries: a directory with ``cfg.json`` and ``sae_weights.safetensors``.

Read: every SAELens architecture whose inference is a linear encoder, one elementwise (or
per-token top-k) activation and a linear decoder, in the version-6 config layout (``metadata``
holding ``hook_name``) and the older one (``hook_point``, ``activation_fn_str``,
``activation_fn_kwargs``, ``finetuning_scaling_factor``, no ``architecture`` = ``standard``).
SAELens stores ``W_enc (d_in, d_sae)`` and ``W_dec (d_sae, d_out)``; they are transposed to the
column convention here. What each architecture becomes:

- ``standard``: :class:`ReLU`.
- ``jumprelu``: ``JumpReLU(threshold, relu=True)`` (SAELens computes ``relu(pre) * (pre >
  threshold)``); an old ``log_threshold`` is exponentiated, as SAELens does.
- ``gated``: ``JumpReLU(b_mag - b_gate * exp(r_mag), relu=True)`` on the magnitude path (encoder
  ``W_enc * exp(r_mag)``, bias ``b_mag``). The gate ``x W_enc + b_gate > 0`` is the same
  half-space (``exp(r_mag) > 0``), so the two are equal in exact arithmetic; in floating point a
  token whose gate pre-activation is within rounding of 0 may fall on the other side.
- ``topk``: ``TopK(k)`` (a ReLU on the kept values, as SAELens); ``abstopk``: ``TopK(k,
  relu=False, absolute=True)``.
- ``batchtopk``, ``matryoshka_batchtopk`` (training checkpoints, with ``topk_threshold``): the
  JumpReLU SAELens saves them as for inference, ``BatchTopK(topk_threshold)``.
- ``transcoder``, ``jumprelu_transcoder``: ``TRANSCODER`` from ``metadata.hook_name`` to
  ``metadata.hook_name_out``, ReLU or JumpReLU; ``skip_transcoder``,
  ``jumprelu_skip_transcoder``: ``SKIP_TRANSCODER`` with ``W_skip (d_out, d_in)`` as stored.

Exact folds applied at load (each is what SAELens computes, rearranged):

- ``rescale_acts_by_decoder_norm`` (``topk``, ``abstopk``, ``batchtopk``): SAELens ranks
  ``pre * |W_dec_i|`` and decodes ``f / |W_dec_i|``; the norms are folded into ``W_enc``,
  ``b_enc`` and ``W_dec`` (SAELens's own ``fold_W_dec_norm``), so the feature activations are
  SAELens's.
- a pre-6 ``scaling_factor`` tensor with ``finetuning_scaling_factor`` (decode was ``(f * s)
  W_dec``): folded into ``W_dec``; all ones is dropped, as SAELens does.
- ``normalize_activations="expected_average_only_in"`` with the checkpoint's
  ``activation_scaler.json``: its ``scaling_factor`` is folded as SAELens's
  ``fold_activation_norm_scaling_factor`` does. Without that file the factor is not in the files
  (SAELens keeps it in its pretrained-release table) and the load is refused.
- ``normalize_activations="covariance_whitening"`` with the checkpoint's
  ``activation_whitening.safetensors`` (``mean``, ``matrix``, ``inverse_matrix``): folded as
  SAELens's ``fold_activation_whitening`` does (decoder norms first where they rescale); refused
  without it.

Refused with :class:`LoadError` naming the field: ``normalize_activations`` ``constant_norm_rescale``
and ``layer_norm`` (a per-token rescaling of input and output, not a fold), any normalization of a transcoder,
``hook_head_index`` (one head of a hook), hook names circuitalg has no :class:`Hook` for (e.g.
``hook_embed``), the ``temporal`` and ``matching_pursuit`` architectures (no fixed encoder map), a
pre-6 ``activation_fn`` other than ``relu``/``topk``.

``metadata.model_from_pretrained_kwargs`` (SAELens loads the model with TransformerLens's
``from_pretrained_no_processing(**kwargs)``) becomes :attr:`Dictionary.preprocessing`: the options
among :data:`~circuitalg.features.dictionary.PREPROCESSING` set to true.

Release overrides. For some releases SAELens does not take the preprocessing from the files but
from its release table (``pretrained_saes.yaml``, ``config_overrides``, merged over the files'
config by ``SAE.from_pretrained``): e.g. ``gpt2-small-res-jb`` adds
``model_from_pretrained_kwargs: {center_writing_weights: true}`` to files that say nothing of
it, and ``normalize_activations`` / ``norm_scaling_factor`` come from the table for some others.
:data:`SAELENS_RELEASES` holds the rows of sae-lens 6.54.12's table that change the computation
(:class:`ReleaseRow`). A config
matches a row by its ``neuronpedia_id`` where it has one; otherwise by ``model_name``,
``hook_name`` and ``d_sae`` (the row's width, or where the table gives none, a model and hook no
other release has). A matched dictionary gets the row's overrides as SAELens applies them,
``meta["preprocessing_source"] = "saelens_release"`` and ``meta["saelens_release"]`` (release,
sae id, overrides); a row's ``norm_scaling_factor`` is folded where the config says
``expected_average_only_in`` and no ``activation_scaler.json`` is beside it. Otherwise
``meta["preprocessing_source"] = "files"``: the preprocessing is what the files say, and a
pre-6 config without ``model_from_pretrained_kwargs`` reads as no preprocessing, which is
recorded, not guessed (SAELens before 6 loaded models with TransformerLens's processing
defaults; which of them the weights expect is not in the files: check with the release).

Post-norm models. On Gemma 3, SAELens names a Gemma Scope 2 transcoder's input
``blocks.L.hook_mlp_in`` (in TransformerLens, ln2's input) but the Hugging Face module it reads is
``pre_feedforward_layernorm.output``, the MLP's input after its norm: a transcoder
(``architecture`` containing ``transcoder``) of a ``gemma-3`` model whose config has no
``hf_hook_name`` reads :attr:`HookKind.MLP_IN` there. ``hf_hook_name`` / ``hf_hook_name_out``,
where present, decide.

Written (:func:`save`): SAEs, transcoders and skip transcoders with ReLU, JumpReLU (thresholds
>= 0 or ``relu=True``), BatchTopK (as SAELens's inference JumpReLU), TopK (SAEs, plain ranking,
with ReLU) and absolute TopK, in the version-6 layout ``sae_lens.SAE.load_from_disk`` reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from circuitalg.errors import InvalidArgumentError, InvalidArrayError, LoadError, ShapeError
from circuitalg.features.activations import BatchTopK, JumpReLU, ReLU, TopK
from circuitalg.features.dictionary import PREPROCESSING, Dictionary, DictionaryKind, DictionarySet
from circuitalg.features.formats.tensors import take_tensor
from circuitalg.features.hooks import Hook, HookKind
from circuitalg.files import atomic_write
from circuitalg.model.tensorfiles import read_bytes, read_json, read_tensors

__all__ = ["NAME", "CFG_FILENAME", "WEIGHTS_FILENAME", "SCALER_FILENAME", "WHITENING_FILENAME", "detect", "load", "save", "parse_hook", "hf_hook", "SAELENS_RELEASES", "ReleaseRow", "release_row"]

NAME = "saelens"
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
#: SAELens's training checkpoints keep the input scaling factor here
SCALER_FILENAME = "activation_scaler.json"
#: ... and the whitening (``mean``, ``matrix``, ``inverse_matrix``) here
WHITENING_FILENAME = "activation_whitening.safetensors"

_DTYPES = {"float32", "float64", "float16", "bfloat16", "torch.float32", "torch.float64", "torch.float16", "torch.bfloat16"}
_SAE_ARCHS = {"standard", "gated", "jumprelu", "topk", "abstopk", "batchtopk", "matryoshka_batchtopk"}
_TRANSCODER_ARCHS = {"transcoder", "jumprelu_transcoder", "skip_transcoder", "jumprelu_skip_transcoder"}
_REFUSED_ARCHS = {
    "temporal": "its encoder attends over earlier tokens (no fixed linear encoder)",
    "matching_pursuit": "it selects features by iterative matching pursuit (no fixed linear encoder)",
}
_HF_HOOKS = (
    (re.compile(r"^model\.layers\.(\d+)\.output$"), HookKind.RESID_POST),
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.o_proj\.input$"), HookKind.ATTN_Z),
    (re.compile(r"^model\.layers\.(\d+)\.pre_feedforward_layernorm\.output$"), HookKind.MLP_IN),
    (re.compile(r"^model\.layers\.(\d+)\.post_feedforward_layernorm\.output$"), HookKind.MLP_OUT),
)
#: the version 6 config layout (what this module writes)
_WRITE_VERSION = "6.0.0"

class ReleaseRow(NamedTuple):
    """One SAE of a SAELens release whose table entry changes what the dictionary computes."""

    release: str
    sae_id: str
    model: str
    hook_name: str
    #: the release's width, where its table says it (``None``: unknown)
    d_sae: int | None
    neuronpedia_id: str | None
    #: no other release in the table has this model and hook
    hook_unique: bool
    #: ``config_overrides`` that change the computation, as sorted ``(key, value)`` pairs
    overrides: tuple
    norm_scaling_factor: float | None


#: sae-lens 6.54.12's ``pretrained_saes.yaml`` rows whose release overrides change what a dictionary
#: computes; tests/test_formats_saelens.py rebuilds it from the installed table
SAELENS_RELEASES: tuple[ReleaseRow, ...] = tuple(ReleaseRow(*r) for r in (
    ('gpt2-small-mlp-tm', 'blocks.0.hook_mlp_out', 'gpt2-small', 'blocks.0.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 1.049317316132615),
    ('gpt2-small-mlp-tm', 'blocks.1.hook_mlp_out', 'gpt2-small', 'blocks.1.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 2.3693984005104283),
    ('gpt2-small-mlp-tm', 'blocks.2.hook_mlp_out', 'gpt2-small', 'blocks.2.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 1.6411934982190302),
    ('gpt2-small-mlp-tm', 'blocks.3.hook_mlp_out', 'gpt2-small', 'blocks.3.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 1.8958522157897557),
    ('gpt2-small-mlp-tm', 'blocks.4.hook_mlp_out', 'gpt2-small', 'blocks.4.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 1.81673478700627),
    ('gpt2-small-mlp-tm', 'blocks.5.hook_mlp_out', 'gpt2-small', 'blocks.5.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 1.550234472245924),
    ('gpt2-small-mlp-tm', 'blocks.6.hook_mlp_out', 'gpt2-small', 'blocks.6.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 1.3237742807210804),
    ('gpt2-small-mlp-tm', 'blocks.7.hook_mlp_out', 'gpt2-small', 'blocks.7.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 1.1042905114723296),
    ('gpt2-small-mlp-tm', 'blocks.8.hook_mlp_out', 'gpt2-small', 'blocks.8.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 0.9123762783479742),
    ('gpt2-small-mlp-tm', 'blocks.9.hook_mlp_out', 'gpt2-small', 'blocks.9.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 0.6955335635232373),
    ('gpt2-small-mlp-tm', 'blocks.10.hook_mlp_out', 'gpt2-small', 'blocks.10.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 0.3619728926727644),
    ('gpt2-small-mlp-tm', 'blocks.11.hook_mlp_out', 'gpt2-small', 'blocks.11.hook_mlp_out', 24576, None, False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), 0.2851548652550073),
    ('gpt2-small-res-jb', 'blocks.0.hook_resid_pre', 'gpt2-small', 'blocks.0.hook_resid_pre', 24576, 'gpt2-small/0-res-jb', True, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.1.hook_resid_pre', 'gpt2-small', 'blocks.1.hook_resid_pre', 24576, 'gpt2-small/1-res-jb', True, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.2.hook_resid_pre', 'gpt2-small', 'blocks.2.hook_resid_pre', 24576, 'gpt2-small/2-res-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.3.hook_resid_pre', 'gpt2-small', 'blocks.3.hook_resid_pre', 24576, 'gpt2-small/3-res-jb', True, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.4.hook_resid_pre', 'gpt2-small', 'blocks.4.hook_resid_pre', 24576, 'gpt2-small/4-res-jb', True, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.5.hook_resid_pre', 'gpt2-small', 'blocks.5.hook_resid_pre', 24576, 'gpt2-small/5-res-jb', True, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.6.hook_resid_pre', 'gpt2-small', 'blocks.6.hook_resid_pre', 24576, 'gpt2-small/6-res-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.7.hook_resid_pre', 'gpt2-small', 'blocks.7.hook_resid_pre', 24576, 'gpt2-small/7-res-jb', True, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.8.hook_resid_pre', 'gpt2-small', 'blocks.8.hook_resid_pre', 24576, 'gpt2-small/8-res-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.9.hook_resid_pre', 'gpt2-small', 'blocks.9.hook_resid_pre', 24576, 'gpt2-small/9-res-jb', True, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.10.hook_resid_pre', 'gpt2-small', 'blocks.10.hook_resid_pre', 24576, 'gpt2-small/10-res-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.11.hook_resid_pre', 'gpt2-small', 'blocks.11.hook_resid_pre', 24576, 'gpt2-small/11-res-jb', True, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb', 'blocks.11.hook_resid_post', 'gpt2-small', 'blocks.11.hook_resid_post', 24576, 'gpt2-small/12-res-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb-feature-splitting', 'blocks.8.hook_resid_pre_768', 'gpt2-small', 'blocks.8.hook_resid_pre', 768, 'gpt2-small/8-res_fs768-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb-feature-splitting', 'blocks.8.hook_resid_pre_1536', 'gpt2-small', 'blocks.8.hook_resid_pre', 1536, 'gpt2-small/8-res_fs1536-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb-feature-splitting', 'blocks.8.hook_resid_pre_3072', 'gpt2-small', 'blocks.8.hook_resid_pre', 3072, 'gpt2-small/8-res_fs3072-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb-feature-splitting', 'blocks.8.hook_resid_pre_6144', 'gpt2-small', 'blocks.8.hook_resid_pre', 6144, 'gpt2-small/8-res_fs6144-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb-feature-splitting', 'blocks.8.hook_resid_pre_12288', 'gpt2-small', 'blocks.8.hook_resid_pre', 12288, 'gpt2-small/8-res_fs12288-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb-feature-splitting', 'blocks.8.hook_resid_pre_24576', 'gpt2-small', 'blocks.8.hook_resid_pre', 24576, 'gpt2-small/8-res_fs24576-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb-feature-splitting', 'blocks.8.hook_resid_pre_49152', 'gpt2-small', 'blocks.8.hook_resid_pre', 49152, 'gpt2-small/8-res_fs49152-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('gpt2-small-res-jb-feature-splitting', 'blocks.8.hook_resid_pre_98304', 'gpt2-small', 'blocks.8.hook_resid_pre', 98304, 'gpt2-small/8-res_fs98304-jb', False, (('model_from_pretrained_kwargs', (('center_writing_weights', True),)),), None),
    ('mistral-7b-res-wg', 'blocks.8.hook_resid_pre', 'mistral-7b', 'blocks.8.hook_resid_pre', None, None, True, (('normalize_activations', 'constant_norm_rescale'),), None),
    ('mistral-7b-res-wg', 'blocks.16.hook_resid_pre', 'mistral-7b', 'blocks.16.hook_resid_pre', None, None, True, (('normalize_activations', 'constant_norm_rescale'),), None),
    ('mistral-7b-res-wg', 'blocks.24.hook_resid_pre', 'mistral-7b', 'blocks.24.hook_resid_pre', None, None, True, (('normalize_activations', 'constant_norm_rescale'),), None),
    ('gemma-2b-res-jb', 'blocks.12.hook_resid_post', 'gemma-2b', 'blocks.12.hook_resid_post', 16384, 'gemma-2b/12-res-jb', True, (), 0.21381938399317255),
))


def detect(path: Path) -> bool:
    """A directory holding ``cfg.json`` and ``sae_weights.safetensors``."""
    p = Path(path)
    return p.is_dir() and (p / CFG_FILENAME).is_file() and (p / WEIGHTS_FILENAME).is_file()


def parse_hook(name: Any, source: str, field: str) -> Hook:
    """``Hook.parse(name)``, or a LoadError naming ``source`` and ``field``."""
    if not isinstance(name, str):
        raise LoadError(f"{source}: {field} must be a TransformerLens hook name string, got {name!r}.")
    try:
        return Hook.parse(name)
    except InvalidArgumentError as e:
        raise LoadError(f"{source}: {field} = {name!r}: {e}") from None


def hf_hook(name: Any, source: str, field: str) -> Hook:
    """The :class:`Hook` of a Hugging Face Gemma module name (``model.layers.L.output``: resid_post;
    ``...self_attn.o_proj.input``: attn z; ``...pre_feedforward_layernorm.output``: the MLP's
    input; ``...post_feedforward_layernorm.output``: the MLP's output), as Gemma Scope 2 and
    SAELens's ``hf_hook_name`` name them."""
    if isinstance(name, str):
        for pattern, kind in _HF_HOOKS:
            m = pattern.match(name)
            if m:
                return Hook(kind, int(m.group(1)))
    known = ", ".join(p.pattern.strip("^$").replace("(\\d+)", "L").replace("\\.", ".") for p, _ in _HF_HOOKS)
    raise LoadError(f"{source}: {field} = {name!r} is not a module circuitalg maps to a hook ({known}).")


# -- reading ---------------------------------------------------------------------------------

def _known_hf_hook(name: Any) -> Hook | None:
    try:
        return hf_hook(name, "", "") if name is not None else None
    except LoadError:
        return None


def _is_pre6(cfg: Mapping[str, Any]) -> bool:
    version = cfg.get("sae_lens_version")
    meta = cfg.get("metadata")
    if not version and isinstance(meta, Mapping):
        version = meta.get("sae_lens_version")
    if not version:
        return True
    m = re.match(r"\s*(\d+)", str(version))
    return m is None or int(m.group(1)) < 6


def _positive_int(cfg: Mapping[str, Any], key: str, source: str, default: Any = None) -> int:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()) or v < 1:
        raise LoadError(f"{source}: {key} must be a positive integer, got {v!r}.")
    return int(v)


def _bool(cfg: Mapping[str, Any], key: str, source: str, default: bool) -> bool:
    v = cfg.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise LoadError(f"{source}: {key} must be true or false, got {v!r}.")
    return v


def _normalized_config(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One dict in the version-6 vocabulary (``architecture``, ``hook_name`` ... at the top
    level), whatever version wrote ``raw``."""
    cfg = dict(raw)
    meta = cfg.pop("metadata", None)
    if meta is not None and not isinstance(meta, Mapping):
        raise LoadError(f"{source}: metadata must be a JSON object, got {type(meta).__name__}.")
    for k, v in (meta or {}).items():
        cfg.setdefault(k, v)
    if _is_pre6(raw):
        for old, new in (("hook_point", "hook_name"), ("hook_point_head_index", "hook_head_index"),
                         ("activation_fn_str", "activation_fn")):
            if old in cfg:
                cfg.setdefault(new, cfg[old])
        cfg.setdefault("architecture", "standard")
        act = cfg.get("activation_fn", "relu")
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise LoadError(f"{source}: activation_fn_kwargs must be a JSON object, got {kwargs!r}.")
        if act == "topk":
            if kwargs.get("k") is None and cfg.get("k") is None:
                raise LoadError(f"{source}: activation_fn 'topk' needs activation_fn_kwargs.k (the number of features kept).")
            if cfg["architecture"] == "standard":
                cfg["architecture"] = "topk"
            cfg["k"] = kwargs.get("k", cfg.get("k"))
        elif act not in ("relu", None) and cfg["architecture"] == "standard":
            raise LoadError(
                f"{source}: activation_fn {act!r} is not one circuitalg reads from SAELens (relu, topk); "
                "SAELens 6 would silently apply a ReLU instead."
            )
        if isinstance(cfg.get("normalize_activations"), bool):
            cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    else:
        cfg.setdefault("finetuning_scaling_factor", False)
    if "architecture" not in cfg:
        raise LoadError(f"{source}: architecture is missing (a SAELens >= 6 config names it).")
    if not isinstance(cfg["architecture"], str):
        raise LoadError(f"{source}: architecture must be a string, got {cfg['architecture']!r}.")
    if cfg.get("normalize_activations") is None:
        cfg["normalize_activations"] = "none"
    return cfg


def _take(tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...], file: Path, why: str,
          dtype: np.dtype) -> np.ndarray:
    a = take_tensor(tensors, name, shape, file, why)
    del tensors[name]  # what is left over is reported as unexpected
    return a.astype(dtype, copy=False)


def _scaler_factor(path: Path) -> float:
    f = path / SCALER_FILENAME
    if not f.is_file():
        raise LoadError(
            f"{path / CFG_FILENAME}: normalize_activations is 'expected_average_only_in' but {SCALER_FILENAME} is not "
            "beside it, so the input scaling factor the weights expect is not in these files (SAELens keeps it in its "
            "pretrained-release table and folds it on from_pretrained). Fold it into the weights (W_enc * s, W_dec / s, "
            "b_dec / s) and set normalize_activations to 'none', or put the scaler file beside cfg.json."
        )
    data = read_json(read_bytes(f), str(f))
    s = data.get("scaling_factor") if isinstance(data, Mapping) else None
    try:
        value = float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else float("nan")
    except OverflowError:
        value = float("inf")
    if not np.isfinite(value) or value <= 0:
        raise LoadError(f"{f}: scaling_factor must be a positive finite number, got {s!r}.")
    return value


def _whitening(path: Path, d_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mean (d_in,)``, ``matrix`` and ``inverse_matrix (d_in, d_in)`` of a checkpoint's whitening."""
    f = path / WHITENING_FILENAME
    if not f.is_file():
        raise LoadError(
            f"{path / CFG_FILENAME}: normalize_activations is 'covariance_whitening' but {WHITENING_FILENAME} is not "
            "beside it, so the whitening the weights expect is not in these files. Fold it (SAELens's "
            "fold_activation_whitening) and set normalize_activations to 'none', or put the file beside cfg.json."
        )
    tensors, _ = read_tensors(f)
    # kept in the file's precision: SAELens folds in the wider of it and the weights'
    wide = np.dtype(np.float64) if any(a.dtype == np.float64 for a in tensors.values()) else np.dtype(np.float32)
    out = tuple(_take(tensors, name, shape, f, why, wide)
                for name, shape, why in (("mean", (d_in,), "(d_in,)"), ("matrix", (d_in, d_in), "(d_in, d_in)"),
                                         ("inverse_matrix", (d_in, d_in), "(d_in, d_in)")))
    if tensors:
        raise LoadError(f"{f}: unexpected tensor(s) {sorted(tensors)} (expected mean, matrix, inverse_matrix).")
    return out  # type: ignore[return-value]


def _fold_decoder_norms(W_enc: np.ndarray, b_enc: np.ndarray, W_dec: np.ndarray, file: Path) -> tuple:
    """SAELens's ``rescale_acts_by_decoder_norm`` folded (``W_dec`` rows to unit norm)."""
    n = np.linalg.norm(W_dec, axis=1)
    if np.any(n == 0):
        raise LoadError(
            f"{file}: rescale_acts_by_decoder_norm divides by the decoder row norms, but row(s) "
            f"{np.flatnonzero(n == 0)[:8].tolist()} of W_dec are zero."
        )
    return W_enc * n, b_enc * n, W_dec / n[:, None]


def _preprocessing(cfg: Mapping[str, Any], source: str) -> frozenset[str]:
    kwargs = cfg.get("model_from_pretrained_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise LoadError(f"{source}: model_from_pretrained_kwargs must be a JSON object, got {kwargs!r}.")
    return frozenset(k for k in PREPROCESSING if kwargs.get(k) is True)


def release_row(cfg: Mapping[str, Any]) -> ReleaseRow | None:
    """The :data:`SAELENS_RELEASES` row a (version-6 vocabulary) config matches, or None (see the
    module docstring)."""
    npid = cfg.get("neuronpedia_id")
    if npid is not None:
        return next((r for r in SAELENS_RELEASES if r.neuronpedia_id is not None and r.neuronpedia_id == npid), None)
    model, hook, d_sae = cfg.get("model_name"), cfg.get("hook_name"), cfg.get("d_sae")
    for r in SAELENS_RELEASES:
        if r.model == model and r.hook_name == hook and (r.d_sae == d_sae if r.d_sae is not None else r.hook_unique):
            return r
    return None


def _apply_release(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, float | None]:
    """``cfg`` with its release's overrides merged as SAELens's ``from_pretrained`` merges them."""
    row = release_row(cfg)
    if row is None:
        return cfg, None, None
    overrides = {k: (dict(v) if isinstance(v, tuple) else v) for k, v in row.overrides}
    merged = {**cfg, **overrides}
    info = {"release": row.release, "sae_id": row.sae_id, "config_overrides": overrides}
    if row.norm_scaling_factor is not None:
        info["norm_scaling_factor"] = row.norm_scaling_factor
    return merged, info, row.norm_scaling_factor


def load(path: Path, dtype: Any = np.float64) -> Dictionary:
    """Read a SAELens directory (see the module docstring for what each architecture becomes)."""
    p = Path(path)
    cfg_file, w_file = p / CFG_FILENAME, p / WEIGHTS_FILENAME
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise LoadError(f"{f}: missing (a SAELens dictionary is a directory with {CFG_FILENAME} and {WEIGHTS_FILENAME}).")
    raw = read_json(read_bytes(cfg_file), str(cfg_file))
    if not isinstance(raw, dict):
        raise LoadError(f"{cfg_file}: expected a JSON object, got {type(raw).__name__}.")
    src = str(cfg_file)
    cfg = _normalized_config(raw, src)
    cfg, release, release_scale = _apply_release(cfg)
    arch = cfg["architecture"]
    if arch in _REFUSED_ARCHS:
        raise LoadError(f"{src}: architecture {arch!r} is not a dictionary circuitalg represents: {_REFUSED_ARCHS[arch]}.")
    if arch not in _SAE_ARCHS | _TRANSCODER_ARCHS:
        known = ", ".join(sorted(_SAE_ARCHS | _TRANSCODER_ARCHS))
        raise LoadError(f"{src}: unknown SAELens architecture {arch!r}; circuitalg reads {known}.")
    transcoder = arch in _TRANSCODER_ARCHS
    dt = np.dtype(dtype)

    d_in = _positive_int(cfg, "d_in", src)
    d_sae = _positive_int(cfg, "d_sae", src)
    d_out = _positive_int(cfg, "d_out", src) if transcoder else d_in
    if not isinstance(cfg.get("dtype", "float32"), str) or cfg.get("dtype", "float32") not in _DTYPES:
        raise LoadError(f"{src}: dtype {cfg.get('dtype')!r} is not one SAELens knows ({', '.join(sorted(_DTYPES))}).")
    pre_shift = _bool(cfg, "apply_b_dec_to_input", src, True)
    if transcoder and pre_shift:
        raise LoadError(f"{src}: apply_b_dec_to_input is true for a transcoder (SAELens refuses it: b_dec lives in the output space).")
    norm = cfg["normalize_activations"]
    if norm not in ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening"):
        raise LoadError(f"{src}: unknown normalize_activations {norm!r}.")
    if norm in ("constant_norm_rescale", "layer_norm") or (transcoder and norm != "none"):
        raise LoadError(
            f"{src}: normalize_activations = {norm!r} is not supported: "
            + ("SAELens rescales each token's input and output by its own norm statistics, which is not a fixed "
               "map a dictionary can hold." if not transcoder else "a transcoder's input scaling has no fold into its output.")
        )
    reshape = cfg.get("reshape_activations", "none") or "none"
    if reshape not in ("none", "hook_z"):
        raise LoadError(f"{src}: reshape_activations must be 'none' or 'hook_z', got {reshape!r}.")
    if cfg.get("hook_head_index") is not None:
        raise LoadError(
            f"{src}: hook_head_index = {cfg['hook_head_index']!r}: the dictionary reads one attention head; circuitalg "
            "reads whole hooks (attn.hook_z with the heads concatenated)."
        )
    if cfg.get("hook_name") is None:
        raise LoadError(f"{src}: metadata.hook_name is missing; circuitalg needs the hook the dictionary reads.")
    reads = parse_hook(cfg["hook_name"], src, "metadata.hook_name")
    # a Hugging Face module circuitalg knows is unambiguous where a TransformerLens name may not be
    # (SAELens names Gemma Scope 2 transcoders' post-norm input blocks.L.hook_mlp_in)
    reads = _known_hf_hook(cfg.get("hf_hook_name")) or reads
    if (transcoder and cfg.get("hf_hook_name") is None and re.fullmatch(r"blocks\.\d+\.hook_mlp_in", cfg["hook_name"])
            and "gemma-3" in str(cfg.get("model_name", "")).lower()):
        reads = Hook(HookKind.MLP_IN, reads.layer)  # Gemma Scope 2: pre_feedforward_layernorm.output
    if reshape == "hook_z" and reads.kind is not HookKind.ATTN_Z:
        raise LoadError(f"{src}: reshape_activations 'hook_z' on hook {cfg['hook_name']!r} (expected blocks.L.attn.hook_z).")
    if transcoder:
        if cfg.get("hook_name_out") is None:
            raise LoadError(f"{src}: metadata.hook_name_out is missing; circuitalg needs the hook the transcoder writes.")
        writes = parse_hook(cfg["hook_name_out"], src, "metadata.hook_name_out")
        writes = _known_hf_hook(cfg.get("hf_hook_name_out")) or writes
    else:
        writes = reads
    kwargs = cfg.get("model_from_pretrained_kwargs") or {}
    if isinstance(kwargs, Mapping) and kwargs.get("refactor_factored_attn_matrices") is True and HookKind.ATTN_Z in (reads.kind, writes.kind):
        raise LoadError(f"{src}: the model was loaded with refactor_factored_attn_matrices, which changes attn.hook_z.")
    preprocessing = _preprocessing(cfg, src)
    source_meta: dict[str, Any] = {"preprocessing_source": "saelens_release" if release else "files"}
    source_notes: list[str] = []
    if release:
        source_meta["saelens_release"] = release
        source_notes.append(f"SAELens release {release['release']!r} ({release['sae_id']}) overrides applied: "
                            f"{release['config_overrides']}")
    elif _is_pre6(raw) and "model_from_pretrained_kwargs" not in cfg:
        source_notes.append("pre-6 config without model_from_pretrained_kwargs: no preprocessing read from the files "
                            "(the model loading the weights expect is not recorded in them)")

    tensors, _ = read_tensors(w_file)

    def take(name: str, shape: tuple[int, ...], why: str, as_dtype: np.dtype = dt) -> np.ndarray:
        return _take(tensors, name, shape, w_file, why, as_dtype)

    W_enc = take("W_enc", (d_in, d_sae), "(d_in, d_sae)")
    W_dec = take("W_dec", (d_sae, d_out), "(d_sae, d_out)" if transcoder else "(d_sae, d_in)")
    b_dec = take("b_dec", (d_out,), "(d_out,)" if transcoder else "(d_in,)")
    gated = arch == "gated"
    b_gate = b_mag = r_mag = None
    if gated:
        b_gate, b_mag, r_mag = (take(n, (d_sae,), "(d_sae,)") for n in ("b_gate", "b_mag", "r_mag"))
        b_enc = None
    else:
        b_enc = take("b_enc", (d_sae,), "(d_sae,)")
    threshold = topk_threshold = W_skip = finetuning_scale = None
    if arch in ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"):
        if "threshold" not in tensors and "log_threshold" in tensors:
            with np.errstate(over="ignore"):  # an overflow is refused with the other non-finite weights
                threshold = np.exp(take("log_threshold", (d_sae,), "(d_sae,)"))
        else:
            threshold = take("threshold", (d_sae,), "(d_sae,): the JumpReLU thresholds")
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        topk_threshold = float(take("topk_threshold", (), "a scalar: the learned BatchTopK threshold", np.dtype(np.float64)))
    if arch in ("skip_transcoder", "jumprelu_skip_transcoder"):
        W_skip = take("W_skip", (d_out, d_in), "(d_out, d_in)")
    if "scaling_factor" in tensors:
        finetuning_scale = take("scaling_factor", (d_sae,), "(d_sae,): the pre-6 finetuning scale")
    if tensors:
        raise LoadError(f"{w_file}: unexpected tensor(s) {sorted(tensors)} for SAELens architecture {arch!r}.")
    topk_archs = ("topk", "abstopk", "batchtopk", "matryoshka_batchtopk")
    rescale = _bool(cfg, "rescale_acts_by_decoder_norm", src, arch in topk_archs[2:]) if arch in topk_archs else False

    try:
        # overflow in a fold (exp(r_mag), a tiny norm) leaves non-finite weights, refused below
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return _folded(p, cfg, raw, src, w_file, arch, transcoder, norm, pre_shift, reads, writes, preprocessing, dt,
                           W_enc, b_enc, W_dec, b_dec, gated, b_gate, b_mag, r_mag, threshold, topk_threshold,
                           finetuning_scale, W_skip, rescale, release_scale, source_meta, source_notes)
    except (InvalidArgumentError, ShapeError, InvalidArrayError) as e:
        raise LoadError(f"{p}: the files do not make a valid dictionary: {e}") from None


def _folded(p, cfg, raw, src, w_file, arch, transcoder, norm, pre_shift, reads, writes, preprocessing, dt,
            W_enc, b_enc, W_dec, b_dec, gated, b_gate, b_mag, r_mag, threshold, topk_threshold,
            finetuning_scale, W_skip, rescale, release_scale, source_meta, source_notes) -> Dictionary:
    """The folds of the module docstring, in the order SAELens applies them, and the dictionary."""
    d_in, d_sae = W_enc.shape
    topk_archs = ("topk", "abstopk", "batchtopk", "matryoshka_batchtopk")
    notes: list[str] = list(source_notes)
    if finetuning_scale is not None and not np.allclose(finetuning_scale, 1.0):
        if not cfg.get("finetuning_scaling_factor"):
            raise LoadError(f"{w_file}: tensor 'scaling_factor' is not all ones but {CFG_FILENAME} has finetuning_scaling_factor false.")
        W_dec = W_dec * finetuning_scale[:, None]
        notes.append("finetuning scaling_factor folded into W_dec")
    if norm == "expected_average_only_in":
        # SAELens's from_pretrained folds the release table's factor; a checkpoint's own scaler file wins
        input_scale = release_scale if release_scale is not None and not (p / SCALER_FILENAME).is_file() else _scaler_factor(p)
        s = dt.type(input_scale)
        W_enc, W_dec, b_dec = W_enc * s, W_dec / s, b_dec / s
        if topk_threshold is not None and rescale:
            topk_threshold /= input_scale  # SAELens's BatchTopK fold does the same (its #763)
        notes.append(f"input scaling factor {input_scale!r} ({'release table' if input_scale == release_scale else SCALER_FILENAME}) "
                     "folded (W_enc * s, W_dec / s, b_dec / s)")
    elif norm == "covariance_whitening":
        mean, M, M_inv = _whitening(p, d_in)
        if rescale:  # SAELens folds the decoder norms first: unwhitening changes them
            W_enc, b_enc, W_dec = _fold_decoder_norms(W_enc, b_enc, W_dec, w_file)
            rescale = False
        wt = np.promote_types(dt, M.dtype)
        W_enc = M.astype(wt) @ W_enc.astype(wt)
        if not pre_shift:
            shift = mean.astype(wt) @ W_enc
            if gated:
                b_gate, b_mag = b_gate - shift, b_mag - shift * np.exp(r_mag.astype(wt))
            else:
                b_enc = b_enc - shift
        W_dec = W_dec.astype(wt) @ M_inv.astype(wt)
        b_dec = b_dec.astype(wt) @ M_inv.astype(wt) + mean.astype(wt)
        W_enc, W_dec, b_dec = (a.astype(dt) for a in (W_enc, W_dec, b_dec))
        if gated:
            b_gate, b_mag = b_gate.astype(dt), b_mag.astype(dt)
        else:
            b_enc = b_enc.astype(dt)
        notes.append(f"{WHITENING_FILENAME} folded (SAELens's fold_activation_whitening)")
    if rescale:
        W_enc, b_enc, W_dec = _fold_decoder_norms(W_enc, b_enc, W_dec, w_file)
        notes.append("rescale_acts_by_decoder_norm folded (decoder rows at unit norm)")

    if gated:
        scale = np.exp(r_mag)
        W_enc = W_enc * scale
        b_enc = b_mag
        activation = JumpReLU(b_mag - b_gate * scale, relu=True)
        notes.append("gated: magnitude path as the encoder, the gate as JumpReLU threshold b_mag - b_gate * exp(r_mag)")
    elif threshold is not None:
        activation = JumpReLU(threshold, relu=True)
    elif topk_threshold is not None:
        activation = BatchTopK(topk_threshold)
    elif arch in topk_archs:
        k = _positive_int(cfg, "k", src, 100)
        if k > d_sae:
            raise LoadError(f"{src}: k = {k} exceeds d_sae = {d_sae}.")
        activation = TopK(k) if arch == "topk" else TopK(k, relu=False, absolute=True)
    else:
        activation = ReLU()

    kind = (DictionaryKind.SKIP_TRANSCODER if W_skip is not None else DictionaryKind.TRANSCODER) if transcoder else DictionaryKind.SAE
    return _dictionary(p, kind, reads, writes, W_enc, b_enc, W_dec, b_dec, activation, pre_shift, W_skip,
                       preprocessing, dt, {"format": NAME, "architecture": arch, "config": raw, "notes": notes, **source_meta})


def _dictionary(p, kind, reads, writes, W_enc, b_enc, W_dec, b_dec, activation, pre_shift, W_skip, preprocessing, dt,
                meta) -> Dictionary:
    return Dictionary(
        name=p.resolve().name or NAME,
        kind=kind,
        reads=(reads,),
        writes=(writes,),
        W_enc=(W_enc.T,),
        b_enc=b_enc,
        W_dec=(W_dec.T,),
        b_dec=(b_dec,),
        activation=activation,
        pre_shift=pre_shift,
        W_skip=W_skip,
        preprocessing=preprocessing,
        dtype=dt,
        meta=meta,
    )


# -- writing ---------------------------------------------------------------------------------

def _architecture(d: Dictionary) -> tuple[str, dict[str, Any], np.ndarray | None]:
    """SAELens architecture, extra config and threshold vector for ``d`` (InvalidArgumentError if
    SAELens has no architecture computing what ``d`` computes)."""
    act = d.activation
    what = f"save_dictionary(format='saelens'): dictionary {d.name!r}"
    transcoder = d.kind in (DictionaryKind.TRANSCODER, DictionaryKind.SKIP_TRANSCODER)
    skip = "skip_" if d.W_skip is not None else ""
    F = d.n_features
    if isinstance(act, ReLU):
        return ("transcoder" if not skip else "skip_transcoder") if transcoder else "standard", {}, None
    if isinstance(act, (JumpReLU, BatchTopK)):
        if isinstance(act, JumpReLU):
            if not act.relu and np.any(act.threshold < 0):
                raise InvalidArgumentError(
                    f"{what}: JumpReLU(relu=False) with negative thresholds keeps negative values; SAELens's JumpReLU "
                    "applies a ReLU first, so it cannot be written."
                )
            t = np.broadcast_to(act.threshold, (F,))
        else:
            t = np.full(F, act.threshold)
        return (f"jumprelu_{skip}transcoder" if transcoder else "jumprelu"), {}, t
    if isinstance(act, TopK):
        if transcoder:
            raise InvalidArgumentError(f"{what}: SAELens has no TopK transcoder architecture.")
        if act.rank_weights is not None:
            raise InvalidArgumentError(f"{what}: TopK with rank_weights has no SAELens architecture (rescale_acts_by_decoder_norm ranks and scales by the decoder norms).")
        if act.absolute:
            return "abstopk", {"k": act.k, "rescale_acts_by_decoder_norm": False}, None
        if not act.relu:
            raise InvalidArgumentError(f"{what}: TopK(relu=False) has no SAELens architecture (its topk applies a ReLU).")
        return "topk", {"k": act.k, "rescale_acts_by_decoder_norm": False}, None
    raise InvalidArgumentError(f"{what}: SAELens has no architecture with activation {type(act).__name__}.")


#: SAELens metadata about the model and data, carried from a dictionary read from SAELens files
_CARRIED = ("model_name", "model_class_name", "prepend_bos", "context_size", "dataset_path", "neuronpedia_id",
            "exclude_special_tokens", "seqpos_slice")


def _carried_metadata(d: Dictionary) -> dict[str, Any]:
    meta = d.meta if isinstance(d.meta, Mapping) else {}
    cfg = meta.get("config") if meta.get("format") == NAME else None
    source: dict[str, Any] = {}
    if isinstance(cfg, Mapping):
        source.update(cfg)
        if isinstance(cfg.get("metadata"), Mapping):
            source.update(cfg["metadata"])
    if isinstance(meta.get("model_name"), str):
        source["model_name"] = meta["model_name"]
    return {k: source[k] for k in _CARRIED if k in source}


def save(d: Dictionary | DictionarySet, path: Path) -> None:
    """Write ``d`` as ``cfg.json`` + ``sae_weights.safetensors`` in directory ``path`` (the
    version-6 layout ``sae_lens.SAE.load_from_disk`` reads), in ``d``'s dtype.

    Raises
    ------
    InvalidArgumentError
        ``d`` is not something SAELens represents (a set, a cross-layer transcoder or crosscoder,
        several hooks, a skip bias, an activation without a SAELens architecture).
    """
    from safetensors.numpy import save_file

    what = f"save_dictionary(format='saelens'): {getattr(d, 'name', d)!r}"
    if isinstance(d, DictionarySet):
        raise InvalidArgumentError(f"{what}: SAELens stores one dictionary per directory; save each member of the set on its own.")
    if d.kind not in (DictionaryKind.SAE, DictionaryKind.TRANSCODER, DictionaryKind.SKIP_TRANSCODER):
        raise InvalidArgumentError(f"{what}: SAELens has no {d.kind.value} architecture (it writes SAEs, transcoders and skip transcoders).")
    if len(d.reads) != 1 or len(d.writes) != 1:
        raise InvalidArgumentError(f"{what}: SAELens dictionaries read and write one hook each.")
    transcoder = d.kind is not DictionaryKind.SAE
    if not transcoder and (d.reads != d.writes or d.W_skip is not None):
        raise InvalidArgumentError(f"{what}: an SAE must read and write the same hook, without a skip map.")
    if transcoder and d.pre_shift:
        raise InvalidArgumentError(f"{what}: SAELens transcoders cannot subtract b_dec from their input (apply_b_dec_to_input).")
    if d.kind is DictionaryKind.SKIP_TRANSCODER and d.W_skip is None:
        raise InvalidArgumentError(f"{what}: a skip transcoder without W_skip.")
    if d.b_skip is not None:
        raise InvalidArgumentError(f"{what}: SAELens's skip transcoders have no skip bias (b_skip).")
    arch, extra, threshold = _architecture(d)
    dt = d.dtype
    tensors = {
        "W_enc": np.ascontiguousarray(d.W_enc[0].T, dtype=dt),
        "b_enc": np.ascontiguousarray(d.b_enc, dtype=dt),
        "W_dec": np.ascontiguousarray(d.W_dec[0].T, dtype=dt),
        "b_dec": np.ascontiguousarray(d.b_dec[0], dtype=dt),
    }
    if threshold is not None:
        tensors["threshold"] = np.ascontiguousarray(threshold, dtype=dt)
    if d.W_skip is not None:
        tensors["W_skip"] = np.ascontiguousarray(d.W_skip, dtype=dt)
    hook = d.reads[0]
    metadata: dict[str, Any] = {
        "sae_lens_version": _WRITE_VERSION,
        "sae_lens_training_version": _WRITE_VERSION,
        "hook_name": hook.hook_name,
        "hook_head_index": None,
        "model_from_pretrained_kwargs": {k: True for k in sorted(d.preprocessing)},
    }
    metadata.update(_carried_metadata(d))
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": int(d.d_in[0]),
        "d_sae": int(d.n_features),
        "dtype": np.dtype(dt).name,
        "device": "cpu",
        "apply_b_dec_to_input": bool(d.pre_shift),
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if hook.kind is HookKind.ATTN_Z and not transcoder else "none",
        **extra,
        "metadata": metadata,
    }
    if transcoder:
        cfg["d_out"] = int(d.d_out[0])
        metadata["hook_name_out"] = d.writes[0].hook_name
        metadata["hook_head_index_out"] = None
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"{what}: {out} exists and is not a directory.")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_FILENAME, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write(out / CFG_FILENAME, lambda tmp: tmp.write_text(json.dumps(cfg, indent=2) + "\n"))
