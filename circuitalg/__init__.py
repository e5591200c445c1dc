"""circuitalg: the mathematics of transformer circuits as typed, factored linear maps.

Conventions: column vectors (a map X -> Y has a matrix of shape ``(Y.dim, X.dim)``,
``g @ f`` is g after f), spaces as types, float64 by default.

The namespace, in the order data flows (each group is also a subpackage with more):

- spaces and maps (:mod:`circuitalg.maps`): ``Space``, ``Dense``, ``compose``, ``kron``, ...
- numerics (:mod:`circuitalg.linalg`): ``singular_values``, ``eigenvalues``, ``norm``, ``trace``,
  ``plan``, ``accuracy``; for many maps at once ``eigenvalues_many`` and ``linalg.top_entries``;
- models (:mod:`circuitalg.model`): ``load``, ``save``, ``Transformer`` and its view ``HeadWeights``,
  the weight transforms, the forward pass (``Cache``), ids (``HeadId``, ``GroupId``, ``Source``);
- circuits (:mod:`circuitalg.circuits`): path expansion, composition scores and baselines, the head
  table, token tables, the virtual-weight graph, circuit search, and the findings named from them;
- feature bases (:mod:`circuitalg.features`): sparse dictionaries (SAEs, transcoders, crosscoders)
  loaded from their libraries' files, bound to a model, and the virtual weights between features;
- symbolic verification (:mod:`circuitalg.symbolic`);
- checkpoints too large to load (:mod:`circuitalg.streaming`): ``stream_full_ov``, ``stream_composition``;
- how the process is used (:mod:`circuitalg.runtime`): ``Runtime``;
- errors and warnings.
"""

from circuitalg import features, linalg, maps, model, runtime, streaming, symbolic, zoo
from circuitalg.circuits import (
    Circuit,
    CircuitGraph,
    CircuitSearch,
    CompositionBaseline,
    FrozenPaths,
    HeadTable,
    PathScore,
    PathSum,
    Sink,
    TokenEntry,
    TopTokens,
    composition_baseline,
    composition_baselines,
    composition_scores,
    copying_score,
    count_circuits,
    effective_rank,
    expand,
    head_table,
    repeated_random_tokens,
    top_circuits,
    top_tokens,
)
from circuitalg.circuits.findings import (
    FAMILY_ALPHA,
    PATTERN_THRESHOLD,
    CompositionFinding,
    HeadFinding,
    composition_finding,
    induction_head,
    previous_token_head,
)
from circuitalg.errors import (
    CircuitAlgError,
    CircuitAlgWarning,
    ConfigError,
    DTypeError,
    InvalidArgumentError,
    InvalidArrayError,
    LoadError,
    NonFiniteError,
    PrecisionWarning,
    ShapeError,
    SpaceMismatchError,
    TooLargeError,
)
from circuitalg.linalg import (
    Plan,
    accuracy,
    as_operator,
    declare_tied,
    eigenvalues,
    eigenvalues_many,
    matvec,
    norm,
    plan,
    rmatvec,
    singular_values,
    svd,
    to_dense,
    trace,
)
from circuitalg.maps import (
    Dense,
    Diagonal,
    Identity,
    Kron,
    LinearMap,
    Product,
    Scaled,
    Sum,
    Transpose,
    add,
    compose,
    diagonal,
    identity,
    kron,
    scale,
    transpose,
)
from circuitalg.model import (
    MLP,
    Cache,
    Head,
    Layer,
    LayerNorm,
    Transformer,
    TransformerConfig,
    center_unembed,
    center_writing_weights,
    fold_layer_norm,
    fold_value_biases,
    load,
    logit_lens,
    param_shapes,
    rotate_residual,
    save,
    to_transformer_lens,
)
from circuitalg.model.ids import FeatureId, GroupId, HeadId, Source
from circuitalg.model.view import HeadWeights
from circuitalg.model.rotary import Rotary
from circuitalg.runtime import Runtime
from circuitalg.spaces import ProductSpace, Space, product_space
from circuitalg.streaming import (
    CompositionPlan,
    CompositionResult,
    FullOVPlan,
    FullOVResult,
    plan_composition,
    plan_full_ov,
    stream_composition,
    stream_full_ov,
)
from circuitalg.symbolic import (
    SymbolicExpansion,
    Verification,
    latex,
    symbolic_expansion,
    to_sympy,
    verify,
    verify_numeric,
)

__version__ = "0.1.0"

__all__ = [
    # spaces and maps
    "Space",
    "ProductSpace",
    "product_space",
    "LinearMap",
    "Dense",
    "Identity",
    "Diagonal",
    "Product",
    "Sum",
    "Scaled",
    "Transpose",
    "Kron",
    "compose",
    "add",
    "scale",
    "transpose",
    "kron",
    "identity",
    "diagonal",
    # numerics
    "matvec",
    "rmatvec",
    "to_dense",
    "as_operator",
    "singular_values",
    "svd",
    "eigenvalues",
    "norm",
    "trace",
    "plan",
    "Plan",
    "accuracy",
    "eigenvalues_many",
    "declare_tied",
    # models: loading, the view, transforms, the forward pass, ids
    "load",
    "save",
    "to_transformer_lens",
    "param_shapes",
    "TransformerConfig",
    "Transformer",
    "Head",
    "MLP",
    "Layer",
    "LayerNorm",
    "HeadWeights",
    "Rotary",
    "HeadId",
    "GroupId",
    "FeatureId",
    "Source",
    "fold_layer_norm",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "rotate_residual",
    "Cache",
    "logit_lens",
    # circuits: paths, composition, heads, tokens, the graph, search
    "expand",
    "FrozenPaths",
    "PathSum",
    "PathScore",
    "Circuit",
    "Sink",
    "composition_scores",
    "composition_baseline",
    "composition_baselines",
    "CompositionBaseline",
    "head_table",
    "HeadTable",
    "copying_score",
    "effective_rank",
    "repeated_random_tokens",
    "top_tokens",
    "TokenEntry",
    "TopTokens",
    "CircuitGraph",
    "top_circuits",
    "count_circuits",
    "CircuitSearch",
    "zoo",
    "features",
    # findings: named heads and significant compositions, with their evidence
    "FAMILY_ALPHA",
    "PATTERN_THRESHOLD",
    "HeadFinding",
    "CompositionFinding",
    "previous_token_head",
    "induction_head",
    "composition_finding",
    # symbolic verification
    "to_sympy",
    "latex",
    "verify",
    "verify_numeric",
    "Verification",
    "symbolic_expansion",
    "SymbolicExpansion",
    # checkpoints too large to load: streamed, optionally on dask
    "FullOVPlan",
    "FullOVResult",
    "plan_full_ov",
    "stream_full_ov",
    "CompositionPlan",
    "CompositionResult",
    "plan_composition",
    "stream_composition",
    # how the process is used: worker threads, BLAS threads, memory advice
    "Runtime",
    # errors
    "CircuitAlgError",
    "InvalidArgumentError",
    "SpaceMismatchError",
    "ShapeError",
    "InvalidArrayError",
    "NonFiniteError",
    "DTypeError",
    "TooLargeError",
    "LoadError",
    "ConfigError",
    "CircuitAlgWarning",
    "PrecisionWarning",
    "__version__",
]
