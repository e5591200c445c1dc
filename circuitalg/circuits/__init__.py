"""Circuits: path expansion, composition scores, head diagnostics, the graph, circuit enumeration."""

from circuitalg.circuits.circuit import SINK_SIDES, Circuit, Sink, count_head_chains, head_chains
from circuitalg.circuits.composition import (
    COMPOSITION_KINDS,
    CompositionBaseline,
    composition_baseline,
    composition_baselines,
    composition_scores,
)
from circuitalg.circuits.diagnostics import (
    HeadTable,
    TokenEntry,
    TopTokens,
    copying_score,
    effective_rank,
    head_table,
    repeated_random_tokens,
    top_tokens,
)
from circuitalg.circuits.enumerate import CircuitSearch, count_circuits, top_circuits
from circuitalg.circuits.graph import EDGE_KINDS, CircuitGraph
from circuitalg.circuits.paths import SOURCE_KINDS, FrozenPaths, PathScore, PathSum, expand

__all__ = [
    "COMPOSITION_KINDS",
    "CompositionBaseline",
    "composition_baseline",
    "composition_baselines",
    "composition_scores",
    "HeadTable",
    "TokenEntry",
    "TopTokens",
    "copying_score",
    "effective_rank",
    "head_table",
    "repeated_random_tokens",
    "top_tokens",
    "SINK_SIDES",
    "Circuit",
    "Sink",
    "head_chains",
    "count_head_chains",
    "CircuitSearch",
    "count_circuits",
    "top_circuits",
    "EDGE_KINDS",
    "CircuitGraph",
    "FrozenPaths",
    "PathSum",
    "PathScore",
    "expand",
    "SOURCE_KINDS",
]
