"""Small models that ship with circuitalg, and hand-built models with known circuits.

``ca.zoo.list()`` names them; ``ca.zoo.load(name)`` returns a :class:`~circuitalg.Transformer`
(no torch needed). Trained models come with a JSON card (``ca.zoo.card(name)``): architecture,
data recipe, seed, steps, losses and measured scores. ``planted_induction`` is built in code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from circuitalg.errors import InvalidArgumentError
from circuitalg.zoo.planted import planted_induction

__all__ = ["planted_induction", "load", "list", "card", "MODELS_DIR"]

#: Where the trained models and their cards are stored.
MODELS_DIR = Path(__file__).parent / "models"
_BUILT = {"planted_induction": planted_induction}


def list() -> list[str]:  # noqa: A001 - the zoo's public name, as in the issue
    """Names of the available models: trained ones (files in :data:`MODELS_DIR`) and built ones."""
    trained = sorted(p.stem for p in MODELS_DIR.glob("*.safetensors")) if MODELS_DIR.is_dir() else []
    return trained + sorted(_BUILT)


def _check(name: Any) -> str:
    if not isinstance(name, str) or name not in list():
        raise InvalidArgumentError(f"unknown zoo model {name!r}; available: {', '.join(list())}.")
    return name


def load(name: str) -> Any:
    """The zoo model ``name`` as a :class:`~circuitalg.Transformer` (float64)."""
    from circuitalg.model.io import load as load_file

    name = _check(name)
    if name in _BUILT:
        return _BUILT[name]()
    model = load_file(MODELS_DIR / f"{name}.safetensors")
    model.name = name
    return model


def card(name: str) -> dict[str, Any]:
    """The JSON card of a trained zoo model (``{}`` for built ones)."""
    name = _check(name)
    path = MODELS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}
