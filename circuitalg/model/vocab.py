"""Token strings: decoding the byte-level symbols of GPT-2-style BPE vocabularies."""

from __future__ import annotations

from functools import lru_cache

__all__ = ["decode_byte_level"]


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table (printable stand-ins for raw bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def decode_byte_level(token: str) -> str:
    """A byte-level BPE symbol (``"Ġthe"``) as text (``" the"``); unknown symbols unchanged."""
    decoder = _byte_decoder()
    try:
        return bytes(decoder[ch] for ch in token).decode("utf-8", errors="replace")
    except KeyError:
        return token
