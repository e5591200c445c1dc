"""Transformer weights as typed maps: config, loaders, layer-norm folding, forward pass."""

from circuitalg.model.config import TransformerConfig
from circuitalg.model.forward import Cache
from circuitalg.model.io import load, save
from circuitalg.model.layouts import to_transformer_lens
from circuitalg.model.lens import logit_lens
from circuitalg.model.params import param_shapes
from circuitalg.model.transforms import (
    center_unembed,
    center_writing_weights,
    fold_layer_norm,
    fold_value_biases,
    rotate_residual,
)
from circuitalg.model.weights import MLP, Head, Layer, LayerNorm, Transformer

__all__ = [
    "TransformerConfig",
    "Transformer",
    "Head",
    "MLP",
    "Layer",
    "LayerNorm",
    "Cache",
    "param_shapes",
    "load",
    "save",
    "to_transformer_lens",
    "logit_lens",
    "fold_layer_norm",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "rotate_residual",
]
