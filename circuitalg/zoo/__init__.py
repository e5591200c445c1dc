"""Small models that ship with circuitalg, and hand-built models with known circuits."""

from circuitalg.zoo.planted import planted_induction

__all__ = ["planted_induction"]
