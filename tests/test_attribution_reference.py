"""Attribution graphs (circuitalg.features.attribution, .graphfile) against circuit-tracer 0.5.0 itself.

tests/fixtures/attribution/ holds what scripts/attribution_fixtures.py had circuit-tracer compute
(``attribute``, ``prune_graph``, ``create_graph_files``, in float64) for seeded models and transcoders
that the script's functions rebuild here exactly: a 3-layer LayerNorm GPT-2-like model with per-layer
ReLU, JumpReLU and skip transcoders and a cross-layer transcoder, and a 3-layer Llama-like model
(RMSNorm, rotary, grouped-query attention, gated MLP) with ReLU transcoders and a cross-layer
transcoder. circuitalg's attribution, with the model and transcoders in float64 and in float32, must
give the same active features, activations, logit targets and probabilities (1e-5 relative), the same
adjacency (largest difference at most 1e-5 of the largest entry; the stored adjacency is float32, so
about 6e-8 of it is storage rounding), the same pruned nodes and edges, and the same graph file; and
circuit-tracer's pydantic ``Model`` accepted the graph file circuitalg wrote.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from circuitalg.features.attribution import FeatureNode, attribute
from circuitalg.features.graphfile import graph_file_dict

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "attribution"
RTOL = 1e-5

_spec = importlib.util.spec_from_file_location("attribution_fixtures", ROOT / "scripts" / "attribution_fixtures.py")
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)

REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
CASES = sorted(recipe.CASES)
_graphs: dict = {}


def _graph(case: str, dtype):
    key = (case, np.dtype(dtype).name)
    if key not in _graphs:
        model, tcs = recipe.build_case(case, dtype)
        _graphs[key] = attribute(model, tcs, recipe.TOKENS)
    return _graphs[key]


def _reference(case: str) -> dict:
    ref = load_file(str(FIXTURES / f"{case}.safetensors"))
    n = ref["adjacency"].shape[0]
    ref["edge_mask"] = np.unpackbits(ref.pop("edge_mask_bits"))[: n * n].reshape(n, n).astype(bool)
    return ref


def test_every_case_was_generated():
    assert sorted(REFERENCE["cases"]) == CASES
    assert REFERENCE["versions"]["circuit-tracer"] == "0.5.0"
    assert REFERENCE["tokens"] == recipe.TOKENS and REFERENCE["n_features"] == recipe.N_FEATURES
    for case in CASES:
        info = REFERENCE["cases"][case]
        assert "error" not in info, (case, info)
        assert info["load"] == {"missing_keys": [], "unexpected_keys": []}, (case, info["load"])


@pytest.mark.parametrize("case", CASES)
def test_circuit_tracer_accepted_circuitalg_graph_file(case):
    verdict = REFERENCE["cases"][case]["circuitalg_json"]
    assert verdict["accepted"], verdict
    data = graph_file_dict(_graph(case, np.float64), slug=case, scan=recipe.SCAN)
    assert (verdict["nodes"], verdict["links"]) == (len(data["nodes"]), len(data["links"]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_graph_matches_circuit_tracer(case, dtype):
    g, ref = _graph(case, dtype), _reference(case)
    np.testing.assert_array_equal(g.active_features, ref["active_features"])
    feature_nodes = [(n.layer, n.position, n.index) for n in g.nodes if isinstance(n, FeatureNode)]
    assert feature_nodes == [tuple(f) for f in ref["active_features"][ref["selected_features"]].tolist()]
    act = ref["activations"]
    assert np.abs(g.activations - act).max() <= RTOL * np.abs(act).max()
    np.testing.assert_allclose(g.activations, act, rtol=RTOL, atol=RTOL * np.abs(act).max())
    assert [n.vocab_index for n in g.logit_nodes] == ref["logit_tokens"].tolist()
    np.testing.assert_allclose(g.logit_probabilities, ref["logit_probabilities"], rtol=RTOL)
    A = ref["adjacency"].astype(np.float64)
    assert g.adjacency.shape == A.shape
    assert np.abs(g.adjacency - A).max() <= RTOL * np.abs(A).max()
    pr = g.prune(REFERENCE["node_threshold"], REFERENCE["edge_threshold"])
    np.testing.assert_array_equal(pr.node_mask, ref["node_mask"])
    np.testing.assert_array_equal(pr.edge_mask, ref["edge_mask"])
    np.testing.assert_allclose(pr.cumulative_scores, ref["cumulative_scores"], rtol=0, atol=RTOL)


@pytest.mark.parametrize("case", CASES)
def test_graph_file_matches_circuit_tracer(case):
    ours = graph_file_dict(_graph(case, np.float64), slug=case, scan=recipe.SCAN)
    theirs = json.loads((FIXTURES / f"{case}.graph.json").read_text())
    # the prompt is the tokenizer's decoding of all tokens; the fixture's stub tokenizer joins ids with spaces
    assert theirs["metadata"].pop("prompt") == " ".join(map(str, recipe.TOKENS))
    ours["metadata"].pop("prompt")
    assert ours["metadata"] == theirs["metadata"]
    assert ours["qParams"] == theirs["qParams"]
    ours_nodes = {n["node_id"]: n for n in ours["nodes"]}
    theirs_nodes = {n["node_id"]: n for n in theirs["nodes"]}
    assert sorted(ours_nodes) == sorted(theirs_nodes)
    for nid, t in theirs_nodes.items():
        o = ours_nodes[nid]
        for k in ("feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "is_target_logit"):
            assert o[k] == t[k], (nid, k, o[k], t[k])
        assert abs(o["influence"] - t["influence"]) <= RTOL if t.get("influence") is not None else True
        if t.get("activation") is not None:
            assert o["activation"] == pytest.approx(t["activation"], rel=RTOL)
        if t["feature_type"] == "logit":
            assert o["token_prob"] == pytest.approx(t["token_prob"], rel=RTOL)
    ours_links = {(e["source"], e["target"]): e["weight"] for e in ours["links"]}
    theirs_links = {(e["source"], e["target"]): e["weight"] for e in theirs["links"]}
    assert sorted(ours_links) == sorted(theirs_links)
    scale = max(abs(w) for w in theirs_links.values())
    assert max(abs(ours_links[k] - w) for k, w in theirs_links.items()) <= RTOL * scale
