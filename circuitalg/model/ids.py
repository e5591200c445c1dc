"""Typed ids of model components, formatted and parsed in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from circuitalg.errors import InvalidArgumentError

__all__ = ["HeadId"]

_HEAD_NAME = re.compile(r"^L(\d+)H(\d+)$")


@dataclass(frozen=True, order=True)
class HeadId:
    """Attention head ``head`` of layer ``layer``; printed ``L{layer}H{head}`` (e.g. ``L1H2``)."""

    layer: int
    head: int

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> HeadId:
        """``"L1H2"`` -> ``HeadId(1, 2)``."""
        m = _HEAD_NAME.match(name) if isinstance(name, str) else None
        if m is None:
            raise InvalidArgumentError(f"{name!r} is not a head name; heads are named like 'L1H2' (layer 1, head 2).")
        return cls(int(m.group(1)), int(m.group(2)))
