"""Feature bases: sparse dictionaries (SAEs, transcoders, crosscoders) as typed spaces and maps.

- :mod:`~circuitalg.features.hooks`: where a dictionary reads and writes (:class:`Hook`).
- :mod:`~circuitalg.features.activations`: activations exactly as each library applies them.
- :mod:`~circuitalg.features.dictionary`: :class:`Dictionary`, :class:`DictionarySet`.
- :mod:`~circuitalg.features.io`: :func:`load_dictionary`, :func:`save_dictionary` over
  :mod:`~circuitalg.features.formats`.
"""

from circuitalg.features.activations import Activation, BatchTopK, JumpReLU, Linear, ReLU, TopK
from circuitalg.features.dictionary import PREPROCESSING, Dictionary, DictionaryKind, DictionarySet
from circuitalg.features.hooks import Hook, HookKind
from circuitalg.features.io import FORMATS, detect_format, load_dictionary, save_dictionary

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
]
