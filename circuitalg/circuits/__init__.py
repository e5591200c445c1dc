"""Circuits: path expansion (and, later, virtual weights, composition scores, the graph)."""

from circuitalg.circuits.paths import SOURCE_KINDS, Path, PathScore, PathSum, expand

__all__ = ["Path", "PathSum", "PathScore", "expand", "SOURCE_KINDS"]
