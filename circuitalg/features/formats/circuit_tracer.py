"""circuit-tracer's transcoders (safety-research/circuit-tracer, pinned against 0.5.0).

A directory with ``config.yaml`` (``model_kind``, ``feature_input_hook``,
``feature_output_hook``; what ``circuit_tracer.utils.caching`` reads) and the weights:

``model_kind: transcoder_set`` (per-layer transcoders, ``TranscoderSet``)
    ``layer_{l}.safetensors`` for ``l = 0..n-1`` (or the files listed under ``transcoders:``,
    relative to the directory), each with ``W_enc (F, d)``, ``W_dec (F, d)``, ``b_enc (F,)``,
    ``b_dec (d,)``, optionally ``activation_function.threshold (F,)`` (JumpReLU, else ReLU) and
    ``W_skip (d, d)``. ``SingleLayerTranscoder.compute_skip`` is ``x @ W_skip.T``: the stored
    matrix is already the column-convention map. Gemma Scope 2 files (``w_enc (d, F)``,
    ``w_dec``, ``threshold``, ``affine_skip_connection (d, d)`` used as ``x @ A``) are read too,
    and so are Gemma Scope 1 ``.npz`` files listed under ``transcoders:`` (``W_enc (d, F)``,
    ``W_dec (F, d)``, ``b_enc``, ``b_dec``, ``threshold``; ``load_gemma_scope_transcoder``), at
    the config's hooks (circuit-tracer's Gemma 2 config reads ``ln2.hook_normalized``).
    -> a :class:`DictionarySet` of per-layer :class:`Dictionary` (kind ``TRANSCODER`` or
    ``SKIP_TRANSCODER``) reading ``blocks.l.<feature_input_hook>`` and writing
    ``blocks.l.<feature_output_hook>``. Member ``l`` is named ``{set}.L{l}``.

``model_kind: cross_layer_transcoder`` (``CrossLayerTranscoder``)
    ``W_enc_{l}.safetensors`` with ``W_enc_l (F, d)``, ``b_enc_l (F,)``, ``b_dec_l (d,)``,
    optionally ``threshold_l (F,)``, and ``W_dec_{l}.safetensors`` with ``W_dec_l (F, n-l, d)``
    (features of layer ``l`` -> outputs of layers ``l..n-1``). -> a :class:`DictionarySet`,
    member ``l`` reading layer ``l`` and writing layers ``l..n-1``. The CLT's decoder bias
    ``b_dec_j`` of output layer ``j`` is member ``j``'s first decoder bias (its own layer); the
    other members' biases for layer ``j`` are zero, so summing every member's output gives
    circuit-tracer's. (circuit-tracer's CLT skip, ``x @ W_skip[l]``, the transpose of the
    per-layer convention, is never written nor read by its files.)

Activations as circuit-tracer applies them: ReLU, or JumpReLU ``x * (x > threshold)`` (strict, no
ReLU). Its TopK class (the ``k`` largest raw values, no ReLU: :class:`TopK` with ``relu=False``)
cannot be recorded in these files. Transcoders are trained on unprocessed models
(TransformerLens ``fold_ln=False``, no centering), so ``preprocessing`` is empty.

``feature_output_hook: mlp.hook_out`` is circuit-tracer's ``ReplacementMLP.hook_out``: the MLP
module's output. On a pre-norm model that is ``hook_mlp_out``; on a model with post-norms (Gemma
2 and 3, OLMo 2) it is the output *before* the MLP's post-norm (``ln2_post``), which circuitalg
has no hook kind for. Such dictionaries are read as writing ``hook_mlp_out`` with
``meta["before_post_norm"] = True`` on every member: binding one to a model with post-norms must
apply the post-norm to its output (or refuse); on a model without them the flag changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, LoadError
from circuitalg.features.activations import JumpReLU, ReLU
from circuitalg.features.dictionary import Dictionary, DictionaryKind, DictionarySet
from circuitalg.features.hooks import Hook, HookKind
from circuitalg.files import atomic_write
from circuitalg.model.tensorfiles import read_tensors
from circuitalg.features.formats.tensors import as_numpy, take_tensor

__all__ = ["NAME", "BEFORE_POST_NORM_SUFFIXES", "detect", "load", "save", "parse_simple_yaml", "hook_from_suffix", "member_name"]

NAME = "circuit_tracer"
CONFIG = "config.yaml"
_MODEL_KINDS = ("transcoder_set", "cross_layer_transcoder")
#: hook suffixes circuit-tracer's configs use that are not TransformerLens's canonical names
_SUFFIX_ALIASES = {"mlp.hook_out": HookKind.MLP_OUT.value}
#: the suffixes that name a sublayer's output before its post-norm (see the module docstring)
BEFORE_POST_NORM_SUFFIXES = frozenset({"mlp.hook_out"})


#: one layer's file on its own (``load_relu_transcoder(file, layer)`` reads it): its hooks are the
#: ones circuit-tracer's per-layer configs use
LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors")
SINGLE_FILE_HOOKS = {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "hook_mlp_out"}


def _single_layer_file(p: Path) -> bool:
    if not (p.is_file() and LAYER_FILE.fullmatch(p.name)):
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(p), "numpy") as f:
            keys = set(f.keys())
    except Exception:  # noqa: BLE001 - not a readable safetensors file: not this format
        return False
    return {"W_enc", "W_dec", "b_enc", "b_dec"} <= keys


def _lone_layer_file(p: Path) -> Path | None:
    """The one per-layer file of a directory without ``config.yaml`` that holds just that file."""
    if not p.is_dir() or (p / CONFIG).exists():
        return None
    files = [f for f in p.iterdir() if f.suffix == ".safetensors"]
    return files[0] if len(files) == 1 and _single_layer_file(files[0]) else None


def detect(path: Path) -> bool:
    """A directory with a ``config.yaml`` whose ``model_kind`` is circuit-tracer's, or one per-layer
    file ``layer_{l}.safetensors`` with circuit-tracer's tensor names (or a directory holding only
    that file)."""
    p = Path(path)
    if _single_layer_file(p) or _lone_layer_file(p) is not None:
        return True
    cfg = p / CONFIG
    if not (p.is_dir() and cfg.is_file()):
        return False
    try:
        kind = parse_simple_yaml(cfg.read_text(), str(cfg)).get("model_kind")
    except (LoadError, OSError, UnicodeDecodeError):
        return False
    return kind in _MODEL_KINDS


# -- config.yaml ---------------------------------------------------------------------------------
def _scalar(text: str, source: str, lineno: int) -> Any:
    t = text.strip()
    if not t or t in ("~", "null", "Null", "NULL"):
        return None
    if t[0] in "\"'":
        if len(t) < 2 or t[-1] != t[0]:
            raise LoadError(f"{source}:{lineno}: unterminated quoted string {t!r}.")
        return json.loads(t) if t[0] == '"' else t[1:-1].replace("''", "'")
    if t in ("true", "True", "false", "False"):
        return t in ("true", "True")
    if re.fullmatch(r"[-+]?\d+", t):
        return int(t)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", t):
        return float(t)
    if t.startswith("[") and t.endswith("]"):
        inner = t[1:-1].strip()
        return [] if not inner else [_scalar(v, source, lineno) for v in inner.split(",")]
    return t


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).rstrip()


def parse_simple_yaml(text: str, source: str) -> dict[str, Any]:
    """The flat YAML mapping circuit-tracer's ``config.yaml`` is (``key: scalar`` lines and
    ``key:`` followed by ``- item`` lines); :class:`LoadError` naming the line on anything else.

    circuitalg does not depend on PyYAML; this reads the subset these configs use.
    """
    out: dict[str, Any] = {}
    current: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        if not line.strip() or line.strip() in ("---", "..."):
            continue
        stripped = line.strip()
        if stripped.startswith("- ") or stripped == "-":
            if current is None:
                raise LoadError(f"{source}:{lineno}: a list item outside a 'key:' list.")
            if out[current] is None:
                out[current] = []
            out[current].append(_scalar(stripped[1:], source, lineno))
            continue
        if line[0].isspace():
            raise LoadError(f"{source}:{lineno}: nested mappings are not part of circuit-tracer's config ({raw.strip()!r}).")
        m = re.match(r"^([A-Za-z_][\w.\-]*)\s*:(?:\s+(.*)|\s*)$", line)
        if m is None:
            raise LoadError(f"{source}:{lineno}: expected 'key: value', got {raw.strip()!r}.")
        key, value = m.group(1), m.group(2)
        if value is None or not value.strip():
            out[key] = None  # YAML null, or a list if '- item' lines follow
            current = key
        else:
            out[key] = _scalar(value, source, lineno)
            current = None
    return out


def _dump_yaml(cfg: Mapping[str, Any]) -> str:
    lines = []
    for k, v in cfg.items():
        if isinstance(v, list):
            lines.append(f"{k}:")
            lines += [f"- {json.dumps(x)}" for x in v]
        else:
            lines.append(f"{k}: {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def hook_from_suffix(suffix: Any, layer: int, source: str, field: str) -> Hook:
    """``blocks.{layer}.{suffix}`` as a :class:`Hook` (``mlp.hook_out`` is ``hook_mlp_out``)."""
    if not isinstance(suffix, str) or not suffix:
        raise LoadError(f"{source}: field {field!r} must be a hook name such as 'mlp.hook_in', got {suffix!r}.")
    s = _SUFFIX_ALIASES.get(suffix, suffix)
    try:
        return Hook.parse(f"blocks.{layer}.{s}")
    except InvalidArgumentError:
        known = ", ".join(sorted({k.value for k in HookKind} | set(_SUFFIX_ALIASES)))
        raise LoadError(f"{source}: field {field!r} = {suffix!r} is not a hook circuitalg knows ({known}).") from None


# -- tensors --------------------------------------------------------------------------------------

def _read(file: Path) -> dict[str, np.ndarray]:
    if not file.is_file():
        raise LoadError(f"{file}: missing (the config names it, or the layer numbering expects it).")
    tensors, _ = read_tensors(file)
    return {k: as_numpy(v) for k, v in tensors.items()}


def _dims(tensors: Mapping[str, np.ndarray], f_key: str, d_key: str, file: Path) -> tuple[int, int]:
    for key in (f_key, d_key):
        if key not in tensors:
            raise LoadError(f"{file}: tensor {key!r} is missing (it gives the {'feature' if key == f_key else 'model'} dimension).")
        if tensors[key].ndim != 1:
            raise LoadError(f"{file}: tensor {key!r} has shape {tuple(tensors[key].shape)}, expected a vector.")
    return int(tensors[f_key].shape[0]), int(tensors[d_key].shape[0])


def _layer_files(root: Path, cfg: Mapping[str, Any], pattern: str, source: str, shown: str) -> list[Path]:
    listed = cfg.get("transcoders")
    if listed is not None:
        if not isinstance(listed, list) or not listed:
            raise LoadError(f"{source}: field 'transcoders' must be a list of files, got {listed!r}.")
        files = []
        for i, item in enumerate(listed):
            if not isinstance(item, str):
                raise LoadError(f"{source}: transcoders[{i}] must be a path, got {item!r}.")
            if "://" in item:
                raise LoadError(
                    f"{source}: transcoders[{i}] = {item!r} is remote; circuitalg reads local files only. "
                    "Download them (circuit_tracer.utils.caching.save_transcoders_to_cache) and load that directory."
                )
            p = Path(item)
            files.append(p if p.is_absolute() else root / p)
        return files
    found = {}
    for p in root.iterdir():
        m = re.fullmatch(pattern, p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise LoadError(f"{root}: no {shown} files next to {CONFIG}.")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise LoadError(f"{root}: layer files for layers {missing} are missing (circuit-tracer needs every layer 0..{max(found)}).")
    return [found[i] for i in range(len(found))]


def _config(root: Path) -> tuple[dict[str, Any], str]:
    file = root / CONFIG
    if not file.is_file():
        raise LoadError(f"{root}: {CONFIG} is missing (circuit-tracer's config: model_kind, feature_input_hook, feature_output_hook).")
    source = str(file)
    try:
        cfg = parse_simple_yaml(file.read_text(), source)
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadError(f"{source}: cannot read ({exc}).") from None
    kind = cfg.get("model_kind")
    if kind not in _MODEL_KINDS:
        raise LoadError(f"{source}: field 'model_kind' = {kind!r}, expected one of {list(_MODEL_KINDS)}.")
    for key in ("feature_input_hook", "feature_output_hook"):
        if key not in cfg:
            raise LoadError(f"{source}: field {key!r} is missing (the TransformerLens hook suffix, e.g. 'mlp.hook_in').")
    return cfg, source


# -- loading --------------------------------------------------------------------------------------
def load(path: Path, dtype: Any = np.float64) -> DictionarySet | Dictionary:
    """Read a circuit-tracer transcoder directory (see the module docstring), or one per-layer file
    ``layer_{l}.safetensors`` (a Dictionary reading ``blocks.l.mlp.hook_in``, writing
    ``blocks.l.hook_mlp_out``)."""
    root = Path(path)
    root = _lone_layer_file(root) or root
    if _single_layer_file(root):
        # one layer's transcoder (circuit-tracer's sets need every layer from 0; its per-layer
        # loader reads a lone file): the hooks of its per-layer configs, mlp.hook_in -> hook_mlp_out
        layer = int(LAYER_FILE.fullmatch(root.name).group(1))
        cfg = {"model_kind": "transcoder_set", **SINGLE_FILE_HOOKS}
        name = f"{root.parent.name}.L{layer}"
        return _member(_read(root), root, layer, cfg, str(root), name, np.dtype(dtype))
    if root.is_file() and root.name == CONFIG:
        root = root.parent
    if not root.is_dir():
        raise LoadError(f"{root}: expected circuit-tracer's directory (config.yaml and its safetensors files).")
    cfg, source = _config(root)
    name = root.name
    meta = {"format": NAME, **{k: v for k, v in cfg.items()}}
    if cfg["model_kind"] == "transcoder_set":
        return _load_set(root, cfg, source, name, np.dtype(dtype), meta)
    return _load_clt(root, cfg, source, name, np.dtype(dtype), meta)


def member_name(set_name: str, layer: int) -> str:
    """The name of a set's member at ``layer``: ``{set_name}.L{layer}``."""
    return f"{set_name}.L{layer}"


def _member_meta(cfg: Mapping[str, Any], file: Path, layer: int) -> dict[str, Any]:
    meta = {"format": NAME, "file": file.name, "layer": layer}
    if cfg.get("feature_output_hook") in BEFORE_POST_NORM_SUFFIXES:
        meta["before_post_norm"] = True
    return meta


def _gemma_scope_npz(t: Mapping[str, np.ndarray], file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """``W_enc (F, d)``, ``W_dec (F, d)`` and the threshold of a Gemma Scope 1 ``.npz`` transcoder."""
    if "W_enc" not in t or t["W_enc"].ndim != 2:
        raise LoadError(f"{file}: tensor 'W_enc' is missing or not 2-D (a Gemma Scope transcoder's encoder, (d_model, d_transcoder)).")
    d, F = t["W_enc"].shape
    W_enc = take_tensor(t, "W_enc", (d, F), file, "encoder, (d_model, d_transcoder)").T
    W_dec = take_tensor(t, "W_dec", (F, d), file, "decoder, (d_transcoder, d_model)")
    thr = take_tensor(t, "threshold", (F,), file, "JumpReLU threshold per feature")
    extra = sorted(set(t) - {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"})
    if extra:
        raise LoadError(f"{file}: unexpected tensor(s) {extra} for a Gemma Scope transcoder (circuit-tracer's loader would refuse them).")
    return W_enc, W_dec, thr, F, d


def _member(t: Mapping[str, np.ndarray], file: Path, layer: int, cfg: Mapping[str, Any], source: str, name: str,
            dtype: np.dtype) -> Dictionary:
    """One per-layer transcoder file (circuit-tracer's, Gemma Scope 1's ``.npz`` or Gemma Scope 2's
    names) as a Dictionary reading and writing the config's hooks at ``layer``."""
    read = hook_from_suffix(cfg["feature_input_hook"], layer, source, "feature_input_hook")
    write = hook_from_suffix(cfg["feature_output_hook"], layer, source, "feature_output_hook")
    if file.suffix == ".npz":  # Gemma Scope 1 (circuit-tracer's load_gemma_scope_transcoder)
        W_enc, W_dec, thr, F, d = _gemma_scope_npz(t, file)
        W_skip = None
    elif "w_enc" in t:  # Gemma Scope 2 names (circuit-tracer's load_gemma_scope_2_transcoder)
        F, d = _dims(t, "b_enc", "b_dec", file)
        W_enc = take_tensor(t, "w_enc", (d, F), file, "encoder, (d_model, d_transcoder)").T
        W_dec = take_tensor(t, "w_dec", (F, d), file, "decoder, (d_transcoder, d_model)")
        thr = take_tensor(t, "threshold", (F,), file, "JumpReLU threshold per feature")
        skip = t.get("affine_skip_connection")
        W_skip = None if skip is None else take_tensor(t, "affine_skip_connection", (d, d), file, "skip, used as x @ A").T
    else:
        F, d = _dims(t, "b_enc", "b_dec", file)
        W_enc = take_tensor(t, "W_enc", (F, d), file, "encoder rows, (d_transcoder, d_model)")
        W_dec = take_tensor(t, "W_dec", (F, d), file, "decoder rows, (d_transcoder, d_model)")
        thr = None
        if "activation_function.threshold" in t:
            thr = take_tensor(t, "activation_function.threshold", (F,), file, "JumpReLU threshold per feature")
        if "log_thresholds" in t:
            raise LoadError(f"{file}: tensor 'log_thresholds' is not circuit-tracer's (its loader refuses it too).")
        W_skip = None if "W_skip" not in t else take_tensor(t, "W_skip", (d, d), file, "skip map, used as x @ W_skip.T")
    b_enc = take_tensor(t, "b_enc", (F,), file, "encoder bias")
    b_dec = take_tensor(t, "b_dec", (d,), file, "decoder bias")
    if W_skip is not None:
        kind = DictionaryKind.SKIP_TRANSCODER
    else:
        kind = DictionaryKind.SAE if read == write else DictionaryKind.TRANSCODER
    return Dictionary(
        name=name, kind=kind, reads=(read,), writes=(write,), W_enc=(W_enc,), b_enc=b_enc,
        W_dec=(W_dec.T,), b_dec=(b_dec,), activation=ReLU() if thr is None else JumpReLU(thr),
        W_skip=W_skip, dtype=dtype, meta=_member_meta(cfg, file, layer),
    )


def _load_set(root: Path, cfg: Mapping[str, Any], source: str, name: str, dtype: np.dtype, meta: dict) -> DictionarySet:
    files = _layer_files(root, cfg, r"layer_(\d+)\.safetensors", source, "layer_{l}.safetensors")
    members = []
    F0 = skip0 = None
    for layer, file in enumerate(files):
        t = _read(file)
        m = _member(t, file, layer, cfg, source, member_name(name, layer), dtype)
        F = m.n_features
        if F0 is not None and F != F0:
            raise LoadError(f"{file}: {F} features, but layer 0 has {F0} (circuit-tracer needs the same d_transcoder in every layer).")
        F0 = F
        has_skip = m.W_skip is not None
        if skip0 is None:
            skip0 = has_skip
        elif has_skip != skip0:
            key = "affine_skip_connection" if "w_enc" in t else "W_skip"
            raise LoadError(
                f"{file}: tensor {key!r} is {'present' if has_skip else 'missing'}, unlike layer 0 (circuit-tracer "
                "takes the skip connection of layer 0 for every layer)."
            )
        members.append(m)
    return DictionarySet(name, tuple(members), meta={**meta, "structure": "transcoder_set"})


def _load_clt(root: Path, cfg: Mapping[str, Any], source: str, name: str, dtype: np.dtype, meta: dict) -> DictionarySet:
    enc_files = _layer_files(root, {}, r"W_enc_(\d+)\.safetensors", source, "W_enc_{l}.safetensors")
    n = len(enc_files)
    members = []
    F0 = d0 = None
    jump = None
    for layer, efile in enumerate(enc_files):
        t = _read(efile)
        F, d = _dims(t, f"b_enc_{layer}", f"b_dec_{layer}", efile)
        if F0 is not None and (F, d) != (F0, d0):
            raise LoadError(f"{efile}: d_transcoder, d_model = {(F, d)}, but layer 0 has {(F0, d0)}.")
        F0, d0 = F, d
        W_enc = take_tensor(t, f"W_enc_{layer}", (F, d), efile, "encoder rows, (d_transcoder, d_model)")
        b_enc = take_tensor(t, f"b_enc_{layer}", (F,), efile, "encoder bias")
        b_dec = take_tensor(t, f"b_dec_{layer}", (d,), efile, "decoder bias of this output layer")
        has_thr = f"threshold_{layer}" in t
        if jump is None:
            jump = has_thr
        elif has_thr != jump:
            raise LoadError(f"{efile}: tensor 'threshold_{layer}' is {'present' if has_thr else 'missing'}, unlike layer 0 "
                            "(a cross-layer transcoder is JumpReLU in every layer or in none).")
        thr = take_tensor(t, f"threshold_{layer}", (F,), efile, "JumpReLU threshold per feature") if has_thr else None
        dfile = root / f"W_dec_{layer}.safetensors"
        td = _read(dfile)
        W_dec = take_tensor(td, f"W_dec_{layer}", (F, n - layer, d), dfile,
                      f"decoders of layer {layer}'s features to layers {layer}..{n - 1}")
        writes = tuple(hook_from_suffix(cfg["feature_output_hook"], j, source, "feature_output_hook") for j in range(layer, n))
        zeros = np.zeros(d, dtype=b_dec.dtype)
        members.append(Dictionary(
            name=member_name(name, layer), kind=DictionaryKind.CROSS_LAYER_TRANSCODER,
            reads=(hook_from_suffix(cfg["feature_input_hook"], layer, source, "feature_input_hook"),), writes=writes,
            W_enc=(W_enc,), b_enc=b_enc, W_dec=tuple(W_dec[:, j, :].T for j in range(n - layer)),
            b_dec=(b_dec,) + (zeros,) * (n - layer - 1), activation=ReLU() if thr is None else JumpReLU(thr),
            dtype=dtype, meta=_member_meta(cfg, efile, layer),
        ))
    return DictionarySet(name, tuple(members), meta={**meta, "structure": "cross_layer_transcoder"})


# -- writing --------------------------------------------------------------------------------------
def _activation_tensor(m: Dictionary) -> np.ndarray | None:
    act = m.activation
    if isinstance(act, ReLU):
        return None
    if isinstance(act, JumpReLU) and (not act.relu or np.all(act.threshold >= 0)):
        thr = np.broadcast_to(act.threshold, (m.n_features,))
        return np.ascontiguousarray(thr, dtype=m.dtype)
    raise InvalidArgumentError(
        f"dictionary {m.name!r}: circuit-tracer's files record ReLU or JumpReLU (x * (x > threshold)) only, "
        f"not {act!r}."
    )


def _encoder_bias(m: Dictionary) -> np.ndarray:
    # circuit-tracer has no input shift: fold W_enc (x - b_dec) + b_enc into W_enc x + (b_enc - W_enc b_dec)
    return m.b_enc - m.W_enc[0] @ m.b_dec[0] if m.pre_shift else m.b_enc


def _suffix(h: Hook) -> str:
    return h.kind.value


def _save_tensors(file: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    data = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write(file, lambda tmp: save_file(data, str(tmp)))


def save(d: Dictionary | DictionarySet, path: Path) -> None:
    """Write ``d`` as circuit-tracer's directory (``config.yaml`` + safetensors files), which
    ``circuit_tracer.utils.caching.load_transcoders_from_cache`` reads.

    ``d`` is a :class:`DictionarySet` of per-layer transcoders (member ``l`` reads and writes layer
    ``l``; a single Dictionary at layer 0 is a one-layer set) or of a cross-layer transcoder's
    members (member ``l`` reads layer ``l`` and writes layers ``l..n-1``). Activations must be ReLU
    or JumpReLU; a pre-shift is folded into the encoder bias.
    """
    members = (d,) if isinstance(d, Dictionary) else tuple(d.members)
    name = d.name
    n = len(members)
    for layer, m in enumerate(members):
        if len(m.reads) != 1 or m.reads[0].layer != layer:
            raise InvalidArgumentError(
                f"dictionary {m.name!r}: circuit-tracer's member {layer} must read one hook at layer {layer}, "
                f"got {[str(h) for h in m.reads]} (every layer 0..n-1 needs its member, in order)."
            )
        if m.b_skip is not None:
            raise InvalidArgumentError(f"dictionary {m.name!r}: circuit-tracer's skip map has no bias (b_skip).")
    in_kinds = {m.reads[0].kind for m in members}
    out_kinds = {h.kind for m in members for h in m.writes}
    if len(in_kinds) != 1 or len(out_kinds) != 1:
        raise InvalidArgumentError(
            f"{name!r}: circuit-tracer's config names one input and one output hook for every layer; the members use "
            f"{sorted(k.value for k in in_kinds)} -> {sorted(k.value for k in out_kinds)}."
        )
    clt = any(len(m.writes) > 1 for m in members) or any(m.kind is DictionaryKind.CROSS_LAYER_TRANSCODER for m in members)
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in root.iterdir()
                   if (m := re.fullmatch(r"(?:layer_|W_enc_|W_dec_)(\d+)\.safetensors", p.name)) and int(m.group(1)) >= n)
    if stale:
        raise InvalidArgumentError(f"{root}: holds files of layers beyond this dictionary's {n} ({stale[:4]}); write to an empty directory.")
    F = members[0].n_features
    for m in members:
        if m.n_features != F:
            raise InvalidArgumentError(f"{name!r}: circuit-tracer needs the same number of features in every layer ({F} vs {m.n_features} in {m.name!r}).")
    if clt:
        thresholds = [_activation_tensor(m) for m in members]
        if len({t is None for t in thresholds}) != 1:
            raise InvalidArgumentError(f"{name!r}: a cross-layer transcoder is JumpReLU in every layer or ReLU in every layer.")
        d_model = members[0].d_in[0]
        b_out = [np.zeros(d_model, dtype=members[0].dtype) for _ in range(n)]
        for layer, m in enumerate(members):
            want = tuple(range(layer, n))
            if tuple(h.layer for h in m.writes) != want:
                raise InvalidArgumentError(
                    f"dictionary {m.name!r}: a cross-layer transcoder's member {layer} writes layers {list(want)}, "
                    f"got {[h.layer for h in m.writes]}."
                )
            if m.W_skip is not None:
                raise InvalidArgumentError(f"dictionary {m.name!r}: circuit-tracer's cross-layer files cannot hold a skip map.")
            for j, b in zip(want, m.b_dec):
                b_out[j] = b_out[j] + b
        for layer, (m, thr) in enumerate(zip(members, thresholds)):
            enc = {f"W_enc_{layer}": m.W_enc[0], f"b_enc_{layer}": _encoder_bias(m), f"b_dec_{layer}": b_out[layer]}
            if thr is not None:
                enc[f"threshold_{layer}"] = thr
            _save_tensors(root / f"W_enc_{layer}.safetensors", enc)
            W_dec = np.stack([W.T for W in m.W_dec], axis=1)  # (F, n - layer, d)
            _save_tensors(root / f"W_dec_{layer}.safetensors", {f"W_dec_{layer}": W_dec})
        kind = "cross_layer_transcoder"
    else:
        for layer, m in enumerate(members):
            if len(m.writes) != 1 or m.writes[0].layer != layer:
                raise InvalidArgumentError(f"dictionary {m.name!r}: a per-layer transcoder writes one hook at its layer {layer}.")
            if m.d_in[0] != m.d_out[0]:
                raise InvalidArgumentError(f"dictionary {m.name!r}: circuit-tracer's transcoders read and write d_model (got {m.d_in[0]} -> {m.d_out[0]}).")
            t = {"W_enc": m.W_enc[0], "W_dec": m.W_dec[0].T, "b_enc": _encoder_bias(m), "b_dec": m.b_dec[0]}
            thr = _activation_tensor(m)
            if thr is not None:
                t["activation_function.threshold"] = thr
            if m.W_skip is not None:
                t["W_skip"] = m.W_skip  # compute_skip is x @ W_skip.T: the column-convention map as it is
            _save_tensors(root / f"layer_{layer}.safetensors", t)
        kind = "transcoder_set"
    cfg = {"model_kind": kind, "feature_input_hook": _suffix(members[0].reads[0]),
           "feature_output_hook": _suffix(members[0].writes[0]), "scan": name}
    atomic_write(root / CONFIG, lambda tmp: tmp.write_text(_dump_yaml(cfg)))
