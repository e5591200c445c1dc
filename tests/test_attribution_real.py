"""Attribution on the real SmolLM2-135M GGUF with the shipped layer-12 transcoder: completeness in
float64, and the graph's values against the model's own forward pass."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load_file

import circuitalg as ca
import circuitalg.features as cf
from circuitalg.zoo.train_dictionaries import LAYER, mlp_input
from model_helpers import smollm2_gguf

ROOT = ca.zoo.MODELS_DIR.parent / "dictionaries" / "smollm2-135m-instruct-q4_1-L12"


def test_smollm2_transcoder_graph_is_complete_and_matches_the_forward_pass():
    model = ca.load(smollm2_gguf())
    tc = cf.load_dictionary(ROOT / "transcoder")
    tokens = load_file(str(ROOT / "heldout_tokens.safetensors"))["tokens"][0][:20].astype(np.int64)
    g = cf.attribute(model, tc, tokens)
    assert g.completeness_error().max() < 1e-10
    logits, cache = model.run(tokens)
    # feature nodes: exactly the transcoder's active features on the model's real MLP input (position 0 left out)
    f = tc.encode(mlp_input(model, cache, LAYER))
    f[:1] = 0
    pos, idx = np.nonzero(f)
    assert sorted(zip(pos.tolist(), idx.tolist())) == sorted(
        (int(p), int(i)) for layer, p, i in g.active_features if layer == LAYER)
    order = {(int(p), int(i)): k for k, (_, p, i) in enumerate(g.active_features)}
    acts = np.array([g.activations[order[(int(p), int(i))]] for p, i in zip(pos, idx)])
    np.testing.assert_allclose(acts, f[pos, idx], rtol=1e-10)
    # logit nodes: the model's demeaned logits at the last position, which the edges sum to
    last = logits[-1] - logits[-1].mean()
    for node, value in zip(g.logit_nodes, g.values[len(g.nodes) - g.n_logits:]):
        assert abs(value - last[node.vocab_index]) <= 1e-10 * max(1.0, abs(last[node.vocab_index]))


def test_shipped_zoo_models_graphs_are_complete():
    """The zoo's attention-only models have no MLP to replace: their graphs run from tokens (and a
    residual SAE's nodes) through the frozen attention to the logits, complete to rounding."""
    rng = np.random.default_rng(0)
    for name in ("attn1l", "attn2l"):
        model = ca.zoo.load(name)
        tokens = np.array([0, 3, 1, 4, 1, 5, 9, 2, 6]) % model.config.d_vocab
        d, F = model.config.d_model, 48
        hook = cf.Hook(cf.HookKind.RESID_POST, 0)
        sae = cf.Dictionary("res0", cf.DictionaryKind.SAE, (hook,), (hook,), [rng.normal(size=(F, d)) / d**0.5],
                            np.zeros(F), [rng.normal(size=(d, F)) / F**0.5], [np.zeros(d)], cf.TopK(8))
        logits, _ = model.run(tokens)
        last = logits[-1] - logits[-1].mean()
        for saes in (None, [sae]):
            g = cf.attribute(model, [], tokens, saes=saes)
            assert g.completeness_error().max() < 1e-10
            for node, value in zip(g.logit_nodes, g.values[len(g.nodes) - g.n_logits:]):
                assert abs(value - last[node.vocab_index]) <= 1e-10 * max(1.0, abs(last[node.vocab_index]))
        assert len(g.sae_features) > 0
