"""Find an induction circuit from the weights alone, step by step, and export the graph.

Usage::

    python examples/03_find_induction_circuit.py [--model attn2l] [--out DIR]

By default the shipped ``attn2l`` (trained on synthetic text with repeats); ``--model
planted_induction`` uses a model built by hand with a known previous-token head and induction
head. Nothing below is told which heads those are.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import circuitalg as ca


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="folder for circuit_graph.graphml (default: a temporary one)")
    ap.add_argument("--model", default="attn2l", help="a zoo name (ca.zoo.list())")
    args = ap.parse_args()
    model = ca.zoo.load(args.model)
    print(model)

    # 1. heads: which one attends to the previous position (from W_pos alone), which one copies?
    table = ca.head_table(model, ca.repeated_random_tokens(model, 12, 8, seed=0))
    print("previous-token head (positional QK):", table.top("positional_prev_token", 1))
    print("copying head (eigenvalues of W_U W_OV W_E):", table.top("copying", 1))

    # 2. K-composition: which earlier head does that copier's key side read?
    k = ca.composition_scores(model, "k")
    base = ca.composition_baseline(model, "k")
    finding = ca.composition_finding(k, base)  # earlier -> later pairs only, corrected for their number
    print(finding)
    l2, h2 = finding.reader.layer, finding.reader.head

    # 3. the exact top QK circuits of that head
    search = ca.top_circuits(model, k=3, max_heads=2, sinks=("k", "q"))
    print(search.summary())
    for c in search:
        print("  ", c)
    induction = [c for c in ca.top_circuits(model, 200, 2, ("k",)) if c.sink.head == (int(l2), int(h2))][0]
    print("top QK circuit of the copier:", induction)
    print("   its virtual weight:", induction.symbol)
    print("   strongest (query, key) token pairs:", [str(e) for e in induction.top_tokens(3)])

    # 4. behaviour confirms it: attention on repeated random tokens (forward passes)
    print("induction score on repeated random tokens:", table.top("induction", 1))

    # 5. the virtual-weight graph, thresholded and exported
    graph = ca.CircuitGraph(model).threshold(above_baseline=1.5, kinds=("k", "q", "v"))
    with tempfile.TemporaryDirectory() as tmp:  # without --out nothing is left behind
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        graph.to_graphml(out / "circuit_graph.graphml")
        back = ca.CircuitGraph.read(out / "circuit_graph.graphml", model=model)
        where = out / "circuit_graph.graphml" if args.out else "a temporary folder (removed; keep it with --out DIR)"
        print(f"graph with edges above 1.5x baseline: {graph}; written to {where} and read back: {back}")
    for e in graph.edges(top=3):
        print(f"   {e['writer']} -> {e['reader']} ({e['kind']}): score {e['score']:.3f}, baseline {e['baseline']:.3f}")


if __name__ == "__main__":
    main()
