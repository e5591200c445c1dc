"""Hook points: where in a transformer a dictionary reads or writes, typed.

A :class:`Hook` is a :class:`HookKind` and a layer. Its name is the TransformerLens hook name
(``blocks.8.hook_resid_pre``), the name SAELens, circuit-tracer and most dictionary formats use;
its :meth:`Hook.space` is the vector space of the activations there. The residual stream is one
space (``resid``) at every depth, as in the framework: the hooks on it differ by where they sit,
not by type. Every other hook has its own space (``mlp_in.8``), so a map between a residual
decoder and an MLP-input encoder cannot skip the norm weight between them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from circuitalg.errors import InvalidArgumentError
from circuitalg.spaces import Space

__all__ = ["HookKind", "Hook", "RESID_KINDS", "OUTPUT_KINDS"]


class HookKind(enum.Enum):
    """What a hook carries (value: the TransformerLens hook suffix)."""

    #: the residual stream entering layer ``l``
    RESID_PRE = "hook_resid_pre"
    #: the residual stream after layer ``l``'s attention, before its MLP
    RESID_MID = "hook_resid_mid"
    #: the residual stream after layer ``l`` (= ``RESID_PRE`` of ``l + 1``)
    RESID_POST = "hook_resid_post"
    #: the MLP's input after its norm weight and bias (TransformerLens ``mlp.hook_in``)
    MLP_IN = "mlp.hook_in"
    #: the MLP's input norm before its weight and bias (TransformerLens 3 ``ln2.hook_normalized``)
    MLP_NORMALIZED = "ln2.hook_normalized"
    #: the MLP's output, added to the residual stream (``hook_mlp_out``)
    MLP_OUT = "hook_mlp_out"
    #: the attention layer's output, added to the residual stream (``hook_attn_out``)
    ATTN_OUT = "hook_attn_out"
    #: every head's attention-weighted values before ``W_O``, heads concatenated (``attn.hook_z``)
    ATTN_Z = "attn.hook_z"


#: kinds on the residual stream itself (space ``resid``)
RESID_KINDS = frozenset({HookKind.RESID_PRE, HookKind.RESID_MID, HookKind.RESID_POST})
#: kinds whose activations are added to the residual stream as they are (pre-norm blocks)
OUTPUT_KINDS = frozenset({HookKind.MLP_OUT, HookKind.ATTN_OUT})

_ALIASES = {
    # TransformerLens's block-level hook_mlp_in is the MLP block's input before ln2: the stream
    # after the attention (resid_mid), not mlp.hook_in
    "hook_mlp_in": HookKind.RESID_MID,
    "hook_z": HookKind.ATTN_Z,
}
_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True, order=True)
class Hook:
    """A hook point: ``kind`` at layer ``layer``.

    Parameters
    ----------
    kind : HookKind
    layer : int
        The block index, from 0.
    """

    kind: HookKind
    layer: int

    def __post_init__(self) -> None:
        if not isinstance(self.kind, HookKind):
            raise InvalidArgumentError(f"Hook kind must be a HookKind, got {self.kind!r}.")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            try:
                as_int = int(self.layer)
            except (TypeError, ValueError):
                as_int = -1
            if as_int < 0 or as_int != self.layer or isinstance(self.layer, bool):
                raise InvalidArgumentError(f"Hook layer must be a non-negative integer, got {self.layer!r}.")
            object.__setattr__(self, "layer", as_int)

    @property
    def hook_name(self) -> str:
        """The TransformerLens name, e.g. ``blocks.8.hook_resid_pre``."""
        return f"blocks.{self.layer}.{self.kind.value}"

    def __str__(self) -> str:
        return self.hook_name

    @property
    def on_residual(self) -> bool:
        """Whether the hook is the residual stream itself."""
        return self.kind in RESID_KINDS

    @property
    def depth(self) -> float:
        """Where the hook sits along the residual stream, in layers: a reader at depth ``a`` sees
        what every writer at depth ``< a`` wrote (``RESID_PRE`` of ``l`` is ``l``, the attention's
        output ``l + 0.25``, ``RESID_MID`` and the MLP's input ``l + 0.5``, its output ``l + 0.75``,
        ``RESID_POST`` ``l + 1``)."""
        k = self.kind
        offset = {
            HookKind.RESID_PRE: 0.0,
            HookKind.ATTN_Z: 0.0,
            HookKind.ATTN_OUT: 0.25,
            HookKind.RESID_MID: 0.5,
            HookKind.MLP_IN: 0.5,
            HookKind.MLP_NORMALIZED: 0.5,
            HookKind.MLP_OUT: 0.75,
            HookKind.RESID_POST: 1.0,
        }[k]
        return self.layer + offset

    def space(self, dim: int) -> Space:
        """The space of this hook's activations (``resid`` on the residual stream, else e.g.
        ``mlp_in.8``), of dimension ``dim``."""
        if self.on_residual:
            return Space("resid", dim)
        short = {
            HookKind.MLP_IN: "mlp_in",
            HookKind.MLP_NORMALIZED: "ln2_normalized",
            HookKind.MLP_OUT: "mlp_out",
            HookKind.ATTN_OUT: "attn_out",
            HookKind.ATTN_Z: "z",
        }[self.kind]
        return Space(f"{short}.{self.layer}", dim)

    @classmethod
    def parse(cls, name: str) -> Hook:
        """``"blocks.8.hook_resid_pre"`` -> ``Hook(HookKind.RESID_PRE, 8)``; also the aliases
        ``blocks.8.hook_z`` (``attn.hook_z``) and ``blocks.8.hook_mlp_in`` (the MLP block's input
        before its norm: ``RESID_MID``)."""
        m = _NAME.match(name) if isinstance(name, str) else None
        kind = None
        if m is not None:
            suffix = m.group(2)
            kind = _ALIASES.get(suffix)
            if kind is None:
                kind = next((k for k in HookKind if k.value == suffix), None)
        if kind is None:
            known = ", ".join(f"blocks.L.{k.value}" for k in HookKind)
            raise InvalidArgumentError(
                f"unknown hook name {name!r}; circuitalg reads dictionaries at {known} "
                "(TransformerLens names)."
            )
        return cls(kind, int(m.group(1)))  # type: ignore[union-attr]
