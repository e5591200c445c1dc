"""The shipped SmolLM2 dictionaries (``circuitalg/zoo/dictionaries``): their files are in the formats
they claim (SAELens and circuit-tracer read them and compute what circuitalg computes), and
circuitalg's own forward pass and dictionaries reproduce the held-out figures that
``python -m circuitalg.zoo.train_dictionaries`` recorded in ``stats.json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import circuitalg.features as cf
import circuitalg.zoo
from circuitalg.zoo.train_dictionaries import LAYER, fvu, mlp_input, truncated_model
from model_helpers import smollm2_gguf

ROOT = Path(circuitalg.zoo.__file__).parent / "dictionaries" / "smollm2-135m-instruct-q4_1-L12"
STATS = json.loads((ROOT / "stats.json").read_text())
CT_FILE = ROOT / "transcoder_circuit_tracer" / f"layer_{LAYER}.safetensors"
#: Training measured with circuitalg's float32 forward pass and torch; here circuitalg's forward pass
#: and dictionaries, fewer sequences per batch. They agree to float32 rounding: FVU within 1e-10 and
#: L0 exactly in float32, FVU within 1e-8 in float64 (model and dictionaries). The tolerances leave
#: room for other BLAS builds: 5 activations of the 508 tokens may cross a threshold.
FVU_TOL = 1e-6
L0_TOL = 0.01


def test_files_are_small_and_recorded() -> None:
    for sub in ("sae", "transcoder", "transcoder_circuit_tracer"):
        for f in (ROOT / sub).iterdir():
            assert f.stat().st_size <= 12 * 2**20, f
    assert STATS["layer"] == LAYER
    for what in ("sae", "transcoder"):
        h = STATS["heldout"][what]
        assert 0 < h["fvu"] < 0.6 and 1 <= h["l0"] <= 64
    assert STATS["heldout"]["sae"]["l0"] <= STATS["sae"]["k"]


def test_saelens_configs() -> None:
    cfg = json.loads((ROOT / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["apply_b_dec_to_input"] is True
    assert (cfg["d_in"], cfg["d_sae"], cfg["k"]) == (576, STATS["sae"]["d_sae"], STATS["sae"]["k"])
    assert cfg["metadata"]["hook_name"] == f"blocks.{LAYER}.hook_resid_pre"
    w = load_file(str(ROOT / "sae" / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (576, cfg["d_sae"]) and w["W_dec"].shape == (cfg["d_sae"], 576)
    np.testing.assert_allclose(np.linalg.norm(w["W_dec"], axis=1), 1.0, atol=1e-5)
    cfg = json.loads((ROOT / "transcoder" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_transcoder" and cfg["apply_b_dec_to_input"] is False
    assert cfg["metadata"]["hook_name"] == f"blocks.{LAYER}.mlp.hook_in"
    assert cfg["metadata"]["hook_name_out"] == f"blocks.{LAYER}.hook_mlp_out"


def test_the_two_transcoder_files_hold_the_same_weights() -> None:
    ct = load_file(str(CT_FILE))
    sl = load_file(str(ROOT / "transcoder" / "sae_weights.safetensors"))
    F = STATS["transcoder"]["d_transcoder"]
    assert {k: v.shape for k, v in ct.items()} == {
        "W_enc": (F, 576), "W_dec": (F, 576), "b_enc": (F,), "b_dec": (576,), "activation_function.threshold": (F,)}
    assert all(v.dtype == np.float32 for v in ct.values())
    np.testing.assert_array_equal(ct["W_enc"], sl["W_enc"].T)
    for a, b in (("W_dec", "W_dec"), ("b_enc", "b_enc"), ("b_dec", "b_dec"), ("activation_function.threshold", "threshold")):
        np.testing.assert_array_equal(ct[a], sl[b])


def test_circuitalg_reads_them_as_trained() -> None:
    sae = cf.load_dictionary(ROOT / "sae")
    tc = cf.load_dictionary(ROOT / "transcoder")
    assert sae.kind is cf.DictionaryKind.SAE and sae.pre_shift
    assert sae.reads == (cf.Hook.parse(f"blocks.{LAYER}.hook_resid_pre"),)
    assert isinstance(sae.activation, cf.TopK) and sae.activation.k == STATS["sae"]["k"]
    assert tc.kind is cf.DictionaryKind.TRANSCODER and isinstance(tc.activation, cf.JumpReLU)
    assert tc.reads == (cf.Hook.parse(f"blocks.{LAYER}.mlp.hook_in"),)
    assert tc.writes == (cf.Hook.parse(f"blocks.{LAYER}.hook_mlp_out"),)


def layer_activations(dtype: type) -> dict[str, np.ndarray]:
    """circuitalg's activations at layer 12 on the test slice of the held-out text (the model's
    first 13 blocks, as in training: later blocks cannot change them)."""
    import circuitalg as ca
    from circuitalg.model.forward import run_batch

    model = truncated_model(ca.load(smollm2_gguf(), dtype=dtype), LAYER + 1)
    tokens = load_file(str(ROOT / "heldout_tokens.safetensors"))["tokens"][: STATS["test_slice"]["n_seqs"]]
    _, c = run_batch(model, tokens.astype(np.int64), unembed=False)
    d = model.config.d_model
    return {"resid_pre": c.resid[:, LAYER, 1:].reshape(-1, d),
            "mlp_in": mlp_input(model, c, LAYER)[:, 1:].reshape(-1, d),
            "mlp_out": c.mlp_out[:, LAYER, 1:].reshape(-1, d)}


@pytest.fixture(scope="module")
def heldout_slice() -> dict[str, np.ndarray]:
    """float32 activations, as in training."""
    return layer_activations(np.float32)


def check_figures(acts: dict[str, np.ndarray], dtype: type) -> None:
    want = STATS["test_slice"]
    assert acts["resid_pre"].shape[0] == want["n_tokens"]
    sae = cf.load_dictionary(ROOT / "sae", dtype=dtype)
    f = sae.encode(acts["resid_pre"])
    assert abs(fvu(acts["resid_pre"], sae.decode(f)) - want["sae"]["fvu"]) < FVU_TOL
    assert abs((f > 0).sum(1).mean() - want["sae"]["l0"]) < L0_TOL
    tc = cf.load_dictionary(ROOT / "transcoder", dtype=dtype)
    g = tc.encode(acts["mlp_in"])
    assert abs(fvu(acts["mlp_out"], tc.decode(g)) - want["transcoder"]["fvu"]) < FVU_TOL
    assert abs((g > 0).sum(1).mean() - want["transcoder"]["l0"]) < L0_TOL


def test_heldout_figures_reproduce(heldout_slice: dict[str, np.ndarray]) -> None:
    check_figures(heldout_slice, np.float32)


@pytest.mark.slow
def test_heldout_figures_reproduce_in_float64() -> None:
    check_figures(layer_activations(np.float64), np.float64)


def test_sae_lens_loads_and_runs_them(heldout_slice: dict[str, np.ndarray]) -> None:
    """SAELens itself reads both directories and computes what circuitalg computes."""
    pytest.importorskip("sae_lens")
    import torch
    from sae_lens import SAE

    for sub, hook in (("sae", "resid_pre"), ("transcoder", "mlp_in")):
        ours = cf.load_dictionary(ROOT / sub, dtype=np.float32)
        theirs = SAE.load_from_disk(str(ROOT / sub), device="cpu")
        x = heldout_slice[hook][:64]
        with torch.no_grad():
            f = theirs.encode(torch.from_numpy(x))
            np.testing.assert_allclose(f.numpy(), ours.encode(x), rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(theirs.decode(f).numpy(), ours.decode(f.numpy()), rtol=1e-5, atol=1e-4)


def test_circuit_tracer_file_is_the_same_transcoder(heldout_slice: dict[str, np.ndarray]) -> None:
    """The circuit-tracer per-layer file (what its ``load_relu_transcoder(file, 12)`` reads; its
    tensor names and JumpReLU threshold are pinned against circuit-tracer itself by
    tests/test_formats_reference.py) is detected as circuit-tracer's and is exactly the SAELens copy."""
    assert cf.detect_format(CT_FILE) == "circuit_tracer"
    ct = cf.load_dictionary(CT_FILE, dtype=np.float32)
    ours = cf.load_dictionary(ROOT / "transcoder", dtype=np.float32)
    assert (ct.reads, ct.writes, ct.n_features) == (ours.reads, ours.writes, ours.n_features)
    x = heldout_slice["mlp_in"][:64]
    np.testing.assert_array_equal(ct.encode(x), ours.encode(x))
    np.testing.assert_array_equal(ct.forward(x), ours.forward(x))


def test_features_example_runs() -> None:
    smollm2_gguf()
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "examples" / "05_features.py")],
                         capture_output=True, text=True, check=True).stdout
    assert "held-out FVU" in out and "top 6 logit tokens by value of 5 features of 'sae'" in out
    assert out.count(": exact (") == 2 and "NOT exact" not in out  # both rankings certified
    assert "strongest SAE -> transcoder weights through head L12H" in out
