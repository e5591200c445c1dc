"""Examples run as smoke tests (reduced vocabulary to stay fast)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_factored_algebra_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "01_factored_algebra.py"), "--vocab", "3000"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "W_U*W_O*W_V*W_E" in out.stdout
    rel = float(out.stdout.split("independent QR reference:")[1].split()[0])
    assert rel < 1e-10


def test_gpt2_paths_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "02_gpt2_paths.py")], capture_output=True, text=True, check=True
    )
    rel = float(out.stdout.split("forward-pass logits: max relative difference")[1].split()[0])
    assert rel < 1e-8
    assert "largest terms (Frobenius norm" in out.stdout and " -> unembed" in out.stdout  # path names printed
    assert "<Transformer 'random-tiny-gpt2'" in out.stdout  # a sensible name, not a temporary folder's
    assert "[transformers]" not in out.stderr and "Writing model shards" not in out.stderr


def test_find_induction_circuit_example_runs(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "03_find_induction_circuit.py"), "--model", "planted_induction",
         "--out", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "previous-token head (positional QK): [('L0H1'" in out
    assert "K-composition L0H1 -> L1H2 (strongest valid pair)" in out and "(significant at 0.01" in out
    assert "top QK circuit of the copier: embed -> L0H1 -> L1H2.k (query: embed)" in out
    assert (tmp_path / "circuit_graph.graphml").is_file()


def test_find_induction_circuit_in_attn2l_runs(tmp_path) -> None:
    """Without --out the example leaves nothing behind (its temporary folder is removed)."""
    import os

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "03_find_induction_circuit.py")],
        capture_output=True, text=True, check=True, env={**os.environ, "TMPDIR": str(scratch)},
    ).stdout
    assert list(scratch.iterdir()) == []
    assert "<Transformer 'attn2l'" in out
    assert "K-composition L0H" in out and "top QK circuit of the copier: embed -> L0H" in out


def test_verify_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "04_verify_factorisation.py")], capture_output=True, text=True,
        check=True,
    ).stdout
    assert out.count(": True (rewrite)") == 4
    assert "(A+C)⊗(B+D): False (exact-random); counterexample found: True" in out
