"""Streamed full-OV spectra (circuitalg.streaming) against dense numpy on the loaded, folded model; tiles
smaller than the vocabulary; bfloat16 files; the memory budget; the same results on a 2-worker dask
cluster."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import save_random_hf

import circuitalg as ca
from circuitalg.streaming import plan_full_ov, stream_full_ov

COMMON = dict(vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=48, max_position_embeddings=24, bos_token_id=0, eos_token_id=0, head_dim=8)


def _dense_reference(path) -> tuple[np.ndarray, np.ndarray]:
    """Singular values and eigenvalues of every head's dense W_U W_OV W_E (61 x 61) of the folded model."""
    m = ca.fold_layer_norm(ca.load(path))
    E, U = m.W_E.array, m.W_U.array
    L, H = m.config.n_layers, m.config.n_heads
    sv, ev = np.zeros((L, H, 8)), np.zeros((L, H, 8), dtype=complex)
    for l in range(L):
        for h in range(H):
            head = m.head(l, h)
            full = U @ head.W_O.array @ head.W_V.array @ E
            sv[l, h] = np.linalg.svd(full, compute_uv=False)[:8]
            lam = np.linalg.eigvals(full)
            ev[l, h] = lam[np.argsort(-np.abs(lam))][:8]
    return sv, ev


@pytest.mark.parametrize("case", ["llama-gqa-untied", "qwen2-tied-bf16"])
def test_streamed_full_ov_equals_dense_numpy(tmp_path, case: str) -> None:
    if case == "llama-gqa-untied":
        hf, torch = save_random_hf(tmp_path, "LlamaForCausalLM", "LlamaConfig", **COMMON)
    else:
        hf, torch = save_random_hf(tmp_path, "Qwen2ForCausalLM", "Qwen2Config", **{**COMMON, "num_key_value_heads": 1},
                                   tie_word_embeddings=True)
        hf.to(torch.bfloat16).save_pretrained(tmp_path)  # bf16 on disk: widened exactly when read
    plan = plan_full_ov(tmp_path, budget_bytes=100_000)
    assert plan.tile_rows < 61 and plan.peak_bytes <= 100_000  # several vocabulary tiles, within budget
    lines: list[str] = []
    res = stream_full_ov(tmp_path, budget_bytes=100_000, log=lines.append)
    assert "FLOP" in lines[0] and "GiB" in lines[0]
    sv, ev = _dense_reference(tmp_path)
    np.testing.assert_allclose(res.singular_values, sv, rtol=0, atol=1e-10 * sv.max())
    for got, want in zip(res.eigenvalues.reshape(-1, 8), ev.reshape(-1, 8)):
        np.testing.assert_allclose(np.sort_complex(got), np.sort_complex(want), atol=1e-10 * np.abs(ev).max())
    copying = ca.head_table(ca.fold_layer_norm(ca.load(tmp_path))).copying
    np.testing.assert_allclose(res.copying, copying, atol=1e-10)
    _check_error_bounds(tmp_path, res, sv, ev)


def _check_error_bounds(path, res, sv: np.ndarray, ev: np.ndarray) -> None:
    """The stated bounds hold against the dense reference (beyond the reference's own rounding),
    are far from vacuous here, and agree with the in-memory accuracy() of the same maps."""
    floor = 1e-13 * sv.max()  # the dense reference's own rounding (61 x 61 in float64)
    assert np.all(res.singular_value_error > 0) and np.all(res.eigenvalue_error >= 0)
    assert np.all(np.abs(res.singular_values - sv) <= res.singular_value_error[..., None] + floor)
    for got, want, bound in zip(res.eigenvalues.reshape(-1, 8), ev.reshape(-1, 8), res.eigenvalue_error.ravel()):
        err = np.abs(np.sort_complex(got) - np.sort_complex(want))
        assert np.all(err <= bound + floor) or bound == 0.0
    assert np.all(res.singular_value_error < 1e-9 * res.singular_values[..., 0])
    m = ca.fold_layer_norm(ca.load(path))
    full = [m.W_U @ head.ov @ m.W_E for head in m.heads()]
    for f in full:
        f.singular_values()  # factors the vocabulary leaves, as the streamed route does
    ours = res.singular_value_error.ravel()
    ratio = ours / np.array([ca.accuracy(f) for f in full])
    assert np.all((0.5 < ratio) & (ratio < 2.0)), ratio


def test_streamed_bounds_flag_an_ill_conditioned_head(tmp_path) -> None:
    """Negative control for the eigenvalue bounds: one head whose full-OV core is a perturbed
    Jordan block (eigenvectors nearly parallel) gets a large eigenvalue_error and the one
    PrecisionWarning names it; the other heads' bounds stay small."""
    hf, torch = save_random_hf(tmp_path, "LlamaForCausalLM", "LlamaConfig", **COMMON)
    m = ca.fold_layer_norm(ca.load(tmp_path))
    M = m.W_E.array @ m.W_U.array  # W_E W_U of the folded model
    head, dh = m.head(1, 2), 8
    A = head.W_V.array @ M  # (8 x 32): the core is A W_O
    J = np.eye(dh) + np.diag(np.full(dh - 1, 100.0), 1)  # one Jordan block, strongly coupled
    with torch.no_grad():
        o = hf.model.layers[1].self_attn.o_proj.weight
        o[:, 2 * dh:3 * dh] = torch.tensor(np.linalg.pinv(A) @ J, dtype=o.dtype)  # core = J (to float32 rounding)
    hf.save_pretrained(tmp_path)
    with pytest.warns(ca.PrecisionWarning, match=r"eigenvalues of 1 of 12 heads \(L1H2\)"):
        res = stream_full_ov(tmp_path, budget_bytes=100_000)
    bad = res.eigenvalue_error[1, 2]
    assert bad > 1e-3 * np.abs(res.eigenvalues[1, 2, 0])
    others = np.delete(res.eigenvalue_error.ravel(), 1 * 4 + 2)
    assert np.all(others < 1e-9 * np.abs(res.eigenvalues[..., 0]).max())
    m2 = ca.fold_layer_norm(ca.load(tmp_path))  # the in-memory route says the same of that head
    with pytest.warns(ca.PrecisionWarning, match="eigenvalues of W_U"):
        (m2.W_U @ m2.head(1, 2).ov @ m2.W_E).eigenvalues()


def test_budget_too_small_is_refused(tmp_path) -> None:
    save_random_hf(tmp_path, "LlamaForCausalLM", "LlamaConfig", **COMMON)
    with pytest.raises(ca.TooLargeError, match="budget_bytes=1000 is smaller"):
        plan_full_ov(tmp_path, budget_bytes=1000)


def test_dask_cluster_of_two_workers_gives_the_same_results(tmp_path) -> None:
    distributed = pytest.importorskip("distributed")
    save_random_hf(tmp_path, "LlamaForCausalLM", "LlamaConfig", **COMMON)
    serial = stream_full_ov(tmp_path, budget_bytes=100_000)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        parallel = stream_full_ov(tmp_path, budget_bytes=100_000, client=client)
    np.testing.assert_allclose(parallel.singular_values, serial.singular_values, rtol=1e-12, atol=0)
    np.testing.assert_allclose(parallel.eigenvalues, serial.eigenvalues, rtol=1e-12, atol=0)


def test_corrupt_or_truncated_files_are_refused(tmp_path) -> None:
    save_random_hf(tmp_path, "LlamaForCausalLM", "LlamaConfig", **COMMON)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ca.LoadError, match="the file is truncated or corrupt"):
        plan_full_ov(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ca.LoadError, match="corrupt or truncated safetensors file: the header claims"):
        plan_full_ov(tmp_path)


@pytest.mark.parametrize("budget", [400_000, 800_000])
def test_streamed_composition_equals_in_memory_scores(tmp_path, budget: int) -> None:
    """Tiles of one-layer chunks (three tiles) and of two-layer chunks (a chunk with itself, then
    with the last layer) give the in-memory composition scores of the loaded, folded model; a head
    with a zero W_O keeps exact zeros through the tiles' zero floor."""
    from circuitalg.streaming import plan_composition, stream_composition

    hf, torch = save_random_hf(tmp_path, "LlamaForCausalLM", "LlamaConfig", **COMMON)
    with torch.no_grad():
        hf.model.layers[0].self_attn.o_proj.weight[:, 8:16] = 0.0  # head L0H1 writes nothing
    hf.save_pretrained(tmp_path)
    plan = plan_composition(tmp_path, budget_bytes=budget)
    assert plan.chunk_layers == budget // 400_000 and plan.peak_bytes <= budget
    assert plan.n_tiles == (3 if budget == 400_000 else 2)
    lines: list[str] = []
    res = stream_composition(tmp_path, budget_bytes=budget, log=lines.append)
    assert "FLOP" in lines[0] and len(lines) == 1 + plan.n_tiles
    m = ca.fold_layer_norm(ca.load(tmp_path))
    for kind in "qkv":
        want = ca.composition_scores(m, kind)
        np.testing.assert_allclose(res.scores[kind], want, rtol=1e-10, atol=1e-13)
        assert np.all(res.scores[kind][0, 1] == 0.0)  # the silent writer
    with pytest.raises(ca.TooLargeError, match="budget_bytes=1000 is smaller"):
        plan_composition(tmp_path, budget_bytes=1000)


def test_streamed_composition_on_a_dask_cluster_of_two_workers(tmp_path) -> None:
    pytest.importorskip("dask.distributed")
    from dask.distributed import Client, LocalCluster

    from circuitalg.streaming import stream_composition

    save_random_hf(tmp_path, "Qwen3ForCausalLM", "Qwen3Config", **COMMON)
    local = stream_composition(tmp_path, ("k", "v"), budget_bytes=400_000)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        remote = stream_composition(tmp_path, ("k", "v"), budget_bytes=400_000, client=client)
    m = ca.fold_layer_norm(ca.load(tmp_path))
    for kind in "kv":
        np.testing.assert_allclose(remote.scores[kind], local.scores[kind], rtol=0, atol=1e-12)
        np.testing.assert_allclose(local.scores[kind], ca.composition_scores(m, kind), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kept", ["lm_head.weight", "model.embed_tokens.weight"])
def test_streamed_full_ov_reads_a_tied_pair_under_either_name(tmp_path, kept: str) -> None:
    """A tied checkpoint that stores the shared matrix under one name only (``save_model`` keeps
    one name of a tied pair) streams to the same spectra as the in-memory model; an untied config
    missing ``lm_head`` is refused by name."""
    from safetensors.numpy import load_file, save_file

    save_random_hf(tmp_path, "Qwen2ForCausalLM", "Qwen2Config", **{**COMMON, "num_key_value_heads": 1},
                   tie_word_embeddings=True)
    sd = load_file(tmp_path / "model.safetensors")
    shared = sd.pop("model.embed_tokens.weight", None)
    sd.pop("lm_head.weight", None)
    sd[kept] = shared
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    res = stream_full_ov(tmp_path)
    sv, ev = _dense_reference(tmp_path)
    np.testing.assert_allclose(res.singular_values, sv, rtol=0, atol=1e-10 * sv.max())
    cfg = (tmp_path / "config.json").read_text().replace('"tie_word_embeddings": true', '"tie_word_embeddings": false')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(ca.LoadError, match="missing tensor"):
        stream_full_ov(tmp_path)


def test_streamed_composition_reads_any_layout_load_reads(tmp_path) -> None:
    """The same key tables and folding as ca.load: a GPT-2 checkpoint (LayerNorm: biases folded,
    reads centred) streams to its in-memory composition scores; full-OV spectra need a layout
    whose vocabulary can be read by rows, and other formats than safetensors are refused."""
    from circuitalg.streaming import stream_composition

    save_random_hf(tmp_path, "GPT2LMHeadModel", "GPT2Config", n_layer=3, n_head=4, n_embd=32, vocab_size=50,
                   n_positions=16)
    res = stream_composition(tmp_path, budget_bytes=400_000)
    assert res.plan.n_tiles == 3
    m = ca.load(tmp_path)
    for kind in "qkv":
        np.testing.assert_allclose(res.scores[kind], ca.composition_scores(m, kind), rtol=1e-12, atol=1e-15)
    with pytest.raises(ca.ConfigError, match="Llama-layout"):
        plan_full_ov(tmp_path)
    ca.save(m, tmp_path / "m.npz")
    with pytest.raises(ca.LoadError, match="reads safetensors checkpoints"):
        stream_composition(tmp_path / "m.npz")


@pytest.mark.parametrize("family", ["Gemma2", "Phi3"])
def test_streamed_full_ov_of_gemma_and_phi3(tmp_path, family: str) -> None:
    """Gemma 2 (embeddings scaled by sqrt(d_model), the tied W_U not; ``1 + w`` norms, sandwich
    norms) and Phi-3 (fused q/k/v) stream to the dense full-OV spectra of the loaded model."""
    config = {**COMMON, "pad_token_id": 0}
    if family == "Phi3":
        config.pop("head_dim")
    save_random_hf(tmp_path, f"{family}ForCausalLM", f"{family}Config", **config)
    res = stream_full_ov(tmp_path, budget_bytes=100_000)
    sv, ev = _dense_reference(tmp_path)
    np.testing.assert_allclose(res.singular_values, sv, rtol=0, atol=1e-10 * sv.max())
    np.testing.assert_allclose(res.copying, ca.head_table(ca.load(tmp_path)).copying, atol=1e-10)
