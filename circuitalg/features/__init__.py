"""Feature bases: sparse dictionaries (SAEs, transcoders, crosscoders) as typed spaces and maps.

- :mod:`~circuitalg.features.hooks`: where a dictionary reads and writes (:class:`Hook`).
- :mod:`~circuitalg.features.activations`: activations exactly as each library applies them.
- :mod:`~circuitalg.features.dictionary`: :class:`Dictionary`, :class:`DictionarySet`.
- :mod:`~circuitalg.features.io`: :func:`load_dictionary`, :func:`save_dictionary` over
  :mod:`~circuitalg.features.formats`.
- :mod:`~circuitalg.features.binding`: :func:`bind` a dictionary to a model (hooks checked,
  preprocessing resolved, the norm on MLP-input reads as a map).
- :mod:`~circuitalg.features.circuits`: virtual weights between features (through the stream, a
  head's OV map, QK forms) and readouts (logits, tokens), as lazy maps; exact top entries with a
  certificate.
- :mod:`~circuitalg.features.coactivation`: co-activation statistics, ERA and TWERA.
- :mod:`~circuitalg.features.streaming`: per-row top entries and a cross-layer transcoder's global
  weights as dask tiles.
- :mod:`~circuitalg.features.attribution`: attribution graphs on a prompt (transcoders replacing the
  MLPs, attention patterns and norm scales frozen, error and constant nodes: complete to rounding);
  :mod:`~circuitalg.features.graphfile`: circuit-tracer's graph files;
  :mod:`~circuitalg.features.view`: the offline HTML view; :mod:`~circuitalg.features.summary`:
  the top paths to a target logit.
"""

from circuitalg.features.activations import Activation, BatchTopK, JumpReLU, Linear, ReLU, TopK
from circuitalg.features.dictionary import PREPROCESSING, Dictionary, DictionaryKind, DictionarySet
from circuitalg.features.hooks import Hook, HookKind
from circuitalg.features.io import FORMATS, detect_format, load_dictionary, save_dictionary
from circuitalg.features.binding import BoundDictionary, bind
from circuitalg.features.circuits import (
    FeatureLogits, FeatureWeight, FeatureWeights, PositionId, TokenId, WeightCertificate, feature_logits, feature_qk,
    head_virtual_weights, layer_virtual_weights, position_features, token_features, top_feature_logits,
    top_feature_weights, virtual_weights,
)
from circuitalg.features.coactivation import CoactivationStats, coactivation_stats, era, top_twera, twera
from circuitalg.features.attribution import (
    AttributionGraph, ConstantNode, ErrorNode, FeatureNode, LogitNode, LogitTarget, QKAttribution, QKFeatureAttribution,
    SAEErrorNode, SAEFeatureNode, TokenNode, attribute,
)
from circuitalg.features.graphfile import read_circuit_tracer_json, write_circuit_tracer_json
from circuitalg.features.summary import summarise, top_paths
from circuitalg.features.view import write_attribution_html
from circuitalg.features.streaming import (
    GlobalWeights, GlobalWeightsPlan, RowTopEntries, plan_global_weights, stream_global_weights, top_entries_per_row,
)
from circuitalg.model.ids import FeatureId

__all__ = [
    "Hook",
    "HookKind",
    "Activation",
    "ReLU",
    "JumpReLU",
    "TopK",
    "BatchTopK",
    "Linear",
    "Dictionary",
    "DictionaryKind",
    "DictionarySet",
    "PREPROCESSING",
    "FORMATS",
    "load_dictionary",
    "save_dictionary",
    "detect_format",
    "bind",
    "BoundDictionary",
    "FeatureId",
    "TokenId",
    "PositionId",
    "virtual_weights",
    "head_virtual_weights",
    "layer_virtual_weights",
    "feature_qk",
    "feature_logits",
    "token_features",
    "position_features",
    "top_feature_weights",
    "top_feature_logits",
    "FeatureWeight",
    "FeatureWeights",
    "WeightCertificate",
    "FeatureLogits",
    "CoactivationStats",
    "coactivation_stats",
    "era",
    "twera",
    "top_twera",
    "attribute",
    "AttributionGraph",
    "FeatureNode",
    "ErrorNode",
    "TokenNode",
    "LogitNode",
    "ConstantNode",
    "LogitTarget",
    "QKAttribution",
    "QKFeatureAttribution",
    "SAEFeatureNode",
    "SAEErrorNode",
    "write_circuit_tracer_json",
    "read_circuit_tracer_json",
    "write_attribution_html",
    "summarise",
    "top_paths",
    "top_entries_per_row",
    "RowTopEntries",
    "stream_global_weights",
    "plan_global_weights",
    "GlobalWeights",
    "GlobalWeightsPlan",
]
