"""circuitalg.features.streaming: the top global weights of a cross-layer transcoder (in memory, from
circuit-tracer files read lazily, and as tiles on a 2-worker dask cluster) equal a brute force over
every entry, with the certificate checked on every entry; each row's top entries of a factored
product equal a float64 brute force; the benchmark script runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import circuitalg as ca
from circuitalg.features import Dictionary, DictionaryKind, DictionarySet, Hook, HookKind, ReLU
from circuitalg.features.streaming import plan_global_weights, stream_global_weights, top_entries_per_row

ROOT = Path(__file__).resolve().parents[1]
N_LAYERS, D, F = 4, 32, 64


def _random_clt(seed: int = 0, n_layers: int = N_LAYERS, d: int = D, f: int = F) -> DictionarySet:
    """A cross-layer transcoder whose weights are float32 numbers held in float64 (the files hold
    them exactly), with a few strong source -> target directions planted so the top is not flat."""
    rng = np.random.default_rng(seed)
    members = []
    decs = []
    for l in range(n_layers):
        dec = [rng.standard_normal((d, f)) / np.sqrt(d) for _ in range(l, n_layers)]
        decs.append(dec)
        enc = rng.standard_normal((f, d)) / np.sqrt(d)
        for s in range(l):  # target l reads a few of source s's summed writes strongly
            summed = sum(decs[s][: l - s])
            for _ in range(3):
                enc[rng.integers(f)] += 2.0 * summed[:, rng.integers(f)]
        enc = enc.astype(np.float32).astype(np.float64)
        dec = [x.astype(np.float32).astype(np.float64) for x in dec]
        members.append(Dictionary(
            f"clt.{l}", DictionaryKind.CROSS_LAYER_TRANSCODER, (Hook(HookKind.RESID_MID, l),),
            tuple(Hook(HookKind.MLP_OUT, j) for j in range(l, n_layers)), [enc], np.zeros(f), dec,
            [np.zeros(d) for _ in range(l, n_layers)], ReLU()))
    return DictionarySet("clt", members)


def _save_circuit_tracer(clt: DictionarySet, path: Path, dtype=np.float32) -> Path:
    """The circuit-tracer lazy layout: W_enc_<l> (F, d) and W_dec_<l> (F, n_layers - l, d)."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    for l, m in enumerate(clt):
        # C order: safetensors.numpy writes an array's memory as it lies (np.stack of transposes is not C-ordered)
        c = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        save_file({f"W_enc_{l}": c(m.W_enc[0]), f"b_enc_{l}": c(m.b_enc), f"b_dec_{l}": c(m.b_dec[0])},
                  path / f"W_enc_{l}.safetensors")
        save_file({f"W_dec_{l}": c(np.stack([W.T for W in m.W_dec], axis=1))}, path / f"W_dec_{l}.safetensors")
    return path


def _all_weights(clt: DictionarySet) -> list[tuple[int, int, int, int, float]]:
    """Every global weight (target layer, target feature, source layer, source feature, value),
    each one float64 dot product of the encoder row and the decoders summed in write order."""
    out = []
    n = len(clt)
    for t in range(n):
        enc = clt[t].W_enc[0]
        for s in range(t):
            Dsum = np.array(clt[s].W_dec[0], order="C")
            for j in range(1, t - s):
                np.add(Dsum, clt[s].W_dec[j], out=Dsum)
            Dt = np.ascontiguousarray(Dsum.T)
            out += [(t, i, s, j, float(np.dot(enc[i], Dt[j]))) for i in range(enc.shape[0]) for j in range(Dt.shape[0])]
    return out


def _brute_top(entries, k: int, by_abs: bool):
    key = lambda e: (-(abs(e[4]) if by_abs else e[4]), e[0], e[1], e[2], e[3])  # noqa: E731
    return sorted(entries, key=key)[:k]


def _as_list(res):
    return list(zip(res.target_layer.tolist(), res.target_feature.tolist(), res.source_layer.tolist(),
                    res.source_feature.tolist(), res.values.tolist()))


def _check_certificate(res, entries, by_abs: bool) -> None:
    """Every weight left out of the result is at most the k-th kept one, or the stated bound."""
    kept = {e[:4] for e in _as_list(res)}
    kth = abs(res.values[-1]) if by_abs else res.values[-1]
    limit = kth if res.exact else max(kth, res.bound)
    for e in entries:
        if e[:4] not in kept:
            assert (abs(e[4]) if by_abs else e[4]) <= limit


@pytest.mark.parametrize("by_abs", [False, True])
def test_global_weights_equal_the_brute_force_in_memory_and_from_files(tmp_path, by_abs: bool) -> None:
    clt = _random_clt()
    entries = _all_weights(clt)
    want = _brute_top(entries, 25, by_abs)
    lines: list[str] = []
    # a small budget: several tasks per source layer and several row blocks per target
    res = stream_global_weights(clt, 25, by_abs=by_abs, budget_bytes=400_000, log=lines.append)
    assert res.plan.col_block < F and res.plan.row_block < F and res.plan.n_tasks > N_LAYERS - 1
    assert "FLOP" in lines[0] and len(lines) == 1 + res.plan.n_tasks
    assert _as_list(res) == want and res.exact  # same entries, same order, same float64 values
    _check_certificate(res, entries, by_abs)
    files = stream_global_weights(_save_circuit_tracer(clt, tmp_path / "clt"), 25, by_abs=by_abs, budget_bytes=400_000)
    assert _as_list(files) == want and files.exact


def test_global_weights_on_a_dask_cluster_of_two_workers(tmp_path) -> None:
    distributed = pytest.importorskip("distributed")
    clt = _random_clt(1)
    want = _brute_top(_all_weights(clt), 40, True)
    path = _save_circuit_tracer(clt, tmp_path / "clt")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        remote_mem = stream_global_weights(clt, 40, budget_bytes=400_000, client=client)
        remote_files = stream_global_weights(path, 40, budget_bytes=400_000, client=client)
    local = stream_global_weights(clt, 40, budget_bytes=400_000)
    assert remote_mem.plan.n_tasks > 2
    for res in (remote_mem, remote_files, local):
        assert _as_list(res) == want and res.exact


def test_a_cut_scan_states_a_bound_that_holds_and_bfloat16_files(tmp_path) -> None:
    """max_rows leaves rows unevaluated: the bound covers every one of them (checked on all
    entries). bfloat16 files are widened exactly (the transcoder rounded to bfloat16 first)."""
    clt = _random_clt(2)
    entries = _all_weights(clt)
    res = stream_global_weights(clt, 10, by_abs=False, max_rows=3)
    assert not res.exact and res.bound > res.values[-1]
    _check_certificate(res, entries, False)
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    bf = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16)  # noqa: E731
    rounded = []
    for l, m in enumerate(clt):
        enc = bf(m.W_enc[0])
        dec = bf(np.stack([W.T for W in m.W_dec], axis=1))  # (torch copies to C order)
        save_file({f"W_enc_{l}": enc}, tmp_path / f"W_enc_{l}.safetensors")
        save_file({f"W_dec_{l}": dec}, tmp_path / f"W_dec_{l}.safetensors")
        enc64 = enc.to(torch.float64).numpy()
        decs = [dec[:, j, :].to(torch.float64).numpy().T for j in range(dec.shape[1])]
        rounded.append(Dictionary(m.name, m.kind, m.reads, m.writes, [enc64], m.b_enc, decs, m.b_dec, m.activation))
    want = _brute_top(_all_weights(DictionarySet("bf", rounded)), 10, True)
    assert _as_list(stream_global_weights(tmp_path, 10)) == want


def test_bad_input_is_refused(tmp_path) -> None:
    clt = _random_clt()
    with pytest.raises(ca.TooLargeError, match="budget_bytes=1000 is smaller"):
        plan_global_weights(clt, budget_bytes=1000)
    with pytest.raises(ca.InvalidArgumentError, match="k=0"):
        stream_global_weights(clt, 0)
    with pytest.raises(ca.LoadError, match="W_enc_0.safetensors"):
        stream_global_weights(tmp_path, 5)
    path = _save_circuit_tracer(clt, tmp_path / "clt")
    (path / "W_dec_2.safetensors").unlink()
    with pytest.raises(ca.LoadError, match="W_dec_2"):
        stream_global_weights(path, 5)
    with pytest.raises(ca.ShapeError, match="read_maps"):
        stream_global_weights(clt, 5, read_maps={1: np.eye(3)})


def test_read_maps_put_a_norm_on_the_target_side() -> None:
    """A target read through a map N (an MLP-input norm's weight and centring): the weights are
    those of W_enc N against the summed decoders."""
    clt = _random_clt(3)
    rng = np.random.default_rng(0)
    N = (np.eye(D) - 1.0 / D) * rng.uniform(0.5, 2.0, D)[:, None]
    res = stream_global_weights(clt, 15, by_abs=False, read_maps={2: N})
    mapped = DictionarySet("mapped", [
        m if l != 2 else Dictionary(m.name, m.kind, m.reads, m.writes, [m.W_enc[0] @ N], m.b_enc, m.W_dec, m.b_dec,
                                    m.activation) for l, m in enumerate(clt)])
    want = _brute_top(_all_weights(mapped), 15, False)
    got = _as_list(res)
    assert [e[:4] for e in got] == [e[:4] for e in want]
    np.testing.assert_allclose([e[4] for e in got], [e[4] for e in want], rtol=1e-13)


def test_global_weights_equal_top_feature_weights_of_the_bound_transcoder() -> None:
    """The in-memory route of the library (virtual_weights of every member pair of the bound
    transcoder, ranked together by top_feature_weights) finds the same weights."""
    from model_helpers import random_model

    from circuitalg.features.binding import bind
    from circuitalg.features.circuits import top_feature_weights, virtual_weights

    clt = _random_clt(5)
    model = random_model(n_layers=N_LAYERS, n_heads=2, d_model=D, d_head=8, d_mlp=48, seed=3)
    bound = bind(clt, model)
    for by_abs in (True, False):
        ref = top_feature_weights(virtual_weights(bound, bound), 30, by_abs=by_abs)
        res = stream_global_weights(clt, 30, by_abs=by_abs)
        assert [(e.row.dictionary, e.row.index, e.col.dictionary, e.col.index) for e in ref] == [
            (f"clt.{t}", i, f"clt.{s}", j) for t, i, s, j, _ in _as_list(res)]
        np.testing.assert_allclose(res.values, ref.values, rtol=1e-13, atol=0)


@pytest.mark.parametrize("by_abs", [False, True])
def test_each_rows_top_entries_equal_a_float64_brute_force(by_abs: bool) -> None:
    rng = np.random.default_rng(4)
    L, V = rng.standard_normal((45, 24)), rng.standard_normal((24, 3000))
    V[:, 500:700] = V[:, 500:501]  # ties: broken by column
    L[3] = 0.0  # a zero row: the first k columns
    res = top_entries_per_row(L, V, 7, by_abs=by_abs, max_bytes=50_000)
    full = L @ V
    Vt = np.ascontiguousarray(V.T)
    for i in range(L.shape[0]):
        vals = np.einsum("ij,ij->i", np.repeat(L[i][None], V.shape[1], axis=0), Vt)  # the kernel's float64 values
        key = np.abs(vals) if by_abs else vals
        order = np.lexsort((np.arange(V.shape[1]), -key))[:7]
        assert res.cols[i].tolist() == order.tolist()
        np.testing.assert_array_equal(res.values[i], vals[order])
        np.testing.assert_allclose(res.values[i], full[i, order], rtol=1e-12, atol=1e-12)
    assert res.cols[3].tolist() == list(range(7))
    small = top_entries_per_row(L[:2], V[:, :5], 9)
    assert small.cols.shape == (2, 5)


def test_bench_features_quick_runs(tmp_path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_features.py"), "--quick", "--json", str(out)],
                   check=True, cwd=ROOT, timeout=120, capture_output=True)
    got = json.loads(out.read_text())
    names = {c["case"] for c in got["cases"]}
    assert {"virtual_weights", "feature_logits", "large_virtual_weights"} <= names
    assert all(c["same_as_reference"] for c in got["cases"])
