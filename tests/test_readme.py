"""The README's two commands stay true: CI runs exactly its test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    install_and_run, install_and_test = _readme_commands()
    assert "pytest" in install_and_test
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install_and_test in ci_lines


def test_main_job_is_the_report_command() -> None:
    install_and_run, _ = _readme_commands()
    assert install_and_run.endswith("circuitalg report")
    assert 'circuitalg = "circuitalg.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_composition_tour_runs(tmp_path, monkeypatch) -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Composition, heads, the graph and circuit search", 1)[1]
    code = block.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README", "exec"), ns)
    assert str(ns["search"][0]).startswith("embed -> L0H1 -> L1H2.k (query: embed)")
    assert (tmp_path / "graph.graphml").is_file()


def test_dictionaries_tour_runs_and_prints_what_it_says(tmp_path, monkeypatch, capsys) -> None:
    """The dictionaries section's code on the real SmolLM2 GGUF and the shipped dictionaries: every
    printed line its comments quote is what it prints."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from model_helpers import smollm2_gguf

    smollm2_gguf()  # skips (or, in CI, fails) where the GGUF is not installed
    text = (ROOT / "README.md").read_text()
    block = text.split("## Dictionaries: features as a basis", 1)[1]
    code = block.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README", "exec"), {})
    out = capsys.readouterr().out
    quoted = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("# ") and "..." not in line]
    for line in quoted:
        assert line in out, (line, out)
    for line in code.splitlines():
        if "print(cf.top_feature_logits" in line:
            claim = line.split("# ", 1)[1].split(", ...")[0]
            assert claim in out, (claim, out)
