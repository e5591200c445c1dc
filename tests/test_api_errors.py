"""Errors audit: every public function and constructor rejects bad input with a circuitalg
exception whose message says what was passed, what is expected and the fix.

Each entry pins one full message. ``test_every_public_callable_is_audited`` fails when a
public callable is added without an entry here (result records, which circuitalg builds
and users only read, are listed in ``RESULT_RECORDS``).
"""

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import circuitalg as ca

MODEL = ca.zoo.planted_induction()
x, y = ca.Space("x", 2), ca.Space("y", 3)
A = ca.Dense(np.ones((3, 2)), x, y, "A")
m = MODEL

# (public name, bad call, exception class, the exact message)
CASES = [
    (
        "eigenvalues_many",
        lambda: ca.eigenvalues_many([A, A]),
        ca.ShapeError,
        "eigenvalues_many (maps[0]) needs a square map, but A maps x[2] -> y[3] (shape (3, 2)); use "
        "singular_values for non-square maps.",
    ),
    (
        "declare_tied",
        lambda: ca.declare_tied(A, A),
        ca.InvalidArgumentError,
        "declare_tied: A (3, 2) cannot be the transpose of A (3, 2) times a d x d map; pass the "
        "unembedding (vocab x d_model) first and the embedding (d_model x vocab) second.",
    ),
    (
        "plan_full_ov",
        lambda: ca.plan_full_ov("/nonexistent/dir"),
        ca.LoadError,
        "/nonexistent/dir: no such checkpoint directory (a Hugging Face folder of safetensors files).",
    ),
    (
        "stream_full_ov",
        lambda: ca.stream_full_ov("/nonexistent/dir", budget_bytes=0),
        ca.InvalidArgumentError,
        "budget_bytes=0; pass an integer >= 1.",
    ),
    (
        "plan_composition",
        lambda: ca.plan_composition("/nonexistent/dir"),
        ca.LoadError,
        "/nonexistent/dir: no such checkpoint directory (a Hugging Face folder of safetensors files).",
    ),
    (
        "stream_composition",
        lambda: ca.stream_composition("/nonexistent/dir", ("k", "o")),
        ca.InvalidArgumentError,
        "kind='o' is not a composition kind; use 'q', 'k' or 'v'.",
    ),
    (
        'Space',
        lambda: ca.Space("resid", 0),
        ca.InvalidArgumentError,
        "Space 'resid': dim must be a positive integer, got 0.",
    ),
    (
        'ProductSpace',
        lambda: ca.ProductSpace("p", 6, (x,)),
        ca.InvalidArgumentError,
        "ProductSpace 'p': factors must be a tuple of at least two plain Spaces, got (Space(name='x', dim=2),); build products with ca.product_space(a, b).",
    ),
    (
        'product_space',
        lambda: ca.product_space(x, 3),
        ca.InvalidArgumentError,
        'product_space expects Space objects, got int; make each with ca.Space(name, dim).',
    ),
    (
        'Dense',
        lambda: ca.Dense(np.ones((2, 3)), x, y, "W"),
        ca.ShapeError,
        "Dense 'W': array shape (2, 3) does not match (codomain.dim, domain.dim) = (3, 2) for x[2] -> y[3]. The array looks transposed: if it is a row-vector weight (x @ W), pass array.T.",
    ),
    (
        'Identity',
        lambda: ca.Identity("x"),
        ca.InvalidArgumentError,
        "identity needs a ca.Space, got str; e.g. ca.identity(ca.Space('resid', 768)).",
    ),
    (
        'Diagonal',
        lambda: ca.Diagonal([1.0, 2.0], y, "D"),
        ca.ShapeError,
        "diagonal 'D': 2 values given for space y[3]; pass exactly 3.",
    ),
    (
        'Product',
        lambda: ca.Product([A]),
        ca.InvalidArgumentError,
        'Product needs at least two factors; use ca.compose.',
    ),
    (
        'Sum',
        lambda: ca.Sum([A]),
        ca.InvalidArgumentError,
        'Sum needs at least two terms; use ca.add.',
    ),
    (
        'Scaled',
        lambda: ca.Scaled(2.0, "A"),
        ca.InvalidArgumentError,
        'Scaled takes a ca.LinearMap, got str; wrap arrays as ca.Dense(array, domain=..., codomain=...).',
    ),
    (
        'Transpose',
        lambda: ca.Transpose(np.ones(2)),
        ca.InvalidArgumentError,
        'Transpose takes a ca.LinearMap, got ndarray; wrap arrays as ca.Dense(array, domain=..., codomain=...).',
    ),
    (
        'Kron',
        lambda: ca.Kron([A]),
        ca.InvalidArgumentError,
        'Kron needs at least two factors; use ca.kron.',
    ),
    (
        'compose',
        lambda: ca.compose(A, A),
        ca.SpaceMismatchError,
        'cannot compose A @ A: A reads from x[2] but A writes to y[3]. Did you mean to transpose the right-hand map (right.T)?',
    ),
    (
        'add',
        lambda: ca.add(A, A.T),
        ca.SpaceMismatchError,
        'cannot add A + A.T: A maps x[2] -> y[3] but A.T maps y[3] -> x[2]. Terms of a sum must share domain and codomain.',
    ),
    (
        'scale',
        lambda: ca.scale(float("nan"), A),
        ca.NonFiniteError,
        'cannot scale a map by nan; the scalar must be finite.',
    ),
    (
        'transpose',
        lambda: ca.transpose(np.ones((2, 2))),
        ca.InvalidArgumentError,
        'transpose takes a ca.LinearMap, got ndarray; wrap arrays as ca.Dense(array, domain=..., codomain=...).',
    ),
    (
        'kron',
        lambda: ca.kron(A, "B"),
        ca.InvalidArgumentError,
        'kron takes a ca.LinearMap, got str; wrap arrays as ca.Dense(array, domain=..., codomain=...).',
    ),
    (
        'identity',
        lambda: ca.identity(x, dtype=np.int8),
        ca.DTypeError,
        "identity on x[2]: dtype int8 requested; use numpy.float32 or numpy.float64.",
    ),
    (
        'diagonal',
        lambda: ca.diagonal([1.0, np.inf], x, "D"),
        ca.NonFiniteError,
        "diagonal 'D': contains 0 NaN and 1 infinite entries (first at index (1,)); fix or clean the weights before analysing them.",
    ),
    (
        'matvec',
        lambda: ca.matvec(A, np.ones(3)),
        ca.ShapeError,
        "matvec of A: input has 3 rows but the map's domain is x[2]; expected shape (2,) or (2, k).",
    ),
    (
        'rmatvec',
        lambda: ca.rmatvec(A, np.ones(2)),
        ca.ShapeError,
        "rmatvec of A: input has 2 rows but the map's codomain is y[3]; expected shape (3,) or (3, k).",
    ),
    (
        'to_dense',
        lambda: ca.to_dense(A, max_bytes=8),
        ca.TooLargeError,
        'to_dense of A needs a dense 3 x 2 float64 array of 4.8e-08 GB, above the budget of 8e-09 GB. Use the factored routines (singular_values, norm, eigenvalues, trace, matvec), which never build it, or pass a larger max_bytes if you really want the dense matrix.',
    ),
    (
        'as_operator',
        lambda: ca.as_operator(np.eye(2)),
        ca.InvalidArgumentError,
        'as_operator takes a ca.LinearMap, got ndarray; wrap arrays as ca.Dense(array, domain=..., codomain=...).',
    ),
    (
        'singular_values',
        lambda: ca.singular_values(A, k=3),
        ca.InvalidArgumentError,
        'k=3 exceeds min(shape)=2 of A (3, 2); pass k <= 2.',
    ),
    (
        'svd',
        lambda: ca.svd(A, k=0),
        ca.InvalidArgumentError,
        'k must be a positive integer or None, got 0.',
    ),
    (
        'eigenvalues',
        lambda: ca.eigenvalues(A),
        ca.ShapeError,
        'eigenvalues needs a square map, but A maps x[2] -> y[3] (shape (3, 2)); use singular_values for non-square maps.',
    ),
    (
        'norm',
        lambda: ca.norm([[1.0]]),
        ca.InvalidArgumentError,
        'norm takes a ca.LinearMap, got list; wrap arrays as ca.Dense(array, domain=..., codomain=...).',
    ),
    (
        'trace',
        lambda: ca.trace(A),
        ca.ShapeError,
        'trace needs a square map, but A maps x[2] -> y[3] (shape (3, 2)); use singular_values for non-square maps.',
    ),
    (
        'plan',
        lambda: ca.plan(A, "determinant"),
        ca.InvalidArgumentError,
        "unknown problem 'determinant'; expected one of ('singular_values', 'svd', 'eigenvalues', 'norm', 'trace').",
    ),
    (
        'accuracy',
        lambda: ca.accuracy(None),
        ca.InvalidArgumentError,
        'accuracy takes a ca.LinearMap, got NoneType; wrap arrays as ca.Dense(array, domain=..., codomain=...).',
    ),
    (
        'TransformerConfig',
        lambda: ca.TransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_vocab=5, n_ctx=0),
        ca.ConfigError,
        'config n_ctx=0 is outside [1, 10_000_000].',
    ),
    (
        'Transformer',
        lambda: ca.Transformer("cfg", {}),
        ca.InvalidArgumentError,
        'config must be a ca.TransformerConfig, got str; build one with ca.TransformerConfig(...) or TransformerConfig.from_dict(d).',
    ),
    (
        'LayerNorm',
        lambda: ca.LayerNorm(-1e-5),
        ca.InvalidArgumentError,
        'LayerNorm eps=-1e-05; pass a finite number >= 0 (e.g. 1e-5).',
    ),
    (
        'param_shapes',
        lambda: ca.param_shapes({"n_layers": 1}),
        ca.InvalidArgumentError,
        'param_shapes takes a ca.TransformerConfig, got dict; build one with ca.TransformerConfig(n_layers=..., ...) or use model.config.',
    ),
    (
        'load',
        lambda: ca.load(m),
        ca.InvalidArgumentError,
        'load: path must be a file or directory name (str or Path), got Transformer; a model that is already loaded needs no loading.',
    ),
    (
        'save',
        lambda: ca.save(m, "model.pt"),
        ca.InvalidArgumentError,
        "save: unsupported suffix '.pt' for model.pt; use .safetensors or .npz.",
    ),
    (
        'to_transformer_lens',
        lambda: ca.to_transformer_lens({}, m.config),
        ca.InvalidArgumentError,
        "to_transformer_lens: params lack ['W_E', 'W_pos', 'W_U', 'b_U'] ...; pass model.params with model.config.",
    ),
    (
        'logit_lens',
        lambda: ca.logit_lens(m, "cache"),
        ca.InvalidArgumentError,
        'cache must be the Cache from model.run(tokens), got str.',
    ),
    (
        'fold_layer_norm',
        lambda: ca.fold_layer_norm(m.params),
        ca.InvalidArgumentError,
        'fold_layer_norm takes a ca.Transformer, got dict; load one with ca.load(path) or build ca.zoo.planted_induction().',
    ),
    (
        'center_writing_weights',
        lambda: ca.center_writing_weights(None),
        ca.InvalidArgumentError,
        'center_writing_weights takes a ca.Transformer, got NoneType; load one with ca.load(path) or build ca.zoo.planted_induction().',
    ),
    (
        'center_unembed',
        lambda: ca.center_unembed("gpt2"),
        ca.InvalidArgumentError,
        'center_unembed takes a ca.Transformer, got str; load one with ca.load(path) or build ca.zoo.planted_induction().',
    ),
    (
        'fold_value_biases',
        lambda: ca.fold_value_biases(m.config),
        ca.InvalidArgumentError,
        'fold_value_biases takes a ca.Transformer, got TransformerConfig; load one with ca.load(path) or build ca.zoo.planted_induction().',
    ),
    (
        'rotate_residual',
        lambda: ca.rotate_residual(m, np.eye(3)),
        ca.InvalidArgumentError,
        f'rotate_residual: Q has shape (3, 3); pass a {m.config.d_model} x {m.config.d_model} orthogonal matrix (d_model={m.config.d_model}).',
    ),
    (
        'expand',
        lambda: ca.expand(m, max_heads=-1),
        ca.InvalidArgumentError,
        'max_heads=-1; pass an integer >= 0 (n_layers=2; more heads give the full expansion).',
    ),
    (
        'PathSum',
        lambda: ca.PathSum(m, 1, ["resid"]),
        ca.InvalidArgumentError,
        "unknown sources ['resid']; choose from ('embed', 'pos', 'attn_bias', 'mlp', 'unembed_bias').",
    ),
    (
        'composition_scores',
        lambda: ca.composition_scores(m, "o"),
        ca.InvalidArgumentError,
        "kind='o' is not a composition kind; use 'q', 'k' or 'v'.",
    ),
    (
        'composition_baseline',
        lambda: ca.composition_baseline(m, "k", n_samples=1),
        ca.InvalidArgumentError,
        'n_samples=1; pass an integer >= 2.',
    ),
    (
        'composition_baselines',
        lambda: ca.composition_baselines(m, "qk"),
        ca.InvalidArgumentError,
        "kinds='qk'; pass a non-empty sequence of 'q', 'k', 'v'.",
    ),
    (
        'head_table',
        lambda: ca.head_table(m, k=0),
        ca.InvalidArgumentError,
        'k=0; pass an integer from 1 to 32 (d_head).',
    ),
    (
        'copying_score',
        lambda: ca.copying_score([1.0, np.nan]),
        ca.NonFiniteError,
        'copying_score: eigs contains NaN or Inf; pass finite values.',
    ),
    (
        'effective_rank',
        lambda: ca.effective_rank(np.ones((2, 2))),
        ca.ShapeError,
        'effective_rank: s has shape (2, 2); pass a 1-D array (one value per entry).',
    ),
    (
        'repeated_random_tokens',
        lambda: ca.repeated_random_tokens(m, seq_len=13),
        ca.InvalidArgumentError,
        'seq_len=13: the repeated sequence has 26 tokens but n_ctx=24; use seq_len <= 12.',
    ),
    (
        'top_tokens',
        lambda: ca.top_tokens(m.W_E, by="rank"),
        ca.InvalidArgumentError,
        "by='rank'; use 'value' or 'abs'.",
    ),
    (
        'CircuitGraph',
        lambda: ca.CircuitGraph(m, baselines={"q": 0.1}),
        ca.InvalidArgumentError,
        "CircuitGraph: baselines must map 'q'/'k'/'v' to ca.CompositionBaseline, got {'q': 0.1}; make them with ca.composition_baseline(model, kind) or leave baselines out.",
    ),
    (
        'top_circuits',
        lambda: ca.top_circuits(m, k=0),
        ca.InvalidArgumentError,
        'k=0; pass an integer >= 1.',
    ),
    (
        'count_circuits',
        lambda: ca.count_circuits(m, max_heads=-1),
        ca.InvalidArgumentError,
        'max_heads=-1; pass an integer >= 0.',
    ),
    (
        'to_sympy',
        lambda: ca.to_sympy(np.eye(2)),
        ca.InvalidArgumentError,
        'no sympy twin for ndarray; register one with to_sympy.register.',
    ),
    (
        'latex',
        lambda: ca.latex(1.5),
        ca.InvalidArgumentError,
        'cannot render float as LaTeX; pass a map or a sympy expression.',
    ),
    (
        'verify',
        lambda: ca.verify(A, A, trials=0),
        ca.InvalidArgumentError,
        'trials=0; pass an integer >= 1.',
    ),
    (
        'verify_numeric',
        lambda: ca.verify_numeric(A, A, rtol=-1.0),
        ca.InvalidArgumentError,
        'verify_numeric: rtol=-1.0; pass a finite number >= 0.',
    ),
    (
        'symbolic_expansion',
        lambda: ca.symbolic_expansion(0, 2),
        ca.InvalidArgumentError,
        'n_layers=0; pass a positive integer.',
    ),
    (
        'zoo.load',
        lambda: ca.zoo.load("gpt2"),
        ca.InvalidArgumentError,
        "unknown zoo model 'gpt2'; available: attn1l, attn2l, planted_induction.",
    ),
    (
        'zoo.card',
        lambda: ca.zoo.card("planted"),
        ca.InvalidArgumentError,
        "unknown zoo model 'planted'; available: attn1l, attn2l, planted_induction.",
    ),
    (
        'Transformer.run',
        lambda: m.run([[0, 1, 99]]),
        ca.ShapeError,
        'tokens must be a 1-D sequence of ids, got shape (1, 3); run one sequence at a time (loop over the batch).',
    ),
    (
        'Rotary',
        lambda: ca.Rotary(dim=3),
        ca.ConfigError,
        'config rotary dim=3 must be a positive even integer.',
    ),
    (
        'Source',
        lambda: ca.Source("mlp"),
        ca.InvalidArgumentError,
        "Source 'mlp': a layer is required.",
    ),
    (
        'Sink',
        lambda: ca.Sink("k"),
        ca.InvalidArgumentError,
        "Sink: a QK sink ('q' or 'k') needs head and other; 'unembed' takes neither.",
    ),
    (
        'FrozenPaths',
        lambda: ca.expand(m).on([0, 1], "cache"),
        ca.InvalidArgumentError,
        'cache must be the Cache from model.run(tokens), got str.',
    ),
    (
        'Runtime',
        lambda: ca.Runtime(workers=0),
        ca.InvalidArgumentError,
        'Runtime(workers=0): pass a positive integer, or None for one per core.',
    ),
    (
        'HeadId',
        lambda: ca.HeadId.parse("L1X2"),
        ca.InvalidArgumentError,
        "'L1X2' is not a head name; heads are named like 'L1H2' (layer 1, head 2).",
    ),
    (
        'FeatureId',
        lambda: ca.FeatureId.parse("res8-1234"),
        ca.InvalidArgumentError,
        "'res8-1234' is not a feature name; features are named like 'res8#1234' (dictionary res8, feature 1234).",
    ),
    (
        'previous_token_head',
        lambda: ca.previous_token_head(ca.head_table(m, k=1)),
        ca.InvalidArgumentError,
        'previous_token_head: the head table has no behavioural scores; make it with '
        'ca.head_table(model, ca.repeated_random_tokens(model, seq_len)).',
    ),
    (
        'induction_head',
        lambda: ca.induction_head("table"),
        ca.InvalidArgumentError,
        'induction_head takes a ca.HeadTable, got str; make one with ca.head_table(model, tokens).',
    ),
    (
        'composition_finding',
        lambda: ca.composition_finding(ca.composition_scores(m, "k"), ca.composition_baseline(m, "k"),
                                       pair=(ca.HeadId(1, 0), ca.HeadId(0, 1))),
        ca.InvalidArgumentError,
        'L1H0 -> L0H1: a composition needs the writer in an earlier layer than the reader.',
    ),
    (
        'Transformer.head',
        lambda: m.head(0, 7),
        ca.InvalidArgumentError,
        'head 7 is out of range for planted_induction: use 0..2.',
    ),
]

#: Records circuitalg returns (plans, caches, heads, results); users read them, circuitalg builds them.
RESULT_RECORDS = {
    "LinearMap", "Plan", "Cache", "Head", "MLP", "Layer", "PathScore", "CompositionBaseline",
    "HeadTable", "TokenEntry", "TopTokens", "Circuit", "CircuitSearch", "Verification", "SymbolicExpansion",
    "HeadFinding", "CompositionFinding", "FullOVPlan", "FullOVResult", "CompositionPlan", "CompositionResult",
    "CircuitAlgWarning", "PrecisionWarning", "HeadWeights", "GroupId",
}


@pytest.mark.parametrize(("name", "call", "exc", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_message_is_pinned(name, call, exc, message) -> None:
    with pytest.raises(exc) as info:
        call()
    assert str(info.value) == message
    assert isinstance(info.value, ca.CircuitAlgError)


def test_every_public_callable_is_audited() -> None:
    public = {
        n for n in ca.__all__
        if callable(getattr(ca, n)) and not (inspect.isclass(getattr(ca, n)) and issubclass(getattr(ca, n), BaseException))
    }
    public |= {f"zoo.{n}" for n in ("load", "card")}
    audited = {c[0] for c in CASES}
    missing = sorted(public - audited - RESULT_RECORDS)
    assert not missing, f"public callables without a pinned bad-input message: {missing}"


def test_no_assert_guards_in_the_library() -> None:
    root = Path(ca.__file__).parent
    offenders = [
        f"{p.relative_to(root)}:{node.lineno}"
        for p in root.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert not offenders, f"assert statements (stripped by python -O) guard input at {offenders}"


def test_every_exception_raised_by_the_library_is_in_its_family() -> None:
    """Raise sites in the package use circuitalg's exceptions (or re-raise); no bare ValueError."""
    root = Path(ca.__file__).parent
    family = {n for n in dir(ca) if inspect.isclass(getattr(ca, n)) and issubclass(getattr(ca, n), ca.CircuitAlgError)}
    # AttributeError: writing to an immutable object; LinAlgError: caught internally (factor fallback);
    # ArgumentTypeError: argparse's protocol for a bad option value (the command exits 2 naming the option);
    # KeyError: the mapping protocol of the graph's edge attributes (a missing key, as any dict)
    allowed = family | {"AssertionError", "AttributeError", "LinAlgError", "ArgumentTypeError", "KeyError"}
    bad = []
    for p in root.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
                if name and name[0].isupper() and name not in allowed and not re.match(r"^[A-Z]\w*Warning$", name):
                    bad.append(f"{p.relative_to(root)}:{node.lineno} raises {name}")
    assert not bad, bad
