"""Loaders reject bad checkpoints with a LoadError/ConfigError that names the file and the tensor."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
from model_helpers import random_model

import circuitalg as ca


@pytest.fixture()
def saved(tmp_path):
    model = random_model(normalization="LN", d_mlp=24)
    return model, ca.save(model, tmp_path / "m.safetensors")


def _tensors(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def _resave(tensors: dict, model: ca.Transformer, path):
    """Write (mutated) tensors back in circuitalg's format, with the model's config."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata={"circuitalg_config": model.config.to_json()})
    return path


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ca.LoadError, match="no such file"):
        ca.load(tmp_path / "nope.safetensors")


def test_unknown_suffix(tmp_path) -> None:
    (tmp_path / "m.txt").write_text("hello")
    with pytest.raises(ca.LoadError, match=r"unknown checkpoint suffix '\.txt'"):
        ca.load(tmp_path / "m.txt")


def test_truncated_safetensors(saved, tmp_path) -> None:
    _, path = saved
    data = path.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ca.LoadError, match=str(bad.name)):
            ca.load(bad)


def test_hostile_header_is_refused_before_allocating(tmp_path) -> None:
    """A header claiming a 10^12-element tensor in a tiny file is refused from the header alone."""
    header = json.dumps({"W_E": {"dtype": "F64", "shape": [10**6, 10**6], "data_offsets": [0, 8 * 10**12]}}).encode()
    path = tmp_path / "evil.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    with pytest.raises(ca.LoadError, match=r"tensor 'W_E'.*truncated or corrupt"):
        ca.load(path)
    path.write_bytes(struct.pack("<Q", 10**15) + b"{}")
    with pytest.raises(ca.LoadError, match="header claims"):
        ca.load(path)


def test_missing_tensor_is_named(saved, tmp_path) -> None:
    model, path = saved
    tensors = _tensors(path)
    del tensors["blocks.1.attn.W_K"]
    bad = _resave(tensors, model, tmp_path / "missing.safetensors")
    with pytest.raises(ca.LoadError, match=r"missing parameters \['blocks.1.attn.W_K'\]"):
        ca.load(bad)


def test_wrong_shape_is_named(saved, tmp_path) -> None:
    model, path = saved
    tensors = _tensors(path)
    tensors["blocks.0.mlp.W_in"] = tensors["blocks.0.mlp.W_in"].T.copy()
    bad = _resave(tensors, model, tmp_path / "shape.safetensors")
    with pytest.raises(ca.LoadError, match=r"tensor 'blocks.0.mlp.W_in' has shape \(16, 24\), expected \(24, 16\)"):
        ca.load(bad)


def test_nan_is_named(saved, tmp_path) -> None:
    model, path = saved
    tensors = _tensors(path)
    tensors["W_U"][3, 4] = np.nan
    bad = _resave(tensors, model, tmp_path / "nan.safetensors")
    with pytest.raises(ca.LoadError, match=r"nan.safetensors: tensor 'W_U': contains 1 NaN"):
        ca.load(bad)


def test_unknown_layout(tmp_path) -> None:
    from safetensors.numpy import save_file

    save_file({"encoder.layer.0.weight": np.ones((2, 2))}, str(tmp_path / "bert.safetensors"))
    with pytest.raises(ca.LoadError, match="unknown checkpoint layout"):
        ca.load(tmp_path / "bert.safetensors")


def test_extra_tensor_is_refused(tmp_path) -> None:
    model = random_model(normalization="LN")
    sd = ca.to_transformer_lens(model.params, model.config)
    sd["blocks.0.attn.rotary_sin"] = np.ones((4, 4))
    with pytest.raises(ca.LoadError, match="unexpected tensors"):
        ca.Transformer.from_state_dict(sd)


def test_own_format_without_config(tmp_path) -> None:
    from safetensors.numpy import save_file

    model = random_model()
    save_file({k: np.ascontiguousarray(v) for k, v in model.params.items()}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ca.ConfigError, match="without a config"):
        ca.load(tmp_path / "bare.safetensors")
    loaded = ca.load(tmp_path / "bare.safetensors", config=model.config)
    assert loaded.config == model.config


def test_absurd_config(saved, tmp_path) -> None:
    from safetensors.numpy import load_file, save_file

    model, path = saved
    cfg = model.config.to_dict() | {"n_heads": -3}
    save_file(load_file(str(path)), str(tmp_path / "cfg.safetensors"), metadata={"circuitalg_config": json.dumps(cfg)})
    with pytest.raises(ca.ConfigError, match=r"cfg.safetensors.*n_heads=-3 is outside \[1, 10_000_000\]"):
        ca.load(tmp_path / "cfg.safetensors")


class _Boom:
    """Unpickling this would create a file; the loader must never do it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_bearing_npz_is_refused_without_executing(tmp_path) -> None:
    marker = tmp_path / "pwned"
    arr = np.empty(1, dtype=object)
    arr[0] = _Boom(str(marker))
    np.savez(tmp_path / "evil.npz", W_E=arr)
    with pytest.raises(ca.LoadError, match="never unpickles"):
        ca.load(tmp_path / "evil.npz")
    assert not marker.exists()


def test_pickle_file_with_torch_suffix_is_refused_without_executing(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"W_E": _Boom(str(marker))}))
    with pytest.raises(ca.LoadError, match="evil.pt"):
        ca.load(path)
    assert not marker.exists()


def test_corrupt_npz(tmp_path) -> None:
    model = random_model()
    path = ca.save(model, tmp_path / "m.npz")
    data = bytearray(path.read_bytes())
    (tmp_path / "trunc.npz").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ca.LoadError, match="trunc.npz"):
        ca.load(tmp_path / "trunc.npz")
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as zf:  # a header that claims more than the member holds
        header = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }".ljust(117) + "\n"
        zf.writestr("W_E.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 80)
    with pytest.raises(ca.LoadError, match=r"array 'W_E': header shape \(100000, 100000\)"):
        ca.load(tmp_path / "lie.npz")


def test_hf_directory_needs_config_and_checkpoint(tmp_path) -> None:
    with pytest.raises(ca.LoadError, match="no checkpoint found"):
        ca.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    from safetensors.numpy import save_file

    save_file({"transformer.wte.weight": np.ones((5, 4))}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ca.ConfigError, match="model_type='llama'"):
        ca.load(tmp_path)


def test_hf_config_without_model_type_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 8}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises((ca.ConfigError, ca.LoadError)):
        ca.load(tmp_path)
    from circuitalg.model.hf import hf_config

    with pytest.raises(ca.ConfigError, match="has no model_type"):
        hf_config({"n_layer": 1, "n_head": 2, "n_embd": 8}, "config.json")
