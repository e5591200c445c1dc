"""Load time and peak memory of a 0.5B Qwen2-shaped Q4_K_M GGUF file, against gguf's own dequantisation.

Writes a GGUF file of Qwen2.5-0.5B's shapes (24 layers, 14 query / 2 KV heads, d_model 896,
d_mlp 4864, vocabulary 151,936, tied embeddings, Q/K/V biases) whose tensors have the types
llama.cpp's Q4_K_M recipe gives that model (``llama_tensor_get_type``): ``ffn_down`` Q6_K in the
"more bits" layers (the first and last eighth and every third between) and Q4_K elsewhere;
``attn_v`` Q6_K in those layers and Q4_K elsewhere; the tied ``token_embd`` Q6_K; the rest Q4_K;
norms and biases F32. Every tensor whose rows (896) are not a multiple of 256 cannot hold a
K-quant, so llama.cpp falls back as it does for this model: Q4_K -> Q5_0, Q6_K -> Q8_0. The
blocks are random bytes with finite f16 scales of realistic size (gguf cannot write K-quants),
which dequantise with exactly the same work as trained ones. A vocabulary and merges list of the
real sizes are written too: reading them is part of a load.

Then, in a fresh child process (so the writer's memory does not count), it times
``ca.load(file, dtype=...)`` and reports its peak RSS; in a second child, the two parts of the load
this file format adds, each against what the loader used before: reading the header
(:func:`circuitalg.model.gguf_file.open_gguf` against ``gguf.GGUFReader``) and decoding every
tensor into ``dtype``, one at a time (:func:`circuitalg.model.gguf_quants.dequantize` against
``gguf.quants.dequantize`` and a conversion), as times and ratios. No figure is asserted.

Usage: ``python benchmarks/bench_gguf.py [--dtype float32|float64] [--file PATH] [--skip-baseline]``
(``--file``: write the GGUF file there, or reuse it if it exists; default: a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = dict(layers=24, heads=14, kv_heads=2, d_model=896, d_head=64, d_mlp=4864, vocab=151936, ctx=32768)


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's ``use_more_bits(i_layer, n_layers)``."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q4_k_m_types(s: dict) -> dict[str, tuple[tuple[int, int], str]]:
    """GGUF tensor name -> ((rows, cols), type name) of llama.cpp's Q4_K_M recipe for shapes ``s``."""
    d, h, kv, dh, f, n = s["d_model"], s["heads"], s["kv_heads"], s["d_head"], s["d_mlp"], s["layers"]

    def fallback(qtype: str, cols: int) -> str:
        return qtype if cols % 256 == 0 else {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}[qtype]

    out: dict[str, tuple[tuple[int, int], str]] = {
        "token_embd.weight": ((s["vocab"], d), fallback("Q6_K", d)), "output_norm.weight": ((d,), "F32")}
    for i in range(n):
        more = _more_bits(i, n)
        big = "Q6_K" if more else "Q4_K"
        mats = {"attn_q": (h * dh, d, "Q4_K"), "attn_k": (kv * dh, d, "Q4_K"), "attn_v": (kv * dh, d, big),
                "attn_output": (d, h * dh, "Q4_K"), "ffn_gate": (f, d, "Q4_K"), "ffn_up": (f, d, "Q4_K"),
                "ffn_down": (d, f, big)}
        for part, (rows, cols, qtype) in mats.items():
            out[f"blk.{i}.{part}.weight"] = ((rows, cols), fallback(qtype, cols))
        for part, size in (("attn_q", h * dh), ("attn_k", kv * dh), ("attn_v", kv * dh)):
            out[f"blk.{i}.{part}.bias"] = ((size,), "F32")
        out[f"blk.{i}.attn_norm.weight"] = ((d,), "F32")
        out[f"blk.{i}.ffn_norm.weight"] = ((d,), "F32")
    return out


def random_blocks(rng: np.random.Generator, qtype_name: str, rows: int, cols: int) -> np.ndarray:
    """Random bytes of a ``(rows, cols)`` tensor of type ``qtype_name`` whose f16 scales are finite
    and sized so that the weights have a standard deviation of a few hundredths."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    n = raw.shape[0]

    def f16(scale: float, count: int = 1) -> np.ndarray:
        return (rng.uniform(0.5, 1.5, size=(n, count)) * scale).astype(np.float16).view(np.uint8)

    # (byte offset of the f16 scales, how many, their size): the layouts of ggml-common.h
    where = {"Q8_0": (0, 1, 2e-4), "Q5_0": (0, 1, 2e-3), "Q4_0": (0, 1, 4e-3), "Q4_1": (0, 2, 4e-3),
             "Q5_1": (0, 2, 2e-3), "Q4_K": (0, 2, 5e-5), "Q5_K": (0, 2, 3e-5), "Q6_K": (208, 1, 1e-5),
             "Q2_K": (80, 2, 5e-4), "Q3_K": (108, 1, 2e-4)}
    at, count, scale = where[qtype_name]
    raw[:, at:at + 2 * count] = f16(scale, count)
    return raw.reshape(rows, cols // block * size)


def write_q4_k_m(path: Path, s: dict = SHAPES, seed: int = 0) -> int:
    """Write the Qwen2-shaped Q4_K_M file described in the module docstring; returns its size."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("random qwen2 0.5B-shaped Q4_K_M")
    w.add_block_count(s["layers"])
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["d_model"])
    w.add_feed_forward_length(s["d_mlp"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(s["vocab"])])
    w.add_token_merges([f"t{i} t{i + 1}" for i in range(151387)])  # Qwen2's merges list has 151,387 entries
    for name, (shape, qtype) in q4_k_m_types(s).items():
        if qtype == "F32":
            w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
        else:
            w.add_tensor(name, random_blocks(rng, qtype, *shape), raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.stat().st_size


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(path: str, what: str, dtype: str) -> None:
    import circuitalg as ca

    imported = _rss()
    if what == "load":
        t = time.perf_counter()
        model = ca.load(path, dtype=dtype)
        seconds = time.perf_counter() - t
        nbytes = sum(v.nbytes for v in model.params.values())
        print(json.dumps({"seconds": seconds, "peak_rss": _rss(), "after_import_rss": imported, "bytes": nbytes}))
        return
    # the parts, each tensor decoded and dropped: circuitalg's reader and decoder against gguf's
    import gguf

    from circuitalg.model.gguf_file import open_gguf
    from circuitalg.model.gguf_quants import dequantize

    out: dict[str, float] = {}
    t = time.perf_counter()
    reader = open_gguf(path)
    out["header"] = time.perf_counter() - t
    t = time.perf_counter()
    old = gguf.GGUFReader(path, "r")
    out["header_gguf"] = time.perf_counter() - t
    t = time.perf_counter()
    for x in reader.tensors:
        dequantize(x.data, x.tensor_type, dtype=dtype, name=x.name)
    out["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    for x in old.tensors:  # as the loader did before: gguf's memmap views, float32, then converted
        np.asarray(np.asarray(gguf.quants.dequantize(x.data, x.tensor_type), dtype=np.float32), dtype=dtype)
    out["decode_gguf"] = time.perf_counter() - t
    print(json.dumps(out))


def run_child(path: Path, what: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--what", what, "--dtype", dtype],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {what} child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--file", type=Path, help="write the GGUF file here (reused if it exists)")
    ap.add_argument("--skip-baseline", action="store_true", help="time ca.load only, not its parts against gguf")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--what", choices=["load", "parts"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.what, args.dtype)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or Path(tmp) / "qwen2-0.5b-q4_k_m.gguf"
        if not path.exists():
            t = time.perf_counter()
            write_q4_k_m(path)
            print(f"wrote {path} in {time.perf_counter() - t:.1f} s")
        size = path.stat().st_size
        load = run_child(path, "load", args.dtype)
        base = None if args.skip_baseline else run_child(path, "parts", args.dtype)
    gb = 2**30
    s = SHAPES
    print(f"Qwen2-0.5B shapes ({s['layers']} layers x {s['heads']} heads / {s['kv_heads']} KV, "
          f"d_model {s['d_model']}, d_mlp {s['d_mlp']}, vocab {s['vocab']}), Q4_K_M file {size / gb:.3f} GiB")
    print(f"  ca.load(dtype={args.dtype})     {load['seconds']:6.2f} s   peak RSS {load['peak_rss'] / gb:.3f} GiB "
          f"({load['after_import_rss'] / gb:.3f} after import; parameters {load['bytes'] / gb:.3f} GiB)")
    if base is not None:
        print(f"  its parts, each tensor decoded and dropped ({args.dtype}), against the gguf package's:")
        print(f"    header   {base['header']:6.2f} s   gguf.GGUFReader          {base['header_gguf']:6.2f} s   "
              f"ratio {base['header'] / base['header_gguf']:.3f}")
        print(f"    decoding {base['decode']:6.2f} s   gguf.quants.dequantize   {base['decode_gguf']:6.2f} s   "
              f"ratio {base['decode'] / base['decode_gguf']:.3f}")


if __name__ == "__main__":
    main()
