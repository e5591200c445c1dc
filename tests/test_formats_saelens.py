"""SAELens and Gemma Scope dictionaries against sae-lens itself (a required test dependency).

Every sae-lens architecture is built with sae-lens's own classes (random weights), saved with its
own ``save_model`` and read with :func:`load_dictionary`; pre-activations, ``encode``, ``decode``
and ``forward`` must equal sae-lens's to 1e-6 (float32) / 1e-12 (float64), relative to the largest
entry. Gemma Scope 1/2 files are written in their release layout and read by sae-lens's own
Gemma Scope loaders (its Hub download replaced by the local files). The writer is checked both
ways: circuitalg -> SAELens files -> ``sae_lens.SAE.load_from_disk``, and back to circuitalg
exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import sae_lens
import sae_lens.loading.pretrained_sae_loaders as sl_loaders
import torch
from safetensors.numpy import load_file, save_file
from sae_lens import (
    SAE,
    AbsTopKSAE,
    AbsTopKSAEConfig,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    Transcoder,
    TranscoderConfig,
)
from sae_lens.saes.sae import SAEMetadata

from circuitalg.errors import InvalidArgumentError, LoadError
from circuitalg.features import (
    BatchTopK,
    Dictionary,
    DictionaryKind,
    DictionarySet,
    Hook,
    HookKind,
    JumpReLU,
    Linear,
    ReLU,
    TopK,
    detect_format,
    load_dictionary,
    save_dictionary,
)
from circuitalg.model.tensorfiles import safetensors_index

TOL = {np.float32: 1e-6, np.float64: 1e-12}
DTYPES = (np.float32, np.float64)
D_IN, D_SAE, D_OUT, N = 16, 24, 12, 64
HOOK = "blocks.3.hook_resid_pre"
#: the largest relative error measured per comparison (printed by the last test with ``-s``)
MEASURED: dict[str, float] = {}

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _name(dtype) -> str:
    return np.dtype(dtype).name


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _check(label: str, got, want, dtype) -> None:
    err = _rel(got, want)
    MEASURED[f"{label} [{_name(dtype)}]"] = max(err, MEASURED.get(f"{label} [{_name(dtype)}]", 0.0))
    assert err <= TOL[dtype], f"{label}: relative error {err:.3g} above {TOL[dtype]:g} ({_name(dtype)})"


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name == "threshold":
                r = r.abs() * 1.5 - 0.2  # mostly positive thresholds inside the pre-activations' range, a few negative
            elif name == "r_mag":
                r = r * 0.3
            else:
                r = r * 0.5
            p.copy_(r.to(p.dtype))


def _x(dtype, d: int = D_IN, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N, d)).astype(dtype) * 2


def _reference(sae, x: np.ndarray) -> dict[str, np.ndarray]:
    """sae-lens's own numbers: the pre-activations its activation sees, encode, decode, forward."""
    xt = torch.from_numpy(x)
    if sae.cfg.reshape_activations == "hook_z":  # sae-lens takes attn.hook_z as (..., n_heads, d_head)
        xt = xt.reshape(x.shape[0], 2, -1)
    with torch.no_grad():
        _, cache = sae.run_with_cache(xt)
        pre = cache["hook_sae_acts_pre"]
        if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
            pre = pre * sae.W_dec.norm(dim=-1)
        f = sae.encode(xt)
        flat = (lambda t: t.reshape(x.shape[0], -1).numpy())
        return {"pre": pre.numpy(), "encode": f.numpy(), "decode": flat(sae.decode(f)), "forward": flat(sae(xt))}


def _compare(label: str, d: Dictionary, ref: dict[str, np.ndarray], x: np.ndarray, dtype) -> None:
    assert d.dtype == np.dtype(dtype)
    _check(f"{label} pre", d.pre_activations(x), ref["pre"], dtype)
    f = d.encode(x)
    _check(f"{label} encode", f, ref["encode"], dtype)
    assert np.array_equal(f != 0, ref["encode"] != 0), f"{label}: active sets differ"
    _check(f"{label} decode", d.decode(ref["encode"]), ref["decode"], dtype)
    _check(f"{label} forward", d.forward(x), ref["forward"], dtype)


def _cfg(cls, dtype, **kw):
    meta = SAEMetadata(hook_name=kw.pop("hook_name", HOOK), **kw.pop("meta", {}))
    return cls(d_in=kw.pop("d_in", D_IN), d_sae=D_SAE, dtype=_name(dtype), metadata=meta, **kw)


SAES = {
    "standard": (StandardSAE, StandardSAEConfig, {}),
    "gated": (GatedSAE, GatedSAEConfig, {}),
    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),
    "topk": (TopKSAE, TopKSAEConfig, {"k": 5}),
    "topk_rescaled": (TopKSAE, TopKSAEConfig, {"k": 5, "rescale_acts_by_decoder_norm": True}),
    "abstopk": (AbsTopKSAE, AbsTopKSAEConfig, {"k": 5}),
    "abstopk_rescaled": (AbsTopKSAE, AbsTopKSAEConfig, {"k": 5, "rescale_acts_by_decoder_norm": True}),
}
TRANSCODERS = {
    "transcoder": (Transcoder, TranscoderConfig),
    "skip_transcoder": (SkipTranscoder, SkipTranscoderConfig),
    "jumprelu_transcoder": (JumpReLUTranscoder, JumpReLUTranscoderConfig),
    "jumprelu_skip_transcoder": (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig),
}


def _saved_sae(tmp: Path, arch: str, dtype, pre_shift: bool, seed: int = 0):
    cls, cfg_cls, kw = SAES[arch]
    sae = cls(_cfg(cfg_cls, dtype, apply_b_dec_to_input=pre_shift, **kw))
    _randomize(sae, seed)
    d = tmp / f"{arch}_{_name(dtype)}_{int(pre_shift)}"
    sae.save_model(d)
    return d


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("pre_shift", (True, False), ids=("b_dec_to_input", "no_pre_shift"))
@pytest.mark.parametrize("arch", sorted(SAES))
def test_every_sae_architecture_equals_sae_lens(tmp_path, arch, pre_shift, dtype) -> None:
    path = _saved_sae(tmp_path, arch, dtype, pre_shift)
    assert detect_format(path) == "saelens"
    d = load_dictionary(path, dtype=dtype)
    assert d.kind is DictionaryKind.SAE and d.reads == d.writes == (Hook.parse(HOOK),) and d.pre_shift is pre_shift
    ref = SAE.load_from_disk(path, dtype=_name(dtype))
    x = _x(dtype)
    _compare(f"{arch}{'+pre_shift' if pre_shift else ''}", d, _reference(ref, x), x, dtype)
    # circuitalg -> SAELens files -> sae-lens gives the same numbers, and -> circuitalg exactly the same arrays
    out = save_dictionary(d, tmp_path / "written", format="saelens")
    again = SAE.load_from_disk(out, dtype=_name(dtype))
    _compare(f"{arch} written->sae-lens", d, _reference(again, x), x, dtype)
    _assert_same(d, load_dictionary(out, dtype=dtype), x)


def _assert_same(a: Dictionary, b: Dictionary, x: np.ndarray) -> None:
    assert a.kind is b.kind and a.reads == b.reads and a.writes == b.writes and a.pre_shift == b.pre_shift
    assert a.preprocessing == b.preprocessing and a.dtype == b.dtype
    for u, v in [(a.W_enc[0], b.W_enc[0]), (a.b_enc, b.b_enc), (a.W_dec[0], b.W_dec[0]), (a.b_dec[0], b.b_dec[0])]:
        assert u.dtype == v.dtype and np.array_equal(u, v)
    assert (a.W_skip is None) == (b.W_skip is None) and (a.W_skip is None or np.array_equal(a.W_skip, b.W_skip))
    assert np.array_equal(a.encode(x), b.encode(x)) and np.array_equal(a.forward(x), b.forward(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("arch", sorted(TRANSCODERS))
def test_every_transcoder_equals_sae_lens(tmp_path, arch, dtype) -> None:
    cls, cfg_cls = TRANSCODERS[arch]
    cfg = _cfg(cfg_cls, dtype, d_out=D_OUT, apply_b_dec_to_input=False, hook_name="blocks.2.mlp.hook_in",
               meta={"hook_name_out": "blocks.2.hook_mlp_out"})
    tc = cls(cfg)
    _randomize(tc, 3)
    tc.save_model(tmp_path / arch)
    d = load_dictionary(tmp_path / arch, dtype=dtype)
    skip = "skip" in arch
    assert d.kind is (DictionaryKind.SKIP_TRANSCODER if skip else DictionaryKind.TRANSCODER)
    assert d.reads == (Hook(HookKind.MLP_IN, 2),) and d.writes == (Hook(HookKind.MLP_OUT, 2),)
    assert d.d_in == (D_IN,) and d.d_out == (D_OUT,) and (d.W_skip is not None) == skip
    ref = SAE.load_from_disk(tmp_path / arch, dtype=_name(dtype))
    x = _x(dtype)
    _compare(arch, d, _reference(ref, x), x, dtype)
    out = save_dictionary(d, tmp_path / "written", format="saelens")
    assert type(SAE.load_from_disk(out)) is cls
    _compare(f"{arch} written->sae-lens", d, _reference(SAE.load_from_disk(out, dtype=_name(dtype)), x), x, dtype)
    _assert_same(d, load_dictionary(out, dtype=dtype), x)


TRAINING = {
    "batchtopk": lambda dt: BatchTopKTrainingSAE(_cfg(BatchTopKTrainingSAEConfig, dt, k=4.0)),
    "batchtopk_unrescaled": lambda dt: BatchTopKTrainingSAE(_cfg(BatchTopKTrainingSAEConfig, dt, k=4.0,
                                                                 rescale_acts_by_decoder_norm=False)),
    "matryoshka_batchtopk": lambda dt: MatryoshkaBatchTopKTrainingSAE(
        _cfg(MatryoshkaBatchTopKTrainingSAEConfig, dt, k=4.0, matryoshka_widths=[8, D_SAE])),
    "topk_training": lambda dt: TopKTrainingSAE(_cfg(TopKTrainingSAEConfig, dt, k=5)),
    "jumprelu_training": lambda dt: JumpReLUTrainingSAE(_cfg(JumpReLUTrainingSAEConfig, dt)),
    "gated_training": lambda dt: GatedTrainingSAE(_cfg(GatedTrainingSAEConfig, dt)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("arch", sorted(TRAINING))
def test_training_checkpoints_equal_sae_lens_inference_form(tmp_path, arch, dtype) -> None:
    """A training SAE's ``save_model`` checkpoint reads as the inference SAE sae-lens's own
    ``save_inference_model`` makes of it (BatchTopK and Matryoshka become its JumpReLU)."""
    sae = TRAINING[arch](dtype)
    _randomize(sae, 5)
    if hasattr(sae, "topk_threshold"):
        sae.topk_threshold = torch.tensor(0.7, dtype=torch.float64)
    sae.save_model(tmp_path / "ckpt")
    sae.save_inference_model(tmp_path / "inference")
    d = load_dictionary(tmp_path / "ckpt", dtype=dtype)
    if "batchtopk" in arch:
        assert isinstance(d.activation, BatchTopK) and d.activation.threshold == 0.7
    ref = SAE.load_from_disk(tmp_path / "inference", dtype=_name(dtype))
    x = _x(dtype)
    _compare(arch, d, _reference(ref, x), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_pre_6_configs_equal_sae_lens(tmp_path, dtype) -> None:
    """The old config names (hook_point, activation_fn_str, activation_fn_kwargs, no architecture,
    normalize_activations as a bool) read as sae-lens 6 reads them."""
    x = _x(dtype)
    for arch, act in (("standard", {"activation_fn_str": "relu"}),
                      ("topk", {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}})):
        src = _saved_sae(tmp_path, arch, dtype, True, seed=7)
        old = tmp_path / f"old_{arch}"
        old.mkdir()
        (old / "sae_weights.safetensors").write_bytes((src / "sae_weights.safetensors").read_bytes())
        cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": _name(dtype), "device": "cpu", "model_name": "gpt2-small",
               "hook_point": HOOK, "hook_point_layer": 3, "hook_point_head_index": None, "apply_b_dec_to_input": True,
               "normalize_activations": False, "finetuning_scaling_factor": False,
               "sae_lens_training_version": "3.13.0", "context_size": 128,
               "model_from_pretrained_kwargs": {"center_writing_weights": False, "fold_ln": True}, **act}
        (old / "cfg.json").write_text(json.dumps(cfg))
        d = load_dictionary(old, dtype=dtype)
        assert d.reads == (Hook.parse(HOOK),) and d.preprocessing == frozenset({"fold_ln"})
        assert isinstance(d.activation, ReLU if arch == "standard" else TopK)
        ref = SAE.load_from_disk(old, dtype=_name(dtype))
        assert type(ref) is (StandardSAE if arch == "standard" else TopKSAE)
        _compare(f"pre-6 {arch}", d, _reference(ref, x), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_pre_6_finetuning_scaling_factor(tmp_path, dtype) -> None:
    """sae-lens < 6 decoded ``(f * scaling_factor) @ W_dec + b_dec``; sae-lens 6 cannot load such
    files at all, so this compares against that formula in numpy."""
    src = _saved_sae(tmp_path, "standard", dtype, True, seed=8)
    t = load_file(str(src / "sae_weights.safetensors"))
    s = np.random.default_rng(2).uniform(0.5, 2.0, D_SAE).astype(dtype)
    save_file({**t, "scaling_factor": s}, str(src / "sae_weights.safetensors"))
    cfg = json.loads((src / "cfg.json").read_text())
    cfg.pop("metadata")
    cfg.update(hook_point=HOOK, finetuning_scaling_factor=True)
    (src / "cfg.json").write_text(json.dumps(cfg))
    d = load_dictionary(src, dtype=dtype)
    x = _x(dtype)
    f = np.maximum((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"], 0)
    _check("pre-6 scaling_factor forward", d.forward(x), (f * s) @ t["W_dec"] + t["b_dec"], dtype)
    cfg["finetuning_scaling_factor"] = False
    (src / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match="scaling_factor"):
        load_dictionary(src)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("arch", ("standard", "topk_rescaled", "jumprelu"))
def test_expected_average_only_in_with_the_checkpoint_scaler(tmp_path, arch, dtype) -> None:
    cls, cfg_cls, kw = SAES[arch]
    sae = cls(_cfg(cfg_cls, dtype, normalize_activations="expected_average_only_in", **kw))
    _randomize(sae, 11)
    sae.save_model(tmp_path / arch)
    with pytest.raises(LoadError, match="activation_scaler.json"):
        load_dictionary(tmp_path / arch)
    (tmp_path / arch / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 1.75, "has_whitening": False}))
    d = load_dictionary(tmp_path / arch, dtype=dtype)
    ref = SAE.load_from_disk(tmp_path / arch, dtype=_name(dtype))
    ref.fold_activation_norm_scaling_factor(1.75)
    x = _x(dtype)
    _compare(f"{arch} expected_average_only_in", d, _reference(ref, x), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_old_log_threshold_and_carried_metadata(tmp_path, dtype) -> None:
    """Older JumpReLU training checkpoints store ``log_threshold`` (sae-lens's training class
    exponentiates it on loading); the writer keeps the model and data metadata of a dictionary read
    from SAELens."""
    path = _saved_sae(tmp_path, "jumprelu", dtype, False)
    t = load_file(str(path / "sae_weights.safetensors"))
    t["log_threshold"] = np.log(np.abs(t.pop("threshold")) + 0.1)
    save_file(t, str(path / "sae_weights.safetensors"))
    _edit_cfg(path, lambda c: c["metadata"].update(model_name="gpt2-small", context_size=128))
    d = load_dictionary(path, dtype=dtype)
    sd = {k: torch.from_numpy(v) for k, v in t.items()}
    JumpReLUTrainingSAE.process_state_dict_for_loading(None, sd)  # sae-lens's own conversion
    ref = JumpReLUSAE(_cfg(JumpReLUSAEConfig, dtype, apply_b_dec_to_input=False))
    ref.load_state_dict(sd)
    x = _x(dtype)
    _compare("jumprelu log_threshold", d, _reference(ref, x), x, dtype)
    out = save_dictionary(d, tmp_path / "w", format="saelens")
    meta = json.loads((out / "cfg.json").read_text())["metadata"]
    assert meta["model_name"] == "gpt2-small" and meta["context_size"] == 128 and meta["hook_name"] == HOOK


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("pre_shift", (True, False), ids=("b_dec_to_input", "no_pre_shift"))
@pytest.mark.parametrize("arch", ("standard", "gated", "jumprelu", "topk_rescaled"))
def test_covariance_whitening_with_the_checkpoint_file(tmp_path, arch, pre_shift, dtype) -> None:
    cls, cfg_cls, kw = SAES[arch]
    sae = cls(_cfg(cfg_cls, dtype, normalize_activations="covariance_whitening", apply_b_dec_to_input=pre_shift, **kw))
    _randomize(sae, 13)
    sae.save_model(tmp_path / arch)
    rng = np.random.default_rng(14)
    q, _ = np.linalg.qr(rng.standard_normal((D_IN, D_IN)))
    M = (q * rng.uniform(0.5, 2.0, D_IN)).astype(dtype)
    white = {"mean": rng.standard_normal(D_IN).astype(dtype), "matrix": M, "inverse_matrix": np.linalg.inv(M).astype(dtype)}
    save_file(white, str(tmp_path / arch / "activation_whitening.safetensors"))
    d = load_dictionary(tmp_path / arch, dtype=dtype)
    ref = SAE.load_from_disk(tmp_path / arch, dtype=_name(dtype))
    ref.fold_activation_whitening(*(torch.from_numpy(white[k]) for k in ("mean", "matrix", "inverse_matrix")))
    x = _x(dtype)
    _compare(f"{arch}{'+pre_shift' if pre_shift else ''} covariance_whitening", d, _reference(ref, x), x, dtype)


def test_hook_z_sae_equals_sae_lens_on_flattened_heads(tmp_path) -> None:
    sae = StandardSAE(_cfg(StandardSAEConfig, np.float64, d_in=8, hook_name="blocks.1.attn.hook_z",
                           reshape_activations="hook_z"))
    _randomize(sae, 4)
    sae.save_model(tmp_path / "z")
    d = load_dictionary(tmp_path / "z")
    assert d.reads == (Hook(HookKind.ATTN_Z, 1),)
    x = _x(np.float64, d=8)
    _compare("hook_z", d, _reference(SAE.load_from_disk(tmp_path / "z", dtype="float64"), x), x, np.float64)
    out = save_dictionary(d, tmp_path / "w", format="saelens")
    assert json.loads((out / "cfg.json").read_text())["reshape_activations"] == "hook_z"


def _edit_cfg(path: Path, change) -> None:
    cfg = json.loads((path / "cfg.json").read_text())
    change(cfg)
    (path / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: c.update(normalize_activations="constant_norm_rescale"), "constant_norm_rescale"),
        (lambda c: c.update(normalize_activations="layer_norm"), "layer_norm"),
        (lambda c: c.update(normalize_activations="covariance_whitening"), "activation_whitening.safetensors"),
        (lambda c: c.update(architecture="temporal"), "temporal"),
        (lambda c: c.update(architecture="matching_pursuit"), "matching_pursuit"),
        (lambda c: c.update(architecture="mystery"), "unknown SAELens architecture 'mystery'"),
        (lambda c: c["metadata"].update(hook_head_index=3), "hook_head_index"),
        (lambda c: c["metadata"].update(hook_name="hook_embed"), "metadata.hook_name = 'hook_embed'"),
        (lambda c: c["metadata"].pop("hook_name"), "metadata.hook_name is missing"),
        (lambda c: c.update(d_sae=25), "'W_enc' has shape"),
        (lambda c: c.update(d_in="16"), "d_in must be a positive integer"),
        (lambda c: c.update(dtype="int8"), "dtype 'int8'"),
        (lambda c: c.update(apply_b_dec_to_input="yes"), "apply_b_dec_to_input"),
        (lambda c: (c.pop("metadata"), c.update(hook_point=HOOK, activation_fn_str="tanh-relu")), "tanh-relu"),
    ],
)
def test_what_cannot_be_read_is_refused_naming_the_field(tmp_path, change, match) -> None:
    path = _saved_sae(tmp_path, "standard", np.float32, True)
    _edit_cfg(path, change)
    with pytest.raises(LoadError, match=match.replace("(", r"\(").replace(")", r"\)")) as e:
        load_dictionary(path)
    assert "cfg.json" in str(e.value) or "sae_weights.safetensors" in str(e.value)


def test_a_fold_that_overflows_is_a_load_error(tmp_path) -> None:
    path = _saved_sae(tmp_path, "gated", np.float32, True)
    t = load_file(str(path / "sae_weights.safetensors"))
    t["r_mag"][3] = 1000.0  # exp overflows float32
    save_file(t, str(path / "sae_weights.safetensors"))
    with pytest.raises(LoadError, match="not make a valid dictionary"):
        load_dictionary(path, dtype=np.float32)


def test_hf_hook_names_win_where_they_are_known(tmp_path) -> None:
    """SAELens's Gemma 3 configs name the transcoder input ``blocks.L.hook_mlp_in`` and the Hugging
    Face module ``pre_feedforward_layernorm.output``; the module is what circuitalg believes."""
    path = _saved_sae(tmp_path, "standard", np.float32, True)
    _edit_cfg(path, lambda c: c["metadata"].update(hook_name="blocks.3.hook_resid_post",
                                                   hf_hook_name="model.layers.3.pre_feedforward_layernorm.output"))
    assert load_dictionary(path).reads == (Hook(HookKind.MLP_IN, 3),)
    _edit_cfg(path, lambda c: c["metadata"].update(hf_hook_name="model.layers.3"))  # not one circuitalg maps
    assert load_dictionary(path).reads == (Hook(HookKind.RESID_POST, 3),)


def test_preprocessing_from_model_kwargs(tmp_path) -> None:
    sae = StandardSAE(_cfg(StandardSAEConfig, np.float32, meta={
        "model_from_pretrained_kwargs": {"fold_ln": True, "center_writing_weights": True, "center_unembed": False}}))
    sae.save_model(tmp_path / "p")
    d = load_dictionary(tmp_path / "p")
    assert d.preprocessing == frozenset({"fold_ln", "center_writing_weights"})
    out = save_dictionary(d, tmp_path / "w", format="saelens")
    assert load_dictionary(out).preprocessing == d.preprocessing


def _dict(activation, kind=DictionaryKind.SAE, dtype=np.float64, **kw) -> Dictionary:
    rng = np.random.default_rng(9)
    hook = Hook.parse(HOOK)
    out = kw.pop("writes", hook)
    d_out = D_IN if out == hook else D_OUT
    return Dictionary("d", kind, (hook,), (out,), rng.standard_normal((D_SAE, D_IN)), rng.standard_normal(D_SAE) * 0.3,
                      rng.standard_normal((d_out, D_SAE)), rng.standard_normal(d_out), activation, dtype=dtype, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_writer_batchtopk_and_nonnegative_jumprelu_through_sae_lens(tmp_path, dtype) -> None:
    x = _x(dtype)
    for label, act in (("BatchTopK", BatchTopK(0.6)), ("JumpReLU(relu=False)", JumpReLU(np.linspace(0, 1, D_SAE)))):
        d = _dict(act, dtype=dtype, pre_shift=True)
        out = save_dictionary(d, tmp_path / label, format="saelens")
        ref = SAE.load_from_disk(out, dtype=_name(dtype))
        assert type(ref) is JumpReLUSAE
        _compare(f"written {label}", d, _reference(ref, x), x, dtype)


def test_writer_refuses_what_sae_lens_cannot_hold(tmp_path) -> None:
    mlp_out = Hook(HookKind.MLP_OUT, 3)
    cases = [
        (_dict(Linear()), "Linear"),
        (_dict(TopK(3, relu=False)), "relu=False"),
        (_dict(TopK(3, rank_weights=np.ones(D_SAE))), "rank_weights"),
        (_dict(JumpReLU(np.full(D_SAE, -0.5))), "negative thresholds"),
        (_dict(TopK(3), kind=DictionaryKind.TRANSCODER, writes=mlp_out), "TopK transcoder"),
        (_dict(ReLU(), kind=DictionaryKind.SKIP_TRANSCODER, writes=mlp_out, W_skip=np.zeros((D_OUT, D_IN)),
               b_skip=np.ones(D_OUT)), "b_skip"),
        (_dict(ReLU(), kind=DictionaryKind.CROSSCODER), "crosscoder"),
        (DictionarySet("s", (_dict(ReLU()),)), "one dictionary per directory"),
    ]
    for d, match in cases:
        with pytest.raises(InvalidArgumentError, match=match):
            save_dictionary(d, tmp_path / "x", format="saelens")
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        save_dictionary(_dict(ReLU()), tmp_path / "file", format="saelens")


# -- Gemma Scope ----------------------------------------------------------------------------

@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """sae-lens's Gemma Scope loaders read ``tmp_path/hub/<repo>/<folder>/<file>`` instead of the Hub."""
    root = tmp_path / "hub"

    def download(repo_id, filename, subfolder=None, force_download=False, revision=None, **kw):
        base = root / repo_id.split("/")[-1]
        return str(base / subfolder / filename if subfolder else base / filename)

    def shapes(repo_id, filename):
        entries, _ = safetensors_index(root / repo_id.split("/")[-1] / filename)
        return {k: list(e.shape) for k, e in entries.items()}

    monkeypatch.setattr(sl_loaders, "hf_hub_download", download)
    monkeypatch.setattr(sl_loaders, "get_safetensors_tensor_shapes", shapes)
    return root


def _sae_from(cfg_dict: dict, state_dict: dict, dtype):
    """What ``SAE.from_pretrained`` does with a loader's output."""
    cfg_dict = sl_loaders.handle_config_defaulting(cfg_dict)
    cfg = SAE.get_sae_config_class_for_architecture(cfg_dict["architecture"]).from_dict(cfg_dict)
    sae = SAE.get_sae_class_for_architecture(cfg.architecture())(cfg)
    sae.process_state_dict_for_loading(state_dict)
    sae.load_state_dict(state_dict)
    return sae.to(dtype=getattr(torch, _name(dtype)))


def _gemma_params(rng, d_in, F, d_out, upper: bool) -> dict[str, np.ndarray]:
    w = "W" if upper else "w"
    return {
        f"{w}_enc": (rng.standard_normal((d_in, F)) * 0.5).astype(np.float32),
        f"{w}_dec": (rng.standard_normal((F, d_out)) * 0.5).astype(np.float32),
        "b_enc": (rng.standard_normal(F) * 0.5).astype(np.float32),
        "b_dec": (rng.standard_normal(d_out) * 0.5).astype(np.float32),
        "threshold": np.abs(rng.standard_normal(F) * 1.5).astype(np.float32),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("repo, hook, hook_out", [
    ("gemma-scope-2b-pt-res", Hook(HookKind.RESID_POST, 3), None),
    ("gemma-scope-2b-pt-mlp", Hook(HookKind.MLP_OUT, 3), None),
    ("gemma-scope-2b-pt-att", Hook(HookKind.ATTN_Z, 3), None),
    # circuit-tracer's Gemma 2 config and sae-lens both read these at ln2.hook_normalized (before ln2's weight)
    ("gemma-scope-2b-pt-transcoders", Hook(HookKind.MLP_NORMALIZED, 3), Hook(HookKind.MLP_OUT, 3)),
])
def test_gemma_scope_1_equals_sae_lens_loader(local_hub, repo, hook, hook_out, dtype) -> None:
    folder = "layer_3/width_16k/average_l0_5"
    path = local_hub / repo / folder
    path.mkdir(parents=True)
    np.savez(path / "params.npz", **_gemma_params(np.random.default_rng(12), D_IN, D_SAE, D_IN, upper=True))
    assert detect_format(path) == "gemma_scope"
    d = load_dictionary(path, dtype=dtype)
    assert d.reads == (hook,) and d.writes == (hook_out or hook,) and not d.pre_shift
    sizes = {"d_in": D_IN, "d_sae": D_SAE, "dtype": _name(dtype)}
    if hook_out is None:
        cfg, sd, _ = sl_loaders.gemma_2_sae_huggingface_loader(f"google/{repo}", folder, cfg_overrides=sizes)
    else:
        cfg, sd, _ = sl_loaders.gemma_2_transcoder_huggingface_loader(f"google/{repo}", folder,
                                                                       cfg_overrides={**sizes, "d_out": D_IN})
        assert cfg["hook_name"] == "blocks.3.ln2.hook_normalized"
    ref = _sae_from(cfg, sd, dtype)
    assert Hook.parse(ref.cfg.metadata.hook_name) == hook
    assert d.name == f"{repo.split('-')[-1]}3_16k_l0_5"
    x = _x(dtype)
    _compare(f"gemma scope 1 {repo.split('-')[-1]}", d, _reference(ref, x), x, dtype)
    # the SAELens reading of the same dictionary (its files, read by circuitalg) reads and writes the same hooks
    ref.save_model(local_hub / "saelens_copy")
    via_saelens = load_dictionary(local_hub / "saelens_copy", dtype=dtype)
    assert via_saelens.reads == d.reads and via_saelens.writes == d.writes
    _compare(f"gemma scope 1 {repo.split('-')[-1]} via sae-lens files", via_saelens, _reference(ref, x), x, dtype)


def test_gemma_scope_names_tell_layers_and_widths_apart(tmp_path) -> None:
    params = _gemma_params(np.random.default_rng(3), D_IN, D_SAE, D_IN, upper=True)
    names = set()
    for layer in (1, 2):
        for width in ("16k", "65k"):
            path = tmp_path / "gemma-scope-2b-pt-res" / f"layer_{layer}" / f"width_{width}" / "average_l0_10"
            path.mkdir(parents=True)
            np.savez(path / "params.npz", **params)
            names.add(load_dictionary(path).name)
    assert names == {"res1_16k_l0_10", "res1_65k_l0_10", "res2_16k_l0_10", "res2_65k_l0_10"}


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("folder, hf_in, hf_out, affine", [
    ("resid_post/layer_5_width_16k_l0_small", "model.layers.5.output", None, None),
    ("attn_out/layer_5_width_16k_l0_small", "model.layers.5.self_attn.o_proj.input", None, None),
    ("transcoder/layer_5_width_16k_l0_small", "model.layers.5.pre_feedforward_layernorm.output",
     "model.layers.5.post_feedforward_layernorm.output", False),
    ("transcoder/layer_5_width_16k_l0_small_affine", "model.layers.5.pre_feedforward_layernorm.output",
     "model.layers.5.post_feedforward_layernorm.output", True),
])
def test_gemma_scope_2_equals_sae_lens_loader(local_hub, folder, hf_in, hf_out, affine, dtype) -> None:
    repo = "gemma-scope-2-270m-pt"
    path = local_hub / repo / folder
    path.mkdir(parents=True)
    transcoder = hf_out is not None
    rng = np.random.default_rng(13)
    params = _gemma_params(rng, D_IN, D_SAE, D_OUT if transcoder else D_IN, upper=False)
    if affine:
        params["affine_skip_connection"] = (rng.standard_normal((D_IN, D_OUT)) * 0.3).astype(np.float32)
    save_file(params, str(path / "params.safetensors"))
    cfg = {"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "hf_hook_point_in": hf_in}
    if transcoder:
        cfg.update(hf_hook_point_out=hf_out, affine_connection=affine)
    (path / "config.json").write_text(json.dumps(cfg))
    d = load_dictionary(path, dtype=dtype)
    cfg_dict, sd, _ = sl_loaders.gemma_3_sae_huggingface_loader(f"google/{repo}", folder,
                                                                  cfg_overrides={"dtype": _name(dtype)})
    ref = _sae_from(cfg_dict, sd, dtype)
    # sae-lens names a transcoder's input blocks.L.hook_mlp_in (TransformerLens: ln2's input), but its
    # Hugging Face module is the pre-feedforward norm's output: the MLP input after the norm's weight
    expected_read = Hook(HookKind.MLP_IN, 5) if transcoder else Hook.parse(ref.cfg.metadata.hook_name)
    assert d.reads == (expected_read,)
    if transcoder:
        assert d.writes == (Hook.parse(ref.cfg.metadata.hook_name_out),)
        assert d.kind is (DictionaryKind.SKIP_TRANSCODER if affine else DictionaryKind.TRANSCODER)
        assert type(ref) is (JumpReLUSkipTranscoder if affine else JumpReLUTranscoder)
    x = _x(dtype)
    _compare(f"gemma scope 2 {folder.split('/')[0]}{'+affine' if affine else ''}", d, _reference(ref, x), x, dtype)
    out = save_dictionary(d, local_hub / "written", format="saelens")
    _compare("gemma scope 2 written->sae-lens", d, _reference(SAE.load_from_disk(out, dtype=_name(dtype)), x), x, dtype)
    if affine:  # orientation: the skip term alone is x @ affine_skip_connection
        _check("gemma scope 2 affine skip", d.forward(x) - d.decode(d.encode(x)),
               x.astype(np.float64) @ params["affine_skip_connection"].astype(np.float64), dtype)


def test_gemma_scope_hooks_from_override_and_refusals(tmp_path) -> None:
    bare = tmp_path / "somewhere" / "width_16k"
    bare.mkdir(parents=True)
    np.savez(bare / "params.npz", **_gemma_params(np.random.default_rng(1), D_IN, D_SAE, D_IN, upper=True))
    with pytest.raises(LoadError, match="circuitalg.json"):
        load_dictionary(bare)
    (bare / "circuitalg.json").write_text(json.dumps({"hook_name": "blocks.7.hook_resid_pre"}))
    assert load_dictionary(bare).reads == (Hook(HookKind.RESID_PRE, 7),)
    (bare / "circuitalg.json").write_text(json.dumps({"hook_name": "blocks.7.hook_nonsense"}))
    with pytest.raises(LoadError, match="hook_nonsense"):
        load_dictionary(bare)
    emb = tmp_path / "gemma-scope-2b-pt-res" / "embedding" / "width_4k" / "average_l0_6"
    emb.mkdir(parents=True)
    np.savez(emb / "params.npz", **_gemma_params(np.random.default_rng(1), D_IN, D_SAE, D_IN, upper=True))
    with pytest.raises(LoadError, match="embedding"):
        load_dictionary(emb)


# -- SAELens's release table (pretrained_saes.yaml config_overrides) ---------------------------------

def _release_rows_from_yaml() -> tuple:
    """The rows of sae-lens's installed pretrained_saes.yaml whose overrides change the computation,
    rebuilt independently of circuitalg's copy (see saelens.SAELENS_RELEASES)."""
    import collections
    import re

    import yaml

    table = yaml.safe_load((Path(sae_lens.__file__).parent / "pretrained_saes.yaml").read_text())
    count = collections.Counter((v.get("model"), re.sub(r"_\d+$", "", s["id"])) for v in table.values() for s in v["saes"])
    rows = []
    for rel, v in table.items():
        if v.get("conversion_func"):
            continue
        co = v.get("config_overrides") or {}
        over = {k: co[k] for k in ("model_from_pretrained_kwargs", "normalize_activations") if k in co}
        for sae in v["saes"]:
            if not over and "norm_scaling_factor" not in sae:
                continue
            hook = re.sub(r"_\d+$", "", sae["id"])
            m = re.search(r"_(\d+)(?:_|:|$)", sae.get("path") or "") or re.search(r"_(\d+)$", sae["id"])
            # gpt2-small-res-jb's paths do not say the width: 24576 (32 x 768) for every layer
            d_sae = int(m.group(1)) if m and int(m.group(1)) >= 256 else (24576 if rel == "gpt2-small-res-jb" else None)
            rows.append((rel, sae["id"], v["model"], hook, d_sae, sae.get("neuronpedia"), count[(v.get("model"), hook)] == 1,
                         tuple(sorted((k, tuple(sorted(x.items())) if isinstance(x, dict) else x) for k, x in over.items())),
                         sae.get("norm_scaling_factor")))
    return tuple(rows)


def test_release_table_is_sae_lens_s() -> None:
    from circuitalg.features.formats.saelens import SAELENS_RELEASES

    assert sae_lens.__version__ == "6.54.12"
    assert SAELENS_RELEASES == _release_rows_from_yaml()


def _pre6_gpt2(tmp_path: Path, name: str, d_sae: int, **extra) -> Path:
    """A pre-6 SAELens directory as jbloom's GPT-2 releases hold them (no model_from_pretrained_kwargs)."""
    rng = np.random.default_rng(5)
    d_in = 768
    out = tmp_path / name
    out.mkdir()
    save_file({"W_enc": (rng.standard_normal((d_in, d_sae)) * 0.05).astype(np.float32),
               "b_enc": np.zeros(d_sae, np.float32),
               "W_dec": (rng.standard_normal((d_sae, d_in)) * 0.05).astype(np.float32),
               "b_dec": np.zeros(d_in, np.float32)}, str(out / "sae_weights.safetensors"))
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "model_name": "gpt2-small",
           "hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8, "hook_point_head_index": None,
           "apply_b_dec_to_input": True, "normalize_activations": False, "sae_lens_training_version": None,
           "context_size": 128, **extra}
    (out / "cfg.json").write_text(json.dumps(cfg))
    return out


def test_release_overrides_supply_preprocessing(tmp_path) -> None:
    from sae_lens.loading.pretrained_saes_directory import get_config_overrides

    # gpt2-small-res-jb-feature-splitting's 768-feature SAE: the files say nothing of preprocessing,
    # SAELens's from_pretrained adds center_writing_weights from its table
    d = load_dictionary(_pre6_gpt2(tmp_path, "fs768", 768))
    want = get_config_overrides("gpt2-small-res-jb-feature-splitting", "blocks.8.hook_resid_pre_768")
    assert want["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    assert d.preprocessing == frozenset({"center_writing_weights"})
    assert d.meta["preprocessing_source"] == "saelens_release"
    assert d.meta["saelens_release"]["release"] == "gpt2-small-res-jb-feature-splitting"
    assert d.meta["saelens_release"]["sae_id"] == "blocks.8.hook_resid_pre_768"
    assert d.meta["saelens_release"]["config_overrides"]["model_from_pretrained_kwargs"] == want["model_from_pretrained_kwargs"]
    # the release's neuronpedia id matches too; another release's id does not
    by_id = load_dictionary(_pre6_gpt2(tmp_path, "np_id", 640, neuronpedia_id="gpt2-small/8-res_fs768-jb"))
    assert by_id.meta["preprocessing_source"] == "saelens_release"
    other = load_dictionary(_pre6_gpt2(tmp_path, "other_id", 768, neuronpedia_id="gpt2-small/8-res_sll-ajt"))
    assert other.meta["preprocessing_source"] == "files" and other.preprocessing == frozenset()


def test_unknown_pre_6_config_without_kwargs_is_recorded_not_guessed(tmp_path) -> None:
    d = load_dictionary(_pre6_gpt2(tmp_path, "w640", 640))
    assert d.preprocessing == frozenset()
    assert d.meta["preprocessing_source"] == "files" and "saelens_release" not in d.meta
    assert any("without model_from_pretrained_kwargs" in n for n in d.meta["notes"])
    stated = load_dictionary(_pre6_gpt2(tmp_path, "stated", 640, model_from_pretrained_kwargs={"fold_ln": True}))
    assert stated.preprocessing == frozenset({"fold_ln"}) and stated.meta["preprocessing_source"] == "files"
    assert not any("without model_from_pretrained_kwargs" in n for n in stated.meta["notes"])


def test_release_norm_scaling_factor_and_refusal(tmp_path, monkeypatch) -> None:
    """A row's norm_scaling_factor is folded as from_pretrained folds it; a row's
    constant_norm_rescale is refused as the files' own would be."""
    import circuitalg.features.formats.saelens as fmt

    path = _pre6_gpt2(tmp_path, "scaled", 640, normalize_activations="expected_average_only_in")
    with pytest.raises(LoadError, match="activation_scaler"):
        load_dictionary(path)
    row = ("test-release", "blocks.8.hook_resid_pre", "gpt2-small", "blocks.8.hook_resid_pre", 640, None, True, (), 2.5)
    monkeypatch.setattr(fmt, "SAELENS_RELEASES", fmt.SAELENS_RELEASES + (fmt.ReleaseRow(*row),))
    d = load_dictionary(path)
    t = load_file(str(path / "sae_weights.safetensors"))
    assert np.allclose(d.W_enc[0], t["W_enc"].T.astype(np.float64) * 2.5, rtol=1e-6)
    assert np.allclose(d.W_dec[0], t["W_dec"].T.astype(np.float64) / 2.5, rtol=1e-6)
    sae = SAE.load_from_disk(_pre6_gpt2(tmp_path, "plain", 640), dtype="float32")
    sae.fold_activation_norm_scaling_factor(2.5)
    x = _x(np.float32, d=768)
    _compare("release norm_scaling_factor", load_dictionary(path, dtype=np.float32), _reference(sae, x), x, np.float32)
    rescale = ("test-release-2", "blocks.8.hook_resid_pre", "gpt2-small", "blocks.8.hook_resid_pre", 512, None, True,
               (("normalize_activations", "constant_norm_rescale"),), None)
    monkeypatch.setattr(fmt, "SAELENS_RELEASES", fmt.SAELENS_RELEASES + (fmt.ReleaseRow(*rescale),))
    with pytest.raises(LoadError, match="constant_norm_rescale"):
        load_dictionary(_pre6_gpt2(tmp_path, "rescaled", 512))


@pytest.mark.parametrize("model_name, expected", [
    ("google/gemma-3-270m", HookKind.MLP_IN),  # Gemma Scope 2: pre_feedforward_layernorm.output
    ("gpt2-small", HookKind.RESID_MID),  # TransformerLens's hook_mlp_in: ln2's input
])
def test_gemma_3_transcoder_without_hf_hook_name(tmp_path, model_name, expected) -> None:
    tc = JumpReLUTranscoder(_cfg(JumpReLUTranscoderConfig, np.float32, d_out=D_OUT, apply_b_dec_to_input=False,
                                 hook_name="blocks.4.hook_mlp_in",
                                 meta={"hook_name_out": "blocks.4.hook_mlp_out", "model_name": model_name}))
    _randomize(tc, 4)
    tc.save_model(tmp_path / "tc")
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert cfg["metadata"].get("hf_hook_name") is None
    d = load_dictionary(tmp_path / "tc")
    assert d.reads == (Hook(expected, 4),) and d.writes == (Hook(HookKind.MLP_OUT, 4),)
    # an SAE at the same hook is TransformerLens's hook_mlp_in whatever the model
    sae = JumpReLUSAE(_cfg(JumpReLUSAEConfig, np.float32, hook_name="blocks.4.hook_mlp_in", meta={"model_name": model_name}))
    _randomize(sae, 5)
    sae.save_model(tmp_path / "sae")
    assert load_dictionary(tmp_path / "sae").reads == (Hook(HookKind.RESID_MID, 4),)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_llama_scope_as_sae_lens_from_pretrained(tmp_path, monkeypatch, dtype) -> None:
    """SAELens's llama_scope loader on the files, then from_pretrained's fold of the release's
    norm_scaling_factor (sqrt(d_model) / dataset_average_activation_norm.in)."""
    d, F, avg = D_IN, D_SAE, 1.6
    rng = np.random.default_rng(21)
    folder = tmp_path / "hub" / "Llama3_1-8B-Base-L3R-8x"
    (folder / "checkpoints").mkdir(parents=True)
    hp = {"d_model": d, "d_sae": F, "act_fn": "jumprelu", "jump_relu_threshold": 0.5, "norm_activation": "dataset-wise",
          "dataset_average_activation_norm": {"in": avg, "out": avg},
          "hook_point_in": "blocks.3.hook_resid_post", "hook_point_out": "blocks.3.hook_resid_post"}
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    save_file({"encoder.weight": rng.standard_normal((F, d)).astype(np.float32),
               "encoder.bias": (0.1 * rng.standard_normal(F)).astype(np.float32),
               "decoder.weight": rng.standard_normal((d, F)).astype(np.float32),
               "decoder.bias": (0.1 * rng.standard_normal(d)).astype(np.float32)},
              str(folder / "checkpoints" / "final.safetensors"))
    monkeypatch.setattr(sl_loaders, "hf_hub_download", lambda repo_id, filename, subfolder=None, **kw: str(
        folder.parent / (f"{subfolder}/{filename}" if subfolder else filename)))
    cfg, sd, _ = sl_loaders.llama_scope_sae_huggingface_loader("local/x", folder.name, cfg_overrides={"dtype": _name(dtype)})
    assert cfg["normalize_activations"] == "expected_average_only_in"
    ref = _sae_from(cfg, sd, dtype)
    s = d ** 0.5 / avg
    ref.fold_activation_norm_scaling_factor(s)
    got = load_dictionary(folder, dtype=dtype)
    assert got.meta["norm_scaling_factor"] == pytest.approx(s)
    x = _x(dtype) * avg / d ** 0.5 * 4
    _compare("llama scope as from_pretrained", got, _reference(ref, x), x, dtype)


def test_measured_errors_are_reported() -> None:
    """Prints the largest relative error of each comparison run in this session (``-s``)."""
    if os.environ.get("CIRCUITALG_PRINT_ERRORS"):
        for k, v in sorted(MEASURED.items()):
            print(f"{v:9.2e}  {k}")
    assert sae_lens.__version__.startswith("6.")
