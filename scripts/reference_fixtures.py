"""Build the pinned reference-dictionary fixtures from the reference libraries themselves.

``python scripts/reference_fixtures.py`` (from the repository root, in circuitalg's own
environment) does three things:

1. creates a virtual environment at ``.reference-venv/`` (``--venv``; git-ignored) and installs
   the pinned reference libraries there. They cannot join circuitalg's environment:
   circuit-tracer 0.5.0 pins ``transformers<=4.57.3`` and dictionary_learning 0.1.0 pins
   ``nnsight<0.4`` while circuit-tracer needs ``nnsight>=0.6``. Pinned:

   ==========================  =============  =====================================================
   package                     version        note
   ==========================  =============  =====================================================
   torch                       2.13.0         CPU build
   circuit-tracer              0.5.0          per-layer transcoders, cross-layer transcoder
   eai-sparsify                1.3.3          EleutherAI sparsify (``import sparsify``)
   dictionary-learning         0.1.0          installed ``--no-deps`` (its nnsight<0.4 pin clashes;
                                              the dictionary classes need only torch and einops)
   llamascopium                2.0.0b34       OpenMOSS lm-saes (renamed; ``import llamascopium``)
   transformers                4.57.3         the newest circuit-tracer accepts
   nnsight                     0.8.1
   transformer-lens            3.2.1
   sae-lens                    6.54.12        reads Llama Scope's released layout (see below)
   ==========================  =============  =====================================================

2. runs the generator inside that environment (``--generate``): it builds small random
   dictionaries WITH EACH LIBRARY'S OWN CLASSES, saves them with the library's own save function
   (circuit-tracer ``to_safetensors`` + the ``config.yaml`` its cache loader reads; sparsify
   ``save_to_disk``; dictionary_learning's ``torch.save(state_dict)`` as its trainer does, plus
   its ``config.json``; llamascopium ``save_pretrained`` / ``save_checkpoint`` +
   ``save_hyperparameters``), reloads
   them with the library's own loader, and runs the library's encode/decode/forward on fixed
   random inputs in float32 and float64. Each case directory under
   ``tests/fixtures/reference_dictionaries/<library>/<case>/`` holds ``dict/`` (the library's
   files), ``reference.safetensors`` (inputs and outputs; never a pickle) and ``case.json``.
   Inputs are drawn so that no pre-activation lies within a small margin of an activation's
   decision boundary (threshold, k-th value), so a 1e-6 relative difference in float32 cannot
   flip a feature on or off. Sizes: d_model 16, 32 to 64 features (48 for circuit-tracer),
   3 layers for the sets, 12 input rows; the whole tree stays well under 2 MB.

   What the libraries' files cannot hold is pinned as such: circuit-tracer's TopK transcoders
   (its files record ReLU or JumpReLU only; ``plt_topk`` keeps the in-memory TopK outputs and
   what its loader makes of the saved files) and its cross-layer skip map (``to_safetensors``
   drops it, ``load_clt`` never reads it: no fixture).

3. loads each circuit-tracer fixture with circuitalg, writes it back with circuitalg's
   circuit-tracer writer (``dict_circuitalg/``), and runs circuit-tracer's own loader on what
   circuitalg wrote (``--check-written``, in the venv); the verdict goes to
   ``circuitalg_written.json`` beside it.

``manifest.json`` records the versions actually installed. Llama Scope's Hugging Face layout
(``hyperparams.json`` + ``checkpoints/final.safetensors``) is read by no llamascopium code any
more; its outputs come from SAELens's ``llama_scope`` loader run on the fixture's files followed
by ``SAE.from_pretrained``'s fold of the release table's ``norm_scaling_factor`` (``sqrt(d_model) /
dataset_average_activation_norm.in``), which is how both SAELens and llamascopium
(``from_pretrained("release:sae_id")``) load a Llama Scope release (``"source": "saelens"`` in
``case.json``). ``circuit_tracer/plt_gemma_scope_npz`` holds Gemma Scope 1 ``.npz`` transcoders
listed in a ``config.yaml``, read by circuit-tracer's ``load_transcoder_set(special_load_fn=
"gemma-scope")``. dictionary_learning's ``config.json`` is written as
its trainer's ``config()`` writes it (the trainer itself needs a language model).

Options: ``--venv DIR``, ``--out DIR``, ``--no-install`` (use the venv as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "reference_dictionaries"
DEFAULT_VENV = ROOT / ".reference-venv"

PINS = [
    "torch==2.13.0",
    "circuit-tracer==0.5.0",
    "eai-sparsify==1.3.3",
    "llamascopium==2.0.0b34",
    "transformers==4.57.3",
    "nnsight==0.8.1",
    "transformer-lens==3.2.1",
    "sae-lens==6.54.12",
]
NO_DEPS_PINS = ["dictionary-learning==0.1.0"]
DISTRIBUTIONS = ["torch", "circuit-tracer", "eai-sparsify", "dictionary-learning", "llamascopium",
                 "transformers", "nnsight", "transformer-lens", "sae-lens", "safetensors", "numpy"]

N_ROWS = 12
SEED = 20261206


# ----------------------------------------------------------------------------------------------
# orchestration (circuitalg's environment)
# ----------------------------------------------------------------------------------------------
def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def ensure_venv(venv_dir: Path, install: bool) -> Path:
    py = venv_python(venv_dir)
    if not py.exists():
        print(f"creating {venv_dir}")
        venv.EnvBuilder(with_pip=True).create(venv_dir)
        install = True
    if install:
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + PINS, check=True)
        subprocess.run(pip + ["--no-deps"] + NO_DEPS_PINS, check=True)
    return py


def run_in_venv(py: Path, *args: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="", SPARSIFY_DISABLE_TRITON="1")
    subprocess.run([str(py), str(Path(__file__).resolve()), *args], check=True, env=env, cwd=str(ROOT))


def _shown(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def write_with_circuitalg(out: Path) -> None:
    """Load every circuit-tracer fixture with circuitalg and write it back with its writer."""
    import shutil

    sys.path.insert(0, str(ROOT))
    from circuitalg.features import load_dictionary, save_dictionary

    for case in sorted((out / "circuit_tracer").iterdir()):
        info = json.loads((case / "case.json").read_text())
        if not info.get("writer_check"):
            continue
        d = load_dictionary(case / info["path"], dtype="float32")
        target = case / "dict_circuitalg"
        if target.exists():
            shutil.rmtree(target)
        save_dictionary(d, target, format="circuit_tracer")
        print(f"circuitalg wrote {_shown(target)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check-written", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if args.generate:
        generate(out)
        return
    if args.check_written:
        check_written(out)
        return
    py = ensure_venv(args.venv.resolve(), install=not args.no_install)
    run_in_venv(py, "--generate", "--out", str(out))
    write_with_circuitalg(out)
    run_in_venv(py, "--check-written", "--out", str(out))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"fixtures: {_shown(out)} ({total / 1e6:.2f} MB)")


# ----------------------------------------------------------------------------------------------
# the generator (reference venv)
# ----------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    vs = {"python": sys.version.split()[0]}
    for name in DISTRIBUTIONS:
        try:
            vs[name] = version(name)
        except PackageNotFoundError:
            vs[name] = "not installed"
    return vs


class Case:
    """One fixture directory: ``dict/`` (library files), ``reference.safetensors``, ``case.json``."""

    def __init__(self, out: Path, library: str, name: str):
        import shutil

        self.dir = out / library / name
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.library = library
        self.name = name
        self.tensors: dict = {}
        self.info: dict = {"library": library, "case": name, "source": "library", "dtypes": []}

    @property
    def dict_dir(self) -> Path:
        return self.dir / "dict"

    def put(self, dtype_name: str, **arrays) -> None:
        for k, v in arrays.items():
            self.tensors[f"{dtype_name}.{k}"] = v.detach().cpu().contiguous()
        if dtype_name not in self.info["dtypes"]:
            self.info["dtypes"].append(dtype_name)

    def finish(self, **info) -> None:
        from safetensors.torch import save_file

        self.info.update(info)
        save_file(self.tensors, str(self.dir / "reference.safetensors"))
        (self.dir / "case.json").write_text(json.dumps(self.info, indent=2, sort_keys=True) + "\n")
        print(f"  {self.library}/{self.name}: {sorted(self.info['dtypes'])}")


def _torch_dtypes():
    import torch

    return {"float32": torch.float32, "float64": torch.float64}


def _margin_rows(candidates, ok, n=N_ROWS):
    """The first ``n`` rows of ``candidates`` whose boolean ``ok`` holds (raises if too few)."""
    idx = ok.nonzero().flatten()[:n]
    if idx.numel() < n:
        raise RuntimeError(f"only {idx.numel()} of {candidates.shape[-2]} candidate rows keep the margin")
    return candidates[..., idx, :]


def _relu_ok(pre, margin):
    return (pre.abs() > margin).all(dim=-1)


def _threshold_ok(pre, thr, margin):
    return (((pre - thr).abs() > margin) & (pre.abs() > margin)).all(dim=-1)


def _topk_ok(score, k, margin):
    import torch

    s = torch.sort(score, dim=-1, descending=True).values
    return (s[..., k - 1] - s[..., k]) > margin


def _rand(gen, *shape, scale=1.0):
    import torch

    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(torch.float32) * scale


# -- circuit-tracer ----------------------------------------------------------------------------
def gen_circuit_tracer(out: Path) -> None:
    import torch
    import yaml
    from circuit_tracer.transcoder.activation_functions import JumpReLU, TopK
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet
    L, d, F = 3, 16, 48
    dev = torch.device("cpu")
    gen = torch.Generator().manual_seed(SEED + 1)

    def plt_params(skip: bool, jump: bool):
        p = {
            "W_enc": _rand(gen, F, d, scale=0.4),
            "W_dec": _rand(gen, F, d, scale=0.3),
            "b_enc": _rand(gen, F, scale=0.2),
            "b_dec": _rand(gen, d, scale=0.1),
        }
        if skip:
            p["W_skip"] = _rand(gen, d, d, scale=0.2)
        if jump:
            p["activation_function.threshold"] = torch.rand(F, generator=gen, dtype=torch.float64).to(torch.float32) * 0.8
        return p

    def save_set(case: Case, layers, in_hook, out_hook):
        case.dict_dir.mkdir()
        tset = TranscoderSet(dict(enumerate(layers)), feature_input_hook=in_hook, feature_output_hook=out_hook, scan="fixture")
        tset.to_safetensors(str(case.dict_dir))
        cfg = {"model_kind": "transcoder_set", "feature_input_hook": in_hook, "feature_output_hook": out_hook,
               "scan": "fixture"}
        (case.dict_dir / "config.yaml").write_text(yaml.dump(cfg))

    # per-layer transcoder sets: ReLU / JumpReLU, with and without skip
    for act in ("relu", "jumprelu"):
        for skip in (False, True):
            name = f"plt_{act}{'_skip' if skip else ''}"
            case = Case(out, "circuit_tracer", name)
            in_hook, out_hook = ("mlp.hook_in", "hook_mlp_out") if not skip else ("ln2.hook_normalized", "mlp.hook_out")
            layers = []
            for layer in range(L):
                p = plt_params(skip, act == "jumprelu")
                fn = JumpReLU(p["activation_function.threshold"], 0.1) if act == "jumprelu" else torch.nn.functional.relu
                with torch.device("meta"):
                    t = SingleLayerTranscoder(d, F, fn, layer, skip_connection=skip, dtype=torch.float32)
                t.load_state_dict(p, assign=True)
                layers.append(t)
            save_set(case, layers, in_hook, out_hook)
            for dn, tdt in _torch_dtypes().items():
                # circuit-tracer's own cache loader, on the files it wrote
                tset, cfg = _ct_load_dir(case.dict_dir, dev, tdt)
                cand = _rand(gen, L, 256, d, scale=1.0).to(tdt)
                with torch.no_grad():
                    pre = torch.stack([tset.encode_layer(cand[i], i, apply_activation_function=False) for i in range(L)])
                    if act == "jumprelu":
                        thr = torch.stack([tset[i].activation_function.threshold for i in range(L)])[:, None, :]
                        ok = _threshold_ok(pre, thr, 1e-3).all(dim=0)
                    else:
                        ok = _relu_ok(pre, 1e-3).all(dim=0)
                    x = _margin_rows(cand, ok)
                    pre = torch.stack([tset.encode_layer(x[i], i, apply_activation_function=False) for i in range(L)])
                    feats = tset.encode(x)
                    dec = tset.decode(feats, x if skip else None)
                    fwd = torch.stack([tset[i](x[i]) for i in range(L)])
                case.put(dn, x=x, pre=pre, feats=feats, decode=dec, forward=fwd)
            case.finish(format="circuit_tracer", path="dict", structure="transcoder_set", n_layers=L,
                        reads=[f"blocks.{i}.{in_hook}" for i in range(L)],
                        writes=[f"blocks.{i}.{out_hook}" for i in range(L)],
                        activation=act, skip=skip, writer_check=True,
                        notes="decode includes the skip term (circuit-tracer's decode adds it)")

    # TopK: circuit-tracer's TopK keeps the k largest raw pre-activations (no ReLU). Its files
    # cannot say TopK (load_relu_transcoder reads a threshold or nothing), so this fixture pins
    # the activation on the library's own pre-activations, plus what its loader makes of the file.
    case = Case(out, "circuit_tracer", "plt_topk")
    k = 6
    layers = []
    for layer in range(L):
        p = plt_params(False, False)
        with torch.device("meta"):
            t = SingleLayerTranscoder(d, F, TopK(k), layer, dtype=torch.float32)
        t.load_state_dict(p, assign=True)
        layers.append(t)
    save_set(case, layers, "mlp.hook_in", "hook_mlp_out")
    for dn, tdt in _torch_dtypes().items():
        mem = [tt.to(tdt) for tt in layers]
        cand = _rand(gen, L, 256, d).to(tdt)
        with torch.no_grad():
            pre = torch.stack([mem[i].encode(cand[i], apply_activation_function=False) for i in range(L)])
            ok = _topk_ok(pre, k, 1e-3).all(dim=0)
            x = _margin_rows(cand, ok)
            pre = torch.stack([mem[i].encode(x[i], apply_activation_function=False) for i in range(L)])
            feats = torch.stack([mem[i].encode(x[i]) for i in range(L)])
            dec = torch.stack([mem[i].decode(feats[i]) for i in range(L)])
            fwd = torch.stack([mem[i](x[i]) for i in range(L)])
            loaded, _ = _ct_load_dir(case.dict_dir, dev, tdt)
            feats_loaded = loaded.encode(x)
            fwd_loaded = torch.stack([loaded[i](x[i]) for i in range(L)])
        case.put(dn, x=x, pre=pre, feats=feats, decode=dec, forward=fwd,
                 feats_as_loaded=feats_loaded, forward_as_loaded=fwd_loaded)
    case.finish(format="circuit_tracer", path="dict", structure="transcoder_set", n_layers=L, activation="topk",
                k=k, skip=False, writer_check=False,
                notes=("feats/decode/forward: the in-memory TopK transcoders (activation TopK(k) keeps the k "
                       "largest raw pre-activations, no ReLU). *_as_loaded: what circuit-tracer's loader makes "
                       "of the saved files, which cannot record TopK: a ReLU transcoder."))

    # cross-layer transcoders: ReLU and JumpReLU (the CLT files cannot hold W_skip: to_safetensors
    # drops it and load_clt never reads it)
    for act in ("relu", "jumprelu"):
        name = f"clt_{act}"
        case = Case(out, "circuit_tracer", name)
        with torch.device("meta"):
            clt = CrossLayerTranscoder(L, F, d, activation_function="jump_relu" if act == "jumprelu" else "relu",
                                       lazy_decoder=False, feature_input_hook="hook_resid_mid",
                                       feature_output_hook="hook_mlp_out", dtype=torch.float32)
        sd = {
            "W_enc": _rand(gen, L, F, d, scale=0.4),
            "b_enc": _rand(gen, L, F, scale=0.2),
            "b_dec": _rand(gen, L, d, scale=0.1),
        }
        for i in range(L):
            sd[f"W_dec.{i}"] = _rand(gen, F, L - i, d, scale=0.3)
        if act == "jumprelu":
            sd["activation_function.threshold"] = (torch.rand(L, 1, F, generator=gen, dtype=torch.float64) * 0.8).to(torch.float32)
        clt.load_state_dict(sd, assign=True)
        case.dict_dir.mkdir()
        clt.to_safetensors(str(case.dict_dir))
        cfg = {"model_kind": "cross_layer_transcoder", "feature_input_hook": "hook_resid_mid",
               "feature_output_hook": "hook_mlp_out", "scan": "fixture"}
        (case.dict_dir / "config.yaml").write_text(yaml.dump(cfg))
        for dn, tdt in _torch_dtypes().items():
            loaded, _ = _ct_load_dir(case.dict_dir, dev, tdt)
            cand = _rand(gen, L, 256, d).to(tdt)
            with torch.no_grad():
                pre = torch.stack([loaded.encode_layer(cand[i], i, apply_activation_function=False) for i in range(L)])
                if act == "jumprelu":
                    ok = _threshold_ok(pre, loaded.activation_function.threshold, 1e-3).all(dim=0)
                else:
                    ok = _relu_ok(pre, 1e-3).all(dim=0)
                x = _margin_rows(cand, ok)
                pre = torch.stack([loaded.encode_layer(x[i], i, apply_activation_function=False) for i in range(L)])
                feats = loaded.encode(x)
                dec = loaded.decode(feats.to_sparse())
                fwd = loaded(x)
            case.put(dn, x=x, pre=pre, feats=feats, decode=dec, forward=fwd)
        case.finish(format="circuit_tracer", path="dict", structure="cross_layer_transcoder", n_layers=L,
                    activation=act, skip=False, writer_check=True,
                    reads=[f"blocks.{i}.hook_resid_mid" for i in range(L)],
                    writes=[f"blocks.{i}.hook_mlp_out" for i in range(L)],
                    notes="decode/forward: (n_layers, n, d), output layer j sums the features of layers <= j")

    # Gemma Scope 1 transcoders as circuit-tracer's Gemma 2 config lists them: .npz files under
    # 'transcoders:', read by load_transcoder_set(special_load_fn="gemma-scope") at the config's
    # hooks (ln2.hook_normalized -> hook_mlp_out). Its own generator: the cases above keep their draws.
    import numpy as np
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    gen_npz = torch.Generator().manual_seed(SEED + 11)
    case = Case(out, "circuit_tracer", "plt_gemma_scope_npz")
    case.dict_dir.mkdir()
    in_hook, out_hook = "ln2.hook_normalized", "hook_mlp_out"
    files = []
    for layer in range(L):
        params = {"W_enc": _rand(gen_npz, d, F, scale=0.4), "W_dec": _rand(gen_npz, F, d, scale=0.3),
                  "b_enc": _rand(gen_npz, F, scale=0.2), "b_dec": _rand(gen_npz, d, scale=0.1),
                  "threshold": torch.rand(F, generator=gen_npz, dtype=torch.float64).to(torch.float32) * 0.8}
        np.savez(case.dict_dir / f"layer_{layer}.npz", **{k: v.numpy() for k, v in params.items()})
        files.append(f"layer_{layer}.npz")
    cfg = {"model_kind": "transcoder_set", "feature_input_hook": in_hook, "feature_output_hook": out_hook,
           "scan": "fixture", "transcoders": files}
    (case.dict_dir / "config.yaml").write_text(yaml.dump(cfg))
    for dn, tdt in _torch_dtypes().items():
        tset = load_transcoder_set({i: str(case.dict_dir / f) for i, f in enumerate(files)}, "fixture", in_hook, out_hook,
                                   device=dev, dtype=tdt, special_load_fn="gemma-scope")
        cand = _rand(gen_npz, L, 256, d, scale=1.0).to(tdt)
        with torch.no_grad():
            pre = torch.stack([tset.encode_layer(cand[i], i, apply_activation_function=False) for i in range(L)])
            thr = torch.stack([tset[i].activation_function.threshold for i in range(L)])[:, None, :]
            x = _margin_rows(cand, _threshold_ok(pre, thr, 1e-3).all(dim=0))
            pre = torch.stack([tset.encode_layer(x[i], i, apply_activation_function=False) for i in range(L)])
            feats = tset.encode(x)
            dec = tset.decode(feats, None)
            fwd = torch.stack([tset[i](x[i]) for i in range(L)])
        case.put(dn, x=x, pre=pre, feats=feats, decode=dec, forward=fwd)
    case.finish(format="circuit_tracer", path="dict", structure="transcoder_set", n_layers=L, activation="jumprelu",
                skip=False, writer_check=False,
                reads=[f"blocks.{i}.{in_hook}" for i in range(L)], writes=[f"blocks.{i}.{out_hook}" for i in range(L)],
                notes=("Gemma Scope 1 .npz files listed in config.yaml; outputs from circuit-tracer's "
                       "load_transcoder_set(special_load_fn='gemma-scope') (load_gemma_scope_transcoder)"))


def _ct_load_dir(path: Path, device, dtype):
    """circuit-tracer's own loader for a local directory (its cache layout: config.yaml + files)."""
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    return load_transcoders_from_cache(path.name, cache_dir=str(path.parent), device=device, dtype=dtype,
                                       lazy_encoder=False, lazy_decoder=False)


def check_written(out: Path) -> None:
    """circuit-tracer's loader on what circuitalg wrote: same outputs as the reference?"""
    import torch
    from safetensors.torch import load_file

    dev = torch.device("cpu")
    for case in sorted((out / "circuit_tracer").iterdir()):
        info = json.loads((case / "case.json").read_text())
        if not info.get("writer_check"):
            continue
        ref = load_file(str(case / "reference.safetensors"))
        verdict = {"loader": "circuit_tracer.utils.caching.load_transcoders_from_cache", "dtypes": {}}
        ok_all = True
        for dn, tdt in _torch_dtypes().items():
            loaded, cfg = _ct_load_dir(case / "dict_circuitalg", dev, tdt)
            x = ref[f"{dn}.x"]
            L = x.shape[0]
            with torch.no_grad():
                if info["structure"] == "cross_layer_transcoder":
                    feats = loaded.encode(x)
                    fwd = loaded(x)
                else:
                    feats = loaded.encode(x)
                    fwd = torch.stack([loaded[i](x[i]) for i in range(L)])
            tol = 1e-6 if dn == "float32" else 1e-12
            errs = {}
            for key, got in (("feats", feats), ("forward", fwd)):
                want = ref[f"{dn}.{key}"]
                errs[key] = float((got - want).abs().max() / want.abs().max())
            ok = all(e <= tol for e in errs.values()) and loaded.feature_input_hook == cfg["feature_input_hook"]
            ok_all &= ok
            verdict["dtypes"][dn] = {"max_rel_error": errs, "tolerance": tol, "ok": ok}
        verdict["ok"] = ok_all
        verdict["model_kind"] = cfg["model_kind"]
        (case / "circuitalg_written.json").write_text(json.dumps(verdict, indent=2, sort_keys=True) + "\n")
        print(f"  circuit-tracer reads circuitalg's {case.name}: {'ok' if ok_all else 'MISMATCH'}")
        if not ok_all:
            raise SystemExit(f"circuit-tracer's loader disagrees with the reference on {case.name}: {verdict}")


# -- sparsify ----------------------------------------------------------------------------------
def gen_sparsify(out: Path) -> None:
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    gen = torch.Generator().manual_seed(SEED + 2)
    d = 16
    specs = [
        ("sae_topk", "layers.2", SparseCoderConfig(num_latents=64, k=8)),
        ("transcoder_topk", "layers.1.mlp", SparseCoderConfig(num_latents=64, k=6, transcode=True)),
        ("transcoder_skip", "layers.3.mlp", SparseCoderConfig(num_latents=64, k=5, transcode=True, skip_connection=True)),
        ("sae_gpt2_names", "h.0", SparseCoderConfig(num_latents=48, k=4, normalize_decoder=False)),
    ]
    for name, hookpoint, cfg in specs:
        case = Case(out, "sparsify", name)
        torch.manual_seed(SEED)
        sc = SparseCoder(d, cfg, dtype=torch.float32)
        with torch.no_grad():
            sc.encoder.weight.copy_(_rand(gen, sc.num_latents, d, scale=0.4))
            sc.encoder.bias.copy_(_rand(gen, sc.num_latents, scale=0.2))
            sc.W_dec.copy_(_rand(gen, sc.num_latents, d, scale=0.3))
            sc.b_dec.copy_(_rand(gen, d, scale=0.1))
            if sc.W_skip is not None:
                sc.W_skip.copy_(_rand(gen, d, d, scale=0.2))
        sc.save_to_disk(case.dict_dir / hookpoint)
        for dn, tdt in _torch_dtypes().items():
            m = SparseCoder.load_from_disk(case.dict_dir / hookpoint).to(tdt)
            cand = _rand(gen, 256, d).to(tdt)
            with torch.no_grad():
                xin = cand if cfg.transcode else cand - m.b_dec
                pre = m.encoder(xin)
                ok = _topk_ok(pre.relu(), cfg.k, 1e-3)
                x = _margin_rows(cand, ok)
                xin = x if cfg.transcode else x - m.b_dec
                pre = m.encoder(xin)
                top_acts, top_idx, _ = m.encode(x)
                feats = torch.zeros_like(pre).scatter_(-1, top_idx, top_acts)
                dec = m.decode(top_acts, top_idx)
                fwd = m(x).sae_out
            case.put(dn, x=x, pre=pre, feats=feats, decode=dec, forward=fwd)
        case.finish(format="sparsify", path=f"dict/{hookpoint}", hookpoint=hookpoint, transcode=cfg.transcode,
                    skip=cfg.skip_connection, k=cfg.k,
                    notes="decode: SparseCoder.decode (no skip); forward: SparseCoder.forward(x).sae_out")
    # a parent directory holding several hookpoints (SparseCoder.load_many's layout)
    case = Case(out, "sparsify", "many")
    for hookpoint, k in (("layers.0", 4), ("layers.1", 5)):
        sc = SparseCoder(d, SparseCoderConfig(num_latents=32, k=k), dtype=torch.float32)
        with torch.no_grad():
            sc.encoder.weight.copy_(_rand(gen, 32, d, scale=0.4))
            sc.encoder.bias.copy_(_rand(gen, 32, scale=0.2))
            sc.W_dec.copy_(_rand(gen, 32, d, scale=0.3))
            sc.b_dec.copy_(_rand(gen, d, scale=0.1))
        sc.save_to_disk(case.dict_dir / hookpoint)
    many = SparseCoder.load_many(str(case.dict_dir), local=True)
    for dn, tdt in _torch_dtypes().items():
        for hookpoint, m in many.items():
            m = m.to(tdt)
            cand = _rand(gen, 256, d).to(tdt)
            with torch.no_grad():
                pre = m.encoder(cand - m.b_dec)
                x = _margin_rows(cand, _topk_ok(pre.relu(), m.cfg.k, 1e-3))
                fwd = m(x).sae_out
                top_acts, top_idx, _ = m.encode(x)
                feats = torch.zeros(x.shape[0], m.num_latents, dtype=tdt).scatter_(-1, top_idx, top_acts)
            case.put(dn, **{f"{hookpoint}.x": x, f"{hookpoint}.feats": feats, f"{hookpoint}.forward": fwd})
    case.finish(format="sparsify", path="dict", hookpoints=sorted(many), structure="many",
                notes="SparseCoder.load_many(local=True) layout: one hookpoint directory each")


# -- dictionary_learning -----------------------------------------------------------------------
def gen_dictionary_learning(out: Path) -> None:
    import torch
    from dictionary_learning.dictionary import AutoEncoder, AutoEncoderNew, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    gen = torch.Generator().manual_seed(SEED + 3)
    d, F = 16, 64
    specs = [
        ("standard", AutoEncoder, "AutoEncoder", "StandardTrainer", {}),
        ("standard_new", AutoEncoderNew, "AutoEncoderNew", "StandardTrainerAprilUpdate", {}),
        ("topk", AutoEncoderTopK, "AutoEncoderTopK", "TopKTrainer", {"k": 7}),
        ("batch_topk", BatchTopKSAE, "BatchTopKSAE", "BatchTopKTrainer", {"k": 7}),
        ("jumprelu", JumpReluAutoEncoder, "JumpReluAutoEncoder", "JumpReluTrainer", {}),
        ("matryoshka_batch_topk", MatryoshkaBatchTopKSAE, "MatryoshkaBatchTopKSAE", "MatryoshkaBatchTopKTrainer",
         {"k": 7, "group_sizes": [8, 24, 32]}),
    ]
    for name, cls, dict_class, trainer_class, extra in specs:
        case = Case(out, "dictionary_learning", name)
        torch.manual_seed(SEED)
        ae = cls(d, F, **extra)
        with torch.no_grad():
            sd = ae.state_dict()
            new = {}
            for key, v in sd.items():
                if key in ("k", "group_sizes"):
                    new[key] = v
                elif key == "threshold" and v.ndim == 0:  # BatchTopK / TopK: one learned scalar
                    new[key] = torch.tensor(0.35)
                elif key == "threshold":  # JumpReLU: per feature
                    new[key] = torch.rand(F, generator=gen, dtype=torch.float64).to(torch.float32) * 0.6
                else:
                    new[key] = _rand(gen, *v.shape, scale=0.3)
            ae.load_state_dict(new)
        case.dict_dir.mkdir()
        # what dictionary_learning.training.trainSAE writes: the state dict and config.json
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, case.dict_dir / "ae.pt")
        layer = 2
        config = {"trainer": {"trainer_class": trainer_class, "dict_class": dict_class, "activation_dim": d,
                              "dict_size": F, "layer": layer, "lm_name": "fixture/model",
                              "submodule_name": f"resid_post_layer_{layer}", "device": "cpu", "seed": SEED,
                              **extra},
                  "buffer": {"d_submodule": d, "io": "out", "n_ctxs": 8, "ctx_len": 16}}
        (case.dict_dir / "config.json").write_text(json.dumps(config, indent=4))
        for dn, tdt in _torch_dtypes().items():
            m = cls(d, F, **extra)
            m.load_state_dict(torch.load(case.dict_dir / "ae.pt", weights_only=True))
            m = m.to(tdt)
            cand = _rand(gen, 256, d).to(tdt)
            with torch.no_grad():
                def pre_of(x):
                    if isinstance(m, JumpReluAutoEncoder):
                        return m.encode(x, output_pre_jump=True)[1]
                    if isinstance(m, MatryoshkaBatchTopKSAE):
                        return (x - m.b_dec) @ m.W_enc + m.b_enc
                    if isinstance(m, AutoEncoderNew):
                        return m.encoder(x)
                    shift = m.bias if isinstance(m, AutoEncoder) else m.b_dec
                    return m.encoder(x - shift)

                pre = pre_of(cand)
                if name == "topk":
                    ok = _topk_ok(pre.relu(), extra["k"], 1e-3)
                elif name in ("batch_topk", "matryoshka_batch_topk"):
                    ok = _threshold_ok(pre, m.threshold, 1e-3)
                elif name == "jumprelu":
                    ok = _threshold_ok(pre, m.threshold, 1e-3)
                else:
                    ok = _relu_ok(pre, 1e-3)
                x = _margin_rows(cand, ok)
                pre = pre_of(x)
                feats = m.encode(x)
                dec = m.decode(feats)
                fwd = m(x)
            case.put(dn, x=x, pre=pre, feats=feats, decode=dec, forward=fwd)
        case.finish(format="dictionary_learning", path="dict", dict_class=dict_class, source="library",
                    hook=f"blocks.{layer}.hook_resid_post",
                    notes=("ae.pt: torch.save(state_dict) as dictionary_learning.training does; config.json "
                           "follows its trainer's config() (the trainer needs a model). Outputs: the class's "
                           "encode/decode/forward on the loaded state dict (BatchTopK: encode's inference "
                           "default, use_threshold=True)."))


# -- lm-saes (llamascopium) ----------------------------------------------------------------------
def gen_lm_saes(out: Path) -> None:
    import math

    import torch
    from llamascopium.models.sae import SAEConfig, SparseAutoEncoder
    from llamascopium.models.sparse_dictionary import SparseDictionary

    gen = torch.Generator().manual_seed(SEED + 4)
    d, ef = 16, 4
    F = d * ef
    specs = [
        ("sae_jumprelu", "jumprelu", "blocks.3.hook_resid_post", "blocks.3.hook_resid_post", "dataset-wise", True),
        ("sae_topk", "topk", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre", "dataset-wise", True),
        ("sae_relu_inference", "relu", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_mid", "inference", False),
        ("transcoder_jumprelu", "jumprelu", "blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out", "dataset-wise", True),
        ("transcoder_topk_nodecnorm", "topk", "blocks.4.hook_resid_mid", "blocks.4.hook_mlp_out", "dataset-wise", False),
    ]
    for name, act, hin, hout, norm, decnorm in specs:
        case = Case(out, "lm_saes", name)
        cfg = SAEConfig(d_model=d, expansion_factor=ef, hook_point_in=hin, hook_point_out=hout, act_fn=act,
                        top_k=6, norm_activation=norm, sparsity_include_decoder_norm=decnorm,
                        use_decoder_bias=name != "sae_relu_inference")
        m = SparseAutoEncoder(cfg)
        with torch.no_grad():
            m.W_E.copy_(_rand(gen, d, F, scale=0.4))
            m.b_E.copy_(_rand(gen, F, scale=0.2))
            m.W_D.copy_(_rand(gen, F, d, scale=0.3))
            if cfg.use_decoder_bias:
                m.b_D.copy_(_rand(gen, d, scale=0.1))
            if act == "jumprelu":
                thr = torch.rand(F, generator=gen, dtype=torch.float64).to(torch.float32) * 0.5 + 0.05
                m.activation_function.log_jumprelu_threshold.copy_(thr.log())
        if norm == "dataset-wise":
            norms = {hin: 6.5, hout: 2.5} if hin != hout else {hin: 6.5}
            m.set_dataset_average_activation_norm(norms)
        if name == "sae_topk":  # llamascopium's torch checkpoint, {"sae": state_dict, "version": ...}
            case.dict_dir.mkdir()
            m.save_checkpoint(case.dict_dir / "sae_weights.pt")
        else:
            m.save_pretrained(case.dict_dir)
        cfg.save_hyperparameters(case.dict_dir)
        for dn, tdt in _torch_dtypes().items():
            lm = SparseDictionary.from_pretrained(str(case.dict_dir), dtype=tdt)
            cand = _rand(gen, 256, d, scale=2.0).to(tdt)
            with torch.no_grad():
                def run(x):
                    if norm == "dataset-wise":
                        batch, scales = lm.normalize_activations({hin: x, hout: x} if hin != hout else {hin: x},
                                                                 return_scale_factor=True)
                        xn, s_out = batch[hin], scales[hout]
                    else:
                        xn, s_out = x, torch.tensor(1.0, dtype=tdt)
                    feats, pre = lm.encode(xn, return_hidden_pre=True)
                    return xn, s_out, feats, pre

                _, _, _, pre = run(cand)
                dn_norm = lm.decoder_norm() if decnorm else torch.ones(F, dtype=tdt)
                if act == "jumprelu":
                    thr = lm.activation_function.log_jumprelu_threshold.exp()
                    ok = _threshold_ok(pre * dn_norm, thr, 1e-3)
                elif act == "topk":
                    ok = _topk_ok((pre * dn_norm).relu(), cfg.top_k, 1e-3)
                else:
                    ok = _relu_ok(pre, 1e-3)
                x = _margin_rows(cand, ok)
                xn, s_out, feats, pre = run(x)
                dec = lm.decode(feats) / s_out
                fwd = lm.forward(xn) / s_out
            case.put(dn, x=x, pre=pre, feats=feats, decode=dec, forward=fwd)
        case.finish(format="lm_saes", path="dict", act_fn=act, norm_activation=norm,
                    sparsity_include_decoder_norm=decnorm, hook_point_in=hin, hook_point_out=hout,
                    notes=("x: raw activations; pre/feats: encode(normalize_activations(x)) "
                           "(return_hidden_pre); decode/forward: denormalized by the output hook's factor, "
                           f"sqrt(d_model)/norm = {math.sqrt(d)}/norm"))

    # cross-layer transcoders (sae_type "clt"): per-layer encoders, decoders into every later layer
    from llamascopium.models.clt import CLTConfig, CrossLayerTranscoder

    L, ef_clt = 3, 2
    F_clt = d * ef_clt
    for name, act, norm in (("clt_jumprelu", "jumprelu", "dataset-wise"), ("clt_topk", "topk", "inference")):
        case = Case(out, "lm_saes", name)
        hins = [f"blocks.{i}.ln2.hook_normalized" for i in range(L)]
        houts = [f"blocks.{i}.hook_mlp_out" for i in range(L)]
        cfg = CLTConfig(d_model=d, expansion_factor=ef_clt, hook_points_in=hins, hook_points_out=houts, act_fn=act,
                        top_k=5, norm_activation=norm, sparsity_include_decoder_norm=True)
        m = CrossLayerTranscoder(cfg)
        with torch.no_grad():
            m.W_E.copy_(_rand(gen, L, d, F_clt, scale=0.4))
            m.b_E.copy_(_rand(gen, L, F_clt, scale=0.2))
            for j in range(L):
                m.W_D[j].copy_(_rand(gen, j + 1, F_clt, d, scale=0.3))
                m.b_D[j].copy_(_rand(gen, d, scale=0.1))
            if act == "jumprelu":
                thr = torch.rand(L, F_clt, generator=gen, dtype=torch.float64).to(torch.float32) * 0.5 + 0.05
                m.activation_function.log_jumprelu_threshold.copy_(thr.log())
        if norm == "dataset-wise":
            m.set_dataset_average_activation_norm({h: 4.0 + i for i, h in enumerate(hins)}
                                                  | {h: 1.5 + i for i, h in enumerate(houts)})
        m.save_pretrained(case.dict_dir)
        cfg.save_hyperparameters(case.dict_dir)
        for dn, tdt in _torch_dtypes().items():
            lm = SparseDictionary.from_pretrained(str(case.dict_dir), dtype=tdt)
            cand = _rand(gen, 256, L, d, scale=2.0).to(tdt)
            with torch.no_grad():
                def run(x):
                    if norm == "dataset-wise":
                        s_in = torch.stack([lm.compute_norm_factor(x[:, i], hins[i]) for i in range(L)])
                        s_out = torch.stack([lm.compute_norm_factor(x[:, i], houts[i]) for i in range(L)])
                    else:
                        s_in = s_out = torch.ones(L, dtype=tdt)
                    xn = x * s_in[None, :, None]
                    feats = lm.encode(xn)
                    # the pre-activations before decoder-norm gating (CLT.encode returns them gated)
                    pre = torch.einsum("bld,lds->bls", xn, lm.W_E) + lm.b_E
                    return xn, s_out, feats, pre

                _, _, _, pre = run(cand)
                dnorm = lm.decoder_norm_per_feature()
                if act == "jumprelu":
                    ok = _threshold_ok(pre * dnorm, lm.activation_function.log_jumprelu_threshold.exp(), 1e-3).all(dim=1)
                else:
                    ok = _topk_ok((pre * dnorm).relu(), cfg.top_k, 1e-3).all(dim=1)
                x = _margin_rows(cand.transpose(0, 1), ok).transpose(0, 1)
                xn, s_out, feats, pre = run(x)
                dec = lm.decode(feats) / s_out[:, None, None]
                fwd = lm.decode(lm.encode(xn)) / s_out[:, None, None]
            case.put(dn, x=x.transpose(0, 1), pre=pre.transpose(0, 1), feats=feats.transpose(0, 1), decode=dec,
                     forward=fwd)
        case.finish(format="lm_saes", path="dict", structure="cross_layer_transcoder", act_fn=act, norm_activation=norm,
                    sparsity_include_decoder_norm=True, n_layers=L,
                    notes=("(n_layers, n, .) layout; pre: x_n W_E + b_E before the decoder-norm gating; decode and "
                           "forward: CrossLayerTranscoder.decode, each output layer divided by its normalization"))

    # Llama Scope's Hugging Face layout (hyperparams.json + checkpoints/final.safetensors with torch
    # Linear names): no llamascopium loader reads it any more; SAELens's llama_scope loader does, so
    # the outputs are SAELens's (its loader run on these files, its JumpReLU SAE's encode/decode).
    case = Case(out, "lm_saes", "llama_scope_hf")
    hp = {"d_model": d, "d_sae": F, "expansion_factor": ef, "act_fn": "jumprelu", "jump_relu_threshold": 0.3,
          "norm_activation": "dataset-wise", "dataset_average_activation_norm": {"in": 5.5, "out": 5.5},
          "hook_point_in": "blocks.5.hook_resid_post", "hook_point_out": "blocks.5.hook_resid_post",
          "sparsity_include_decoder_norm": True, "use_decoder_bias": True, "top_k": 50}
    W_D = _rand(gen, d, F, scale=0.3)
    weights = {"encoder.weight": _rand(gen, F, d, scale=0.4), "encoder.bias": _rand(gen, F, scale=0.2),
               "decoder.weight": W_D / W_D.norm(dim=0, keepdim=True),  # released with unit decoder norms
               "decoder.bias": _rand(gen, d, scale=0.1)}
    (case.dict_dir / "checkpoints").mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(weights, str(case.dict_dir / "checkpoints" / "final.safetensors"))
    (case.dict_dir / "hyperparams.json").write_text(json.dumps(hp, indent=2))
    for dn, tdt in _torch_dtypes().items():
        sae = _saelens_llama_scope(case.dict_dir, dn)
        cand = _rand(gen, 256, d, scale=2.0).to(tdt)
        with torch.no_grad():
            pre = cand @ sae.W_enc + sae.b_enc
            x = _margin_rows(cand, _threshold_ok(pre, sae.threshold, 1e-3))
            pre = x @ sae.W_enc + sae.b_enc
            feats = sae.encode(x)
            dec = sae.decode(feats)
            fwd = sae(x)
        case.put(dn, x=x, pre=pre, feats=feats, decode=dec, forward=fwd)
    case.finish(format="lm_saes", path="dict", source="saelens", act_fn="jumprelu", norm_activation="dataset-wise",
                hook_point_in=hp["hook_point_in"], hook_point_out=hp["hook_point_out"],
                notes=("Llama Scope's released layout; outputs from SAELens's llama_scope loader "
                       "(sae_lens.loading.pretrained_sae_loaders.llama_scope_sae_huggingface_loader, its "
                       "hf_hub_download pointed at these files) and its JumpReLU SAE, then SAE.from_pretrained's "
                       "fold_activation_norm_scaling_factor(s), s = sqrt(d_model) / "
                       "dataset_average_activation_norm.in: threshold = jump_relu_threshold * s, W_enc * s, "
                       "W_dec / s, b_dec / s"))


def _saelens_llama_scope(folder: Path, dtype_name: str):
    """SAELens's own reading of a Llama Scope folder (its hub download pointed at local files)."""
    import sae_lens.loading.pretrained_sae_loaders as loaders
    from sae_lens import SAE

    saved = loaders.hf_hub_download
    loaders.hf_hub_download = lambda repo_id, filename, subfolder=None, **kw: str(
        folder.parent / (f"{subfolder}/{filename}" if subfolder else filename))
    try:
        cfg, state, _ = loaders.llama_scope_sae_huggingface_loader(
            "local/llama-scope", folder.name, device="cpu", cfg_overrides={"dtype": dtype_name})
    finally:
        loaders.hf_hub_download = saved
    sae = SAE.from_dict(cfg)
    sae.load_state_dict(state)
    # what SAE.from_pretrained does next: fold the release table's norm_scaling_factor, which for
    # Llama Scope is sqrt(d_model) / dataset_average_activation_norm.in (llamascopium loads Llama
    # Scope releases through from_pretrained too)
    hp = json.loads((folder / "hyperparams.json").read_text())
    sae.fold_activation_norm_scaling_factor(hp["d_model"] ** 0.5 / hp["dataset_average_activation_norm"]["in"])
    return sae.to(getattr(__import__("torch"), dtype_name))


def generate(out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    print("generating reference dictionaries:")
    gen_circuit_tracer(out)
    gen_sparsify(out)
    gen_dictionary_learning(out)
    gen_lm_saes(out)
    manifest = {
        "generator": "scripts/reference_fixtures.py",
        "seed": SEED,
        "versions": _versions(),
        "pins": PINS + [p + " (--no-deps)" for p in NO_DEPS_PINS],
        "cases": sorted(str(p.parent.relative_to(out)) for p in out.rglob("case.json")),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
