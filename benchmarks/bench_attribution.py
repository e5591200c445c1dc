"""Attribution graphs: circuitalg's ``attribute`` against circuit-tracer's on the same model,
transcoders and prompt, in the same run.

The case (issue 29): a GPT-2-small-shaped model (12 layers, d_model 768, 12 heads of 64, d_mlp
3072, vocabulary 50,257) with seeded random weights, 12 per-layer JumpReLU transcoders of 4,096
features reading ``mlp.hook_in`` and writing ``hook_mlp_out``, and a 16-token prompt. Each
transcoder's threshold is the quantile of its pre-activations on the prompt that leaves about
``--active`` (default 81) features active per position.

Each side runs in its own subprocess, so that its peak RSS (``resource.getrusage`` of the child,
``ru_maxrss``) is its own: circuitalg (float64) in this interpreter, circuit-tracer 0.5.0
(float32, ``batch_size=512``, as it runs) in ``.reference-venv`` with the same model exported by
``to_transformer_lens`` and the same transcoders written by circuitalg's circuit-tracer writer.
Both processes build or load the model and transcoders, so both peaks include them. Wall times
are those of the ``attribute`` calls; the load average at the start and end is printed, since a
ratio measured on a loaded machine is not a final figure.

Usage::

    python benchmarks/bench_attribution.py               # the full case, both sides
    python benchmarks/bench_attribution.py --quick       # tiny sizes, circuitalg only, in this process
                                                         # (a smoke test; --with-reference adds circuit-tracer)
    python benchmarks/bench_attribution.py --layers 3    # a proxy: same widths, fewer layers
    python benchmarks/bench_attribution.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = ROOT / ".reference-venv" / "bin" / "python"

FULL = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024, n_features=4096,
            n_tokens=16)
SAVE_ADJACENCY_UP_TO = 4000  # nodes: both sides save their adjacency for comparison below this
QUICK = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=101, n_ctx=32, n_features=128, n_tokens=8)


def make_model(sizes: dict, seed: int):
    """A seeded random LayerNorm model of the given sizes (GPT-2's architecture)."""
    import circuitalg as ca

    cfg = ca.TransformerConfig(n_layers=sizes["n_layers"], d_model=sizes["d_model"], n_heads=sizes["n_heads"],
                               d_head=sizes["d_head"], d_mlp=sizes["d_mlp"], d_vocab=sizes["d_vocab"],
                               n_ctx=sizes["n_ctx"], normalization="LN", act_fn="gelu_new")
    rng = np.random.default_rng(seed)
    params = {}
    for k, s in ca.param_shapes(cfg).items():
        if k.endswith(".w"):
            params[k] = 1.0 + 0.1 * rng.standard_normal(size=s)
        elif k.endswith(".b") or k.startswith("b") or ".b_" in k:
            params[k] = 0.02 * rng.standard_normal(size=s)
        else:
            params[k] = 0.1 * rng.standard_normal(size=s) if "W_pos" in k or "W_E" in k else 0.02 * rng.standard_normal(size=s)
    return ca.Transformer(cfg, params, name=f"bench-{sizes['n_layers']}x{sizes['d_model']}-{seed}")


def prompt(sizes: dict, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    tok = rng.integers(1, sizes["d_vocab"], size=sizes["n_tokens"])
    tok[0] = 0  # a "BOS" (position 0 is zeroed on both sides)
    return tok


def make_transcoders(model, tokens: np.ndarray, sizes: dict, seed: int, active: float):
    """Per-layer JumpReLU transcoders whose thresholds leave about ``active`` features per position."""
    from circuitalg.features import Dictionary, DictionaryKind, DictionarySet, Hook, HookKind, JumpReLU
    from circuitalg.features.coactivation import hook_activations
    from circuitalg.model.forward import run_batch

    d, F, L = sizes["d_model"], sizes["n_features"], sizes["n_layers"]
    rng = np.random.default_rng(seed + 2)
    _, cache = run_batch(model, np.asarray(tokens)[None])
    members = []
    for l in range(L):
        W_enc = rng.standard_normal(size=(F, d)) / np.sqrt(d)
        b_enc = 0.01 * rng.standard_normal(size=F)
        W_dec = 0.05 * rng.standard_normal(size=(d, F)) / np.sqrt(d)
        b_dec = 0.01 * rng.standard_normal(size=d)
        hook = Hook(HookKind.MLP_IN, l)
        x = np.asarray(hook_activations(model, cache, hook)[0])
        pre = x @ W_enc.T + b_enc
        # midway between two pre-activations (position 0 is not a node), so that float32 rounding
        # on circuit-tracer's side selects the same features
        v = np.sort(pre[1:].ravel())
        k = max(1, int(round(active * (pre.shape[0] - 1))))
        thr = max(float(v[-k - 1] + v[-k]) / 2, 1e-3)
        members.append(Dictionary(f"tc.L{l}", DictionaryKind.TRANSCODER, (hook,), (Hook(HookKind.MLP_OUT, l),),
                                  [W_enc], b_enc, [W_dec], [b_dec], JumpReLU(np.full(F, thr, dtype=np.float64))))
    return DictionarySet("tc", members)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- the children ----------------------------------------------------------------------------------

def child_circuitalg(work: Path, dtype: str, batch_size: int | None) -> None:
    from circuitalg.features.attribution import attribute
    from circuitalg.features.io import load_dictionary

    spec = json.loads((work / "case.json").read_text())
    model = make_model(spec["sizes"], spec["seed"])
    tcs = load_dictionary(work / "transcoders", format="circuit_tracer")
    tokens = np.array(spec["tokens"])
    t0 = time.perf_counter()
    c0 = os.times()
    g = attribute(model, tcs, tokens, batch_size=batch_size, dtype=np.float32 if dtype == "float32" else np.float64)
    wall = time.perf_counter() - t0
    c1 = os.times()
    err = g.completeness_error()
    out = dict(wall_s=wall, user_s=c1.user - c0.user, system_s=c1.system - c0.system,
               peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               n_nodes=len(g.nodes), n_features=g.n_features, n_logits=g.n_logits,
               logits=[int(n.vocab_index) for n in g.logit_nodes],
               completeness_max=float(err.max()), dtype=dtype)
    if len(g.nodes) <= SAVE_ADJACENCY_UP_TO:
        np.save(work / "adjacency_circuitalg.npy", g.adjacency)
    print("RESULT " + json.dumps(out), flush=True)


CIRCUIT_TRACER_CHILD = r'''
import json, os, resource, sys, time
import numpy as np, torch
from safetensors.numpy import load_file
from transformer_lens import HookedTransformerConfig
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
from circuit_tracer.attribution.attribute import attribute
work = sys.argv[1]
spec = json.load(open(os.path.join(work, "case.json")))
s = spec["sizes"]
dt = torch.float32
torch.set_grad_enabled(True)
cfg = HookedTransformerConfig(n_layers=s["n_layers"], d_model=s["d_model"], d_head=s["d_head"], n_heads=s["n_heads"],
    d_mlp=s["d_mlp"], d_vocab=s["d_vocab"], n_ctx=s["n_ctx"], act_fn="gelu_new", normalization_type="LN",
    positional_embedding_type="standard", dtype=dt, device="cpu", default_prepend_bos=False)
root = os.path.join(work, "transcoders")
paths = {l: os.path.join(root, f"layer_{l}.safetensors") for l in range(s["n_layers"])}
ts = load_transcoder_set(paths, scan="bench", feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
                         device=torch.device("cpu"), dtype=dt, lazy_encoder=False, lazy_decoder=False)
model = TransformerLensReplacementModel(cfg)
sd = {k: torch.from_numpy(v).to(dt) for k, v in load_file(os.path.join(work, "model.safetensors")).items()}
model.load_state_dict(sd, strict=False)
del sd
model._configure_replacement_model(ts)
class Tok:
    all_special_ids = [0]
    bos_token_id = 0; pad_token_id = 0; eos_token_id = 0
    vocab_size = s["d_vocab"]
    padding_side = "right"
    def decode(self, ids):
        ids = ids.tolist() if hasattr(ids, "tolist") else ([ids] if isinstance(ids, int) else ids)
        return " ".join(str(int(i)) for i in (ids if isinstance(ids, list) else [ids]))
model.tokenizer = Tok()
tokens = torch.tensor(spec["tokens"])
t0 = time.perf_counter(); c0 = os.times()
g = attribute(tokens, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=512, verbose=False)
wall = time.perf_counter() - t0; c1 = os.times()
out = dict(wall_s=wall, user_s=c1.user - c0.user, system_s=c1.system - c0.system,
           peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           n_nodes=int(g.adjacency_matrix.shape[0]), n_features=int(g.active_features.shape[0]),
           n_logits=len(g.logit_targets), logits=[int(t.vocab_idx) for t in g.logit_targets], dtype="float32")
if out["n_nodes"] <= int(sys.argv[2]):
    np.save(os.path.join(work, "adjacency_circuit_tracer.npy"), g.adjacency_matrix.double().numpy())
print("RESULT " + json.dumps(out), flush=True)
'''


def run_child(cmd: list[str], label: str) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    total = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-8000:])
        raise SystemExit(f"{label} failed (exit {p.returncode})")
    out = json.loads(lines[-1][len("RESULT "):])
    out["process_wall_s"] = total
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, circuitalg only")
    ap.add_argument("--layers", type=int, help="a proxy with fewer layers (same widths)")
    ap.add_argument("--active", type=float, default=81.0, help="features active per layer and position")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-reference", action="store_true", help="skip circuit-tracer")
    ap.add_argument("--with-reference", action="store_true", help="run circuit-tracer in --quick mode too")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="circuitalg's dtype")
    ap.add_argument("--batch-size", type=int, help="circuitalg's batch of targets (default: its own)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "WORKDIR"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child_circuitalg(Path(a.child[1]), a.dtype, a.batch_size)
        return {}
    sizes = dict(QUICK if a.quick else FULL)
    if a.layers:
        sizes["n_layers"] = a.layers
    active = min(a.active, sizes["n_features"] / 8) if a.quick else a.active
    reference = (a.with_reference or not a.quick) and not a.no_reference
    if reference and not REFERENCE_PYTHON.exists():
        raise SystemExit(f"{REFERENCE_PYTHON} is missing (circuit-tracer's environment); use --no-reference")
    from circuitalg.features.io import save_dictionary
    from circuitalg.model.layouts import to_transformer_lens

    report: dict = {"sizes": sizes, "active_target": active, "load_average_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="bench_attribution_") as tmp:
        work = Path(tmp)
        model = make_model(sizes, a.seed)
        tokens = prompt(sizes, a.seed)
        tcs = make_transcoders(model, tokens, sizes, a.seed, active)
        save_dictionary(tcs, work / "transcoders", format="circuit_tracer")
        (work / "case.json").write_text(json.dumps({"sizes": sizes, "seed": a.seed, "tokens": tokens.tolist()}))
        if reference:
            from safetensors.numpy import save_file

            sd = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in to_transformer_lens(model.params, model.config).items()}
            save_file(sd, str(work / "model.safetensors"))
            del sd
        del model, tcs
        cmd = [sys.executable, str(Path(__file__).resolve()), "--dtype", a.dtype, "--child", "circuitalg", str(work)]
        if a.batch_size:
            cmd[2:2] = ["--batch-size", str(a.batch_size)]
        if reference or not a.quick:
            report["circuitalg"] = ours = run_child(cmd, "circuitalg")
        else:  # the smoke test: in this process (its peak RSS is this process's)
            import contextlib
            import io

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                child_circuitalg(work, a.dtype, a.batch_size)
            report["circuitalg"] = ours = json.loads(buf.getvalue().split("RESULT ", 1)[1])
        print(f"circuitalg ({ours['dtype']}): attribute {ours['wall_s']:.1f} s wall ({ours['user_s']:.1f} s user, "
              f"{ours['system_s']:.1f} s system), peak RSS {ours['peak_rss_gib']:.2f} GiB; {ours['n_nodes']} nodes, "
              f"{ours['n_features']} features, {ours['n_logits']} logits; completeness max {ours['completeness_max']:.1e}",
              flush=True)
        if reference:
            script = work / "run_circuit_tracer.py"
            script.write_text(CIRCUIT_TRACER_CHILD)
            report["circuit_tracer"] = ref = run_child([str(REFERENCE_PYTHON), str(script), str(work), str(SAVE_ADJACENCY_UP_TO)], "circuit-tracer")
            print(f"circuit-tracer 0.5.0 (float32, batch 512): attribute {ref['wall_s']:.1f} s wall ({ref['user_s']:.1f} s user, "
                  f"{ref['system_s']:.1f} s system), peak RSS {ref['peak_rss_gib']:.2f} GiB; {ref['n_nodes']} nodes, "
                  f"{ref['n_features']} features, {ref['n_logits']} logits", flush=True)
            report["speedup"] = ref["wall_s"] / ours["wall_s"]
            report["memory_ratio"] = ours["peak_rss_gib"] / ref["peak_rss_gib"]
            report["same_graph"] = ref["n_features"] == ours["n_features"] and ref["logits"] == ours["logits"]
            fa, fb = work / "adjacency_circuitalg.npy", work / "adjacency_circuit_tracer.npy"
            if fa.exists() and fb.exists():
                Aa, Ab = np.load(fa), np.load(fb)
                if Aa.shape == Ab.shape:
                    report["adjacency_max_relative_difference"] = float(np.abs(Aa - Ab).max() / np.abs(Ab).max())
                    print(f"adjacency: max |difference| / max |entry| = {report['adjacency_max_relative_difference']:.1e}")
            print(f"speed-up {report['speedup']:.2f}x; circuitalg's peak RSS is {report['memory_ratio']:.2f} of circuit-tracer's; "
                  f"same features and logits: {report['same_graph']}")
    report["load_average_end"] = load_average()
    print(f"load average (1, 5, 15 min): start {report['load_average_start']}, end {report['load_average_end']} "
          f"on {os.cpu_count()} CPUs")
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
