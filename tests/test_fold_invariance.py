"""No weight-based result depends on whether the norms were folded.

Every public analysis runs on a model as loaded (norm weights stored in ``ln*.w``/``ln*.b``), on
``fold_layer_norm`` of it (reads centred and not), and on ``load(fold=True)``; every number must
agree to 1e-12 (relative to its array's scale). Cases: LayerNorm with biases and an MLP (the
paper's GPT-2 form), RMSNorm with grouped-query attention and rotary embeddings (Llama), the
``(1 + w)`` RMSNorms of Gemma 2 and Gemma 3 (sandwich norms, soft-caps, Gemma 3's q/k norms and
per-layer rotary bases), and OLMo 2's output norms (no input norms). A
negative control shows the numbers do move when the norm weights are left out, and the copying
scores are checked against a dense computation of ``W_U diag(g_f) P W_O W_V diag(g_1) P W_E``
from the stored parameters (the issue's "truth").
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from model_helpers import random_model, save_random_hf

import circuitalg as ca
from circuitalg.circuits.composition import valid_pairs

TOL = 1e-12

LLAMA = dict(vocab_size=37, hidden_size=24, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=40, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, head_dim=6,
             rms_norm_eps=1e-6)
GEMMA2 = dict(vocab_size=37, hidden_size=24, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=40, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0,
              head_dim=6, sliding_window=4, query_pre_attn_scalar=6, attn_implementation="eager")


def _norm_weights_away_from_one(path) -> None:
    """Scale every stored norm weight of the checkpoint at ``path`` so folding is far from a no-op."""
    from safetensors.numpy import load_file, save_file

    f = path / "model.safetensors"
    sd = load_file(f)
    rng = np.random.default_rng(1)
    for k, v in sd.items():
        if "norm" in k and v.ndim == 1:
            sd[k] = (v + rng.normal(0.3, 0.4, size=v.shape)).astype(v.dtype)
    save_file(sd, f, metadata={"format": "pt"})


GEMMA3 = dict(LLAMA, head_dim=6, query_pre_attn_scalar=10, sliding_window=4, pad_token_id=0,
              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
              rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 100.0},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}})
OLMO2 = dict(LLAMA, attention_bias=True, rope_parameters={"rope_theta": 50.0})
HF_CASES = {"rmsnorm": ("LlamaForCausalLM", "LlamaConfig", LLAMA),
            "gemma2-1+w": ("Gemma2ForCausalLM", "Gemma2Config", GEMMA2),
            "gemma3-1+w-qk-norms": ("Gemma3ForCausalLM", "Gemma3TextConfig", GEMMA3),
            "olmo2-post-norms": ("Olmo2ForCausalLM", "Olmo2Config", OLMO2)}


@pytest.fixture(scope="module", params=["layernorm", *HF_CASES])
def variants(request, tmp_path_factory):
    """``(case, [(label, model), ...])``: the model as given and its folded representations."""
    case = request.param
    if case == "layernorm":
        m = random_model(normalization="LN", d_mlp=20, n_layers=3, d_vocab=29, n_ctx=16, seed=3)
        out = [("as given", m)]
    else:
        path = tmp_path_factory.mktemp(case)
        model_class, config_class, config = HF_CASES[case]
        save_random_hf(path, model_class, config_class, **config)
        _norm_weights_away_from_one(path)
        m = ca.load(path)
        out = [("as given", m), ("load(fold=True)", ca.load(path, fold=True))]
    out += [("fold_layer_norm", ca.fold_layer_norm(m)),
            ("fold_layer_norm(center_reads=False)", ca.fold_layer_norm(m, center_reads=False))]
    assert m.config.normalization in ("LN", "RMS") and all(v.config.normalization.endswith("Pre") for _, v in out[1:])
    return case, out


def _numbers(m: ca.Transformer) -> dict[str, np.ndarray]:
    """Every number of every public weight-based analysis (and the forward-pass ones), by name."""
    c = m.config
    out: dict[str, np.ndarray] = {}
    tokens = ca.repeated_random_tokens(m, seq_len=5, n_seqs=2)
    table = ca.head_table(m, tokens, k=3, n_positions=12)
    for f in ("copying", "copying_ov", "positional_prev_token", "ov_effective_rank", "qk_effective_rank",
              "ov_singular_values", "qk_singular_values", "induction", "prev_token"):
        out["head_table." + f] = getattr(table, f)
    for f in (ca.previous_token_head(table), ca.induction_head(table)):
        out["finding." + f.role] = np.array([f.score, -1 if f.head is None else f.head.layer * 100 + f.head.head])
    n_pairs = valid_pairs(c.n_layers, c.n_heads)
    for kind in ("q", "k", "v"):
        scores = ca.composition_scores(m, kind)
        out["composition." + kind] = scores
        base = ca.composition_baseline(m, kind, n_samples=256)
        out["baseline." + kind] = np.array([base.mean, base.std, base.threshold(n_pairs)])
        finding = ca.composition_finding(scores, base)
        out["composition_finding." + kind] = np.array([finding.score, finding.z, finding.writer.layer,
                                                       finding.writer.head, finding.reader.layer, finding.reader.head])
    graph = ca.CircuitGraph(m)
    for e in graph.edges():
        out[f"graph.{e['writer']}->{e['reader']}.{e['kind']}"] = np.array([e["norm"], e["score"]])
    search = ca.top_circuits(m, k=6, max_heads=2)
    out["top_circuits.scores"] = np.array([ci.score for ci in search])
    out["top_circuits.bound"] = np.array([search.bound, search.evaluated])
    out["top_circuits.names"] = np.array([hash(ci.name) for ci in search], dtype=float)
    out["count_circuits"] = np.array([ca.count_circuits(m, max_heads=2)])
    seq = tokens[0]
    logits, cache = m.run(seq)
    out["run.logits"] = logits
    out["run.patterns"] = cache.pattern
    out["logit_lens"] = ca.logit_lens(m, cache)
    paths = ca.expand(m, max_heads=2)
    frozen = paths.on(seq, cache)
    out["expand.logits"] = frozen.logits()
    top = frozen.top(5)
    out["expand.top"] = np.array([t.score for t in top])
    out["expand.top.names"] = np.array([hash(t.circuit.name) for t in top], dtype=float)
    out["expand.term_weight_sv"] = ca.singular_values(top[0].circuit.weight, k=3) if top[0].circuit.heads else np.zeros(1)
    head = m.head(c.n_layers - 1, 1)
    full_ov = m.W_U @ head.ov @ m.W_E
    out["singular_values.full_ov"] = ca.singular_values(full_ov, k=4)
    out["eigenvalues_many"] = np.concatenate([np.sort_complex(e) for e in ca.eigenvalues_many(
        [m.W_U @ h.ov @ m.W_E for h in m.heads()])])
    qk = m.W_E.T @ (head.qk_at(-1) if c.rotary is not None else head.qk) @ m.W_E
    for name, mp, kw in (("top_tokens.full_ov", full_ov, {}), ("top_tokens.qk", qk, {"roles": ("query", "key")})):
        entries = ca.top_tokens(mp, k=5, **kw)
        out[name] = np.array([[e.row, e.col, e.value] for e in entries])
    if m.W_pos is not None:
        pos = m.W_pos.T @ head.qk @ m.W_pos
        out["top_tokens.positional_qk"] = np.array([[e.row, e.col, e.value] for e in ca.top_tokens(pos, k=5)])
    out["accuracy.full_ov"] = np.array([ca.accuracy(full_ov) > 0])
    return out


def _without_norm_weights(m: ca.Transformer) -> ca.Transformer:
    """``m`` with every input and final norm weight set to one (what analyses read before the view
    carried them): the negative control."""
    return m.with_params({k: np.ones_like(v) if k.endswith(".w") and (".ln1." in k or ".ln2." in k or k == "ln_final.w")
                          else v for k, v in m.params.items()})


def _assert_same(case: str, label: str, want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    assert want.keys() == got.keys(), f"{case}/{label}: different result sets"
    for name, a in want.items():
        b = got[name]
        a_, b_ = np.asarray(a), np.asarray(b)
        assert a_.shape == b_.shape, f"{case}/{label}: {name} shape {b_.shape} != {a_.shape}"
        scale = max(1.0, float(np.nanmax(np.abs(a_)))) if a_.size else 1.0
        np.testing.assert_allclose(b_, a_, rtol=0, atol=TOL * scale, equal_nan=True,
                                   err_msg=f"{case}: {name} differs between the model as given and {label}")


def test_every_analysis_gives_the_same_numbers_folded_or_not(variants) -> None:
    case, models = variants
    want = _numbers(models[0][1])
    assert len(want) > 30
    for label, m in models[1:]:
        _assert_same(case, label, want, _numbers(m))


def test_negative_control_norm_weights_change_the_numbers(variants) -> None:
    """Left out, the norm weights change the copying scores (so the invariance above is not vacuous)."""
    case, models = variants
    m = models[0][1]
    bare = _without_norm_weights(m)
    diff = np.abs(ca.head_table(bare).copying - ca.head_table(m).copying)
    assert np.nanmax(diff) > 0.01, f"{case}: the norm weights do not matter here; the invariance test would be vacuous"


def test_copying_scores_equal_the_dense_norm_weighted_full_ov(variants) -> None:
    """``head_table(load(dir)).copying`` against eigenvalues of the dense
    ``W_U diag(g_f) P W_O' W_V diag(g_1) P W_E`` built from the stored parameters (``P`` the
    LayerNorm centring or the identity; ``W_O'`` carries a post norm's weight)."""
    case, models = variants
    m = models[0][1]
    p, c = m.params, m.config
    D = c.d_model
    P = np.eye(D) - np.ones((D, D)) / D if c.centred_norm else np.eye(D)
    table = ca.head_table(m)
    kv = [c.kv_head(h) for h in range(c.n_heads)]
    for layer in range(c.n_layers):
        a = f"blocks.{layer}.attn."
        g1 = p[f"blocks.{layer}.ln1.w"] if c.pre_norms else np.ones(D)
        post = p[f"blocks.{layer}.ln1_post.w"] if c.post_norms else np.ones(D)
        for h in range(c.n_heads):
            full = (p["W_U"] @ np.diag(p["ln_final.w"]) @ P @ np.diag(post) @ p[a + "W_O"][h]
                    @ p[a + "W_V"][kv[h]] @ np.diag(g1) @ P @ p["W_E"])
            lam = np.linalg.eigvals(full)
            lam = lam[np.abs(lam) > 1e-9 * np.abs(lam).max()]
            want = lam.real.sum() / np.abs(lam).sum()
            assert abs(table.copying[layer, h] - want) < 1e-9, (case, layer, h, table.copying[layer, h], want)


def test_streaming_reads_the_norm_weights_whether_or_not_the_checkpoint_was_folded(tmp_path) -> None:
    """A Llama checkpoint and the same model saved with every RMSNorm weight folded into the
    projections that read it (norm weights 1): streamed composition scores and full-OV spectra agree."""
    from safetensors.numpy import load_file, save_file

    raw, folded = tmp_path / "raw", tmp_path / "folded"
    raw.mkdir(), folded.mkdir()
    save_random_hf(raw, "LlamaForCausalLM", "LlamaConfig", **LLAMA)
    _norm_weights_away_from_one(raw)
    sd = load_file(raw / "model.safetensors")
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    fsd = dict(sd)
    for layer in range(LLAMA["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        g1, g2 = sd[pre + "input_layernorm.weight"], sd[pre + "post_attention_layernorm.weight"]
        for proj in ("q_proj", "k_proj", "v_proj"):
            fsd[pre + f"self_attn.{proj}.weight"] = sd[pre + f"self_attn.{proj}.weight"] * g1
        for proj in ("gate_proj", "up_proj"):
            fsd[pre + f"mlp.{proj}.weight"] = sd[pre + f"mlp.{proj}.weight"] * g2
        fsd[pre + "input_layernorm.weight"] = np.ones_like(g1)
        fsd[pre + "post_attention_layernorm.weight"] = np.ones_like(g2)
    fsd["lm_head.weight"] = sd["lm_head.weight"] * sd["model.norm.weight"]
    fsd["model.norm.weight"] = np.ones_like(sd["model.norm.weight"])
    save_file(fsd, folded / "model.safetensors", metadata={"format": "pt"})
    save_file(sd, raw / "model.safetensors", metadata={"format": "pt"})  # the same weights in float64
    cfg = json.loads((raw / "config.json").read_text())
    (folded / "config.json").write_text(json.dumps(cfg))
    a, b = ca.stream_composition(raw), ca.stream_composition(folded)
    for kind in ("q", "k", "v"):
        np.testing.assert_allclose(b.scores[kind], a.scores[kind], rtol=0, atol=TOL)
        np.testing.assert_allclose(a.scores[kind], ca.composition_scores(ca.load(raw), kind), rtol=0, atol=1e-10)
    fa, fb = ca.stream_full_ov(raw), ca.stream_full_ov(folded)
    np.testing.assert_allclose(fb.singular_values, fa.singular_values, rtol=0, atol=TOL * fa.singular_values.max())
    np.testing.assert_allclose(fb.copying, fa.copying, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fa.copying, ca.head_table(ca.load(raw)).copying, rtol=0, atol=1e-10)


def test_real_smollm2_gives_the_same_numbers_folded_or_not() -> None:
    """The issue's case on the real SmolLM2-135M-Instruct GGUF (RMSNorm, 30 layers x 9 heads, float32):
    composition scores and full-OV copying scores (the first 45 heads) of ``load(file)`` and
    ``load(file, fold=True)`` agree, and leaving the norm weights out moves them (the old bug)."""
    from model_helpers import smollm2_gguf

    path = smollm2_gguf()
    m, mf = ca.load(path, dtype=np.float64), ca.load(path, dtype=np.float64, fold=True)
    assert m.config.normalization == "RMS" and mf.config.normalization == "RMSPre"
    bare = _without_norm_weights(m)
    k_scores = [ca.composition_scores(x, "k") for x in (m, mf, bare)]
    np.testing.assert_allclose(k_scores[1], k_scores[0], rtol=0, atol=TOL)
    assert np.abs(k_scores[2] - k_scores[0]).max() > 0.01  # norm weights left out: K-composition moves

    def copying(model: ca.Transformer) -> np.ndarray:
        heads = list(model.heads())[:45]
        lams = ca.eigenvalues_many([model.W_U @ h.ov @ model.W_E for h in heads])
        return np.array([ca.copying_score(lam) for lam in lams])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.PrecisionWarning)  # some heads' bounds; they are not compared here
        got = [copying(x) for x in (m, mf, bare)]
    np.testing.assert_allclose(got[1], got[0], rtol=0, atol=1e-12)
    assert np.abs(got[2] - got[0]).max() > 0.1  # the size of error
    # the batched route's copying scores against a dense float64 eig of each head's cyclic product
    # W_V (W_E W_U) W_O (the same nonzero spectrum); only eigenvalues under the stated noise floor
    # may be dropped, which moves a score little
    EU = mf.W_E.array @ mf.W_U.array
    dense = []
    for h in list(mf.heads())[:45]:
        lam = np.linalg.eigvals(h.W_V.array @ EU @ h.W_O.array)
        dense.append(lam.real.sum() / np.abs(lam).sum())
    np.testing.assert_allclose(got[1], dense, rtol=0, atol=1e-3)
