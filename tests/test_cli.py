"""The zoo, the `circuitalg` command and its HTML report."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import circuitalg as ca
from circuitalg.cli import main


def test_zoo_lists_and_loads_shipped_models_without_torch() -> None:
    assert {"attn1l", "attn2l", "planted_induction"} <= set(ca.zoo.list())
    code = "import sys, circuitalg as ca; m = ca.zoo.load('attn2l'); print(m.config.n_layers, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "False"]
    card = ca.zoo.card("attn2l")
    assert card["architecture"]["n_layers"] == 2 and card["training"]["seed"] == 0
    assert {"induction", "prev_token", "copying", } <= set(card["scores"])
    with pytest.raises(ca.InvalidArgumentError, match="unknown zoo model"):
        ca.zoo.load("gpt5")


@pytest.mark.parametrize("name", ["attn1l", "attn2l"])
def test_shipped_model_files_are_small(name: str) -> None:
    path = ca.zoo.MODELS_DIR / f"{name}.safetensors"
    assert path.stat().st_size < 2_000_000


def test_card_scores_match_the_shipped_weights() -> None:
    m = ca.zoo.load("attn2l")
    card = ca.zoo.card("attn2l")
    t = ca.head_table(m, ca.repeated_random_tokens(m, m.config.n_ctx // 2, 16, seed=0))
    for head, value in card["scores"]["induction"].items():
        l, h = (int(x) for x in head[1:].split("H"))
        assert t.induction[l, h] == pytest.approx(value, abs=1e-9)


class _Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.sections: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "section":
            self.sections.append(a.get("id", ""))


def test_report_on_attn2l_names_the_circuit(tmp_path, capsys) -> None:
    assert main(["report", "attn2l", "--out", str(tmp_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    # measured by independent means in the test below: the previous-token head attends back,
    # the induction head attends to the token after the previous occurrence and copies
    assert s["previous_token_head"].startswith("L0") and s["induction_head"].startswith("L1")
    assert s["induction_score"] > 0.5 and s["induction_copying"] > 0.5
    kc = s["k_composition"]
    assert (kc["writer"], kc["reader"], kc["chosen"]) == (s["previous_token_head"], s["induction_head"], "named heads")
    assert kc["significant"] and kc["family_p"] < 1e-6 and kc["n_pairs"] == 16
    assert kc["score"] > s["baseline_k"]["mean"] + 5 * s["baseline_k"]["std"]
    assert s["identity_verified"] is True
    page = (tmp_path / "report.html").read_text()
    parser = _Structure()
    parser.feed(page)
    assert {"summary", "composition", "copying", "positional", "graph", "circuits", "tokens", "heads",
            "identity"} <= set(parser.sections)
    assert len(parser.imgs) == 4 and all(src.startswith("data:image/png;base64,") and len(src) > 5000
                                         for src in parser.imgs)
    m = ca.zoo.load("attn2l")
    l, h = (int(x) for x in s["induction_head"][1:].split("H"))
    row = ca.repeated_random_tokens(m, 10, 1, seed=5)[0]
    pat = m.run(row)[1].pattern[l, h]
    assert np.mean([pat[q, q - 9] for q in range(10, 20)]) > 0.3


def test_report_finds_the_planted_circuit(tmp_path, capsys) -> None:
    assert main(["report", "planted_induction", "--out", str(tmp_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["previous_token_head"], s["induction_head"]) == ("L0H1", "L1H2")
    assert s["top_circuits"][0]["name"] == "embed -> L0H1 -> L1H2.k (query: embed)"
    kc = s["k_composition"]
    assert (kc["writer"], kc["reader"]) == ("L0H1", "L1H2") and kc["significant"]


def test_report_on_one_layer_claims_no_composition_and_no_induction_head(tmp_path, capsys) -> None:
    """Negative control: one layer has no composition and no induction head."""
    assert main(["report", "attn1l", "--out", str(tmp_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["induction_head"] is None and s["k_composition"] is None
    assert "induction head: not applicable" in s["text"] and "K-composition: not applicable" in s["text"]
    assert "->" not in "".join(line for line in s["text"].splitlines() if "composition" in line)
    # the previous-token claim matches the head table: named only above the threshold
    table = ca.head_table(ca.zoo.load("attn1l"), ca.repeated_random_tokens(ca.zoo.load("attn1l"), 16, 16, seed=0))
    assert (s["previous_token_head"] is None) == (table.prev_token.max() < ca.PATTERN_THRESHOLD)


def _random_gpt2(seed: int) -> ca.Transformer:
    """GPT-2's architecture and initialisation (weights N(0, 0.02), LN weight 1, biases 0), smaller."""
    cfg = ca.TransformerConfig(n_layers=4, n_heads=8, d_model=128, d_head=16, d_vocab=300, n_ctx=64,
                               d_mlp=512, act_fn="gelu_new", normalization="LN")
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in ca.param_shapes(cfg).items():
        last = key.rsplit(".", 1)[-1]
        params[key] = (np.ones(shape) if key.endswith(".w") else np.zeros(shape) if last.startswith("b")
                       else 0.02 * rng.standard_normal(shape))
    return ca.Transformer(cfg, params, name=f"random-gpt2-{seed}")


@pytest.mark.parametrize("seed", range(2))
def test_report_on_random_weights_names_no_head(tmp_path, seed: int) -> None:
    """Negative control: random GPT-2-style weights have no previous-token head, no induction
    head and no significant composition (384 earlier->later pairs: the maximum is corrected)."""
    from circuitalg.report import analyse

    a = analyse(_random_gpt2(seed))
    assert a.prev.head is None and a.induction.head is None, a.text
    assert a.k_comp is not None and a.k_comp.chosen == "strongest valid pair"
    assert a.k_comp.writer.layer < a.k_comp.reader.layer
    assert not a.k_comp.significant, a.text
    assert "none found" in a.text and "not significant" in a.text


def test_cli_subcommands_and_exit_codes(tmp_path, capsys) -> None:
    assert main(["info", "--list"]) == 0
    assert "attn2l" in capsys.readouterr().out
    assert main(["info", "attn2l", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["n_heads"] == 4
    assert main(["scores", "planted_induction", "--kind", "k", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["top"][0]["writer"] == "L0H1" and out["top"][0]["reader"] == "L1H2"
    assert main(["circuits", "planted_induction", "--top", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["circuits"]) == 2
    assert main(["info", "no_such_model"]) == 3
    assert "neither a zoo model" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 5)
    assert main(["info", str(bad)]) == 3
    assert "bad.safetensors" in capsys.readouterr().err
    assert main(["scores", "attn2l", "--kind", "x"]) == 2
    assert main(["circuits", "planted_induction", "--top", "0"]) == 2  # numeric options checked by name
    assert "--top must be >= 1" in capsys.readouterr().err
    # a checkpoint path works too
    path = ca.save(ca.zoo.load("planted_induction"), tmp_path / "p.safetensors")
    assert main(["scores", str(path), "--json"]) == 0


def test_python_dash_m_entry_point() -> None:
    r = subprocess.run([sys.executable, "-m", "circuitalg", "info", "--list"], capture_output=True, text=True)
    assert r.returncode == 0 and "attn2l" in r.stdout


def test_training_forward_equals_circuitalg_forward() -> None:
    torch = pytest.importorskip("torch")
    from circuitalg.zoo import train

    model, card = train.train("attn2l", seed=1, steps=3, log=None)
    assert card["training"]["steps"] == 3
    p = {k: torch.tensor(v) for k, v in model.params.items()}
    tokens = train.make_batch(train.bigram_matrix(64, np.random.default_rng(0)), 2, 32, np.random.default_rng(1))
    with torch.no_grad():
        ref = train.forward(torch, p, model.config, torch.from_numpy(tokens)).numpy()
    for i, row in enumerate(tokens):
        np.testing.assert_allclose(model.run(row)[0], ref[i], rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_training_reproduces_the_shipped_attn2l(tmp_path) -> None:
    pytest.importorskip("torch")
    from circuitalg.zoo import train

    _, card = train.train("attn2l", seed=0, log=None)
    shipped = ca.zoo.card("attn2l")
    for kind in ("induction", "prev_token", "copying"):
        for head, value in shipped["scores"][kind].items():
            assert card["scores"][kind].get(head) == pytest.approx(value, abs=0.05), (kind, head)
    assert card["eval_loss"] == pytest.approx(shipped["eval_loss"], abs=0.05)


def test_cli_version_out_checks_and_file_modes(tmp_path, capsys) -> None:
    import os
    import stat

    assert main(["--version"]) == 0 and ca.__version__ in capsys.readouterr().out
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["report", "attn1l", "--out", str(afile)]) == 2  # before any analysis
    assert "is a file" in capsys.readouterr().err
    old = os.umask(0o022)
    try:
        assert main(["report", "attn1l", "--out", str(tmp_path / "r")]) == 0
        path = ca.save(ca.zoo.load("attn1l"), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    for f in (tmp_path / "r" / "report.html", path):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f  # the user's umask, not mkstemp's 0600


def test_report_files_tables_and_options_state_what_the_analysis_found(tmp_path, capsys) -> None:
    """The CSV/JSON files beside the page hold the analysis' own numbers; the page's composition
    table is their top by z; significance flags match the stated thresholds; --layers, --top and
    --no-figures do what they say; the identity is well-formed MathML."""
    import csv
    import xml.dom.minidom

    from circuitalg.circuits.composition import valid_pairs
    from circuitalg.report import ReportOptions, analyse

    out = tmp_path / "r"
    assert main(["report", "attn2l", "--out", str(out), "--top", "3"]) == 0
    capsys.readouterr()
    m = ca.fold_layer_norm(ca.zoo.load("attn2l"))
    a = analyse(ca.zoo.load("attn2l"), options=ReportOptions(top=3))
    rows = list(csv.DictReader((out / "composition.csv").open()))
    assert len(rows) == 3 * valid_pairs(2, 4)
    for r in rows:
        l1, h1 = (int(x) for x in r["writer"][1:].split("H"))
        l2, h2 = (int(x) for x in r["reader"][1:].split("H"))
        score = float(r["score"])
        assert l1 < l2 and score == pytest.approx(ca.composition_scores(m, r["kind"])[l1, h1, l2, h2], rel=1e-12)
        base = a.base[r["kind"]]
        assert float(r["z"]) == pytest.approx((score - base.mean) / base.std, rel=1e-9)
        assert (r["significant"] == "True") == (score >= base.threshold(valid_pairs(2, 4)))
    assert {r["writer"] + r["reader"] for r in rows if r["significant"] == "True"} >= {"L0H2L1H1"}
    heads = list(csv.DictReader((out / "heads.csv").open()))
    assert len(heads) == 8 and float(heads[6]["induction"]) == pytest.approx(a.table.induction[1, 2], rel=1e-12)
    assert len(list(csv.DictReader((out / "circuits.csv").open()))) == 3  # --top 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["induction_head"] == a.induction.head.name and summary["significant_pairs"]["k"] >= 1
    graph = json.loads((out / "graph.json").read_text())
    assert len(graph["nodes"]) == 1 + 1 + 8 + 1
    page = (out / "report.html").read_text()
    top = sorted(rows, key=lambda r: -float(r["z"]))[:10]
    at = 0
    for r in top:  # the page's table lists the highest z first, in order
        at = page.index(f"<td>{r['writer']}</td><td>{r['reader']}</td>", at)
    math = page[page.index("<math"):page.index("</math>") + 7]
    xml.dom.minidom.parseString(math.replace("&InvisibleTimes;", "&#x2062;"))
    assert "&#x2297;" in math and 'class="sortable"' in page and "<script>" in page
    # --layers 1 --no-figures: the head table shows layer 1 only, no figures
    out2 = tmp_path / "r2"
    assert main(["report", "attn2l", "--out", str(out2), "--layers", "1", "--no-figures"]) == 0
    capsys.readouterr()
    page2 = (out2 / "report.html").read_text()
    assert "<img" not in page2 and "figure not drawn: --no-figures" in page2
    assert "<td>L1H0</td>" in page2 and "<td>L0H0</td><td>-" not in page2 and "Showing layers 1" in page2
    for bad in (["--layers", "7"], ["--layers", "2-1"], ["--seq-len", "17"], ["--top", "0"]):
        assert main(["report", "attn2l", "--out", str(tmp_path / "x"), *bad]) == 2
        assert bad[0] in capsys.readouterr().err

