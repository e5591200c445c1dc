"""Dequantisation of GGUF tensors with whole-array NumPy operations.

Each supported type is decoded over many blocks at once, a chunk of blocks at a time (so the
temporaries stay small and in cache), straight into the output array. The arithmetic is
llama.cpp's and the ``gguf`` package's, in float32 and in the same order (for Q4_K:
``(d * sc) * q - dmin * m``), so the float32 result equals ``gguf.quants.dequantize`` bit for
bit; a float64 output holds exactly those float32 values. Supported: F32, F16, BF16, Q4_0,
Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. Other types (the IQ and TQ families,
MXFP4, ...) are passed to ``gguf.quants.dequantize`` and converted.

The block layouts are those of ggml's ``ggml-common.h``; the ``gguf`` package's numpy decoders
(``gguf/quants.py``) are the reference the tests compare against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from circuitalg import runtime
from circuitalg.errors import LoadError

__all__ = ["dequantize", "DEQUANTIZERS", "CHUNK_VALUES", "THREADS"]

#: values decoded per chunk: big enough that NumPy's per-call overhead is small, small enough
#: that a chunk's temporaries stay in the CPU cache
CHUNK_VALUES = 1 << 16

#: threads :func:`dequantize` uses by default: two where this process may use two cores or more
THREADS = 2 if runtime.core_count() >= 2 else 1

_F16, _F32 = np.dtype("<f2"), np.float32
_SHIFT2 = np.array([0, 2, 4, 6], dtype=np.uint8)  # the four 2-bit fields of a byte


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    """The little-endian f16 at byte ``at`` of each block, as float32 of shape ``(n, 1)``."""
    return b[:, at:at + 2].view(_F16).astype(_F32)


def _nibbles(qs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    np.bitwise_and(qs, 15, out=lo)
    np.right_shift(qs, 4, out=hi)


# -- the 32-value blocks: d (f16) [m (f16)] [qh (32 bits)] qs (16 bytes, two values each) or 32 int8 --


def _widen_scaled(o: np.ndarray, q: np.ndarray, d: np.ndarray) -> None:
    """``o = d * q`` in float32: the integers widened in one contiguous pass, then scaled in place
    (faster than one mixed-type multiply, whose inner loop is a block long)."""
    np.copyto(o, q, casting="unsafe")
    o *= d


def _q4_0(b: np.ndarray, o: np.ndarray) -> None:
    q = np.empty((b.shape[0], 2, 16), dtype=np.uint8)
    _nibbles(b[:, 2:18], q[:, 0], q[:, 1])
    q = q.reshape(-1, 32).view(np.int8)
    q -= 8
    _widen_scaled(o, q, _f16(b, 0))


def _q4_1(b: np.ndarray, o: np.ndarray) -> None:
    q = np.empty((b.shape[0], 2, 16), dtype=np.uint8)
    _nibbles(b[:, 4:20], q[:, 0], q[:, 1])
    _widen_scaled(o, q.reshape(-1, 32), _f16(b, 0))
    o += _f16(b, 2)


#: byte of ``qh`` -> its 8 bits as 8 bytes of 16 (bit set) or 0, or, for Q5_0 (values offset by
#: -16), of 0 or -16 (mod 256): added to the low nibbles, one table lookup per 8 values
_QH_BITS = np.array([sum((((v >> j) & 1) * 16) << (8 * j) for j in range(8)) for v in range(256)], "<u8")
_QH_BITS_MINUS_16 = np.array([sum((((v >> j) & 1) * 16 + 240) % 256 << (8 * j) for j in range(8))
                              for v in range(256)], "<u8")


def _five_bit(b: np.ndarray, qh_at: int, table: np.ndarray) -> np.ndarray:
    """The 32 five-bit values of Q5_0/Q5_1 blocks: low nibbles from ``qs``, bit ``j`` of the
    little-endian ``qh`` word as bit 4 of value ``j`` (through ``table``)."""
    q = np.empty((b.shape[0], 2, 16), dtype=np.uint8)
    _nibbles(b[:, qh_at + 4:qh_at + 20], q[:, 0], q[:, 1])
    q = q.reshape(-1, 32)
    q += table[b[:, qh_at:qh_at + 4]].view(np.uint8).reshape(-1, 32)
    return q


def _q5_0(b: np.ndarray, o: np.ndarray) -> None:
    _widen_scaled(o, _five_bit(b, 2, _QH_BITS_MINUS_16).view(np.int8), _f16(b, 0))


def _q5_1(b: np.ndarray, o: np.ndarray) -> None:
    _widen_scaled(o, _five_bit(b, 4, _QH_BITS), _f16(b, 0))
    o += _f16(b, 2)


def _q8_0(b: np.ndarray, o: np.ndarray) -> None:
    _widen_scaled(o, b[:, 2:].view(np.int8), _f16(b, 0))


# -- the 256-value K-quant super-blocks -------------------------------------------------------


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and mins of Q4_K/Q5_K (12 packed bytes per block), ``(n, 8)`` each:
    bytes 0-3 hold scales 0-3 and the top bits of 4-7, bytes 4-7 the mins likewise, bytes 8-11
    the low nibbles of scales (low) and mins (high) 4-7."""
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([d & 63, (md & 15) | ((d >> 2) & 48)], axis=1)
    mn = np.concatenate([m & 63, (md >> 4) | ((m >> 2) & 48)], axis=1)
    return sc, mn


def _k_finish(o: np.ndarray, q: np.ndarray, scale: np.ndarray, sub: int, offset: np.ndarray | None) -> None:
    """``o = scale * q [- offset]`` per sub-block of ``sub`` values, in float32."""
    n = o.shape[0]
    o3 = o.reshape(n, -1, sub)
    np.multiply(scale.reshape(n, -1, 1), q.reshape(n, -1, sub), out=o3)
    if offset is not None:
        o3 -= offset.reshape(n, -1, 1)


def _q2_k(b: np.ndarray, o: np.ndarray) -> None:
    # scales[16] (scale low nibble, min high nibble), qs[64] (four 2-bit values each), d, dmin
    n = b.shape[0]
    scales = b[:, 0:16]
    dl = _f16(b, 80) * (scales & 15)
    ml = _f16(b, 82) * (scales >> 4)
    qs = b[:, 16:80].reshape(n, 2, 1, 32)
    q = (qs >> _SHIFT2.reshape(1, 1, 4, 1)) & 3
    _k_finish(o, q, dl, 16, ml)


def _q3_k(b: np.ndarray, o: np.ndarray) -> None:
    # hmask[32], qs[64] (2-bit low parts), scales[12] (sixteen 6-bit scales, offset 32), d
    n = b.shape[0]
    s = b[:, 96:108]
    low = np.empty((n, 2, 8), dtype=np.uint8)
    _nibbles(s[:, 0:8], low[:, 0], low[:, 1])
    high = (s[:, 8:12].reshape(n, 1, 4) >> _SHIFT2.reshape(1, 4, 1)) & 3
    sc = (low.reshape(n, 16) | (high.reshape(n, 16) << 4)).view(np.int8)
    sc -= 32
    dl = _f16(b, 108) * sc
    q = (b[:, 32:96].reshape(n, 2, 1, 32) >> _SHIFT2.reshape(1, 1, 4, 1)) & 3
    q = q.reshape(n, 8, 32)
    hbit = (b[:, 0:32].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    hbit ^= 1  # the 4 is subtracted where the mask bit is clear
    hbit <<= 2
    q = q.view(np.int8)
    q -= hbit.view(np.int8)
    _k_finish(o, q, dl, 16, None)


def _q4_k(b: np.ndarray, o: np.ndarray) -> None:
    # d, dmin, scales[12], qs[128]: four groups of 64 values, low nibbles then high nibbles
    n = b.shape[0]
    sc, mn = _scale_min_k4(b[:, 4:16])
    q = np.empty((n, 4, 2, 32), dtype=np.uint8)
    _nibbles(b[:, 16:144].reshape(n, 4, 32), q[:, :, 0], q[:, :, 1])
    _k_finish(o, q, _f16(b, 0) * sc, 32, _f16(b, 2) * mn)


def _q5_k(b: np.ndarray, o: np.ndarray) -> None:
    # d, dmin, scales[12], qh[32] (bit k: bit 4 of sub-block k), qs[128] as in Q4_K
    n = b.shape[0]
    sc, mn = _scale_min_k4(b[:, 4:16])
    q = np.empty((n, 4, 2, 32), dtype=np.uint8)
    _nibbles(b[:, 48:176].reshape(n, 4, 32), q[:, :, 0], q[:, :, 1])
    q = q.reshape(n, 8, 32)
    high = (b[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    high <<= 4
    q |= high
    _k_finish(o, q, _f16(b, 0) * sc, 32, _f16(b, 2) * mn)


def _q6_k(b: np.ndarray, o: np.ndarray) -> None:
    # ql[128] (low nibbles), qh[64] (2-bit high parts), scales[16] (int8), d; two halves of 128
    n = b.shape[0]
    q = np.empty((n, 2, 2, 64), dtype=np.uint8)
    _nibbles(b[:, 0:128].reshape(n, 2, 64), q[:, :, 0], q[:, :, 1])
    q = q.reshape(n, 2, 4, 32)
    high = (b[:, 128:192].reshape(n, 2, 1, 32) >> _SHIFT2.reshape(1, 1, 4, 1)) & 3
    high <<= 4
    q |= high
    q = q.view(np.int8)
    q -= 32
    _k_finish(o, q, _f16(b, 208) * b[:, 192:208].view(np.int8), 16, None)


#: type name -> (values per block, bytes per block, decoder of ``(n, bytes)`` uint8 blocks into
#: ``(n, values)`` float32)
DEQUANTIZERS: dict[str, tuple[int, int, Callable[[np.ndarray, np.ndarray], None]]] = {
    "Q4_0": (32, 18, _q4_0), "Q4_1": (32, 20, _q4_1), "Q5_0": (32, 22, _q5_0), "Q5_1": (32, 24, _q5_1),
    "Q8_0": (32, 34, _q8_0), "Q2_K": (256, 84, _q2_k), "Q3_K": (256, 110, _q3_k), "Q4_K": (256, 144, _q4_k),
    "Q5_K": (256, 176, _q5_k), "Q6_K": (256, 210, _q6_k),
}


def _check_dtype(dtype: Any) -> np.dtype:
    want = np.dtype(dtype)
    if want not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise LoadError(f"dequantize: dtype {want} requested; pass numpy.float32 or numpy.float64.")
    return want


def dequantize(data: np.ndarray, qtype: Any, *, dtype: Any, name: str, threads: int = THREADS) -> np.ndarray:
    """Decode one GGUF tensor into a new array.

    Parameters
    ----------
    data : numpy.ndarray
        The tensor as ``gguf.GGUFReader`` gives it: for block types, uint8 of shape
        ``(..., bytes per row)``; for F32/F16/BF16, the stored elements.
    qtype : gguf.GGMLQuantizationType
        The storage type.
    dtype : numpy.float32 or numpy.float64
        The output dtype; float64 holds the float32 values exactly.
    name : str
        The tensor's name, for messages.
    threads : {1, 2}
        Decode a large tensor's two halves at once (the result is the same either way), through
        the caller's :class:`~circuitalg.runtime.Runtime` (serial where it has one worker).

    Returns
    -------
    numpy.ndarray
        Shape ``(..., values per row)``, ``dtype``, writeable, not sharing memory with ``data``.

    Raises
    ------
    LoadError
        The bytes do not make whole blocks of the type (a corrupt or truncated tensor), or
        ``gguf`` cannot decode the type.
    """
    want = _check_dtype(dtype)
    if threads not in (1, 2):
        raise LoadError(f"dequantize: threads={threads!r}; pass 1 or 2.")
    kind = getattr(qtype, "name", str(qtype))
    if kind in ("F32", "F16", "F64"):
        out = np.empty(data.shape, dtype=want)
        np.copyto(out, data, casting="unsafe" if kind == "F64" else "same_kind")
        return out
    if kind == "BF16":  # the top half of a float32
        bits = np.ascontiguousarray(data).view("<u2")
        out32 = np.empty(bits.shape, dtype=np.float32)
        np.left_shift(bits, 16, out=out32.view(np.uint32), dtype=np.uint32)
        return out32 if want == np.float32 else out32.astype(want)
    if kind not in DEQUANTIZERS:
        return _fallback(data, qtype, want, name)
    block, size, decode = DEQUANTIZERS[kind]
    raw = np.ascontiguousarray(data).view(np.uint8)
    row_bytes = raw.shape[-1] if raw.ndim else 0
    if raw.ndim == 0 or row_bytes % size:
        raise LoadError(
            f"tensor {name!r}: {kind} rows must be whole blocks of {size} bytes, but a row has {row_bytes} "
            "bytes (a corrupt or truncated tensor); re-download or re-convert the file."
        )
    blocks = raw.reshape(-1, size)
    n = blocks.shape[0]
    out = np.empty((*raw.shape[:-1], row_bytes // size * block), dtype=want)
    flat = out.reshape(n, block)
    step = max(1, CHUNK_VALUES // block)
    if threads == 2 and n >= 4 * step:  # two halves at once: NumPy's loops release the GIL
        rt = runtime.current()
        rt = dataclasses.replace(rt, workers=min(2, rt.threads))
        rt.map(lambda lo, hi: _decode_range(decode, blocks, flat, lo * step, min(hi * step, n), step), -(-n // step))
    else:
        _decode_range(decode, blocks, flat, 0, n, step)
    return out


def _decode_range(decode: Callable[[np.ndarray, np.ndarray], None], blocks: np.ndarray, flat: np.ndarray,
                  start: int, stop: int, step: int) -> None:
    """Decode blocks ``start:stop`` into ``flat``, ``step`` blocks at a time."""
    wide = flat.dtype != np.float32
    scratch = np.empty((min(step, stop - start), flat.shape[1]), dtype=np.float32) if wide else None
    for i in range(start, stop, step):
        j = min(i + step, stop)
        if scratch is None:
            decode(blocks[i:j], flat[i:j])
        else:  # decode in float32 (the format's arithmetic), then widen exactly
            o = scratch[: j - i]
            decode(blocks[i:j], o)
            flat[i:j] = o


def _fallback(data: np.ndarray, qtype: Any, want: np.dtype, name: str) -> np.ndarray:
    try:
        import gguf

        out = gguf.quants.dequantize(data, qtype)
    except NotImplementedError as exc:
        raise LoadError(f"tensor {name!r}: {exc} in the gguf package.") from None
    except ValueError as exc:  # rows that are not whole blocks
        raise LoadError(f"tensor {name!r}: {exc} (a corrupt or truncated tensor).") from None
    return np.array(out, dtype=want)
