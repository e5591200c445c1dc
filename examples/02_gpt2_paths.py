"""Load a GPT-2 checkpoint, run the reference forward pass, and expand the logits into paths.

Usage::

    python examples/02_gpt2_paths.py [CHECKPOINT] [--max-heads K]

CHECKPOINT is a Hugging Face GPT-2 directory (config.json + model.safetensors), a
TransformerLens state dict or a circuitalg file. Without one, a random tiny GPT-2 is created
with transformers (when installed: ``pip install -e ".[reference]"``) or, failing that, a
random GPT-2-style model in circuitalg's own format.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import circuitalg as ca


def make_checkpoint(directory: Path) -> Path:
    """A random tiny GPT-2 checkpoint: Hugging Face layout if transformers is installed."""
    try:
        import torch
        import transformers
    except ImportError:
        cfg = ca.TransformerConfig(n_layers=2, n_heads=4, d_model=64, d_head=16, d_vocab=101, n_ctx=32, d_mlp=256, act_fn="gelu_new")
        rng = np.random.default_rng(0)
        params = {k: (1.0 if k.endswith(".w") else 0.0) + 0.1 * rng.normal(size=s) for k, s in ca.param_shapes(cfg).items()}
        return ca.save(ca.Transformer(cfg, params, name="random-tiny-gpt2"), directory / "random-tiny-gpt2.safetensors")
    transformers.utils.logging.set_verbosity_error()  # no progress bars or config notices in the output
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=101, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    path = directory / "random-tiny-gpt2"  # the folder's name is the model's name
    transformers.GPT2LMHeadModel(config).save_pretrained(path, safe_serialization=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint file or directory (default: a random tiny GPT-2)")
    parser.add_argument("--max-heads", type=int, default=None, help="most heads per path (default: all layers)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.checkpoint) if args.checkpoint else make_checkpoint(Path(tmp))
        model = ca.load(path)
    print(model)
    c = model.config
    tokens = np.random.default_rng(1).integers(0, c.d_vocab, size=min(16, c.n_ctx))
    logits, cache = model.run(tokens)
    print(f"forward pass on {len(tokens)} tokens: logits {logits.shape}, patterns {cache.pattern.shape}")

    t0 = time.perf_counter()
    paths = ca.expand(model, max_heads=args.max_heads)
    print(f"{paths}  (built in {time.perf_counter() - t0:.3f} s)")
    total = paths.logits(tokens, cache)
    rel = np.abs(total - logits).max() / np.abs(logits).max()
    print(f"sum of all path terms vs forward-pass logits: max relative difference {rel:.1e}")

    print("largest terms (Frobenius norm of their logit contribution):")
    for s in paths.top(tokens, cache, k=6):
        print(f"  {s.score:9.4f}  {s.circuit.name:40s} {s.circuit.symbol}")
    targets = np.roll(tokens, -1)
    print("largest terms for the logit of the next token (direct logit attribution, per path):")
    for s in paths.top(tokens, cache, k=4, targets=targets):
        print(f"  {s.score:+9.4f}  {s.circuit.name}")
    lens = ca.logit_lens(model, cache)
    agree = [(np.argmax(lens[layer], axis=-1) == np.argmax(logits, axis=-1)).mean() for layer in range(c.n_layers + 1)]
    print("logit lens: fraction of positions whose top token matches the final one, by layer:",
          " ".join(f"{a:.2f}" for a in agree))


if __name__ == "__main__":
    main()
