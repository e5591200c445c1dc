"""Fuzzing the loaders: mutated checkpoints either load as a correct model or raise LoadError /
ConfigError naming the file; never another exception, a hang or a crash.

The CI budget is ``FUZZ_CASES`` (default 2,400) mutated files across safetensors (circuitalg and
TransformerLens layouts), npz and Hugging Face GPT-2 directories, generated from a fixed seed;
a longer run by hand: ``CIRCUITALG_FUZZ_CASES=20000 python -m pytest -q tests/test_fuzz_loading.py``.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from model_helpers import random_model

import circuitalg as ca

FUZZ_CASES = int(os.environ.get("CIRCUITALG_FUZZ_CASES", "2400"))
EXPECTED = (ca.LoadError, ca.ConfigError)


def _safetensors_parts(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _safetensors_bytes(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _bases(tmp: Path) -> dict[str, Path]:
    m = random_model(n_layers=2, n_heads=2, d_model=8, d_head=3, d_vocab=7, n_ctx=5, d_mlp=6, normalization="LN")
    bases = {"own.safetensors": ca.save(m, tmp / "own.safetensors"), "own.npz": ca.save(m, tmp / "own.npz")}
    from safetensors.numpy import save_file

    tl = ca.to_transformer_lens(m.params, m.config)
    save_file({k: np.ascontiguousarray(v) for k, v in tl.items()}, str(tmp / "tl.safetensors"),
              metadata={"circuitalg_config": m.config.to_json()})
    bases["tl.safetensors"] = tmp / "tl.safetensors"
    return bases


def _mutate(kind: str, data: bytes, rng: np.random.Generator, suffix: str) -> bytes:
    """One mutation of a file's bytes."""
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
        i = int(rng.integers(0, min(len(b), 600)))
        b[i] = int(rng.integers(0, 256))
        return bytes(b)
    if kind == "append":
        return data + rng.bytes(int(rng.integers(1, 64)))
    if suffix != ".safetensors":
        return data[: len(data) // 2]  # header-level mutations below are safetensors-specific
    header, body = _safetensors_parts(data)
    names = [k for k in header if k != "__metadata__"]
    name = names[int(rng.integers(len(names)))]
    entry = header[name]
    if kind == "dtype":
        entry["dtype"] = str(rng.choice(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8", "complex", ""]))
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
        header["blocks.9.attn.W_Z"] = dict(entry)
    elif kind == "nan":
        start = entry["data_offsets"][0]
        itemsize = {"F64": 8, "F32": 4}.get(entry["dtype"], 0)
        if itemsize:
            b = bytearray(body)
            bad = np.array([rng.choice([np.nan, np.inf, -np.inf])], dtype="<f8" if itemsize == 8 else "<f4")
            b[start:start + itemsize] = bad.tobytes()
            body = bytes(b)
    elif kind == "config":
        meta = header.setdefault("__metadata__", {})
        cfg = json.loads(meta.get("circuitalg_config", "{}") or "{}")
        key = str(rng.choice(["n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx", "d_mlp", "attn_scale",
                              "normalization", "act_fn", "ln_eps"]))
        cfg[key] = [-1, 0, 10**9, 2.5, "x", None, [], "NaN"][int(rng.integers(8))]
        meta["circuitalg_config"] = json.dumps(cfg)
    elif kind == "bad_json":
        raw = json.dumps(header).encode()[:-3]
        return struct.pack("<Q", len(raw)) + raw + body
    return _safetensors_bytes(header, body)


KINDS = ("truncate", "flip", "flip_header", "append", "dtype", "shape", "offsets", "missing_key", "extra_key",
         "nan", "config", "bad_json")


def test_fuzzed_checkpoints_load_or_fail_cleanly(tmp_path) -> None:
    bases = _bases(tmp_path)
    originals = {name: ca.load(path) for name, path in bases.items()}
    rng = np.random.default_rng(20261124)
    outcomes: collections.Counter = collections.Counter()
    unexpected = []
    work = tmp_path / "work"
    work.mkdir()
    names = sorted(bases)
    for i in range(FUZZ_CASES):
        base = names[i % len(names)]
        kind = KINDS[int(rng.integers(len(KINDS)))]
        path = work / f"case{i}{bases[base].suffix}"
        path.write_bytes(_mutate(kind, bases[base].read_bytes(), rng, bases[base].suffix))
        try:
            m = ca.load(path)
        except EXPECTED as e:
            if path.name not in str(e):
                unexpected.append((i, base, kind, f"message does not name the file: {e}"))
            outcomes[(kind, type(e).__name__)] += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            unexpected.append((i, base, kind, f"{type(e).__name__}: {e}"))
        else:
            # a file that still loads must be a correct model: finite, and the same as the original
            # wherever the mutation left the tensors alone
            assert all(np.all(np.isfinite(v)) for v in m.params.values())
            orig = originals[base]
            same = m.config == orig.config and all(np.array_equal(m.params[k], orig.params[k]) for k in orig.params)
            outcomes[(kind, "loaded-identical" if same else "loaded-changed")] += 1
        path.unlink()
    if os.environ.get("CIRCUITALG_FUZZ_REPORT"):
        for (kind, outcome), n in sorted(outcomes.items()):
            print(f"FUZZ {kind} {outcome} {n}")
    assert not unexpected, unexpected[:10]
    assert sum(outcomes.values()) >= min(FUZZ_CASES, 2000)
    # every mutation class was exercised and rejected at least once
    rejected = {k for (k, outcome) in outcomes if outcome in ("LoadError", "ConfigError")}
    assert rejected == set(KINDS), sorted(set(KINDS) - rejected)


def test_fuzzed_hf_directories(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=8, vocab_size=11, n_positions=6)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    base = tmp_path / "hf"
    model.save_pretrained(base, safe_serialization=True)
    rng = np.random.default_rng(7)
    bad = []
    for i in range(100):
        d = tmp_path / f"hf{i}"
        shutil.copytree(base, d)
        target = d / ("config.json" if i % 2 else "model.safetensors")
        data = target.read_bytes()
        kind = ("truncate", "flip", "flip_header")[i % 3]
        target.write_bytes(_mutate(kind, data, rng, ".json"))
        try:
            ca.load(d)
        except EXPECTED as e:
            if d.name not in str(e):
                bad.append((i, kind, f"message does not name the checkpoint: {e}"))
        except Exception as e:  # noqa: BLE001
            bad.append((i, kind, f"{type(e).__name__}: {e}"))
        shutil.rmtree(d)
    assert not bad, bad[:5]
