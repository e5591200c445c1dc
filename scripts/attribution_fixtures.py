"""Reference attribution graphs from circuit-tracer 0.5.0 for tests/test_attribution_reference.py.

``python scripts/attribution_fixtures.py`` (options: ``--venv DIR``, ``--install``, ``--out DIR``, ``--cases ...``)

1. builds, for every case in :data:`CASES`, a small seeded model in circuitalg (:func:`build_model`)
   and its transcoders (:func:`build_transcoders`): per-layer ReLU and JumpReLU transcoders, skip
   transcoders, a cross-layer transcoder, on a 3-layer LayerNorm GPT-2-like model and a 3-layer
   Llama-like model (RMSNorm, rotary, grouped-query attention, gated SiLU MLP);
2. exports each model as a TransformerLens state dict (``to_transformer_lens``) with the matching
   ``HookedTransformerConfig`` fields (:func:`tl_config`), writes the transcoders with
   ``save_dictionary(..., format="circuit_tracer")``, and writes circuitalg's own graph file
   (``write_circuit_tracer_json``) of the same attribution;
3. in the reference virtual environment (``.reference-venv``, made and filled by
   scripts/reference_fixtures.py's ``ensure_venv`` when absent) loads the model into circuit-tracer's
   ``TransformerLensReplacementModel`` and the transcoders with its own loader
   (``load_transcoders_from_cache``), runs its ``attribute`` on :data:`TOKENS` in float64 and
   float32, prunes at the default thresholds (0.8, 0.98), writes its graph file with
   ``create_graph_files``, and validates circuitalg's graph file with its pydantic ``Model``;
4. stores under tests/fixtures/attribution/: ``CASE.safetensors`` (circuit-tracer's float64 outputs:
   ``active_features``, ``activations``, ``selected_features``, ``logit_tokens``,
   ``logit_probabilities``, ``adjacency``, ``node_mask``, ``edge_mask``, ``cumulative_scores``),
   ``CASE.graph.json`` (circuit-tracer's graph file) and ``reference.json`` (versions, the recipe,
   the verdicts on circuitalg's graph files, and float32-vs-float64 figures of circuit-tracer itself).

Models and transcoders are not stored: the test rebuilds them from the seeds with the functions here
(numpy's ``default_rng`` streams are stable). circuit-tracer needs a tokenizer; the stub used here
decodes token ``t`` as ``str(t)``, as circuitalg labels tokens of a model without a vocabulary.
This file imports only the standard library and numpy at module level: it runs in both environments.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "attribution"
DEFAULT_VENV = ROOT / ".reference-venv"
TOKENS = [0, 3, 1, 4, 1, 5, 9, 2, 6]
N_FEATURES = 16
NODE_THRESHOLD, EDGE_THRESHOLD = 0.8, 0.98
SCAN = "circuitalg-fixture"
# case -> (model kind, transcoder kind)
CASES = {
    "ln_relu": ("ln", "relu"),
    "ln_jumprelu": ("ln", "jumprelu"),
    "ln_skip": ("ln", "skip"),
    "ln_clt": ("ln", "clt"),
    "llama_relu": ("llama", "relu"),
    "llama_clt": ("llama", "clt"),
}


# --- recipe (circuitalg side) ----------------------------------------------------------------------
def model_config(kind: str):
    import circuitalg as ca

    if kind == "ln":
        return ca.TransformerConfig(n_layers=3, n_heads=2, d_model=16, d_head=8, d_vocab=23, n_ctx=16, d_mlp=32,
                                    normalization="LN", act_fn="gelu_new")
    if kind == "llama":
        return ca.TransformerConfig(n_layers=3, n_heads=4, n_kv_heads=2, d_model=16, d_head=4, d_vocab=23, n_ctx=16,
                                    d_mlp=20, normalization="RMS", act_fn="silu", gated_mlp=True,
                                    rotary={"dim": 4, "base": 50.0})
    raise ValueError(kind)


def build_model(kind: str, dtype=np.float64):
    """The seeded model of ``kind`` (``ln`` or ``llama``) with parameters in ``dtype``."""
    import circuitalg as ca

    cfg = model_config(kind)
    rng = np.random.default_rng(5 if kind == "ln" else 6)
    params = {}
    for k, s in ca.param_shapes(cfg).items():
        v = (1.0 + 0.2 * rng.normal(size=s)) if k.endswith(".w") else 0.5 * rng.normal(size=s)
        if cfg.gated_mlp and k.endswith(("mlp.b_in", "mlp.b_gate")):
            v = np.zeros(s)  # TransformerLens's gated MLP has no gate bias (b_in after the product)
        params[k] = v.astype(dtype)
    return ca.Transformer(cfg, params, name=f"{kind}-fixture")


def build_transcoders(kind: str, n_layers: int, d: int, dtype=np.float64):
    """The seeded transcoders of ``kind`` (``relu``, ``jumprelu``, ``skip``, ``clt``) as a DictionarySet."""
    from circuitalg.features import Dictionary, DictionaryKind, DictionarySet, Hook, HookKind, JumpReLU, ReLU

    F = N_FEATURES
    members = []
    for l in range(n_layers):
        rng = np.random.default_rng(100 + l)
        writes = list(range(l, n_layers)) if kind == "clt" else [l]
        W_enc = rng.normal(size=(F, d)) / np.sqrt(d)
        b_enc = 0.1 * rng.normal(size=F)
        W_dec = [0.3 * rng.normal(size=(d, F)) for _ in writes]
        # a CLT file has one decoder bias per output layer: the writing layer's own member holds it
        b_dec = [0.1 * rng.normal(size=d) if w == l else np.zeros(d) for w in writes]
        W_skip = 0.3 * rng.normal(size=(d, d)) if kind == "skip" else None
        act = JumpReLU(np.linspace(0.0, 0.3, F).astype(dtype)) if kind == "jumprelu" else ReLU()
        dk = {"skip": DictionaryKind.SKIP_TRANSCODER, "clt": DictionaryKind.CROSS_LAYER_TRANSCODER}.get(
            kind, DictionaryKind.TRANSCODER)
        cast = (lambda a: None if a is None else np.asarray(a, dtype=dtype))
        members.append(Dictionary(
            f"{kind}.L{l}", dk, (Hook(HookKind.MLP_IN, l),), tuple(Hook(HookKind.MLP_OUT, w) for w in writes),
            [cast(W_enc)], cast(b_enc), [cast(w) for w in W_dec], [cast(b) for b in b_dec], act, W_skip=cast(W_skip),
        ))
    return DictionarySet(kind, members)


def build_case(case: str, dtype=np.float64):
    """(model, transcoders) of ``case``."""
    mk, tk = CASES[case]
    model = build_model(mk, dtype)
    return model, build_transcoders(tk, model.config.n_layers, model.config.d_model, dtype)


def tl_config(cfg) -> dict:
    """HookedTransformerConfig fields of circuitalg's ``cfg`` (for the kinds used here)."""
    out = dict(n_layers=cfg.n_layers, d_model=cfg.d_model, d_head=cfg.d_head, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp,
               d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, act_fn=cfg.act_fn, default_prepend_bos=False)
    if cfg.normalization == "LN":
        out.update(normalization_type="LN", positional_embedding_type="standard")
    else:
        out.update(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=cfg.rotary.dim,
                   rotary_base=cfg.rotary.base, gated_mlp=True, n_key_value_heads=cfg.n_kv_heads, final_rms=True)
    return out


def export_case(case: str, folder: Path) -> None:
    """Model state dict, TL config, transcoders (circuit-tracer's format) and circuitalg's graph file."""
    from safetensors.numpy import save_file

    from circuitalg.features import save_dictionary
    from circuitalg.features.attribution import attribute
    from circuitalg.features.graphfile import write_circuit_tracer_json
    from circuitalg.model.layouts import to_transformer_lens

    model, tcs = build_case(case)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(to_transformer_lens(model.params, model.config), str(folder / "model.safetensors"))
    (folder / "tl_config.json").write_text(json.dumps(tl_config(model.config)))
    save_dictionary(tcs, folder / "transcoders", format="circuit_tracer")
    g = attribute(model, tcs, TOKENS)
    write_circuit_tracer_json(g, folder / "circuitalg.json", slug=case, scan=SCAN)


# --- circuit-tracer side (reference venv) ----------------------------------------------------------
class StubTokenizer:
    all_special_ids = [0]
    bos_token_id = pad_token_id = eos_token_id = 0
    padding_side = "right"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def decode(self, ids, **kw):
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        return " ".join(str(int(i)) for i in ids)


def ct_run(folder: Path, dtype_name: str):
    import torch
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig

    from circuit_tracer.attribution.attribute import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    torch.set_grad_enabled(True)
    dt = {"float64": torch.float64, "float32": torch.float32}[dtype_name]
    c = json.loads((folder / "tl_config.json").read_text())
    cfg = HookedTransformerConfig(**c, dtype=dt, device="cpu")
    sd = {k: v.to(dt) for k, v in load_file(str(folder / "model.safetensors")).items()}
    tcs, _ = load_transcoders_from_cache("transcoders", cache_dir=str(folder), device=torch.device("cpu"), dtype=dt,
                                         lazy_encoder=False, lazy_decoder=False)
    model = TransformerLensReplacementModel(cfg)
    result = model.load_state_dict(sd, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not k.endswith(("IGNORE", ".mask", "rotary_sin", "rotary_cos"))
               and "hook" not in k and "transcoder" not in k]
    model._configure_replacement_model(tcs)
    model.tokenizer = StubTokenizer(c["d_vocab"])
    g = attribute(torch.tensor(TOKENS), model, max_n_logits=10, desired_logit_prob=0.95, batch_size=64)
    return g, model, {"missing_keys": missing, "unexpected_keys": unexpected}


def ct_generate(folder: Path, out: Path, case: str) -> None:
    import torch
    from safetensors.torch import save_file

    import importlib

    from circuit_tracer.frontend.graph_models import Model
    from circuit_tracer.graph import prune_graph

    # the package re-exports a function of the module's name: the module itself, to patch its tokenizer
    cgf = importlib.import_module("circuit_tracer.utils.create_graph_files")

    g, model, load_info = ct_run(folder, "float64")
    pr = prune_graph(g, NODE_THRESHOLD, EDGE_THRESHOLD)
    tensors = {
        "active_features": g.active_features.to(torch.int64),
        "activations": g.activation_values.double(),
        "selected_features": g.selected_features.to(torch.int64),
        "logit_tokens": torch.tensor([t.vocab_idx for t in g.logit_targets], dtype=torch.int64),
        "logit_probabilities": g.logit_probabilities.double(),
        # float32 and packed bits keep the files small; float32 rounding (6e-8 relative) is far below the test's 1e-5
        "adjacency": g.adjacency_matrix.float(),
        "node_mask": pr.node_mask.bool(),
        "edge_mask_bits": torch.from_numpy(np.packbits(pr.edge_mask.numpy().ravel())),
        "cumulative_scores": pr.cumulative_scores.double(),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{case}.safetensors"))

    class _Auto:  # create_graph_files asks transformers for the tokenizer by name; offline: the stub
        @staticmethod
        def from_pretrained(*a, **k):
            return StubTokenizer(model.cfg.d_vocab)

    cgf.AutoTokenizer = _Auto
    with tempfile.TemporaryDirectory() as tmp:
        cgf.create_graph_files(g, slug=case, output_path=tmp, scan=SCAN, node_threshold=NODE_THRESHOLD,
                               edge_threshold=EDGE_THRESHOLD)
        (out / f"{case}.graph.json").write_text(Path(tmp, f"{case}.json").read_text())

    g32, _, _ = ct_run(folder, "float32")
    a64 = g.adjacency_matrix.double()
    same_nodes = bool(torch.equal(g32.active_features, g.active_features)) and a64.shape == g32.adjacency_matrix.shape
    fig32 = {"same_active_features": same_nodes}
    if same_nodes:
        diff = (g32.adjacency_matrix.double() - a64).abs().max()
        fig32["adjacency_max_abs_diff_over_max"] = float(diff / a64.abs().max())
        fig32["activations_max_rel"] = float((g32.activation_values.double() - g.activation_values.double()).abs().max()
                                             / g.activation_values.double().abs().max())

    text = (folder / "circuitalg.json").read_text()
    try:
        m = Model.model_validate_json(text)
        verdict = {"accepted": True, "nodes": len(m.nodes), "links": len(m.links)}
    except Exception as e:  # the verdict records any refusal
        verdict = {"accepted": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    (folder / "ct_result.json").write_text(json.dumps({"load": load_info, "float32_vs_float64": fig32,
                                                       "circuitalg_json": verdict}))


# --- driver ------------------------------------------------------------------------------------------
def _versions(py: Path) -> dict:
    code = ("import json, importlib.metadata as m; print(json.dumps({d: m.version(d) for d in "
            "['circuit-tracer', 'torch', 'transformer-lens', 'transformers', 'pydantic']}))")
    return json.loads(subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True).stdout)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--install", action="store_true")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--ct", nargs=3, metavar=("FOLDER", "OUT", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ct:
        ct_generate(Path(args.ct[0]), Path(args.ct[1]), args.ct[2])
        return
    sys.path.insert(0, str(ROOT / "scripts"))
    from reference_fixtures import ensure_venv

    # an existing venv is used as it is (``--install`` reinstalls the pins); a missing one is made and filled
    py = ensure_venv(args.venv.resolve(), install=args.install)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ref_path = out / "reference.json"
    ref = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    ref.update({"tokens": TOKENS, "n_features": N_FEATURES, "node_threshold": NODE_THRESHOLD,
                "edge_threshold": EDGE_THRESHOLD, "scan": SCAN, "versions": _versions(py)})
    cases = ref.setdefault("cases", {})
    env = dict(os.environ, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            folder = Path(tmp, case)
            export_case(case, folder)
            print(f"{case}: circuit-tracer ...", flush=True)
            r = subprocess.run([str(py), str(Path(__file__).resolve()), "--ct", str(folder), str(out), case],
                               env=env, cwd=str(ROOT), capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stdout[-3000:], r.stderr[-6000:], file=sys.stderr)
                cases[case] = {"recipe": list(CASES[case]), "error": r.stderr.strip().splitlines()[-1][:1000]}
                continue
            res = json.loads((folder / "ct_result.json").read_text())
            cases[case] = {"recipe": list(CASES[case]), **res}
            print(f"{case}: {json.dumps(res)}")
    ref_path.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
