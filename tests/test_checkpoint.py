"""One reading of a checkpoint, part by part (:mod:`circuitalg.model.checkpoint`): the attention
weights of a range of layers, read through the loader's own key tables and folded by the model
view's own code, equal those layers of the loaded model's view bit for bit, for every layout,
and nothing else is read; the composition tile kernel on layer ranges equals the in-memory parts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_helpers import random_model, save_random_hf

import circuitalg as ca
from circuitalg.circuits.composition import CompositionParts, composition_parts, composition_tile
from circuitalg.model.checkpoint import open_checkpoint
from circuitalg.model.tensorfiles import SafetensorsSource
from circuitalg.model.view import HeadWeights

SMALL = dict(vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=48, max_position_embeddings=24, bos_token_id=0, eos_token_id=0, head_dim=8)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", SMALL),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", SMALL),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", SMALL),
    "olmo2": ("Olmo2ForCausalLM", "Olmo2Config", {k: v for k, v in SMALL.items() if k != "head_dim"}),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", {**{k: v for k, v in SMALL.items() if k != "head_dim"},
                                               "pad_token_id": 0}),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_layer=3, n_head=4, n_embd=32, vocab_size=50, n_positions=16)),
    "neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(num_hidden_layers=3, num_attention_heads=4, hidden_size=32,
                                                         intermediate_size=64, vocab_size=50,
                                                         max_position_embeddings=16)),
}


def _same_view(got: HeadWeights, want: HeadWeights) -> None:
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "kv_head"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


class _Spy(SafetensorsSource):
    """A safetensors source that records the tensors read whole and by rows."""

    def __init__(self, source: SafetensorsSource) -> None:
        self.__dict__.update(source.__dict__)
        self.seen: list[str] = []

    def read(self, name: str) -> np.ndarray:
        self.seen.append(name)
        return super().read(name)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_head_weights_of_a_layer_range_equal_the_loaded_view(tmp_path, family: str) -> None:
    model_cls, config_cls, config = FAMILIES[family]
    save_random_hf(tmp_path, model_cls, config_cls, **config)
    view = ca.load(tmp_path).head_weights
    ckpt = open_checkpoint(tmp_path, max_bytes=1 << 40)
    for layers in (range(0, 3), range(1, 2), range(1, 3)):
        got = ckpt.head_weights(layers)
        want = HeadWeights(*(getattr(view, f)[layers.start:layers.stop] for f in
                             ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "kv_head")))
        _same_view(got, want)
    spy = _Spy(ckpt.tensors)
    ckpt = open_checkpoint(tmp_path, max_bytes=1 << 40)
    object.__setattr__(ckpt, "tensors", spy)
    ckpt.reader.get.sd.base = spy  # the layout's (renamed) view of the same files
    ckpt.head_weights(range(1, 2))
    assert spy.seen and all((".1." in name) for name in spy.seen), spy.seen  # layer 1 only
    assert not any("mlp" in name or "fc" in name or "4h" in name for name in spy.seen), spy.seen


def test_head_weights_of_transformer_lens_and_own_files(tmp_path) -> None:
    model = random_model(n_layers=3, d_mlp=8, normalization="LN", seed=4)
    ca.save(model, tmp_path / "own.safetensors")
    tl = ca.to_transformer_lens(model.params, model.config)
    from safetensors.numpy import save_file

    save_file(tl, tmp_path / "tl.safetensors")
    (tmp_path / "tl.json").write_text(json.dumps({"normalization": "LN", "act_fn": "gelu_new", "n_heads": 3}))
    for name in ("own.safetensors", "tl.safetensors"):
        path = tmp_path / name
        ckpt = open_checkpoint(path, max_bytes=1 << 40)
        view = ca.load(path).head_weights
        got = ckpt.head_weights(range(1, 3))
        want = HeadWeights(*(getattr(view, f)[1:3] for f in
                             ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "kv_head")))
        _same_view(got, want)


def test_selected_projections_read_only_their_tensors(tmp_path) -> None:
    save_random_hf(tmp_path, "Qwen3ForCausalLM", "Qwen3Config", **SMALL)
    ckpt = open_checkpoint(tmp_path, max_bytes=1 << 40)
    spy = _Spy(ckpt.tensors)
    ckpt.reader.get.sd.base = spy
    p = ckpt.attention(range(2, 3), ("V", "O"))
    assert sorted(p) == ["blocks.2.attn.W_O", "blocks.2.attn.W_V", "blocks.2.attn.b_O", "blocks.2.attn.b_V"]
    assert sorted(spy.seen) == ["model.layers.2.input_layernorm.weight", "model.layers.2.self_attn.o_proj.weight",
                                "model.layers.2.self_attn.v_proj.weight"]
    view = ca.load(tmp_path).head_weights
    np.testing.assert_array_equal(p["blocks.2.attn.W_O"], view.W_O[2])
    np.testing.assert_array_equal(p["blocks.2.attn.W_V"][[0, 0, 1, 1]], view.W_V[2])


def test_safetensors_with_appended_bytes_or_holes_are_refused(tmp_path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "t.safetensors"
    save_file({"a": np.ones(3, dtype=np.float32), "b": np.zeros((2, 2))}, path)
    good = path.read_bytes()
    path.write_bytes(good + b"\0" * 8)
    with pytest.raises(ca.LoadError, match="bytes appended"):
        SafetensorsSource([path])
    n = int.from_bytes(good[:8], "little")
    header = json.loads(good[8:8 + n])
    header["a"]["data_offsets"] = [header["a"]["data_offsets"][0] + 4, header["a"]["data_offsets"][1] + 4]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    body = good[8 + n:]
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + body + b"\0" * 4)  # a 4-byte hole, then a
    with pytest.raises(ca.LoadError, match="without holes"):
        SafetensorsSource([path])
    path.write_bytes(good)
    src = SafetensorsSource([path])
    assert "a" in src and len(src) == 2 and src.shape("b") == (2, 2) and src.dtype("a") == np.float32
    np.testing.assert_array_equal(src["b"], np.zeros((2, 2)))
    np.testing.assert_array_equal(src.rows("b", 1, 2), np.zeros((1, 2)))


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_composition_tiles_assemble_the_in_memory_parts(kind: str) -> None:
    model = random_model(n_layers=5, n_heads=3, d_model=24, d_head=4, normalization="LN", seed=7)
    w = model.head_weights.float64()
    whole = composition_parts(w, kind)
    assert composition_parts(w, kind) is whole  # kept with the view
    assert not whole.numerator_sq.flags.writeable
    np.testing.assert_array_equal(whole.numerator_sq, composition_tile(w, w, (kind,))[kind].numerator_sq)

    def part(layers: range) -> HeadWeights:
        return HeadWeights(*(getattr(w, f)[layers.start:layers.stop] for f in
                             ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "kv_head")))

    num = np.zeros_like(whole.numerator_sq)
    for a, b in [(range(0, 2), range(0, 2)), (range(0, 2), range(2, 5)), (range(2, 5), range(2, 5))]:
        tile = composition_tile(part(a), part(b), (kind,), writer_layers=a, reader_layers=b)[kind]
        assert isinstance(tile, CompositionParts) and tile.numerator_sq.shape == (len(a), 3, len(b), 3)
        num[a.start:a.stop, :, b.start:b.stop] = tile.numerator_sq
        np.testing.assert_array_equal(tile.writer_norm_sq, whole.writer_norm_sq[a.start:a.stop])
        np.testing.assert_array_equal(tile.reader_norm_sq, whole.reader_norm_sq[b.start:b.stop])
    np.testing.assert_allclose(num, whole.numerator_sq, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(CompositionParts(num, whole.writer_norm_sq, whole.reader_norm_sq).scores() == 0,
                                  whole.scores() == 0)
    with pytest.raises(ca.InvalidArgumentError, match="one entry per layer"):
        composition_tile(part(range(0, 2)), w, (kind,), writer_layers=range(0, 3))


def test_dequantize_follows_the_callers_runtime() -> None:
    gguf = pytest.importorskip("gguf")
    from circuitalg.model import gguf_quants
    from circuitalg.runtime import Runtime

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(4096, 34), dtype=np.uint8)
    raw[:, :2] = np.array([0.5], dtype=np.float16).view(np.uint8)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)
    for rt in (Runtime(workers=1), Runtime(workers=2)):
        with rt:
            got = gguf_quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0, dtype=np.float32, name="t", threads=2)
        np.testing.assert_array_equal(got, ref)
