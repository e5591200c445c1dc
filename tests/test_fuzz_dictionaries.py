"""Fuzzing the dictionary loaders: mutated SAELens and Gemma Scope directories either load as a
valid dictionary or raise LoadError naming the directory; never another exception.

Mutations (from a fixed seed, like ``test_fuzz_loading.py``): truncated, bit-flipped or extended
weight files, safetensors headers with wrong dtypes, shapes, offsets, missing or extra tensors,
NaN/infinite values, and configs with bad values, missing fields, unknown architectures or
invalid JSON. The CI budget is ``CIRCUITALG_FUZZ_DICT_CASES`` (default 1,200).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, SkipTranscoder, SkipTranscoderConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from circuitalg.errors import LoadError
from circuitalg.features import Dictionary, load_dictionary

FUZZ_CASES = int(os.environ.get("CIRCUITALG_FUZZ_DICT_CASES", "1200"))

WEIGHT_KINDS = ("truncate", "flip", "flip_header", "append", "dtype", "shape", "offsets", "missing_key", "extra_key",
                "nan")
CONFIG_KINDS = ("config_value", "config_drop", "architecture", "bad_json")
KINDS = WEIGHT_KINDS + CONFIG_KINDS
BAD_VALUES = [-1, 0, 10**9, 2.5, "x", None, [], {}, "NaN", True, float("nan"), 10**400]
ARCHS = ["standard", "gated", "jumprelu", "topk", "abstopk", "batchtopk", "transcoder", "skip_transcoder",
         "jumprelu_transcoder", "temporal", "matching_pursuit", "", "jump_relu", "clt", "Standard"]


def _randomize(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype).abs() if p.ndim == 1 else torch.randn(p.shape, generator=g, dtype=p.dtype))


def _bases(tmp: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (directory, weights file, config file)."""
    out = {}
    meta = SAEMetadata(hook_name="blocks.1.hook_resid_post", model_from_pretrained_kwargs={"fold_ln": True})
    for name, sae in [
        ("jumprelu", JumpReLUSAE(JumpReLUSAEConfig(d_in=6, d_sae=10, metadata=meta))),
        ("topk", TopKSAE(TopKSAEConfig(d_in=6, d_sae=10, k=3, rescale_acts_by_decoder_norm=True, metadata=meta))),
        ("skip", SkipTranscoder(SkipTranscoderConfig(d_in=6, d_sae=10, d_out=5, apply_b_dec_to_input=False,
                                                     metadata=SAEMetadata(hook_name="blocks.0.hook_mlp_in",
                                                                          hook_name_out="blocks.0.hook_mlp_out")))),
    ]:
        _randomize(sae)
        sae.save_model(tmp / name)
        out[f"saelens-{name}"] = (tmp / name, "sae_weights.safetensors", "cfg.json")
    rng = np.random.default_rng(0)
    gs1 = tmp / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_5"
    gs1.mkdir(parents=True)
    params = {"W_enc": rng.standard_normal((6, 10)), "W_dec": rng.standard_normal((10, 6)), "b_enc": rng.standard_normal(10),
              "b_dec": rng.standard_normal(6), "threshold": np.abs(rng.standard_normal(10))}
    np.savez(gs1 / "params.npz", **{k: v.astype(np.float32) for k, v in params.items()})
    (gs1 / "circuitalg.json").write_text(json.dumps({"hook_name": "blocks.1.hook_resid_post"}))
    out["gemma1"] = (gs1, "params.npz", "circuitalg.json")
    gs2 = tmp / "gemma-scope-2-270m-pt" / "transcoder" / "layer_2_width_16k_l0_small_affine"
    gs2.mkdir(parents=True)
    save_file({"w_enc": params["W_enc"].astype(np.float32), "w_dec": rng.standard_normal((10, 5)).astype(np.float32),
               "b_enc": params["b_enc"].astype(np.float32), "b_dec": rng.standard_normal(5).astype(np.float32),
               "threshold": params["threshold"].astype(np.float32),
               "affine_skip_connection": rng.standard_normal((6, 5)).astype(np.float32)}, str(gs2 / "params.safetensors"))
    (gs2 / "config.json").write_text(json.dumps({
        "architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "affine_connection": True,
        "hf_hook_point_in": "model.layers.2.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.2.post_feedforward_layernorm.output"}))
    out["gemma2"] = (gs2, "params.safetensors", "config.json")
    return out


def _safetensors_parts(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _safetensors_bytes(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _mutate_weights(kind: str, data: bytes, rng: np.random.Generator, suffix: str) -> bytes:
    if kind == "truncate":
        return data[: int(rng.integers(0, len(data)))]
    if kind == "flip":
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(b)
    if kind == "flip_header":
        b = bytearray(data)
        b[int(rng.integers(0, min(len(b), 400)))] = int(rng.integers(0, 256))
        return bytes(b)
    if kind == "append":
        return data + rng.bytes(int(rng.integers(1, 64)))
    if suffix != ".safetensors":
        return data[: len(data) // 2]  # header-level mutations below are safetensors-specific
    header, body = _safetensors_parts(data)
    names = sorted(k for k in header if k != "__metadata__")
    name = names[int(rng.integers(len(names)))]
    entry = header[name]
    if kind == "dtype":
        entry["dtype"] = str(rng.choice(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8", ""]))
    elif kind == "shape":
        shape = list(entry["shape"])
        choice = int(rng.integers(4))
        if choice == 0 and shape:
            shape[int(rng.integers(len(shape)))] += int(rng.integers(-2, 3))
        elif choice == 1:
            shape = shape[::-1]
        elif choice == 2:
            shape = shape + [1]
        else:
            shape = [10**12, 10**6]
        entry["shape"] = shape
    elif kind == "offsets":
        a, b = entry["data_offsets"]
        entry["data_offsets"] = [a + int(rng.integers(-16, 17)), b + int(rng.integers(-16, 17))]
    elif kind == "missing_key":
        del header[name]
    elif kind == "extra_key":
        header["W_extra"] = dict(entry)
    elif kind == "nan":
        start = entry["data_offsets"][0]
        itemsize = {"F64": 8, "F32": 4}.get(entry["dtype"], 0)
        b = bytearray(body)
        bad = np.array([rng.choice([np.nan, np.inf, -np.inf])], dtype="<f8" if itemsize == 8 else "<f4")
        b[start:start + itemsize] = bad.tobytes()
        body = bytes(b)
    return _safetensors_bytes(header, body)


def _nan_npz(path: Path, rng: np.random.Generator) -> None:
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    key = sorted(arrays)[int(rng.integers(len(arrays)))]
    arrays[key].reshape(-1)[int(rng.integers(arrays[key].size))] = rng.choice([np.nan, np.inf, -np.inf])
    np.savez(path, **arrays)


def _mutate_config(kind: str, text: str, rng: np.random.Generator) -> str:
    if kind == "bad_json":
        return text[: int(rng.integers(0, max(len(text) - 1, 1)))]
    cfg = json.loads(text)
    target = cfg["metadata"] if "metadata" in cfg and rng.random() < 0.4 else cfg
    keys = sorted(target)
    if kind == "architecture":
        cfg["architecture"] = str(rng.choice(ARCHS))
    elif kind == "config_drop" and keys:
        del target[keys[int(rng.integers(len(keys)))]]
    elif keys:
        target[keys[int(rng.integers(len(keys)))]] = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))]
    return json.dumps(cfg)


def _valid(d) -> bool:
    assert isinstance(d, Dictionary)
    arrays = [*d.W_enc, d.b_enc, *d.W_dec, *d.b_dec] + ([d.W_skip] if d.W_skip is not None else [])
    return all(np.all(np.isfinite(a)) for a in arrays)


def test_fuzzed_dictionaries_load_or_fail_cleanly(tmp_path) -> None:
    bases = _bases(tmp_path / "bases")
    originals = {name: load_dictionary(d) for name, (d, _, _) in bases.items()}
    rng = np.random.default_rng(20261206)
    outcomes: collections.Counter = collections.Counter()
    unexpected = []
    names = sorted(bases)
    for i in range(FUZZ_CASES):
        base = names[i % len(names)]
        src, weights, config = bases[base]
        kind = KINDS[int(rng.integers(len(KINDS)))]
        # keep the Gemma Scope folder names (they carry the hook) by copying beside the original
        case = src.parent / f"{src.name}-case{i}"
        shutil.copytree(src, case)
        if kind in WEIGHT_KINDS:
            f = case / weights
            if kind == "nan" and f.suffix == ".npz":
                _nan_npz(f, rng)
            else:
                f.write_bytes(_mutate_weights(kind, f.read_bytes(), rng, f.suffix))
        else:
            f = case / config
            f.write_text(_mutate_config(kind, f.read_text(), rng))
        try:
            d = load_dictionary(case)
        except LoadError as e:
            if case.name not in str(e):
                unexpected.append((i, base, kind, f"message does not name the directory: {e}"))
            outcomes[(kind, "LoadError")] += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            unexpected.append((i, base, kind, f"{type(e).__name__}: {e}"))
        else:
            assert _valid(d), (i, base, kind)
            o = originals[base]
            same = all(np.array_equal(a, b) for a, b in zip([*d.W_enc, d.b_enc, *d.W_dec, *d.b_dec],
                                                            [*o.W_enc, o.b_enc, *o.W_dec, *o.b_dec]))
            outcomes[(kind, "loaded-identical" if same else "loaded-changed")] += 1
        shutil.rmtree(case)
    if os.environ.get("CIRCUITALG_FUZZ_REPORT"):
        for (kind, outcome), n in sorted(outcomes.items()):
            print(f"FUZZ {kind} {outcome} {n}")
    assert not unexpected, unexpected[:10]
    rejected = {k for (k, outcome) in outcomes if outcome == "LoadError"}
    assert rejected == set(KINDS), sorted(set(KINDS) - rejected)
