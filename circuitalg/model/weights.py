"""A transformer's weights as typed maps on named spaces.

Spaces: ``vocab[d_vocab]``, ``pos[n_ctx]``, ``resid[d_model]``, one space per head named
``L{l}H{h}`` (so one head's W_V cannot be composed with another head's W_O by mistake) and
``mlp{l}`` for MLP hidden units. Column-vector convention throughout: ``W_E`` is
``(d_model, d_vocab)``, ``W_Q`` of a head is ``(d_head, d_model)``, ``W_O`` is
``(d_model, d_head)``.

The canonical parameter names (circuitalg's own checkpoint format, column layout) are
listed by :func:`param_shapes`; loaders for other layouts convert to them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, LoadError, ShapeError, check_real
from circuitalg.maps.nodes import Dense, LinearMap, as_float_array
from circuitalg.maps.rules import identity
from circuitalg.model.config import TransformerConfig
from circuitalg.model.folding import fold_head_norms, fold_params
from circuitalg.model.forward import activation
from circuitalg.model.ids import EMBED, POS, GroupId, HeadId, Source, layer_tag
from circuitalg.model.params import BIAS_KEYS, param_shapes, validate_params
from circuitalg.model.rotary import Rotary
from circuitalg.model.view import stack_heads
from circuitalg.spaces import POS_SPACE, VOCAB_SPACE, Space

#: The one-dimensional space of constant terms (biases written at every position).
CONST_SPACE = Space("const", 1)

if TYPE_CHECKING:  # pragma: no cover
    from circuitalg.model.forward import Cache

__all__ = ["Transformer", "Head", "MLP", "LayerNorm", "Layer", "param_shapes", "BIAS_KEYS"]

def require_model(model: Any, what: str | None = None) -> Transformer:
    """``model`` if it is a :class:`Transformer`, else :class:`InvalidArgumentError` naming ``what``."""
    if not isinstance(model, Transformer):
        head = f"{what} takes a ca.Transformer" if what else "expected a ca.Transformer"
        raise InvalidArgumentError(
            f"{head}, got {type(model).__name__}; load one with ca.load(path) or build "
            "ca.zoo.planted_induction()."
        )
    return model


@dataclasses.dataclass(frozen=True, eq=False)
class LayerNorm:
    """A pre-norm layer norm: ``y = w * (x - mean(x)) / scale + b``, ``scale = sqrt(var(x) + eps)``;
    with ``center=False`` an RMSNorm: ``y = w * x / sqrt(mean(x²) + eps)``.

    In a model's view (``model.layers[l].ln1``, ``model.ln_final``) ``w`` and ``b`` are always
    ``None``: they are folded into the maps that read the norm, and the stored ones stay in
    ``model.params``. The per-position ``scale`` is what :meth:`Transformer.run` caches and path
    expansion freezes.
    """

    eps: float
    w: np.ndarray | None = None
    b: np.ndarray | None = None
    center: bool = True

    def __post_init__(self) -> None:
        check_real("LayerNorm eps", self.eps, 0, hint=" (e.g. 1e-5)")
        for name in ("w", "b"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, as_float_array(v, f"LayerNorm {name}", ndim=1))
        if self.w is not None and self.b is not None and self.w.shape != self.b.shape:
            raise ShapeError(
                f"LayerNorm w has shape {self.w.shape} but b has shape {self.b.shape}; both are (d_model,)."
            )

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalise the rows of ``x`` (``[..., d_model]``); returns ``(y, scale)``."""
        centred = x - x.mean(axis=-1, keepdims=True) if self.center else x
        scale = np.sqrt((centred**2).mean(axis=-1) + self.eps)
        y = centred / scale[..., None]
        if self.w is not None:
            y = y * self.w
        if self.b is not None:
            y = y + self.b
        return y, scale


@dataclasses.dataclass(frozen=True, eq=False)
class Head:
    """One attention head: typed maps ``W_Q, W_K, W_V: resid -> L{l}H{h}``, ``W_O: L{l}H{h} -> resid``.

    ``ov`` is ``W_O @ W_V`` (resid -> resid) and ``qk`` is ``W_Q.T @ W_K`` (resid -> resid,
    the bilinear form: the score of query x and key y is ``x · qk y / attn_scale`` plus bias
    terms). Both are lazy products that share the leaves, so decompositions are cached.
    """

    layer: int
    index: int
    W_Q: Dense
    W_K: Dense
    W_V: Dense
    W_O: Dense
    b_Q: np.ndarray
    b_K: np.ndarray
    b_V: np.ndarray
    rotary: Rotary | None = None
    kv_group: int | None = None

    @property
    def id(self) -> HeadId:
        """The typed id ``HeadId(layer, index)``."""
        return HeadId(self.layer, self.index)

    @property
    def name(self) -> str:
        """``L{layer}H{index}``."""
        return self.id.name

    @property
    def key(self) -> tuple[int, int]:
        """``(layer, index)``."""
        return (self.layer, self.index)

    @property
    def space(self) -> Space:
        """The head's own space ``L{l}H{h}[d_head]``."""
        return self.W_V.codomain

    @cached_property
    def ov(self) -> LinearMap:
        """The OV circuit ``W_O @ W_V`` (resid -> resid)."""
        return self.W_O @ self.W_V

    @cached_property
    def qk(self) -> LinearMap:
        """The QK circuit ``W_Q.T @ W_K`` (resid -> resid, read as a bilinear form). For a rotary
        head this is the form at offset 0, ``W_QK(0)`` (``R(0) = I``; under YaRN scaling ``R(0)`` is
        ``attention_factor²`` on the rotated planes, use ``qk_at(0)``); see :meth:`qk_at`."""
        return self.W_Q.T @ self.W_K

    def rotation(self, delta: int) -> LinearMap:
        """``R(Δ)``, the rotary rotation of this head's space between a query and a key ``Δ``
        positions apart (``Δ = key - query``), with this layer's rotary embedding (LongRoPE: the
        frequencies of sequences up to ``original_max_position_embeddings``); the identity without
        rotary embeddings."""
        if isinstance(delta, bool) or not isinstance(delta, (int, np.integer)):
            raise InvalidArgumentError(f"delta={delta!r}; pass an integer offset key - query (e.g. -1).")
        if self.rotary is None:
            return identity(self.space, dtype=self.W_Q.dtype)
        R = self.rotary.matrix(int(delta), self.space.dim).astype(self.W_Q.dtype)
        return Dense(R, self.space, self.space, f"R_{layer_tag(self.layer)}({int(delta)})")

    def qk_at(self, delta: int) -> LinearMap:
        """``W_QK(Δ) = W_Qᵀ R(Δ) W_K``: the bilinear form between a query at position ``i`` and a key
        at ``i + Δ`` (``Δ <= 0`` for causal attention); :attr:`qk` without rotary embeddings."""
        return self.W_Q.T @ self.rotation(delta) @ self.W_K

    def __repr__(self) -> str:
        return f"<Head {self.name}: d_head={self.space.dim}>"

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True, eq=False)
class MLP:
    """An MLP block: ``W_out act(W_in x + b_in) + b_out`` with typed maps through ``mlp{l}``; a
    gated MLP (``W_gate`` set) computes ``W_out (act(W_gate x + b_gate) * (W_in x + b_in)) + b_out``."""

    layer: int
    W_in: Dense
    b_in: np.ndarray
    W_out: Dense
    b_out: np.ndarray
    act_fn: str
    W_gate: Dense | None = None
    b_gate: np.ndarray | None = None
    post: LayerNorm | None = None

    @cached_property
    def writer(self) -> Dense:
        """The map through which the MLP writes to the stream: ``W_out``, or ``diag(w) W_out`` with
        the weight of its output norm (``post_norms``; the norm's per-token scale is frozen)."""
        if self.post is None or self.post.w is None:
            return self.W_out
        return Dense(self.post.w[:, None] * self.W_out.array, self.W_out.domain, self.W_out.codomain,
                     self.W_out.name)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The MLP's output for the rows of ``x`` (``[..., d_model]``), before its output norm
        (``post``) if it has one."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # one matrix product over all rows (a batched matmul per leading index is slower)
        pre = x @ self.W_in.array.T + self.b_in
        if self.W_gate is None:
            hidden = activation(self.act_fn, pre)
        else:
            hidden = activation(self.act_fn, x @ self.W_gate.array.T + self.b_gate) * pre
        return (hidden @ self.W_out.array.T + self.b_out).reshape(*shape[:-1], -1)

    @property
    def name(self) -> str:
        """``mlp{layer}``."""
        return f"mlp{self.layer}"


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """One transformer block: heads, the attention output bias, layer norms and the MLP.

    ``ln1_post`` is the RMSNorm of the attention output (``post_norms``; its weight is folded
    into the heads' ``W_O`` and ``b_O``), ``q_norm``/``k_norm`` the RMSNorms of queries and keys
    (``qk_norm``; weights folded into ``W_Q``/``W_K``; over the whole projection, with a flattened
    ``(heads * d_head,)`` weight, when ``qk_norm_scope`` is ``"all"``). ``ln1``/``ln2`` are
    ``None`` without pre-norms (``pre_norms=False``). The forward pass applies the q/k and output
    norms to the projections with only the input norm folded in (``model.norm_inputs``).
    """

    index: int
    heads: tuple[Head, ...]
    b_O: np.ndarray
    ln1: LayerNorm | None
    ln2: LayerNorm | None
    mlp: MLP | None
    ln1_post: LayerNorm | None = None
    q_norm: LayerNorm | None = None
    k_norm: LayerNorm | None = None


class Transformer:
    """A GPT-2-style transformer's weights as typed maps, with a numpy reference forward pass.

    Parameters
    ----------
    config : TransformerConfig
        Sizes and architecture.
    params : mapping of str to array
        Canonical parameters (names and shapes from :func:`param_shapes`, column layout).
    biases : {"required", "zero-fill"}
        Whether missing bias vectors are an error or zeros.
    vocab : sequence of str, optional
        Token strings, indexed by token id (used when printing circuits).
    name : str
        A label for the model (its file or zoo name).
    dtype : numpy dtype
        float64 (default) or float32.

    Attributes
    ----------
    head_weights : HeadWeights
        Every head's weights stacked: the view every analysis reads (``.float64()`` for the
        factored numerics). ``params``' attention entries are views into it where no norm
        weight was folded.

    Notes
    -----
    The view (``W_E``, ``W_U``, ``head(l, h)``, ``mlp(l)``, ``head_weights``) carries every norm
    weight in the maps it multiplies, whether or not ``params`` were folded: an input norm
    ``w * centre(x) / s + b`` is folded into the weights that read it (``W diag(w)``, bias
    ``b_W + W b``, reads centred ``W P`` behind a layer norm, ``P = I - 11ᵀ/d``), q/k norms into
    ``W_Q``/``W_K``, output norms into ``W_O`` and the MLP's writer; only the per-token scales are
    left to the forward pass (frozen by path expansion). So every weight-based result is the
    same for a model and its :func:`~circuitalg.model.transforms.fold_layer_norm` (to rounding);
    ``params`` keep the representation given (what :func:`~circuitalg.model.io.save` writes).
    ``W_U`` over the embedding's vocabulary is built tied to ``W_E`` (``W_U.tied_to``): where it is
    ``W_Eᵀ diag(g) P`` (tied embeddings, verified on first use), its products come from ``W_E``'s.

    Raises
    ------
    LoadError
        A parameter is missing, unexpected, of the wrong shape, or not finite.
    """

    def __init__(
        self,
        config: TransformerConfig,
        params: Mapping[str, Any],
        *,
        biases: str = "required",
        vocab: Sequence[str] | None = None,
        name: str = "model",
        dtype: Any = np.float64,
    ) -> None:
        if not isinstance(config, TransformerConfig):
            raise InvalidArgumentError(
                f"config must be a ca.TransformerConfig, got {type(config).__name__}; "
                "build one with ca.TransformerConfig(...) or TransformerConfig.from_dict(d)."
            )
        if biases not in ("required", "zero-fill"):
            raise InvalidArgumentError(f"biases={biases!r}; use 'required' or 'zero-fill'.")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            dtype = None
        if dtype not in (np.float32, np.float64):
            raise InvalidArgumentError("dtype must be numpy.float32 or numpy.float64 (ca.load also takes 'auto').")
        self.config = config
        self.name = str(name)
        params = validate_params(config, params, biases=biases, source=self.name, dtype=dtype)
        read = _fold_input_norms(config, params)
        folded = fold_head_norms(config, read)
        self.head_weights, view = stack_heads(config, {**read, **folded})
        #: canonical parameters (what ``ca.save`` writes): the weights as given, with the entries
        #: that no norm weight was folded into shared with the view (``head_weights``)
        self.params = {k: view[k] if k in view and read[k] is v and k not in folded else v for k, v in params.items()}
        #: the attention projections the q/k norms and output norms act on in the forward pass:
        #: the input norm folded in, their own weights not (``fold_head_norms`` folds those)
        self.norm_inputs: Mapping[str, np.ndarray] = {k: read[k] for k in folded}
        if vocab is not None:
            vocab = tuple(str(t) for t in vocab)
            if len(vocab) != config.d_vocab:
                raise LoadError(
                    f"{self.name}: vocabulary has {len(vocab)} token strings but d_vocab={config.d_vocab}."
                )
        self.vocab: tuple[str, ...] | None = vocab
        c = config
        self.vocab_space = Space(VOCAB_SPACE, c.d_vocab)
        self.pos_space = Space(POS_SPACE, c.n_ctx)
        self.resid_space = Space("resid", c.d_model)
        p = view  # the analysis view: every norm weight folded into the maps it multiplies
        self.W_E = Dense(p["W_E"], self.vocab_space, self.resid_space, "W_E")
        self.W_pos: Dense | None = (
            Dense(p["W_pos"], self.pos_space, self.resid_space, "W_pos") if c.learned_positions else None
        )
        self.vocab_out_space = self.vocab_space if c.d_vocab_out is None else Space("vocab_out", c.vocab_out)
        # an unembedding over the embedding's vocabulary may be tied to it (verified on first use)
        tie = self.W_E if self.vocab_out_space == self.vocab_space else None
        self.W_U = Dense(p["W_U"], self.resid_space, self.vocab_out_space, "W_U", tied_to=tie)
        self.b_U = p["b_U"]
        ln = c.normalization is not None

        def layer_norm(prefix: str) -> LayerNorm | None:
            if not ln:
                return None
            return LayerNorm(c.ln_eps, p.get(prefix + ".w"), p.get(prefix + ".b"), center=c.centred_norm)

        def pre_norm(prefix: str) -> LayerNorm | None:  # ln1, ln2: absent in models with post-norms only
            return layer_norm(prefix) if c.pre_norms else None

        def rms_norm(key: str, on: bool) -> LayerNorm | None:  # q/k norms and post norms: RMS with a weight
            # (a q/k norm over the whole projection holds its (heads, d_head) weight flattened, as it normalises)
            return LayerNorm(c.ln_eps, np.reshape(p[key], -1), center=False) if on else None

        layers = []
        for l_ in range(c.n_layers):
            a = f"blocks.{l_}.attn."
            heads = []
            # grouped-query attention: the heads of a group share one space and one W_K, W_V map
            kv_ids = [_kv_id(c, l_, g) for g in range(c.kv_heads)]
            group_space = [Space(i.name, c.d_head) for i in kv_ids]
            W_K = [Dense(p[a + "W_K"][g], self.resid_space, group_space[g], "W_K^" + i.tag) for g, i in enumerate(kv_ids)]
            W_V = [Dense(p[a + "W_V"][g], self.resid_space, group_space[g], "W_V^" + i.tag) for g, i in enumerate(kv_ids)]
            for h in range(c.n_heads):
                g = c.kv_head(h)
                hs = group_space[g]
                tag = "^" + HeadId(l_, h).tag
                heads.append(
                    Head(
                        l_,
                        h,
                        W_Q=Dense(p[a + "W_Q"][h], self.resid_space, hs, "W_Q" + tag),
                        W_K=W_K[g],
                        W_V=W_V[g],
                        W_O=Dense(p[a + "W_O"][h], hs, self.resid_space, "W_O" + tag),
                        b_Q=p[a + "b_Q"][h],
                        b_K=p[a + "b_K"][g],
                        b_V=p[a + "b_V"][g],
                        rotary=c.layer_rotary(l_),
                        kv_group=g,
                    )
                )
            mlp = None
            if c.d_mlp is not None:
                m = f"blocks.{l_}.mlp."
                ms = Space(f"mlp{l_}", c.d_mlp)
                mlp = MLP(
                    l_,
                    W_in=Dense(p[m + "W_in"], self.resid_space, ms, "W_in^" + layer_tag(l_)),
                    b_in=p[m + "b_in"],
                    W_out=Dense(p[m + "W_out"], ms, self.resid_space, "W_out^" + layer_tag(l_)),
                    b_out=p[m + "b_out"],
                    act_fn=str(c.act_fn),
                    W_gate=Dense(p[m + "W_gate"], self.resid_space, ms, "W_gate^" + layer_tag(l_)) if c.gated_mlp else None,
                    b_gate=p[m + "b_gate"] if c.gated_mlp else None,
                    post=rms_norm(f"blocks.{l_}.ln2_post.w", c.post_norms),
                )
            layers.append(
                Layer(
                    l_,
                    tuple(heads),
                    b_O=p[a + "b_O"],
                    ln1=pre_norm(f"blocks.{l_}.ln1"),
                    ln2=pre_norm(f"blocks.{l_}.ln2") if mlp is not None else None,
                    mlp=mlp,
                    ln1_post=rms_norm(f"blocks.{l_}.ln1_post.w", c.post_norms),
                    q_norm=rms_norm(a + "q_norm.w", c.qk_norm),
                    k_norm=rms_norm(a + "k_norm.w", c.qk_norm),
                )
            )
        self.layers: tuple[Layer, ...] = tuple(layers)
        self.ln_final: LayerNorm | None = layer_norm("ln_final")

    # -- access ---------------------------------------------------------------------------
    def _check_index(self, what: str, v: Any, n: int) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < n:
            raise InvalidArgumentError(f"{what} {v!r} is out of range for {self.name}: use 0..{n - 1}.")

    def head(self, layer: int, index: int) -> Head:
        """The head ``L{layer}H{index}``."""
        self._check_index("layer", layer, self.config.n_layers)
        self._check_index("head", index, self.config.n_heads)
        return self.layers[layer].heads[index]

    def stored_norm(self, layer: int, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The weight and bias of layer ``layer``'s norm ``name`` (``"ln1"``, ``"ln2"``,
        ``"ln1_post"``, ``"ln2_post"``) as ``params`` store them: ``None`` where the model has none,
        or where :func:`~circuitalg.model.transforms.fold_layer_norm` folded them into the maps that
        read the norm (the view's maps carry them either way; this is for readers of a hook, such
        as a dictionary trained on the MLP's input after its norm's weight)."""
        if name not in ("ln1", "ln2", "ln1_post", "ln2_post"):
            raise InvalidArgumentError(f"stored_norm: name={name!r}; use 'ln1', 'ln2', 'ln1_post' or 'ln2_post'.")
        self._check_index("layer", layer, self.config.n_layers)
        prefix = f"blocks.{layer}.{name}."
        return self.params.get(prefix + "w"), self.params.get(prefix + "b")

    def heads(self) -> Iterator[Head]:
        """All heads, layer by layer."""
        for layer in self.layers:
            yield from layer.heads

    def mlp(self, layer: int) -> MLP:
        """The MLP of ``layer``; :class:`InvalidArgumentError` for attention-only models."""
        if self.config.d_mlp is None:
            raise InvalidArgumentError(f"{self.name} is attention-only: it has no MLPs.")
        self._check_index("layer", layer, self.config.n_layers)
        mlp = self.layers[layer].mlp
        if mlp is None:  # unreachable: d_mlp set implies every layer has an MLP
            raise InvalidArgumentError(f"{self.name}: layer {layer} has no MLP.")
        return mlp

    @property
    def dtype(self) -> np.dtype:
        """The dtype of every parameter."""
        return self.params["W_E"].dtype

    @property
    def embedding_sources(self) -> tuple[Source, ...]:
        """The sources written before layer 0: ``embed``, and ``pos`` with learned positions."""
        return (EMBED, POS) if self.W_pos is not None else (EMBED,)

    def source_map(self, source: Source) -> LinearMap:
        """The typed map a source writes into the residual stream: ``W_E`` (vocab -> resid),
        ``W_pos`` (pos -> resid), layer ``l``'s attention bias as a column (const[1] -> resid),
        or the identity on resid for an MLP output (taken as given, frozen)."""
        if not isinstance(source, Source):
            raise InvalidArgumentError(f"source_map takes a ca.Source, got {type(source).__name__}; e.g. ca.Source('embed').")
        if source.kind == "embed":
            return self.W_E
        if source.kind == "pos":
            if self.W_pos is None:
                raise InvalidArgumentError(
                    f"{self.name} has rotary position embeddings and no W_pos: positions do not write into the "
                    "residual stream, so 'pos' is not a source."
                )
            return self.W_pos
        if source.kind == "attn_bias":
            self._check_index("layer", source.layer, self.config.n_layers)
            return self._attention_bias_maps[source.layer]  # type: ignore[index]
        if source.kind == "mlp":
            self.mlp(source.layer)  # type: ignore[arg-type]  (raises for attention-only models)
            return identity(self.resid_space, dtype=self.dtype)
        raise InvalidArgumentError(
            "source_map: unembed_bias writes nothing into the residual stream; it is model.unembed_bias_map "
            "(const -> vocab)."
        )

    @cached_property
    def _attention_bias_maps(self) -> tuple[Dense, ...]:
        bias = self.head_weights.attention_bias
        return tuple(Dense(b[:, None], CONST_SPACE, self.resid_space, "b_attn^" + layer_tag(l)) for l, b in enumerate(bias))

    @cached_property
    def unembed_bias_map(self) -> Dense:
        """``b_U`` as a map ``const[1] -> vocab``."""
        return Dense(self.b_U[:, None], CONST_SPACE, self.vocab_out_space, "b_U")

    # -- computation ----------------------------------------------------------------------
    def run(self, tokens: Any) -> tuple[np.ndarray, Cache]:
        """Reference forward pass; see :func:`circuitalg.model.forward.run`."""
        from circuitalg.model.forward import run

        return run(self, tokens)

    def with_params(self, params: Mapping[str, Any], *, dtype: Any = None, **changes: Any) -> Transformer:
        """A new model with ``params`` (and config fields in ``changes``; ``dtype``, default this
        model's); the rest is kept."""
        config = dataclasses.replace(self.config, **changes) if changes else self.config
        return Transformer(config, params, vocab=self.vocab, name=self.name, dtype=self.dtype if dtype is None else dtype)

    def __repr__(self) -> str:
        c = self.config
        kind = "attention-only" if c.attn_only else f"d_mlp={c.d_mlp}, {c.act_fn}"
        return (
            f"<Transformer {self.name!r}: {c.n_layers} layers x {c.n_heads} heads, d_model={c.d_model}, "
            f"d_head={c.d_head}, d_vocab={c.d_vocab}, n_ctx={c.n_ctx}, {kind}, "
            f"normalization={c.normalization}>"
        )

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, Any],
        layout: str = "auto",
        config: Any = None,
        *,
        name: str = "state_dict",
        vocab: Sequence[str] | None = None,
    ) -> Transformer:
        """Build a model from a state dict in a known layout.

        Parameters
        ----------
        state_dict : mapping of str to array
            numpy arrays or torch tensors.
        layout : {"auto", "circuitalg", "transformer_lens", "hf_gpt2"}
            The key layout; ``"auto"`` detects it from the keys.
        config : TransformerConfig, dict, TransformerLens config or HF config dict, optional
            Required for ``circuitalg``; inferred from shapes (and the config when given)
            for the other layouts.
        """
        from circuitalg.model.layouts import convert_state_dict

        cfg, params = convert_state_dict(state_dict, layout=layout, config=config, source=name)
        return cls(cfg, params, name=name, vocab=vocab)

    @classmethod
    def from_hooked_transformer(cls, hooked: Any) -> Transformer:
        """Read a live TransformerLens ``HookedTransformer`` (its ``state_dict()`` and ``cfg``)."""
        cfg = getattr(hooked, "cfg", None)
        if cfg is None or not hasattr(hooked, "state_dict"):
            raise InvalidArgumentError(
                f"expected a TransformerLens HookedTransformer, got {type(hooked).__name__}; for a state dict "
                "use Transformer.from_state_dict(sd, layout='transformer_lens', config=...)."
            )
        name = str(getattr(cfg, "model_name", None) or "hooked_transformer")
        return cls.from_state_dict(hooked.state_dict(), layout="transformer_lens", config=cfg, name=name)


def _kv_id(config: TransformerConfig, layer: int, group: int) -> HeadId | GroupId:
    """The id of the space that ``W_K`` and ``W_V`` map into: the head itself (``L{l}H{h}``,
    tagged ``{l.h}``), or under grouped-query attention its key/value group (``L{l}KV{g}``,
    tagged ``{l.kvg}``), which the group's heads share."""
    return HeadId(layer, group) if config.n_kv_heads is None else GroupId(layer, group)


def _fold_input_norms(config: TransformerConfig, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The parameters of the analysis view with every input norm folded into the weights that
    read it (:func:`~circuitalg.model.folding.fold_params`, reads centred behind a layer norm):
    ``W diag(w) P`` and ``b_W + W b``, so that every map the model hands out carries its norm
    weights whether or not the stored parameters were folded. Arrays with nothing to fold are
    ``params``' own; the norm entries (``ln1.w`` ...) are left out (the view's norms only scale)."""
    if config.normalization is None:
        return dict(params)
    read = dict(params)
    fold_params(config, read, center_reads=True, dtype=params["W_E"].dtype)
    return read


