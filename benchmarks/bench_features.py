"""Feature-basis benchmarks: top virtual weights between two dictionaries, every feature's top logit
tokens, and a Gemma-2-2B-sized pair of dictionaries within a memory budget, each against the one
dense float32 GEMM of the same size timed in the same run.

Cases (full sizes; ``--quick`` shrinks every one to seconds, for the test suite):

- ``virtual_weights``: the top 50 (by magnitude) residual-direct virtual weights ``enc_t dec_s``
  between two 16,384-feature dictionaries at d_model 768, with the public
  ``top_feature_weights(virtual_weights(s, t), 50)`` (its factored SVD included), against the
  16384 x 768 x 16384 float32 GEMM; also ``top_entries`` on the raw factors. Targets: within 2x
  the GEMM, under 1 GB peak.
- ``feature_logits``: every feature's top 10 logit tokens of a 16,384-feature dictionary through a
  GPT-2-small-sized unembedding (50,257 x 768), with the public ``top_feature_logits`` and with
  ``top_entries_per_row`` (circuitalg.features.streaming), against the F x V x d float32 GEMM.
  Target: within 2x the GEMM.
- ``large_virtual_weights``: the top 50 (by magnitude) virtual weights between two 65,536-feature dictionaries at
  d_model 2,304 (Gemma-2-2B size), stored as a two-layer circuit-tracer transcoder in float32 on
  disk and ranked by ``stream_global_weights`` within ``budget_bytes`` per task. Its GEMM
  (65536 x 2304 x 65536, a 16 GiB product) is timed on a 4,096-row slice and scaled by 16.

The dictionaries are random but shaped like trained ones: unit-norm decoder columns, encoders
``≈ decoderᵀ`` plus noise, and a fraction of the target's features continuing source features
(cosine 0.3-0.95), so the top weights stand out of the ``1/sqrt(d)`` bulk.

Ratios are to the faster of two runs of the GEMM, one before the methods and one after (a
difference over 25% between them marks the case DISTURBED: other work shared the machine).
Every measurement runs in a fresh subprocess (``--quick``: one per case): the inputs are made, the process's peak-RSS mark is
reset (``/proc/self/clear_refs``, Linux; elsewhere ``ru_maxrss`` over the whole process), and the
peak stated is the process's resident high-water mark during the timed call (interpreter and
inputs included). Each method's result is checked against an independent computation (a second
certified method, or a dense float64 brute force in ``--quick``).

Usage: ``python benchmarks/bench_features.py [--quick] [--json OUT] [--cases a,b]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL = {
    "virtual_weights": {"F": 16384, "d": 768, "k": 50},
    "feature_logits": {"F": 16384, "d": 768, "V": 50257, "k": 10},
    "large_virtual_weights": {"F": 65536, "d": 2304, "k": 50, "budget": 2 << 30, "slice": 4096},
}
QUICK = {
    "virtual_weights": {"F": 1024, "d": 64, "k": 50},
    "feature_logits": {"F": 512, "d": 64, "V": 3001, "k": 10},
    "large_virtual_weights": {"F": 2048, "d": 96, "k": 50, "budget": 4 << 20, "slice": 512},
}
#: per case: the GEMM first, the methods, and the GEMM again (``_after``: is the machine's load steady?)
METHODS = {
    "virtual_weights": ["gemm", "top_feature_weights", "top_entries_raw", "gemm_after"],
    "feature_logits": ["gemm", "top_feature_logits", "top_entries_per_row", "gemm_after"],
    "large_virtual_weights": ["gemm_slice", "stream_global_weights", "gemm_slice_after"],
}
TARGETS = {"virtual_weights": (2.0, 1e9), "feature_logits": (2.0, None), "large_virtual_weights": (None, None)}


# -- measurement helpers (run in the subprocess) -------------------------------------------------


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _unit_columns(rng: np.random.Generator, d: int, F: int) -> np.ndarray:
    X = rng.standard_normal((d, F), dtype=np.float32)
    X /= np.linalg.norm(X, axis=0)
    return X


def _dictionary_pair(F: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(enc_s, dec_s, enc_t, dec_t)`` in float32: unit decoder columns, encoders ``decᵀ`` plus
    noise, and ``F/32`` target features continuing source features with cosine 0.3-0.95."""
    rng = np.random.default_rng(seed)
    dec_s = _unit_columns(rng, d, F)
    dec_t = _unit_columns(rng, d, F)
    n_shared = max(64, F // 32)
    tgt = rng.choice(F, n_shared, replace=False)
    src = rng.choice(F, n_shared, replace=False)
    cos = rng.uniform(0.3, 0.95, n_shared).astype(np.float32)
    noise = _unit_columns(rng, d, n_shared)
    noise -= dec_s[:, src] * np.einsum("ij,ij->j", noise, dec_s[:, src])  # orthogonal to the source column
    noise /= np.linalg.norm(noise, axis=0)
    dec_t[:, tgt] = cos * dec_s[:, src] + np.sqrt(1 - cos**2) * noise
    sigma = np.float32(0.3 / np.sqrt(d))
    enc_s = np.ascontiguousarray(dec_s.T) + sigma * rng.standard_normal((F, d), dtype=np.float32)
    enc_t = np.ascontiguousarray(dec_t.T) + sigma * rng.standard_normal((F, d), dtype=np.float32)
    return enc_s, dec_s, enc_t, dec_t


def _model(d: int, d_vocab_out: int, seed: int = 1):
    """A one-layer, one-head, norm-free model with ``d_model = d`` and an unembedding of
    ``d_vocab_out`` tokens (N(0, 0.02) like GPT-2's initialisation): only its stream and W_U matter."""
    import circuitalg as ca

    cfg = ca.TransformerConfig(n_layers=1, n_heads=1, d_model=d, d_head=8, d_vocab=8, n_ctx=4, normalization=None,
                               d_vocab_out=d_vocab_out)
    rng = np.random.default_rng(seed)
    params = {k: 0.02 * rng.standard_normal(s) for k, s in ca.param_shapes(cfg).items()}
    return ca.Transformer(cfg, params, name=f"bench-d{d}")


def _sae(name: str, hook, enc: np.ndarray, dec: np.ndarray):
    from circuitalg.features import Dictionary, DictionaryKind, ReLU

    F, d = enc.shape
    return Dictionary(name, DictionaryKind.SAE, (hook,), (hook,), [enc], np.zeros(F, np.float32), [dec],
                      [np.zeros(d, np.float32)], ReLU(), dtype=np.float32)


def _gemm(A: np.ndarray, B: np.ndarray) -> float:
    t = time.perf_counter()
    C = A @ B
    elapsed = time.perf_counter() - t
    del C
    return elapsed


def _brute_top(L: np.ndarray, V: np.ndarray, k: int, by_abs: bool) -> list[tuple[int, int]]:
    full = np.asarray(L, np.float64) @ np.asarray(V, np.float64)
    key = np.abs(full) if by_abs else full
    flat = np.lexsort((np.arange(full.size), -key.ravel()))[:k]
    r, c = np.unravel_index(flat, full.shape)
    return list(zip(r.tolist(), c.tolist()))


def _run_virtual_weights(method: str, p: dict, quick: bool) -> dict:
    from circuitalg.features import Hook, HookKind
    from circuitalg.features.binding import bind
    from circuitalg.features.circuits import top_feature_weights, virtual_weights
    from circuitalg.linalg import top_entries
    from circuitalg.runtime import current

    F, d, k = p["F"], p["d"], p["k"]
    enc_s, dec_s, enc_t, dec_t = _dictionary_pair(F, d)
    if method == "gemm":
        del enc_s, dec_t
        reset = _reset_peak()
        return {"seconds": _gemm(enc_t, dec_s), "peak_rss": _peak_bytes(reset)}
    if method == "top_feature_weights":
        model = _model(d, 8)
        s = _sae("s", Hook(HookKind.RESID_PRE, 0), enc_s, dec_s)
        t = _sae("t", Hook(HookKind.RESID_MID, 0), enc_t, dec_t)
        del enc_s, dec_t
        bs, bt = bind(s, model), bind(t, model)
        reset = _reset_peak()
        t0 = time.perf_counter()
        top = top_feature_weights(virtual_weights(bs, bt), k)
        seconds = time.perf_counter() - t0
        peak = _peak_bytes(reset)
        got = [(e.row.index, e.col.index) for e in top]
        vals = top.values
        exact = top.exact
    else:
        del enc_s, dec_t
        L, V = enc_t.astype(np.float64), dec_s.astype(np.float64)
        reset = _reset_peak()
        t0 = time.perf_counter()
        top = top_entries(L, V, k, current(), by_abs=True)
        seconds = time.perf_counter() - t0
        peak = _peak_bytes(reset)
        got = list(zip(top.rows.tolist(), top.cols.tolist()))
        vals = top.values
        exact = top.exact
    return {"seconds": seconds, "peak_rss": peak, "exact": bool(exact), "entries": got,
            "values": [float(v) for v in vals],
            "reference": _brute_top(enc_t, dec_s, k, True) if quick else None}


def _run_feature_logits(method: str, p: dict, quick: bool) -> dict:
    from circuitalg.features import Hook, HookKind
    from circuitalg.features.binding import bind
    from circuitalg.features.circuits import top_feature_logits
    from circuitalg.features.streaming import top_entries_per_row

    F, d, V, k = p["F"], p["d"], p["V"], p["k"]
    rng = np.random.default_rng(2)
    dec = _unit_columns(rng, d, F)
    if method == "gemm":
        W_U = (0.02 * rng.standard_normal((V, d))).astype(np.float32)
        A = np.ascontiguousarray(dec.T)
        reset = _reset_peak()
        return {"seconds": _gemm(A, W_U.T), "peak_rss": _peak_bytes(reset)}
    model = _model(d, V)
    W_U = np.asarray(model.params["W_U"], dtype=np.float64)
    if method == "top_feature_logits":
        sae = _sae("f", Hook(HookKind.RESID_POST, 0), np.ascontiguousarray(dec.T), dec)
        b = bind(sae, model)
        reset = _reset_peak()
        t0 = time.perf_counter()
        res = top_feature_logits(b, k)
        seconds = time.perf_counter() - t0
        peak = _peak_bytes(reset)
        tokens, values = res.tokens, res.values
    else:
        dec64 = dec.astype(np.float64)
        reset = _reset_peak()
        t0 = time.perf_counter()
        res = top_entries_per_row(dec64.T, W_U.T, k)
        seconds = time.perf_counter() - t0
        peak = _peak_bytes(reset)
        tokens, values = res.cols, res.values
    out = {"seconds": seconds, "peak_rss": peak, "tokens": tokens.tolist(), "values": values.tolist()}
    if quick:
        full = W_U @ dec.astype(np.float64)  # (V, F): each column's float64 top k
        out["reference"] = [np.lexsort((np.arange(V), -full[:, f]))[:k].tolist() for f in range(F)]
    return out


def _write_pair_as_clt(path: Path, F: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """A two-layer circuit-tracer transcoder whose one layer pair (0 -> 1) is ``enc_t dec_s``;
    returns ``(enc_t, dec_s)`` for --quick's brute force (else empty)."""
    from safetensors.numpy import save_file

    enc_s, dec_s, enc_t, dec_t = _dictionary_pair(F, d)
    del dec_t
    path.mkdir(parents=True, exist_ok=True)
    save_file({"W_enc_0": enc_s}, path / "W_enc_0.safetensors")
    del enc_s
    save_file({"W_enc_1": enc_t}, path / "W_enc_1.safetensors")
    W = np.zeros((F, 2, d), dtype=np.float32)  # slice 1 (layer 0 -> layer 1's output) is read by no pair
    W[:, 0, :] = dec_s.T
    save_file({"W_dec_0": W}, path / "W_dec_0.safetensors")
    del W
    save_file({"W_dec_1": np.zeros((F, 1, d), dtype=np.float32)}, path / "W_dec_1.safetensors")
    return enc_t, dec_s


def _run_large(method: str, p: dict, quick: bool) -> dict:
    from circuitalg.features.streaming import stream_global_weights

    F, d, k, budget = p["F"], p["d"], p["k"], p["budget"]
    if method == "gemm_slice":
        _, dec_s, enc_t, _ = _dictionary_pair(F, d)
        A = np.ascontiguousarray(enc_t[: p["slice"]])
        del enc_t
        reset = _reset_peak()
        seconds = _gemm(A, dec_s)
        return {"seconds": seconds * F / p["slice"], "slice_seconds": seconds, "peak_rss": _peak_bytes(reset)}
    with tempfile.TemporaryDirectory() as tmp:
        enc_t, dec_s = _write_pair_as_clt(Path(tmp), F, d)
        ref = _brute_top(enc_t, dec_s, k, True) if quick else None
        del enc_t, dec_s
        reset = _reset_peak()
        t0 = time.perf_counter()
        res = stream_global_weights(tmp, k, by_abs=True, budget_bytes=budget)
        seconds = time.perf_counter() - t0
        peak = _peak_bytes(reset)
    return {"seconds": seconds, "peak_rss": peak, "exact": res.exact, "budget": budget,
            "plan": str(res.plan), "entries": list(zip(res.target_feature.tolist(), res.source_feature.tolist())),
            "values": res.values.tolist(), "reference": ref}


RUNNERS = {"virtual_weights": _run_virtual_weights, "feature_logits": _run_feature_logits,
           "large_virtual_weights": _run_large}


def _run(case: str, method: str, quick: bool) -> dict:
    sizes = QUICK if quick else FULL
    return RUNNERS[case](method.removesuffix("_after"), sizes[case], quick)


# -- the driver ------------------------------------------------------------------------------------


def _measure(case: str, methods: list[str], quick: bool) -> dict:
    """``{method: figures}`` measured in a subprocess (one per method; one per case with --quick)."""
    groups = [methods] if quick else [[m] for m in methods]
    out = {}
    for group in groups:
        cmd = [sys.executable, __file__, "--worker", f"{case}:{','.join(group)}"] + (["--quick"] if quick else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{case}/{group} failed:\n{done.stdout}\n{done.stderr}")
        out.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def _same(case: str, runs: dict) -> bool:
    """Whether the methods of a case agree with each other (and with --quick's brute force)."""
    if case == "feature_logits":
        a, b = runs["top_feature_logits"], runs["top_entries_per_row"]
        ok = a["tokens"] == b["tokens"] and np.allclose(a["values"], b["values"], rtol=1e-12, atol=0)
        return ok and (a.get("reference") is None or a["tokens"] == a["reference"])
    if case == "virtual_weights":
        a, b = runs["top_feature_weights"], runs["top_entries_raw"]
        ok = a["entries"] == b["entries"] and np.allclose(a["values"], b["values"], rtol=1e-12, atol=0)
        return ok and a["exact"] and b["exact"] and (a.get("reference") is None or a["entries"] == a["reference"])
    r = runs["stream_global_weights"]
    ref = r.get("reference")
    return bool(r["exact"]) and (ref is None or [tuple(e) for e in r["entries"]] == [tuple(x) for x in ref])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for the test suite")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--cases", default=",".join(FULL), help="comma-separated cases to run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.worker:
        case, methods = args.worker.split(":")
        print(json.dumps({m: _run(case, m, args.quick) for m in methods.split(",")}))
        return
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(FULL)
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; known: {', '.join(FULL)}")
    report = {"quick": args.quick, "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                                                "python": platform.python_version(), "numpy": np.__version__},
              "peak_rss": "VmHWM of a fresh subprocess per measurement, reset after the inputs are made", "cases": []}
    print(f"feature benchmarks ({'quick' if args.quick else 'full'} sizes; each measurement in its own process)")
    print(f"{'case':<23} {'method':<22} {'time s':>9} {'x GEMM':>7} {'peak MB':>8}  target")
    for case in cases:
        runs = _measure(case, METHODS[case], args.quick)
        gemms = [m for m in METHODS[case] if m.startswith("gemm")]
        before, after = (runs[m]["seconds"] for m in gemms)
        base = min(before, after)  # the stricter baseline: the faster of the two GEMM runs
        steady = abs(after / before - 1) <= 0.25
        t_ratio, mem_cap = TARGETS[case]
        rows = []
        for m, r in runs.items():
            ratio = r["seconds"] / base
            target = ""
            if m in gemms:
                target = "baseline" + ("" if m == gemms[0] else f" again ({after / before:.2f}x the first"
                                       + ("" if steady else ": DISTURBED, rerun the case") + ")")
                if m.startswith("gemm_slice"):
                    target += f"; scaled from {sizes[case]['slice']} rows ({r['slice_seconds']:.2f} s)"
            elif t_ratio is not None:
                target = f"<= {t_ratio:g}x" + ("" if ratio <= t_ratio else " MISSED")
                if mem_cap is not None:
                    target += f", < {mem_cap / 1e9:g} GB" + ("" if r["peak_rss"] < mem_cap else " MISSED")
            elif "budget" in r:
                target = f"budget {r['budget'] / 2**20:g} MiB per task"
            print(f"{case:<23} {m:<22} {r['seconds']:>9.2f} {ratio:>7.2f} {r['peak_rss'] / 1e6:>8.0f}  {target}")
            rows.append({"method": m, "seconds": r["seconds"], "ratio_to_gemm": ratio, "peak_rss_bytes": r["peak_rss"],
                         **({"budget_bytes": r["budget"], "plan": r["plan"]} if "budget" in r else {})})
        same = _same(case, runs)
        print(f"{case:<23} results agree: {same}")
        report["cases"].append({"case": case, "sizes": sizes[case], "gemm_seconds": [before, after],
                                "gemm_steady": steady, "methods": rows, "same_as_reference": same})
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if not all(c["same_as_reference"] for c in report["cases"]):
        raise SystemExit("a method disagrees with its reference")


if __name__ == "__main__":
    main()
