"""GGUF files (llama.cpp's format), read through the ``gguf`` package (the ``gguf`` extra).

The architecture comes from the file's ``general.architecture`` metadata; its hyperparameters
are translated to the Hugging Face ``config.json`` fields of that family, and its tensors to the
family's Hugging Face names, so one converter per family serves both formats
(:mod:`circuitalg.model.hf`). The header is parsed and the tensors memory-mapped by
:mod:`circuitalg.model.gguf_file`; each tensor is dequantised when the converter reads it, straight
into the load's dtype, by :mod:`circuitalg.model.gguf_quants` (F32, F16, BF16, Q8_0, Q4_0/Q4_1/
Q5_0/Q5_1, the K-quants Q2_K-Q6_K: the float32 values ``gguf`` decodes, bit for bit), other types
by ``gguf.quants.dequantize``.

What the conversion undoes, as llama.cpp's ``convert_hf_to_gguf.py`` did it:

- ``llama`` (also Mistral): the rows of ``attn_q``/``attn_k`` were permuted for llama.cpp's
  interleaved rotary pairing; they are permuted back to the half-split pairing.
- ``gemma2``, ``gemma3``: RMSNorm weights (q/k norms included) were stored as ``1 + w``; the
  embedding scale ``sqrt(d_model)`` is applied by the model, as in transformers.
- ``phi3``: ``attn_qkv`` and ``ffn_up`` are the fused ``qkv_proj`` and ``gate_up_proj``; LongRoPE's
  factors are the tensors ``rope_factors_short``/``rope_factors_long``.
- ``gpt2``: projections are stored ``(out, in)``; GPT-2's Conv1D layout is ``(in, out)``.

Metadata GGUF does not carry is taken as llama.cpp takes it (stated here, not guessed):
Gemma 2's ``query_pre_attn_scalar`` is ``d_model / n_heads`` for the 46-layer (27B) model and
the head size otherwise; its soft-caps default to transformers' 50 / 30 when absent. Gemma 3's
is likewise ``d_model / n_heads`` for the 62-layer (27B) model and the head size otherwise; its
every sixth layer is global (``attention.sliding_window_pattern`` when the file has it), its local
layers' rotary base is 10000 (``rope.freq_base_swa`` when present) and unscaled, the file's
``rope.freq_base`` and scaling being the global layers'. Phi-3's ``attention.sliding_window`` is
not applied: llama.cpp disables Phi-3's sliding window and transformers' GGUF loader does not
read it. Rotary
scaling: ``rope.scaling.type`` ``linear`` is read; a ``rope_freqs`` tensor (Llama 3.1's
per-frequency factors) divides the frequencies; other scalings are refused.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import ConfigError, LoadError
from circuitalg.model.gguf_file import open_gguf
from circuitalg.model.gguf_quants import dequantize
from circuitalg.model.statedict import TensorSource
from circuitalg.model.vocab import decode_byte_level

__all__ = ["read_gguf", "GGUF_ARCHITECTURES"]

#: GGUF ``general.architecture`` values circuitalg reads, with the Hugging Face family they map to.
GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                      "gemma3": "gemma3_text", "phi3": "phi3",
                      "gemma2": "gemma2", "gpt2": "gpt2"}

_LLAMA_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GEMMA2_NAMES = {**_LLAMA_NAMES, "ffn_norm": "pre_feedforward_layernorm", "post_attention_norm": "post_attention_layernorm",
                 "post_ffw_norm": "post_feedforward_layernorm"}
_PHI3_NAMES = {**_LLAMA_NAMES, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}
_GPT2_NAMES = {
    "attn_norm": "ln_1", "ffn_norm": "ln_2", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
    "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj",
}


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise LoadError(
            "reading a .gguf file needs the gguf package: pip install 'circuitalg[gguf]' (or pip install gguf)."
        ) from None
    return gguf


class _Tensors(TensorSource):
    """Hugging Face tensor names -> arrays, dequantised (and un-permuted) when read."""

    def __init__(self, reader: Any, names: dict[str, tuple[Any, str]], fix: Any, source: str, dtype: Any) -> None:
        super().__init__(names)
        self._reader, self._names, self._fix, self._source, self._dtype = reader, names, fix, source, dtype

    def read(self, key: str) -> np.ndarray:
        tensor, gguf_name = self._names[key]
        try:
            data = dequantize(tensor.data, tensor.tensor_type, dtype=self._dtype, name=gguf_name)
        except LoadError as exc:
            raise LoadError(f"{self._source}: {exc}") from None
        data.flags.writeable = False  # a new array nobody else holds: the loader need not copy it
        return self._fix(gguf_name, data)

    def dtype(self, key: str) -> np.dtype:
        return np.dtype(self._dtype)


def read_gguf(
    path: Path, max_bytes: int, dtype: Any = np.float32
) -> tuple[Mapping[str, Any], dict[str, Any], list[str] | None]:
    """``(tensors by Hugging Face name, config.json fields, token strings or None)`` of a GGUF file;
    the tensors are decoded when read, into ``dtype`` (float32 or float64: the same float32 values)."""
    _gguf()  # tensor types come from the gguf package: a clear message if it is missing
    source = str(path)
    try:
        reader = open_gguf(path)
    except (ValueError, OSError, KeyError, IndexError, struct.error) as exc:
        raise LoadError(f"{source}: not a readable GGUF file ({type(exc).__name__}: {exc}).") from None
    total = sum(int(t.n_bytes) for t in reader.tensors)
    if total > max_bytes:
        raise LoadError(f"{source}: {total} bytes of tensors exceed max_bytes={max_bytes}; pass a larger max_bytes.")

    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    arch = field("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ConfigError(
            f"{source}: general.architecture={arch!r}; circuitalg reads GGUF files of architecture "
            f"{sorted(GGUF_ARCHITECTURES)}."
        )
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise LoadError(f"{source}: no tensor 'token_embd.weight': not a language-model GGUF file.")
    n_vocab, d_model = (int(x) for x in tensors["token_embd.weight"].shape[::-1])

    def need(key: str) -> Any:
        v = field(f"{arch}.{key}")
        if v is None:
            raise ConfigError(f"{source}: GGUF metadata lacks {arch}.{key}.")
        return v

    n_layers, n_heads = int(need("block_count")), int(need("attention.head_count"))
    config: dict[str, Any] = {"model_type": GGUF_ARCHITECTURES[arch], "vocab_size": n_vocab, "hidden_size": d_model,
                              "tie_word_embeddings": "output.weight" not in tensors}
    if arch == "gpt2":
        config.update(n_layer=n_layers, n_head=n_heads, n_embd=d_model, n_positions=int(need("context_length")),
                      n_inner=int(need("feed_forward_length")),
                      layer_norm_epsilon=float(field(f"{arch}.attention.layer_norm_epsilon", 1e-5)))
        names = _block_names(tensors, n_layers, _GPT2_NAMES, "h.{l}.", {
            "token_embd": "wte", "position_embd": "wpe", "output_norm": "ln_f", "output": "lm_head"}, source)
    else:
        head_dim = field(f"{arch}.attention.key_length")
        if head_dim is None:
            head_dim = field(f"{arch}.rope.dimension_count") if arch in ("llama", "mistral") else None
        head_dim = int(head_dim) if head_dim is not None else d_model // n_heads
        kv = field(f"{arch}.attention.head_count_kv", n_heads)
        if not isinstance(kv, (int, np.integer)):
            raise ConfigError(f"{source}: {arch}.attention.head_count_kv={kv!r}; per-layer KV head counts are not supported.")
        config.update(
            num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=int(kv), head_dim=head_dim,
            intermediate_size=int(need("feed_forward_length")), max_position_embeddings=int(need("context_length")),
            rms_norm_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
            rope_parameters=_rope(field, arch, tensors, head_dim, source),
        )
        if arch in ("qwen2", "qwen3", "llama", "mistral"):
            config["attention_bias"] = "blk.0.attn_q.bias" in tensors
        if arch == "llama":
            config["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
        if arch == "gemma3":
            window, pattern = field(f"{arch}.attention.sliding_window"), field(f"{arch}.attention.sliding_window_pattern", 6)
            if isinstance(pattern, list):  # one flag per layer: sliding or not
                types = ["sliding_attention" if bool(f) else "full_attention" for f in pattern]
            else:
                types = ["sliding_attention" if (i + 1) % int(pattern) else "full_attention" for i in range(n_layers)]
            local = {"rope_type": "default", "rope_theta": float(field(f"{arch}.rope.freq_base_swa", 10000.0)),
                     "partial_rotary_factor": config["rope_parameters"]["partial_rotary_factor"]}
            softcaps = {k: float(v) for k in ("attn_logit_softcapping", "final_logit_softcapping")
                        if (v := field(f"{arch}.{k}")) is not None}
            config.update(
                query_pre_attn_scalar=d_model // n_heads if n_layers == 62 else head_dim, layer_types=types,
                sliding_window=None if window is None else int(window), hidden_activation="gelu_pytorch_tanh",
                rope_parameters={"full_attention": config["rope_parameters"], "sliding_attention": local}, **softcaps,
            )
        if arch == "gemma2":
            window = field(f"{arch}.attention.sliding_window")
            config.update(
                query_pre_attn_scalar=d_model // n_heads if n_layers == 46 else head_dim,
                attn_logit_softcapping=float(field(f"{arch}.attn_logit_softcapping", 50.0)),
                final_logit_softcapping=float(field(f"{arch}.final_logit_softcapping", 30.0)),
                sliding_window=None if window is None else int(window),
                hidden_activation="gelu_pytorch_tanh",
            )
        table = {"gemma2": _GEMMA2_NAMES, "gemma3": _GEMMA2_NAMES, "phi3": _PHI3_NAMES}.get(arch, _LLAMA_NAMES)
        names = _block_names(tensors, n_layers, table, "model.layers.{l}.", {
            "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}, source,
            skip=("rope_freqs.weight", "rope_factors_short.weight", "rope_factors_long.weight"))

    def fix(name: str, w: np.ndarray) -> np.ndarray:
        if arch in ("llama", "mistral") and (".attn_q." in name or ".attn_k." in name):
            n = n_heads if ".attn_q." in name else int(config["num_key_value_heads"])
            half = w.shape[0] // n // 2  # llama.cpp's permute(n_head): rows (head, 2, half) -> (head, half, 2)
            return w.reshape(n, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        if arch in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            return w - 1.0  # stored as 1 + w; the Gemma converter adds the 1 back
        if arch == "gpt2" and name.endswith(".weight") and any(f".{k}." in name for k in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")):
            return np.ascontiguousarray(w.T)  # (out, in) -> Conv1D's (in, out)
        return w

    return _Tensors(reader, names, fix, source, dtype), config, _vocab(field)


def _block_names(
    tensors: dict[str, Any], n_layers: int, table: dict[str, str], prefix: str, top: dict[str, str], source: str,
    skip: tuple[str, ...] = (),
) -> dict[str, tuple[Any, str]]:
    """GGUF names (``blk.{l}.{part}.{weight|bias}`` and the top-level tensors) -> Hugging Face names;
    an unknown tensor is an error (it could change what the model computes)."""
    out: dict[str, tuple[Any, str]] = {}
    for name, t in tensors.items():
        if name in skip:
            continue
        stem, _, suffix = name.rpartition(".")
        parts = stem.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[1].isdigit() and int(parts[1]) < n_layers and parts[2] in table:
            hf = prefix.format(l=int(parts[1])) + table[parts[2]] + "." + suffix
        elif stem in top:
            hf = top[stem] + "." + suffix
        else:
            raise LoadError(f"{source}: GGUF tensor {name!r} is not part of the architectures circuitalg implements.")
        out[hf] = (t, name)
    return out


def _rope(field: Any, arch: str, tensors: dict[str, Any], head_dim: int, source: str) -> dict[str, Any]:
    """transformers 5.x ``rope_parameters`` from GGUF metadata (and Llama 3.1's ``rope_freqs``)."""
    dim = field(f"{arch}.rope.dimension_count", head_dim)
    params: dict[str, Any] = {"rope_theta": float(field(f"{arch}.rope.freq_base", 10000.0)), "rope_type": "default",
                              "partial_rotary_factor": int(dim) / head_dim}
    kind = field(f"{arch}.rope.scaling.type", "none")
    if "rope_factors_short.weight" in tensors or "rope_factors_long.weight" in tensors:  # Phi-3's LongRoPE
        factors = {}
        for which in ("short", "long"):
            t = tensors.get(f"rope_factors_{which}.weight")
            if t is None:
                raise LoadError(f"{source}: tensor 'rope_factors_{which}.weight' is missing (LongRoPE needs both).")
            f = dequantize(t.data, t.tensor_type, dtype=np.float64, name=f"rope_factors_{which}.weight").ravel()
            factors[which] = [float(x) for x in f]
        original = field(f"{arch}.rope.scaling.original_context_length")
        if original is None:
            raise ConfigError(f"{source}: LongRoPE factors without {arch}.rope.scaling.original_context_length.")
        params.update(rope_type="longrope", short_factor=factors["short"], long_factor=factors["long"],
                      original_max_position_embeddings=int(original))
        attn = field(f"{arch}.rope.scaling.attn_factor")
        if attn is not None:
            params["attention_factor"] = float(attn)
        return params
    if kind == "linear":
        params.update(rope_type="linear", factor=float(field(f"{arch}.rope.scaling.factor")))
    elif kind not in ("none", None):
        raise ConfigError(f"{source}: {arch}.rope.scaling.type={kind!r} is not supported in GGUF files (linear is).")
    if "rope_freqs.weight" in tensors:
        t = tensors["rope_freqs.weight"]
        factors = dequantize(t.data, t.tensor_type, dtype=np.float64, name="rope_freqs.weight").ravel()
        if factors.shape != (int(dim) // 2,):
            raise LoadError(f"{source}: tensor 'rope_freqs.weight' has {factors.size} entries, expected {int(dim) // 2}.")
        params["freq_factors"] = [float(f) for f in factors]
    return params


def _vocab(field: Any) -> list[str] | None:
    """Token strings from ``tokenizer.ggml.tokens`` (byte-level or SentencePiece symbols decoded)."""
    tokens = field("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return None
    model = field("tokenizer.ggml.model")
    if model == "gpt2":
        return [decode_byte_level(t) for t in tokens]
    if model == "llama":
        return [t.replace("\u2581", " ") for t in tokens]
    return list(tokens)
