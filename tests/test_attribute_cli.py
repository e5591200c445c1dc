"""``circuitalg attribute`` (circuitalg.cli) and its summary (circuitalg.features.summary): the files it
writes, the summary's numbers recomputed from the graph's adjacency, the top paths against every path
enumerated by brute force, and one-line errors with nonzero exit codes for bad inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest

import circuitalg as ca
from circuitalg.cli import EXIT_MODEL, EXIT_USAGE, main
from circuitalg.features import Dictionary, DictionaryKind, DictionarySet, Hook, HookKind, JumpReLU, ReLU
from circuitalg.features import load_dictionary, save_dictionary
from circuitalg.features.attribution import ErrorNode, FeatureNode, TokenNode, attribute
from circuitalg.features.graphfile import read_circuit_tracer_json
from circuitalg.features.summary import path_value, summarise, top_paths

TOKENS = [3, 1, 4, 1, 5, 9, 2, 6]
VOCAB = [f"t{i}" for i in range(19)]


def make_model() -> ca.Transformer:
    cfg = ca.TransformerConfig(n_layers=3, n_heads=3, d_mlp=24, normalization="LN", act_fn="gelu_new", d_model=16,
                               d_head=4, d_vocab=19, n_ctx=12)
    rng = np.random.default_rng(0)
    params = {k: (1.0 + 0.2 * rng.normal(size=s)) if k.endswith(".w") else 0.5 * rng.normal(size=s)
              for k, s in ca.param_shapes(cfg).items()}
    return ca.Transformer(cfg, params, name="tiny", vocab=VOCAB)


def make_set(d: int = 16, F: int = 24, jump: bool = False) -> DictionarySet:
    members = []
    for layer in range(3):
        r = np.random.default_rng(layer)
        act = JumpReLU(np.linspace(0.0, 0.2, F)) if jump else ReLU()
        members.append(Dictionary(
            f"tc.L{layer}", DictionaryKind.TRANSCODER, (Hook(HookKind.MLP_IN, layer),), (Hook(HookKind.MLP_OUT, layer),),
            [r.normal(size=(F, d)) / np.sqrt(d)], 0.1 * r.normal(size=F), [0.3 * r.normal(size=(d, F))],
            [0.1 * r.normal(size=d)], act))
    return DictionarySet("tc", members)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("attribute")
    ca.save(make_model(), root / "tiny.safetensors")
    save_dictionary(make_set(jump=True), root / "tc", format="circuit_tracer")
    for m in make_set(jump=True).members:  # the same transcoders, one SAELens folder per layer
        save_dictionary(m, root / f"saelens{m.reads[0].layer}", format="saelens")
    save_dictionary(make_set(d=8), root / "tc8", format="circuit_tracer")
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["attribute", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def parse_node(graph, text: str) -> int:
    if m := re.fullmatch(r"token '[^']*'@(\d+)", text):
        return graph.index(TokenNode(int(m[1]), int(graph.tokens[int(m[1])])))
    if m := re.fullmatch(r"L(\d+) #(\d+)@(\d+) \(act [-0-9.e+]+\)", text):
        return graph.index(FeatureNode(int(m[1]), int(m[3]), int(m[2])))
    if m := re.fullmatch(r"error L(\d+)@(\d+)", text):
        return graph.index(ErrorNode(int(m[1]), int(m[2])))
    assert re.fullmatch(r"logit '[^']*' \(p [0-9.e-]+\)", text), text
    return len(graph.nodes) - graph.n_logits


def test_attribute_writes_the_files_and_a_true_summary(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code, text, err = run(capsys, files / "tiny.safetensors", "--dictionaries", files / "tc", "--tokens",
                          ",".join(map(str, TOKENS)), "--out", out, "--top-paths", "10")
    assert code == 0, err
    assert "Traceback" not in err and "Warning" not in err
    assert "adjacency rows (100%)" in err  # progress lines on stderr (not a terminal here)
    assert (out / "summary.txt").read_text() == text
    gf = read_circuit_tracer_json(out / "graph.json")
    page = (out / "attribution.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script src" not in page and 'href="http' not in page
    assert [n["feature_type"] for n in gf.nodes].count("embedding") == len(TOKENS)
    # the same graph through the Python API
    model = ca.load(files / "tiny.safetensors")
    graph = attribute(model, load_dictionary(files / "tc"), TOKENS)
    lines = text.splitlines()
    assert lines[0].startswith("prompt: 't3t1t4t1t5t9t2t6' (8 tokens: [3, 1, 4, 1, 5, 9, 2, 6])")
    probs = re.findall(r"'(t\d+)' \(p ([0-9.e-]+)\)", lines[1])
    assert [p[0] for p in probs] == [n.label for n in graph.logit_nodes]
    assert np.allclose([float(p[1]) for p in probs], graph.logit_probabilities, rtol=5e-3)
    err_max = float(re.search(r"max relative error ([0-9.e+-]+)", lines[2])[1])
    assert err_max < 1e-10 and err_max == pytest.approx(graph.completeness_error().max(), rel=5e-3, abs=1e-300)
    counts = [int(x) for x in re.findall(r"(\d+) (?:features|errors|tokens|logits)", lines[3])]
    pr = graph.prune()
    m = pr.node_mask
    n_f, n_e = graph.n_features, graph.n_errors
    assert counts == [n_f, n_e, graph.n_pos, graph.n_logits, int(m[:n_f].sum()), int(m[n_f:n_f + n_e].sum()),
                      int(m[n_f + n_e:n_f + n_e + graph.n_pos].sum()), int(m[-graph.n_logits:].sum())]
    paths = lines[5:]
    assert len(paths) == 10
    A = graph.adjacency
    for line in paths:
        body, value = line.strip().rsplit(": ", 1)
        idx = [parse_node(graph, part) for part in body.split(" -> ")]
        # recomputed from the adjacency: the product of A[t, s] / sum_u |A[t, u]|
        want = np.prod([A[t, s] / np.abs(A[t]).sum() for s, t in zip(idx[:-1], idx[1:])])
        assert float(value) == pytest.approx(want, rel=1e-5)
    assert any(" -> L" in p for p in paths)  # paths through features are among the top ones here


def test_per_layer_folders_give_the_same_summary(files, tmp_path, capsys) -> None:
    args = ["--tokens", ",".join(map(str, TOKENS)), "--target", "t5", "--target", "7", "--no-demean"]
    code, one, err = run(capsys, files / "tiny.safetensors", "--dictionaries", files / "tc", "--out", tmp_path / "a", *args)
    assert code == 0, err
    folders = [a for i in range(3) for a in ("--dictionaries", files / f"saelens{i}")]
    code, three, err = run(capsys, files / "tiny.safetensors", *folders, "--out", tmp_path / "b", *args)
    assert code == 0, err
    assert one == three
    assert "targets (logits): 't5'" in one and "'t7'" in one


def test_top_paths_are_exact() -> None:
    graph = attribute(make_model(), make_set(), TOKENS)
    A = graph.adjacency
    n = len(graph.nodes)
    tok = np.arange(graph.n_features + graph.n_errors, graph.n_features + graph.n_errors + graph.n_pos)
    t = n - graph.n_logits
    N = A / np.abs(A).sum(axis=1, keepdims=True).clip(1e-10)  # normalised, signed
    # every path of 1, 2 and 3 edges from a token to the target, by brute force
    one = [((int(s), t), N[t, s]) for s in tok]
    two = [((int(tok[j]), a, t), N[t, a] * N[a, tok[j]]) for a in range(n) for j in range(len(tok))]
    V3 = N[t][:, None, None] * N[:, :, None] * N[:, tok][None, :, :]  # (b, a, token)
    three = [((int(tok[j]), int(a), int(b), t), V3[b, a, j]) for b, a, j in zip(*np.nonzero(V3))]
    every = sorted([p for p in one + two + three if p[1] != 0], key=lambda p: (-abs(p[1]), p[0]))
    got = top_paths(graph, 150)  # the first three-edge path is 92nd here
    assert [p.nodes for p in got] == [p[0] for p in every[:150]]
    assert [p.value for p in got] == pytest.approx([p[1] for p in every[:150]], rel=1e-12)
    assert [p.value for p in got] == pytest.approx([path_value(graph, p.nodes) for p in got], rel=1e-12)
    assert any(len(p.nodes) == 4 for p in got)
    assert len(top_paths(graph, 3, max_hops=1)) == 3 and all(len(p.nodes) == 2 for p in top_paths(graph, 3, max_hops=1))
    text = summarise(graph, 2)
    assert text.count("\n  ") == 2
    with pytest.raises(ca.InvalidArgumentError, match="max_hops"):
        top_paths(graph, 3, max_hops=4)


def one_line_error(err: str, *words: str) -> None:
    lines = [ln for ln in err.splitlines() if not ln.startswith("[circuitalg]")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_inputs_fail_in_one_line(files, tmp_path, capsys) -> None:
    model = files / "tiny.safetensors"
    out = ["--out", tmp_path / "o"]
    code, _, err = run(capsys, model, "--dictionaries", tmp_path / "missing", "--tokens", "3,1,4", *out)
    assert code == EXIT_MODEL
    one_line_error(err, "--dictionaries", "missing", "no such")
    code, _, err = run(capsys, model, "--dictionaries", files / "tc8", "--tokens", "3,1,4", *out)
    assert code != 0
    one_line_error(err, "tc8.L0", "8 dims", "16")
    code, _, err = run(capsys, model, "--dictionaries", tmp_path, "--tokens", "3,1,4", *out)
    assert code == EXIT_MODEL
    one_line_error(err, "not a dictionary")
    code, _, err = run(capsys, model, "--dictionaries", files / "tc", "--prompt", "hello", *out)
    assert code == EXIT_USAGE
    one_line_error(err, "no tokenizer", "--tokens")
    code, _, err = run(capsys, model, "--dictionaries", files / "tc", "--tokens", "3,1,40", *out)
    assert code != 0
    one_line_error(err, "token id 40")
    code, _, err = run(capsys, model, "--dictionaries", files / "tc", "--tokens", "3,1,4", "--target", "zz", *out)
    assert code != 0
    one_line_error(err, "--target 'zz'")
    code, _, err = run(capsys, files / "nope.safetensors", "--dictionaries", files / "tc", "--tokens", "3", *out)
    assert code == EXIT_MODEL
    one_line_error(err, "nope.safetensors")
    assert not (tmp_path / "o").exists()


def test_prompt_through_a_tokenizer_file(files, tmp_path, capsys) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tk = tokenizers.Tokenizer(WordLevel({v: i for i, v in enumerate(VOCAB)}, unk_token="t0"))
    tk.pre_tokenizer = Whitespace()
    tk.save(str(tmp_path / "tokenizer.json"))
    code, text, err = run(capsys, files / "tiny.safetensors", "--dictionaries", files / "tc", "--prompt",
                          "t3 t1 t4 t1 t5", "--tokenizer", tmp_path / "tokenizer.json", "--out", tmp_path / "o")
    assert code == 0, err
    # no special tokens in this tokenizer: nothing is put first
    assert text.splitlines()[0] == "prompt: 't3 t1 t4 t1 t5' (5 tokens: [3, 1, 4, 1, 5])"
    assert read_circuit_tracer_json(tmp_path / "o" / "graph.json").metadata["prompt"] == "t3 t1 t4 t1 t5"
