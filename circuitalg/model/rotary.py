"""Rotary position embeddings (RoPE) as typed rotations of a head's space.

A rotary head rotates its query at position ``i`` by ``R(i)`` and its key at ``j`` by ``R(j)``
before the dot product, so the score is ``qᵀ R(i)ᵀ R(j) k = qᵀ R(j - i) k``: the QK form
between a query at ``i`` and a key at ``j`` is ``W_QK(Δ) = W_Qᵀ R(Δ) W_K`` with ``Δ = j - i``
(``Δ <= 0`` under causal attention), and ``R(0) = I``. ``R(Δ)`` is block-diagonal: the first
``dim`` dimensions of the head form ``dim / 2`` planes, plane ``k`` turned by the angle
``Δ · inv_freq[k]``; the other ``d_head - dim`` dimensions (partial rotary) are left alone.

Pairing conventions: ``"half"`` pairs dimension ``k`` with ``k + dim/2`` (GPT-NeoX, Llama and
most models: transformers' ``rotate_half``); ``"interleaved"`` pairs ``2k`` with ``2k + 1``
(GPT-J: ``rotate_every_two``). Frequencies: ``inv_freq[k] = base^(-2k / dim)``, with the
scalings transformers implements: ``"linear"`` (divide by ``factor``), ``"llama3"`` (Llama
3.1's banded rescaling) and ``"yarn"`` (YaRN: frequencies blended between interpolation and
extrapolation by a linear ramp between the correction dimensions of ``beta_fast`` and
``beta_slow``, and an ``attention_factor`` that multiplies the rotated coordinates of every
query and key, so ``R(Δ)`` carries ``attention_factor²`` on the rotated planes) and
``"longrope"`` (LongRoPE, Phi-3: per-plane divisors of the frequencies, ``freq_factors`` (the
short factors) for sequences of at most ``original_max_position_embeddings`` tokens and
``long_factors`` for longer ones, as transformers chooses them from the sequence length, and an
``attention_factor`` as YaRN's). Dynamic NTK scaling changes the frequencies only for sequences
longer than the context length, which circuitalg refuses, so within ``n_ctx`` it is the
unscaled embedding (the loaders read it as ``"none"``).

Frequencies that depend on the sequence length (LongRoPE) take ``seq_len``; without it (the
weight-based analyses, which see no sequence) they are those of sequences up to
``original_max_position_embeddings`` tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from circuitalg.errors import ConfigError

__all__ = ["Rotary", "ROTARY_STYLES", "ROTARY_SCALINGS"]

ROTARY_STYLES = ("half", "interleaved")
ROTARY_SCALINGS = ("none", "linear", "llama3", "yarn", "longrope")


@dataclasses.dataclass(frozen=True)
class Rotary:
    """The rotary embedding of every head of a model (see the module docstring).

    Attributes
    ----------
    dim : int
        Rotated dimensions per head (even, at most ``d_head``); the rest pass unrotated.
    base : float
        ``rope_theta``.
    style : {"half", "interleaved"}
    scaling : {"none", "linear", "llama3", "yarn", "longrope"}
    factor, low_freq_factor, high_freq_factor : float
        Scaling parameters (``factor`` for linear, llama3 and yarn, the band edges for llama3).
    original_max_position_embeddings : int
        The context length llama3, yarn and longrope scaling were designed around (longrope: the
        longest sequence that uses the short factors).
    beta_fast, beta_slow : float
        YaRN's ramp boundaries (in rotations over the original context).
    attention_factor : float
        YaRN's and LongRoPE's multiplier of the rotated coordinates of queries and keys (1 otherwise).
    truncate : bool
        Whether YaRN's correction range is rounded to whole dimensions (transformers' default).
    freq_factors : tuple of float, optional
        Per-plane divisors of the frequencies (llama.cpp's ``rope_freqs`` tensor: how GGUF files
        store Llama 3.1's scaling), applied after ``scaling``; with ``longrope``, its short factors.
    long_factors : tuple of float, optional
        LongRoPE's per-plane divisors for sequences longer than ``original_max_position_embeddings``.
    """

    dim: int
    base: float = 10000.0
    style: str = "half"
    scaling: str = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float = 1.0
    truncate: bool = True
    freq_factors: tuple[float, ...] | None = None
    long_factors: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or self.dim < 2 or self.dim % 2:
            raise ConfigError(f"config rotary dim={self.dim!r} must be a positive even integer.")
        object.__setattr__(self, "dim", int(self.dim))
        for name in ("base", "factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow",
                     "attention_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"config rotary {name}={v!r} must be a positive finite number.")
            object.__setattr__(self, name, float(v))
        if self.style not in ROTARY_STYLES:
            raise ConfigError(f"config rotary style={self.style!r}; use one of {ROTARY_STYLES}.")
        if self.scaling not in ROTARY_SCALINGS:
            raise ConfigError(f"config rotary scaling={self.scaling!r}; circuitalg implements {ROTARY_SCALINGS}.")
        omp = self.original_max_position_embeddings
        if isinstance(omp, bool) or not isinstance(omp, (int, np.integer)) or omp < 1:
            raise ConfigError(f"config rotary original_max_position_embeddings={omp!r} must be a positive integer.")
        if not isinstance(self.truncate, (bool, np.bool_)):
            raise ConfigError(f"config rotary truncate={self.truncate!r} must be true or false.")
        if self.scaling not in ("yarn", "longrope") and self.attention_factor != 1.0:
            raise ConfigError(
                "config rotary attention_factor is YaRN's and LongRoPE's; other scalings do not rescale queries and keys."
            )
        for name in ("freq_factors", "long_factors"):
            factors = getattr(self, name)
            if factors is None:
                continue
            try:
                ff = tuple(float(f) for f in factors)
            except (TypeError, ValueError):
                ff = ()
            if len(ff) != self.dim // 2 or not all(math.isfinite(f) and f > 0 for f in ff):
                raise ConfigError(
                    f"config rotary {name} must be {self.dim // 2} positive numbers (one per rotated plane)."
                )
            object.__setattr__(self, name, ff)
        if (self.scaling == "longrope") != (self.long_factors is not None) or (
            self.scaling == "longrope" and self.freq_factors is None
        ):
            raise ConfigError(
                "config rotary scaling='longrope' needs freq_factors (its short factors) and long_factors, and "
                "long_factors belong to longrope only."
            )
        if self.scaling == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError("config rotary llama3 scaling needs high_freq_factor > low_freq_factor.")

    @classmethod
    def from_dict(cls, d: Any) -> Rotary:
        """From the dict :meth:`TransformerConfig.to_dict` writes (or a Rotary)."""
        if isinstance(d, Rotary):
            return d
        if not isinstance(d, dict):
            raise ConfigError(f"config rotary={d!r} must be a dict of Rotary fields or None (learned positions).")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"config rotary has unknown keys {unknown}; known keys are {sorted(known)}.")
        if "dim" not in d:
            raise ConfigError("config rotary needs dim (the rotated dimensions per head).")
        return cls(**d)

    # -- frequencies and angles -------------------------------------------------------------
    def inv_freq(self, seq_len: int | None = None) -> np.ndarray:
        """The ``dim / 2`` angular frequencies, scaling (and ``freq_factors``) applied; with
        ``longrope``, ``long_factors`` instead for ``seq_len > original_max_position_embeddings``."""
        inv = self._scaled_inv_freq()
        factors = self.freq_factors
        if self.long_factors is not None and seq_len is not None and seq_len > self.original_max_position_embeddings:
            factors = self.long_factors
        return inv if factors is None else inv / np.asarray(factors)

    def _scaled_inv_freq(self) -> np.ndarray:
        inv = 1.0 / self.base ** (np.arange(0, self.dim, 2, dtype=np.float64) / self.dim)
        if self.scaling == "linear":
            return inv / self.factor
        if self.scaling == "llama3":
            old = self.original_max_position_embeddings
            low_wavelen, high_wavelen = old / self.low_freq_factor, old / self.high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
            smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled)
        if self.scaling == "yarn":  # transformers' _compute_yarn_parameters
            old = self.original_max_position_embeddings

            def correction_dim(rotations: float) -> float:
                return self.dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(self.base))

            low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
            if self.truncate:
                low, high = math.floor(low), math.ceil(high)
            low, high = max(low, 0), min(high, self.dim - 1)
            if low == high:
                high += 0.001
            ramp = np.clip((np.arange(self.dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
            extrapolate = 1.0 - ramp
            return inv / self.factor * (1.0 - extrapolate) + inv * extrapolate
        return inv

    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices ``(a, b)`` of the rotated planes, plane ``k`` spanning dims ``a[k], b[k]``."""
        k = np.arange(self.dim // 2)
        if self.style == "half":
            return k, k + self.dim // 2
        return 2 * k, 2 * k + 1

    def apply(self, x: np.ndarray, positions: np.ndarray, seq_len: int | None = None) -> np.ndarray:
        """Rotate ``x`` (``[..., n_positions, d_head]``) by ``R(position)`` row by row (the rotated
        coordinates times ``attention_factor``), with the frequencies of a ``seq_len``-token sequence."""
        angle = np.asarray(positions, dtype=np.float64)[:, None] * self.inv_freq(seq_len)[None, :]
        f = self.attention_factor
        cos, sin = (f * np.cos(angle)).astype(x.dtype), (f * np.sin(angle)).astype(x.dtype)
        a, b = self._pairs()
        out = x.copy()
        xa, xb = x[..., a], x[..., b]
        out[..., a] = xa * cos - xb * sin
        out[..., b] = xb * cos + xa * sin
        return out

    def matrix(self, delta: int, d_head: int, seq_len: int | None = None) -> np.ndarray:
        """``R(Δ)`` as a ``d_head x d_head`` array: ``R(i)ᵀ R(j) = R(j - i)`` for the maps :meth:`apply`
        uses (with YaRN and LongRoPE, ``attention_factor²`` times a rotation on the rotated planes)."""
        R = np.eye(d_head)
        phi = float(delta) * self.inv_freq(seq_len)
        f2 = self.attention_factor**2
        a, b = self._pairs()
        R[a, a], R[b, b] = f2 * np.cos(phi), f2 * np.cos(phi)
        R[a, b], R[b, a] = -f2 * np.sin(phi), f2 * np.sin(phi)
        return R
