"""Train the zoo's small attention-only models (needs torch: ``pip install -e ".[train]"``).

Usage::

    python -m circuitalg.zoo.train --model attn2l --seed 0 [--steps N] [--out DIR]

Data (synthetic, generated from the seed): half of the sequences follow a bigram chain (a
fixed sparse Markov matrix over the vocabulary, so bigram statistics pay) into which random
earlier spans of 4-12 tokens are copied; the other half are uniform random tokens followed by
repeats of a span of them. Both reward attending to the token after the previous occurrence
of the current token. A 2-layer model learns a
previous-token head and an induction head; a 1-layer model learns copying (skip-trigram) heads.

The parameters are kept in circuitalg's canonical column layout throughout, so the trained
model is written with :func:`circuitalg.save` and read back without torch. The card records the
recipe, the final loss and the induction / previous-token / copying scores measured by
circuitalg on the saved weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

RECIPES: dict[str, dict[str, Any]] = {
    "attn1l": dict(n_layers=1, n_heads=4, d_model=64, d_head=16, d_vocab=64, n_ctx=32, steps=3000),
    "attn2l": dict(n_layers=2, n_heads=4, d_model=64, d_head=16, d_vocab=64, n_ctx=32, steps=4000),
}
BATCH = 64
LR = 3e-3


def bigram_matrix(d_vocab: int, rng: np.random.Generator) -> np.ndarray:
    """A sparse random Markov matrix: each token has 4 likely successors."""
    P = np.full((d_vocab, d_vocab), 0.05 / d_vocab)
    for t in range(d_vocab):
        nxt = rng.choice(d_vocab, size=4, replace=False)
        P[t, nxt] += rng.dirichlet(np.ones(4)) * 0.95
    return P / P.sum(axis=1, keepdims=True)


def make_batch(P: np.ndarray, n: int, n_ctx: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` sequences mixing bigram chains and repeated spans (see the module docstring)."""
    V = P.shape[0]
    cdf = np.cumsum(P, axis=1)
    out = np.empty((n, n_ctx), dtype=np.int64)
    for i in range(n):
        if rng.random() < 0.5:  # uniform random tokens, then a repeat of a span of them
            first = int(rng.integers(n_ctx // 4, n_ctx // 2 + 1))
            seq = list(rng.integers(V, size=first))
            start = int(rng.integers(0, first // 2))
            while len(seq) < n_ctx:
                seq.extend(seq[start:first])
            out[i] = seq[:n_ctx]
            continue
        seq = [int(rng.integers(V))]
        while len(seq) < n_ctx:
            if len(seq) >= 6 and rng.random() < 0.25:
                length = int(rng.integers(4, 13))
                start = int(rng.integers(0, max(1, len(seq) - length)))
                seq.extend(seq[start:start + length])
            else:
                seq.append(int(np.searchsorted(cdf[seq[-1]], rng.random())))
        out[i] = seq[:n_ctx]
    return out


def init_params(cfg: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from circuitalg.model.params import param_shapes

    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.split(".")[-1].startswith("b"):
            params[name] = np.zeros(shape)
        else:
            params[name] = rng.standard_normal(shape) * (0.8 / math.sqrt(cfg.d_model))
    return params


def forward(torch: Any, p: dict[str, Any], cfg: Any, tokens: Any) -> Any:
    """Logits ``(batch, seq, vocab)`` of an attention-only model without layer norm, in the
    canonical column layout; the same computation as :func:`circuitalg.model.forward.run`."""
    seq = tokens.shape[1]
    x = p["W_E"].T[tokens] + p["W_pos"][:, :seq].T
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    for l in range(cfg.n_layers):
        a = f"blocks.{l}.attn."
        q = torch.einsum("hdm,bsm->bhsd", p[a + "W_Q"], x) + p[a + "b_Q"][None, :, None, :]
        k = torch.einsum("hdm,bsm->bhsd", p[a + "W_K"], x) + p[a + "b_K"][None, :, None, :]
        v = torch.einsum("hdm,bsm->bhsd", p[a + "W_V"], x) + p[a + "b_V"][None, :, None, :]
        scores = (q @ k.transpose(-1, -2)) / cfg.attn_scale
        pattern = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        z = pattern @ v
        x = x + torch.einsum("hmd,bhsd->bsm", p[a + "W_O"], z) + p[a + "b_O"]
    return x @ p["W_U"].T + p["b_U"]


def train(name: str, seed: int = 0, steps: int | None = None, log: Any = print) -> tuple[Any, dict[str, Any]]:
    """Train zoo model ``name``; returns ``(Transformer, card)``."""
    import torch

    from circuitalg.circuits.diagnostics import head_table, repeated_random_tokens
    from circuitalg.model.config import TransformerConfig
    from circuitalg.model.weights import Transformer

    recipe = dict(RECIPES[name])
    recipe_steps = recipe.pop("steps")
    n_steps = int(recipe_steps if steps is None else steps)
    cfg = TransformerConfig(normalization=None, **recipe)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    P = bigram_matrix(cfg.d_vocab, rng)
    p = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in init_params(cfg, rng).items()}
    opt = torch.optim.AdamW(list(p.values()), lr=LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=max(n_steps, 1), pct_start=0.1)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    loss_value = float("nan")
    for step in range(n_steps):
        tokens = torch.from_numpy(make_batch(P, BATCH, cfg.n_ctx, rng))
        logits = forward(torch, p, cfg, tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.d_vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        loss_value = 0.98 * loss_value + 0.02 * value if step else value
        if log and (step % 500 == 0 or step == n_steps - 1):
            log(f"{name} step {step:5d}/{n_steps}  loss {loss_value:.4f}  ({time.time() - t0:.0f} s)")
    params = {k: v.detach().double().numpy() for k, v in p.items()}
    model = Transformer(cfg, params, name=name, vocab=[f"t{i}" for i in range(cfg.d_vocab)])
    # held-out loss on fresh data (float64, circuitalg's own forward pass)
    eval_tokens = make_batch(P, 32, cfg.n_ctx, np.random.default_rng(seed + 10_000))
    losses = []
    for row in eval_tokens:
        logits, _ = model.run(row[:-1])
        logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        losses.append(float(np.mean(logz - logits[np.arange(len(row) - 1), row[1:]])))
    table = head_table(model, repeated_random_tokens(model, cfg.n_ctx // 2, 16, seed=seed))
    card = {
        "name": name,
        "architecture": cfg.to_dict(),
        "data": {
            "recipe": "half: bigram chain (4 likely successors per token) with copied spans of 4-12 tokens "
                      "(probability 0.25 per position after 6 tokens); half: 8-16 uniform random tokens, "
                      "then repeats of a span of them",
            "batch": BATCH, "seq_len": cfg.n_ctx,
        },
        "training": {"seed": seed, "steps": n_steps, "optimizer": "AdamW", "max_lr": LR, "weight_decay": 0.01,
                     "schedule": "one-cycle", "dtype": "float32", "seconds": round(time.time() - t0, 1)},
        "final_train_loss": round(loss_value, 4),
        "eval_loss": round(float(np.mean(losses)), 4),
        "scores": {
            "induction": dict(zip(*map(list, zip(*table.top("induction", 2))))),
            "prev_token": dict(zip(*map(list, zip(*table.top("prev_token", 2))))),
            "copying": dict(zip(*map(list, zip(*table.top("copying", 2))))),
        },
    }
    return model, card


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(RECIPES), default="attn2l")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    ap.add_argument("--out", default=str(Path(__file__).parent / "models"))
    args = ap.parse_args(argv)
    from circuitalg.model.io import save

    model, card = train(args.model, args.seed, args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save(model, out / f"{args.model}.safetensors")
    (out / f"{args.model}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card["scores"], indent=2))
    print(f"wrote {out / (args.model + '.safetensors')} and {args.model}.json")


if __name__ == "__main__":
    main()
