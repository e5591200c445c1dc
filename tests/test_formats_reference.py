"""Dictionary loaders against the libraries' own implementations.

Every case under tests/fixtures/reference_dictionaries/ was built by scripts/reference_fixtures.py
with the library's own classes and save functions, and holds the library's outputs on fixed
inputs (float32, and float64 where the library ran it). circuitalg must auto-detect the format,
load the files, and reproduce pre-activations, features, decoding and the forward pass to 1e-6
(float32) / 1e-12 (float64) of the outputs' scale. The circuit-tracer writer's files were read
back by circuit-tracer's own loader when the fixtures were built (circuitalg_written.json).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from circuitalg.errors import LoadError
from circuitalg.features import (
    Dictionary,
    DictionaryKind,
    DictionarySet,
    JumpReLU,
    ReLU,
    TopK,
    detect_format,
    load_dictionary,
    save_dictionary,
)
from circuitalg.features import Hook, HookKind
from circuitalg.features.formats.circuit_tracer import hook_from_suffix, parse_simple_yaml

FIXTURES = Path(__file__).parent / "fixtures" / "reference_dictionaries"
CASES = sorted(p.parent for p in FIXTURES.rglob("case.json"))
TOL = {"float32": 1e-6, "float64": 1e-12}


def _info(case: Path) -> dict:
    return json.loads((case / "case.json").read_text())


def _close(got, want, dt: str, what: str) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got - want).max()) / scale
    assert err <= TOL[dt], f"{what} ({dt}): max error {err:.3g} of the scale, tolerance {TOL[dt]:g}"


def _skip_term(m: Dictionary, x: np.ndarray) -> np.ndarray:
    return 0 if m.W_skip is None else x.astype(m.dtype) @ m.W_skip.T


def test_fixtures_are_present_and_small() -> None:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    names = {str(c.relative_to(FIXTURES)) for c in CASES}
    assert names == set(manifest["cases"])
    libraries = {c.parent.name for c in CASES}
    assert libraries == {"circuit_tracer", "sparsify", "dictionary_learning", "lm_saes"}
    assert {c.name for c in CASES if c.parent.name == "lm_saes"} >= {"clt_jumprelu", "clt_topk", "llama_scope_hf"}
    assert "plt_gemma_scope_npz" in {c.name for c in CASES if c.parent.name == "circuit_tracer"}
    assert manifest["versions"]["circuit-tracer"] == "0.5.0"
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 2_000_000


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.parent.name}/{c.name}")
def test_matches_the_library(case: Path) -> None:
    info = _info(case)
    ref = load_file(str(case / "reference.safetensors"))
    path = case / info["path"]
    assert detect_format(path) == info["format"]
    assert info["dtypes"] == ["float32", "float64"]
    for dt in info["dtypes"]:
        d = load_dictionary(path, dtype=np.dtype(dt))
        r = {k.split(".", 1)[1]: v for k, v in ref.items() if k.startswith(dt + ".")}
        structure = info.get("structure")
        if structure == "transcoder_set":
            _check_transcoder_set(d, r, dt, info)
        elif structure == "cross_layer_transcoder":
            _check_clt(d, r, dt, info)
        elif structure == "many":
            assert isinstance(d, DictionarySet)
            assert [m.name for m in d] == info["hookpoints"]
            for m in d:
                x = r[f"{m.name}.x"]
                _close(m.encode(x), r[f"{m.name}.feats"], dt, f"{m.name} encode")
                _close(m.forward(x), r[f"{m.name}.forward"], dt, f"{m.name} forward")
        else:
            assert isinstance(d, Dictionary) and d.dtype == np.dtype(dt)
            x = r["x"]
            _close(d.pre_activations(x), r["pre"], dt, "pre-activations")
            _close(d.encode(x), r["feats"], dt, "encode")
            _close(d.decode(r["feats"]), r["decode"], dt, "decode")
            _close(d.forward(x), r["forward"], dt, "forward")
            assert (d.encode(x) != 0).sum() == (r["feats"] != 0).sum()


def _check_hooks_and_names(d: DictionarySet, info: dict) -> None:
    """Members read the config's hooks, are named ``{set}.L{l}``, and flag a pre-post-norm output."""
    assert [m.name for m in d] == [f"{d.name}.L{i}" for i in range(len(d))]
    assert len({m.name for m in d}) == len(d)
    if "reads" in info:
        assert [m.reads[0] for m in d] == [Hook.parse(h) for h in info["reads"]]
    if "writes" in info:
        suffixes = [h.split(".", 2)[2] for h in info["writes"]]
        assert [m.writes[0] for m in d] == [hook_from_suffix(s, i, "t", "w") for i, s in enumerate(suffixes)]
        assert all(m.meta.get("before_post_norm", False) == (s == "mlp.hook_out") for m, s in zip(d, suffixes))


def _check_transcoder_set(d, r, dt: str, info: dict) -> None:
    assert isinstance(d, DictionarySet) and len(d) == info["n_layers"]
    _check_hooks_and_names(d, info)
    for layer, m in enumerate(d):
        assert m.reads[0].layer == layer and m.writes[0].layer == layer
        x = r["x"][layer]
        if info["activation"] == "topk":
            # the files cannot say TopK: circuit-tracer's own loader reads them as ReLU, and so does circuitalg
            assert isinstance(m.activation, ReLU)
            _close(m.encode(x), r["feats_as_loaded"][layer], dt, f"layer {layer} encode (as loaded)")
            _close(m.forward(x), r["forward_as_loaded"][layer], dt, f"layer {layer} forward (as loaded)")
            # circuit-tracer's TopK activation: the k largest raw values, no ReLU
            top = dataclasses.replace(m, activation=TopK(info["k"], relu=False))
            _close(top.activation(r["pre"][layer]), r["feats"][layer], dt, f"layer {layer} TopK(relu=False)")
            m = top
        _close(m.pre_activations(x), r["pre"][layer], dt, f"layer {layer} pre-activations")
        _close(m.encode(x), r["feats"][layer], dt, f"layer {layer} encode")
        _close(m.decode(r["feats"][layer]) + _skip_term(m, x), r["decode"][layer], dt, f"layer {layer} decode")
        _close(m.forward(x), r["forward"][layer], dt, f"layer {layer} forward")
        assert (m.W_skip is not None) == info["skip"]


def _check_clt(d, r, dt: str, info: dict | None = None) -> None:
    assert isinstance(d, DictionarySet) and d.kind is DictionaryKind.CROSS_LAYER_TRANSCODER
    assert [m.name for m in d] == [f"{d.name}.L{i}" for i in range(len(d))]
    if info is not None and info.get("format") == "circuit_tracer":
        _check_hooks_and_names(d, {**info, "writes": info["writes"]})
    n = len(d)
    x = r["x"]
    decoded = [np.zeros_like(r["decode"][0], dtype=np.float64) for _ in range(n)]
    forward = [np.zeros_like(r["forward"][0], dtype=np.float64) for _ in range(n)]
    for layer, m in enumerate(d):
        assert [h.layer for h in m.writes] == list(range(layer, n))
        _close(m.pre_activations(x[layer]), r["pre"][layer], dt, f"layer {layer} pre-activations")
        _close(m.encode(x[layer]), r["feats"][layer], dt, f"layer {layer} encode")
        outs = m.decode(r["feats"][layer])
        fouts = m.forward(x[layer])
        outs, fouts = (outs, fouts) if isinstance(outs, tuple) else ((outs,), (fouts,))
        for j, (o, fo) in zip(range(layer, n), zip(outs, fouts)):
            decoded[j] += o
            forward[j] += fo
    _close(np.stack(decoded), r["decode"], dt, "decode (summed over source layers)")
    _close(np.stack(forward), r["forward"], dt, "forward (summed over source layers)")


# -- the circuit-tracer writer ----------------------------------------------------------------------
WRITER_CASES = [c for c in CASES if _info(c).get("writer_check")]


def test_writer_cases_exist() -> None:
    assert {c.name for c in WRITER_CASES} == {
        "plt_relu", "plt_relu_skip", "plt_jumprelu", "plt_jumprelu_skip", "clt_relu", "clt_jumprelu"}


@pytest.mark.parametrize("case", WRITER_CASES, ids=lambda c: c.name)
def test_circuit_tracer_reads_what_circuitalg_wrote(case: Path) -> None:
    # circuit-tracer's loader ran on dict_circuitalg/ (circuitalg's writer's output) when the
    # fixtures were built, and matched the library's outputs on the original files
    verdict = json.loads((case / "circuitalg_written.json").read_text())
    assert verdict["ok"] is True
    assert set(verdict["dtypes"]) == {"float32", "float64"}
    # and the committed files are what the writer writes today
    d = load_dictionary(case / "dict", dtype=np.float32)
    written = load_dictionary(case / "dict_circuitalg", dtype=np.float32)
    for a, b in zip(d, written):
        _same(a, b)


def _same(a: Dictionary, b: Dictionary, exact: bool = True) -> None:
    assert a.reads == b.reads and a.writes == b.writes and a.kind == b.kind
    assert type(a.activation) is type(b.activation)
    if isinstance(a.activation, JumpReLU):
        np.testing.assert_array_equal(a.activation.threshold, b.activation.threshold)
    pairs = [(a.b_enc, b.b_enc)] + list(zip(a.W_enc, b.W_enc)) + list(zip(a.W_dec, b.W_dec))
    pairs += list(zip(a.b_dec, b.b_dec))
    if a.W_skip is not None or b.W_skip is not None:
        pairs.append((a.W_skip, b.W_skip))
    for u, v in pairs:
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("case", WRITER_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_circuit_tracer_roundtrip(case: Path, dt: str, tmp_path: Path) -> None:
    d = load_dictionary(case / "dict", dtype=np.dtype(dt))
    out = save_dictionary(d, tmp_path / "tc", format="circuit_tracer")
    assert detect_format(out) == "circuit_tracer"
    back = load_dictionary(out, dtype=np.dtype(dt))
    assert isinstance(back, DictionarySet) and len(back) == len(d)
    for a, b in zip(d, back):
        _same(a, b)
    cfg = parse_simple_yaml((out / "config.yaml").read_text(), "config.yaml")
    assert cfg["model_kind"] == _info(case)["structure"]


def test_writer_folds_pre_shift_and_refuses_what_the_format_cannot_hold(tmp_path: Path) -> None:
    from circuitalg.errors import InvalidArgumentError
    from circuitalg.features import Hook, HookKind

    rng = np.random.default_rng(0)
    d, F = 8, 20
    hook = Hook(HookKind.RESID_POST, 0)
    sae = Dictionary("s", DictionaryKind.SAE, (hook,), (hook,), (rng.normal(size=(F, d)),), rng.normal(size=F),
                     (rng.normal(size=(d, F)),), (rng.normal(size=d),), ReLU(), pre_shift=True)
    save_dictionary(sae, tmp_path / "shift", format="circuit_tracer")
    back = load_dictionary(tmp_path / "shift")[0]
    x = rng.normal(size=(5, d))
    np.testing.assert_allclose(back.forward(x), sae.forward(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(InvalidArgumentError, match="ReLU or JumpReLU"):
        save_dictionary(dataclasses.replace(sae, activation=TopK(3)), tmp_path / "topk", format="circuit_tracer")
    later = dataclasses.replace(sae, reads=(Hook(HookKind.RESID_POST, 2),), writes=(Hook(HookKind.RESID_POST, 2),))
    with pytest.raises(InvalidArgumentError, match="layer 0"):
        save_dictionary(later, tmp_path / "later", format="circuit_tracer")


# -- config.yaml ------------------------------------------------------------------------------------
def test_config_yaml_reader_agrees_with_pyyaml() -> None:
    import yaml  # PyYAML comes with transformers (the reference extra); circuitalg itself does not need it
    text = (
        "# circuit-tracer config\n"
        'model_name: "meta-llama/Llama-3.2-1B"\n'
        "model_kind: transcoder_set\n"
        "feature_input_hook: 'mlp.hook_in'   # comment\n"
        'feature_output_hook: "mlp.hook_out"\n'
        "transcoders:\n"
        '  - "layer_0.safetensors"\n'
        "  - layer_1.safetensors\n"
        "scan: null\n"
        "n: 3\n"
    )
    assert parse_simple_yaml(text, "t") == yaml.safe_load(text)
    for case in WRITER_CASES:
        for sub in ("dict", "dict_circuitalg"):
            t = (case / sub / "config.yaml").read_text()
            assert parse_simple_yaml(t, "t") == yaml.safe_load(t)


def test_transcoders_list_in_config(tmp_path: Path) -> None:
    src = FIXTURES / "circuit_tracer" / "plt_jumprelu" / "dict"
    dst = tmp_path / "listed"
    (dst / "weights").mkdir(parents=True)
    for i in range(3):
        shutil.copy(src / f"layer_{i}.safetensors", dst / "weights" / f"tc{i}.safetensors")
    (dst / "config.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n"
        "transcoders:\n" + "".join(f"  - weights/tc{i}.safetensors\n" for i in range(3)))
    a, b = load_dictionary(src), load_dictionary(dst)
    for u, v in zip(a, b):
        _same(u, v)
    (dst / "config.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n"
        "transcoders:\n  - hf://org/repo/layer_0.safetensors\n")
    with pytest.raises(LoadError, match="remote"):
        load_dictionary(dst)


# -- corrupted files --------------------------------------------------------------------------------
def _copy(rel: str, tmp_path: Path) -> Path:
    dst = tmp_path / "c"
    shutil.copytree(FIXTURES / rel, dst)
    return dst


def _edit_tensors(file: Path, drop: str | None = None, reshape: str | None = None) -> None:
    t = load_file(str(file))
    meta = None
    if drop:
        del t[drop]
    if reshape:
        t[reshape] = np.ascontiguousarray(t[reshape][..., :-1]) if t[reshape].ndim else np.ones(2, t[reshape].dtype)
    save_file(t, str(file), metadata=meta)


def _edit_json(file: Path, **changes) -> None:
    cfg = json.loads(file.read_text())
    for k, v in changes.items():
        target = cfg
        *parents, last = k.split("__")
        for p in parents:
            target = target[p]
        if v is None:
            target.pop(last, None)
        else:
            target[last] = v
    file.write_text(json.dumps(cfg))


CORRUPTIONS = [
    # (fixture dir, edit, match)
    ("circuit_tracer/plt_jumprelu_skip/dict", ("tensors", "layer_1.safetensors", "drop", "W_skip"), "W_skip"),
    ("circuit_tracer/plt_relu/dict", ("tensors", "layer_2.safetensors", "drop", "b_enc"), "b_enc"),
    ("circuit_tracer/plt_relu/dict", ("tensors", "layer_0.safetensors", "reshape", "W_dec"), "W_dec"),
    ("circuit_tracer/plt_jumprelu/dict", ("tensors", "layer_0.safetensors", "reshape", "activation_function.threshold"),
     "activation_function.threshold"),
    ("circuit_tracer/clt_jumprelu/dict", ("tensors", "W_dec_1.safetensors", "reshape", "W_dec_1"), "W_dec_1"),
    ("circuit_tracer/clt_jumprelu/dict", ("tensors", "W_enc_2.safetensors", "drop", "threshold_2"), "threshold_2"),
    ("circuit_tracer/clt_relu/dict", ("remove", "W_dec_0.safetensors"), "W_dec_0"),
    ("circuit_tracer/plt_relu/dict", ("remove", "layer_1.safetensors"), "layers \\[1\\]"),
    ("circuit_tracer/plt_relu/dict", ("yaml", "model_kind: transcoder_set", "model_kind: sae_set"), "model_kind"),
    ("circuit_tracer/plt_relu/dict", ("yaml", "feature_input_hook: mlp.hook_in", "feature_input_hook: mlp.hook_pre"),
     "feature_input_hook"),
    ("circuit_tracer/plt_relu/dict", ("yaml", "feature_output_hook: hook_mlp_out\n", ""), "feature_output_hook"),
    ("sparsify/transcoder_skip/dict/layers.3.mlp", ("tensors", "sae.safetensors", "drop", "W_skip"), "W_skip"),
    ("sparsify/sae_topk/dict/layers.2", ("tensors", "sae.safetensors", "reshape", "encoder.weight"), "encoder.weight"),
    ("sparsify/sae_topk/dict/layers.2", ("json", "cfg.json", {"k": "8"}), "'k'"),
    ("sparsify/sae_topk/dict/layers.2", ("json", "cfg.json", {"activation": "groupmax"}), "'activation'"),
    ("sparsify/sae_topk/dict/layers.2", ("json", "cfg.json", {"d_in": 17}), "encoder.weight"),
    ("dictionary_learning/jumprelu/dict", ("torch", "ae.pt", "drop", "threshold"), "threshold"),
    ("dictionary_learning/topk/dict", ("torch", "ae.pt", "reshape", "decoder.weight"), "decoder.weight"),
    ("dictionary_learning/standard/dict", ("json", "config.json", {"trainer__dict_class": "GatedAutoEncoder"}),
     "trainer.dict_class"),
    ("dictionary_learning/standard/dict", ("json", "config.json", {"trainer__submodule_name": "embed"}),
     "trainer.submodule_name"),
    ("dictionary_learning/topk/dict", ("json", "config.json", {"trainer__k": 9}), "trainer.k"),
    ("lm_saes/sae_jumprelu/dict", ("tensors", "sae_weights.safetensors", "drop",
                                   "activation_function.log_jumprelu_threshold"), "log_jumprelu_threshold"),
    ("lm_saes/sae_relu_inference/dict", ("tensors", "sae_weights.safetensors", "reshape", "W_D"), "W_D"),
    ("lm_saes/transcoder_jumprelu/dict", ("tensors", "sae_weights.safetensors", "drop",
                                          "dataset_average_activation_norm.blocks.2.hook_mlp_out"),
     "dataset_average_activation_norm.blocks.2.hook_mlp_out"),
    ("lm_saes/sae_topk/dict", ("json", "config.json", {"act_fn": "batchtopk"}), "act_fn"),
    ("lm_saes/sae_topk/dict", ("json", "config.json", {"norm_activation": "token-wise"}), "norm_activation"),
    ("lm_saes/sae_topk/dict", ("json", "config.json", {"hook_point_in": "blocks.1.hook_nowhere"}), "hook_point_in"),
    ("lm_saes/clt_jumprelu/dict", ("tensors", "sae_weights.safetensors", "reshape", "W_D.1"), "W_D.1"),
    ("lm_saes/clt_jumprelu/dict", ("tensors", "sae_weights.safetensors", "drop",
                                   "dataset_average_activation_norm.blocks.1.ln2.hook_normalized"),
     "dataset_average_activation_norm.blocks.1.ln2.hook_normalized"),
    ("lm_saes/clt_topk/dict", ("json", "config.json", {"hook_points_out": ["blocks.0.hook_mlp_out"]}), "hook_points_out"),
    ("lm_saes/clt_topk/dict", ("json", "config.json", {"act_fn": "layertopk"}), "act_fn"),
    ("lm_saes/llama_scope_hf/dict", ("json", "hyperparams.json", {"jump_relu_threshold": None}), "jump_relu_threshold"),
    ("lm_saes/llama_scope_hf/dict", ("tensors", "checkpoints/final.safetensors", "reshape", "decoder.weight"),
     "decoder.weight"),
]


@pytest.mark.parametrize("rel,edit,match", CORRUPTIONS, ids=[f"{r}:{e[-1] if e[0] != 'json' else list(e[2])[0]}"
                                                              for r, e, _ in CORRUPTIONS])
def test_corrupted_files_raise_load_error_naming_the_problem(rel: str, edit: tuple, match: str, tmp_path: Path) -> None:
    fmt = detect_format(FIXTURES / rel)
    d = _copy(rel, tmp_path)
    op = edit[0]
    if op == "tensors":
        _, file, how, name = edit
        _edit_tensors(d / file, **{how: name})
    elif op == "torch":
        import torch

        _, file, how, name = edit
        sd = torch.load(d / file, weights_only=True)
        if how == "drop":
            del sd[name]
        else:
            sd[name] = sd[name][..., :-1].clone()
        torch.save(sd, d / file)
    elif op == "remove":
        (d / edit[1]).unlink()
    elif op == "yaml":
        f = d / "config.yaml"
        text = f.read_text()
        assert edit[1] in text
        f.write_text(text.replace(edit[1], edit[2]))
    elif op == "json":
        _edit_json(d / edit[1], **edit[2])
    with pytest.raises(LoadError, match=match):
        load_dictionary(d, format=fmt)


def test_torch_file_without_torch_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(LoadError, match="pip install torch"):
        load_dictionary(FIXTURES / "dictionary_learning" / "standard" / "dict")


def test_a_pickle_is_never_unpickled(tmp_path: Path) -> None:
    import pickle

    d = _copy("dictionary_learning/standard/dict", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    (d / "ae.pt").write_bytes(pickle.dumps({"encoder.weight": Evil()}))
    with pytest.raises(LoadError, match="weights_only"):
        load_dictionary(d)


# -- names and variants -----------------------------------------------------------------------------
def test_sparsify_hookpoints_and_dictionary_learning_submodules() -> None:
    from circuitalg.features import Hook, HookKind
    from circuitalg.features.formats.dictionary_learning import submodule_hook
    from circuitalg.features.formats.sparsify import hookpoint_hooks

    H = Hook
    assert hookpoint_hooks("layers.6", False, "t") == (H(HookKind.RESID_POST, 6),) * 2
    assert hookpoint_hooks("h.0", False, "t") == (H(HookKind.RESID_POST, 0),) * 2
    assert hookpoint_hooks("gpt_neox.layers.2.mlp", False, "t") == (H(HookKind.MLP_OUT, 2),) * 2
    assert hookpoint_hooks("layers.3.mlp", True, "t") == (H(HookKind.MLP_IN, 3), H(HookKind.MLP_OUT, 3))
    assert hookpoint_hooks("layers.3", True, "t") == (H(HookKind.RESID_PRE, 3), H(HookKind.RESID_POST, 3))
    assert hookpoint_hooks("layers.1.self_attn", False, "t") == (H(HookKind.ATTN_OUT, 1),) * 2
    assert hookpoint_hooks("blocks.4.hook_resid_mid", False, "t") == (H(HookKind.RESID_MID, 4),) * 2
    for bad, transcode in (("embed_tokens", False), ("layers.1.self_attn", True), ("layers.x", False)):
        with pytest.raises(LoadError, match="hookpoint"):
            hookpoint_hooks(bad, transcode, "t")
    assert submodule_hook({"submodule_name": "resid_post_layer_3"}, "t") == H(HookKind.RESID_POST, 3)
    assert submodule_hook({"submodule_name": "mlp_out_layer5"}, "t") == H(HookKind.MLP_OUT, 5)
    assert submodule_hook({"submodule_name": "attn_out_layer_0"}, "t") == H(HookKind.ATTN_OUT, 0)
    assert submodule_hook({"submodule_name": None, "layer": 4}, "t") == H(HookKind.RESID_POST, 4)
    assert submodule_hook({"submodule_name": "blocks.2.hook_resid_pre"}, "t") == H(HookKind.RESID_PRE, 2)


def test_circuit_tracer_reads_gemma_scope_2_names(tmp_path: Path) -> None:
    # circuit-tracer's load_gemma_scope_2_transcoder: W_enc = w_enc.T, W_skip = affine_skip_connection.T
    src = FIXTURES / "circuit_tracer" / "plt_jumprelu_skip" / "dict"
    dst = tmp_path / "gs2"
    dst.mkdir()
    shutil.copy(src / "config.yaml", dst / "config.yaml")
    for i in range(3):
        t = load_file(str(src / f"layer_{i}.safetensors"))
        save_file({"w_enc": np.ascontiguousarray(t["W_enc"].T), "w_dec": t["W_dec"], "b_enc": t["b_enc"],
                   "b_dec": t["b_dec"], "threshold": t["activation_function.threshold"],
                   "affine_skip_connection": np.ascontiguousarray(t["W_skip"].T)}, str(dst / f"layer_{i}.safetensors"))
    for a, b in zip(load_dictionary(src), load_dictionary(dst)):
        _same(a, b)


def test_transcoder_set_members_must_agree(tmp_path: Path) -> None:
    d = _copy("circuit_tracer/plt_jumprelu/dict", tmp_path)
    t = load_file(str(d / "layer_1.safetensors"))
    for key in ("W_enc", "W_dec"):
        t[key] = np.ascontiguousarray(t[key][:-2])
    for key in ("b_enc", "activation_function.threshold"):
        t[key] = np.ascontiguousarray(t[key][:-2])
    save_file(t, str(d / "layer_1.safetensors"))
    with pytest.raises(LoadError, match="d_transcoder"):
        load_dictionary(d)


# -- fuzzing: a mutated directory loads or raises a circuitalg error, never anything else -----------
_BAD_VALUES = [-1, 0, 10**9, 2.5, "x", None, [], {}, "NaN", True, float("nan"), 10**400, "blocks.1.hook_resid_post"]
_JSON_CASES = [("sparsify/sae_topk/dict/layers.2", "cfg.json", None),
               ("sparsify/transcoder_skip/dict/layers.3.mlp", "cfg.json", None),
               ("dictionary_learning/topk/dict", "config.json", "trainer"),
               ("dictionary_learning/matryoshka_batch_topk/dict", "config.json", "trainer"),
               ("lm_saes/sae_jumprelu/dict", "config.json", None), ("lm_saes/clt_jumprelu/dict", "config.json", None),
               ("lm_saes/llama_scope_hf/dict", "hyperparams.json", None)]
_BYTE_CASES = [("circuit_tracer/plt_jumprelu_skip/dict", "layer_1.safetensors"),
               ("circuit_tracer/clt_jumprelu/dict", "W_dec_1.safetensors"),
               ("sparsify/transcoder_skip/dict/layers.3.mlp", "sae.safetensors"),
               ("dictionary_learning/jumprelu/dict", "ae.pt"),
               ("lm_saes/clt_topk/dict", "sae_weights.safetensors"),
               ("lm_saes/llama_scope_hf/dict", "checkpoints/final.safetensors")]


def _loads_or_refuses(d: Path) -> None:
    from circuitalg.errors import CircuitAlgError

    try:
        load_dictionary(d)
    except CircuitAlgError:
        pass


def test_fuzzed_configs_and_files_raise_only_circuitalg_errors(tmp_path: Path) -> None:
    import random

    rng = random.Random(20261206)
    for i in range(120):
        rel, name, sub = _JSON_CASES[i % len(_JSON_CASES)]
        d = tmp_path / f"j{i}"
        shutil.copytree(FIXTURES / rel, d)
        cfg = json.loads((d / name).read_text())
        target = cfg[sub] if sub else cfg
        key = rng.choice(sorted(target))
        if rng.random() < 0.2:
            del target[key]
        else:
            target[key] = rng.choice(_BAD_VALUES)
        (d / name).write_text(json.dumps(cfg))
        _loads_or_refuses(d)
    for i in range(120):
        rel, name = _BYTE_CASES[i % len(_BYTE_CASES)]
        d = tmp_path / f"b{i}"
        shutil.copytree(FIXTURES / rel, d)
        data = bytearray((d / name).read_bytes())
        kind = i // len(_BYTE_CASES) % 3
        if kind == 0:
            data = data[: rng.randrange(len(data))]
        elif kind == 1:
            for _ in range(4):
                j = rng.randrange(min(len(data), 300))
                data[j] ^= 1 << rng.randrange(8)
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        (d / name).write_bytes(bytes(data))
        _loads_or_refuses(d)
    for i, line in enumerate(["model_kind:", "  model_kind: x", "- x", "model_kind: [1, 2]", "scan: 'open", "::", ""]):
        d = tmp_path / f"y{i}"
        shutil.copytree(FIXTURES / "circuit_tracer" / "plt_relu" / "dict", d)
        lines = (d / "config.yaml").read_text().splitlines()
        lines[i % len(lines)] = line
        (d / "config.yaml").write_text("\n".join(lines))
        _loads_or_refuses(d)


def test_module_outputs_are_flagged_and_trainer_folders_named_by_hook(tmp_path: Path) -> None:
    """sparsify's ``layers.N.mlp`` / ``self_attn`` and dictionary_learning's ``mlp_out`` /
    ``attn_out`` are module outputs, before any post-norm; ``trainer_N`` folders repeat across
    layers, so their dictionaries are named after the hook."""
    src = FIXTURES / "sparsify" / "sae_topk" / "dict" / "layers.2"
    for hookpoint, flagged in (("layers.2.mlp", True), ("layers.2.self_attn", True), ("layers.2", False)):
        dst = tmp_path / "sp" / hookpoint
        shutil.copytree(src, dst)
        d = load_dictionary(dst)
        assert d.name == hookpoint and d.meta.get("before_post_norm", False) is flagged
    names = set()
    for sub, flagged in (("resid_post_layer_3", False), ("mlp_out_layer_3", True), ("mlp_out_layer_4", True)):
        dst = tmp_path / "dl" / sub / "trainer_0"
        shutil.copytree(FIXTURES / "dictionary_learning" / "standard" / "dict", dst)
        cfg = json.loads((dst / "config.json").read_text())
        cfg["trainer"]["submodule_name"] = sub
        (dst / "config.json").write_text(json.dumps(cfg))
        d = load_dictionary(dst)
        assert d.name == f"{d.reads[0].hook_name}.trainer_0"
        assert d.meta.get("before_post_norm", False) is flagged
        names.add(d.name)
    assert len(names) == 3


def test_circuit_tracer_lists_gemma_scope_npz_at_the_config_hooks(tmp_path: Path) -> None:
    src = FIXTURES / "circuit_tracer" / "plt_gemma_scope_npz" / "dict"
    d = load_dictionary(src)
    assert [m.reads[0] for m in d] == [Hook(HookKind.MLP_NORMALIZED, i) for i in range(3)]
    assert [m.name for m in d] == ["dict.L0", "dict.L1", "dict.L2"]
    assert all(isinstance(m.activation, JumpReLU) and not m.activation.relu for m in d)
    dst = tmp_path / "bad"
    shutil.copytree(src, dst)
    with np.load(dst / "layer_1.npz") as z:
        arrays = dict(z)
    np.savez(dst / "layer_1.npz", **arrays, log_threshold=arrays["threshold"])
    with pytest.raises(LoadError, match="log_threshold"):
        load_dictionary(dst)
