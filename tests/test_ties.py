"""Tied unembeddings: the fitted form, its deviation bound, the quantities derived through it,
and the negative controls (untied, edited and re-centred weights are not taken as tied)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from model_helpers import random_model

import circuitalg as ca
from circuitalg.linalg.accuracy import error_bound, gram_penalty, magnitude
from circuitalg.linalg.factors import leaf_gram, pair_product, tied_form
from circuitalg.linalg.ties import TIE_RTOL, fit_tied_form, screen_tied_form
from circuitalg.maps.nodes import label

V, D = 9000, 48


def _tied_arrays(dtype, centred: bool, seed: int = 0):
    """``E`` (d x V) and ``U = fold(Eᵀ)`` as a loader makes it: scaled by ``g``, rows centred,
    computed in ``dtype`` from float32 data (a float32 checkpoint)."""
    rng = np.random.default_rng(seed)
    raw = (rng.standard_normal((V, D)) * 0.1 + 0.03 * rng.standard_normal(D)).astype(np.float32)
    g = (1 + 0.2 * rng.standard_normal(D)).astype(np.float32)
    E = np.ascontiguousarray(raw.T.astype(dtype))
    U = raw.astype(dtype) * g.astype(dtype)
    if centred:
        U -= U.mean(axis=1, keepdims=True)
    return E, U, g


def _fit(U, E):
    start = screen_tied_form(U, E)
    if start is None:
        return None
    G = E.astype(np.float64) @ E.T.astype(np.float64)
    return fit_tied_form(U, E, G, 0.0, start)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("centred", [True, False])
def test_fit_recovers_the_gains_and_bounds_the_deviation(dtype, centred) -> None:
    E, U, g = _tied_arrays(dtype, centred)
    form = _fit(U, E)
    assert form is not None and form.centred == centred
    u = np.finfo(dtype).eps / 2
    np.testing.assert_allclose(form.gains, g.astype(np.float64), rtol=1e-13 if dtype == np.float64 else 1e-6)
    # the bound is an upper bound on the deviation computed independently (float64, dense) ...
    exact = np.linalg.norm(U.astype(np.float64) - form.times_right(E.T))
    assert exact <= form.deviation
    # ... and the accepted deviation is rounding of U's dtype
    assert form.deviation <= TIE_RTOL * u * np.linalg.norm(U.astype(np.float64))
    true_norm = np.linalg.norm(U.astype(np.float64))
    assert true_norm * (1 - 1e-12) <= form.norm_fro <= true_norm * (1 + 1e-3)
    M = form.right()
    np.testing.assert_allclose(E.astype(np.float64).T @ M, form.times_right(E.T), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_untied_edited_and_recentred_weights_are_not_tied(dtype) -> None:
    E, U, _ = _tied_arrays(dtype, True)
    rng = np.random.default_rng(5)
    assert screen_tied_form(rng.standard_normal(U.shape).astype(dtype), E) is None  # independent
    assert screen_tied_form(U[:, ::-1].copy(), E) is None  # permuted d_model columns
    # one token's unembedding edited, off the screen's sample of rows: only the full pass sees it
    edited = U.copy()
    row = 1 + np.flatnonzero(~np.isin(np.arange(1, V), np.linspace(0, V - 1, 256).astype(int)))[0]
    edited[row] += (1e-3 if dtype == np.float32 else 1e-9) * np.linalg.norm(U)
    assert screen_tied_form(edited, E) is not None
    assert _fit(edited, E) is None
    # W_E centred over d_model after the fold (center_writing_weights): not W_Eᵀ diag(g) P any more
    Ec = E - E.mean(axis=0, keepdims=True)
    assert _fit(U, Ec) is None
    assert screen_tied_form(U.T.copy(), E.T.copy()) is None  # shapes that cannot be a tie


def _leaves(E, U, tie: bool = True):
    vocab, resid = ca.Space("vocab", V), ca.Space("resid", D)
    W_E = ca.Dense(E, vocab, resid, "W_E")
    W_U = ca.Dense(U, resid, vocab, "W_U")
    if tie:
        W_U = ca.declare_tied(W_U, W_E)
    return W_E, W_U


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_quantities_derived_through_the_tie_match_the_stored_arrays(dtype) -> None:
    E, U, _ = _tied_arrays(dtype, True)
    W_E, W_U = _leaves(E, U)
    assert tied_form(W_U) is not None
    E64, U64 = E.astype(np.float64), U.astype(np.float64)
    rel = 1e-13 if dtype == np.float64 else 1e-6
    # W_E W_U = G M, and (W_U)ᵀ (W_E)ᵀ = Mᵀ G
    ref = E64 @ U64
    np.testing.assert_allclose(pair_product(W_E, W_U), ref, atol=rel * np.abs(ref).max())
    np.testing.assert_allclose(pair_product(W_U.T, W_E.T), ref.T, atol=rel * np.abs(ref).max())
    # W_Uᵀ W_U: within its stated error bound
    gram = leaf_gram(W_U, "cols")
    assert np.linalg.norm(gram.G - U64.T @ U64, 2) <= gram.err2
    # the norm bound: never below ‖W_U‖₂, and tight
    true = np.linalg.norm(U64, 2)
    assert true <= magnitude(W_U) <= 1.1 * true


def test_full_ov_spectra_through_the_tie_match_dense_and_the_untied_route() -> None:
    E, U, _ = _tied_arrays(np.float64, True)
    rng = np.random.default_rng(3)
    hs = ca.Space("h", 8)
    resid = ca.Space("resid", D)
    W_V = ca.Dense(rng.standard_normal((8, D)) / np.sqrt(D), resid, hs, "W_V")
    W_O = ca.Dense(rng.standard_normal((D, 8)) / np.sqrt(D), hs, resid, "W_O")
    tied_E, tied_U = _leaves(E, U)
    plain_E, plain_U = _leaves(E, U, tie=False)
    tied_ov, plain_ov = tied_U @ W_O @ W_V @ tied_E, plain_U @ W_O @ W_V @ plain_E
    core = W_V.array @ E @ U @ W_O.array
    ref_eig = np.linalg.eigvals(core)
    ref_sv = np.linalg.svd(np.linalg.qr(U @ W_O.array, mode="r") @ np.linalg.qr((W_V.array @ E).T, mode="r").T,
                           compute_uv=False)
    for ov in (tied_ov, plain_ov):
        lam = ov.eigenvalues()
        np.testing.assert_allclose(np.sort_complex(lam[:8]), np.sort_complex(ref_eig), rtol=1e-10)
        np.testing.assert_allclose(ov.singular_values()[:8], ref_sv, rtol=1e-10)
    assert tied_form(tied_U) is not None and tied_form(plain_U) is None
    # a structural zero stays exactly zero through the tie
    W_O0 = ca.Dense(np.zeros((D, 8)), hs, resid, "W_O0")
    assert not np.any((tied_U @ W_O0 @ W_V @ tied_E).eigenvalues())


def test_a_leaf_and_its_own_transpose_share_one_gram_matrix() -> None:
    E, _, _ = _tied_arrays(np.float32, False)
    W_E, _ = _leaves(E, E.T.copy(), tie=False)
    P = pair_product(W_E, W_E.T)
    ref = E.astype(np.float64) @ E.T.astype(np.float64)
    assert P.dtype == np.float32
    np.testing.assert_allclose(P, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert leaf_gram(W_E, "rows").G is leaf_gram(W_E, "rows").G  # kept: computed once


def test_declare_tied_refuses_what_cannot_be_a_tie() -> None:
    a, b = ca.Space("a", 3), ca.Space("b", 4)
    E = ca.Dense(np.ones((4, 3)), a, b, "E")
    with pytest.raises(ca.InvalidArgumentError, match="cannot be the transpose"):
        ca.declare_tied(E, E)
    with pytest.raises(ca.InvalidArgumentError, match="two Dense leaves"):
        ca.declare_tied(E.T, E)


@pytest.mark.parametrize("normalization", ["LN", "RMS"])
def test_a_loaded_tied_model_is_recognised_and_an_untied_one_is_not(normalization) -> None:
    m = random_model(normalization=normalization, d_vocab=40, d_model=16, seed=4)
    p = dict(m.params)
    p["W_U"] = np.ascontiguousarray(p["W_E"].T)
    tied = ca.fold_layer_norm(m.with_params(p))
    untied = ca.fold_layer_norm(m)
    form = tied_form(tied.W_U)
    assert form is not None and form.centred == (normalization == "LN")
    assert tied_form(untied.W_U) is None
    if normalization == "LN":  # with W_E centred after folding, the stored W_U is no longer W_Eᵀ M
        assert tied_form(ca.center_writing_weights(tied).W_U) is None
    h = tied.head(1, 2)
    ov = tied.W_U @ h.ov @ tied.W_E
    dense = tied.W_U.array @ h.W_O.array @ h.W_V.array @ tied.W_E.array
    np.testing.assert_allclose(np.sort_complex(ov.eigenvalues()[:4]),
                               np.sort_complex(np.linalg.eigvals(h.W_V.array @ tied.W_E.array @ tied.W_U.array @ h.W_O.array)),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ov.singular_values()[:4], np.linalg.svd(dense, compute_uv=False)[:4], rtol=1e-10)


def test_label_prints_what_the_symbol_prints() -> None:
    a, b = ca.Space("a", 3), ca.Space("b", 4)
    A = ca.Dense(np.ones((4, 3)), a, b, "W_V^{1.2}")
    B = ca.Dense(np.ones((4, 4)), b, b, "W_O")
    D_ = ca.Diagonal(np.ones(4), b, "D")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for m in (A, A.T, B @ A, A.T @ B @ B @ A, (B + B) @ A, 2 * A, A.T @ (D_ @ A), ca.Kron([B, B])):
            assert label(m) == str(m.symbol)


def test_accuracy_carries_the_ties_deviation() -> None:
    """The error bound of a map whose products come through a tie grows by the tie's relative
    deviation times the map's magnitude (0 for the untied route), and that deviation is of the
    order of float32 rounding."""
    E, U, _ = _tied_arrays(np.float32, True)
    rng = np.random.default_rng(3)
    hs, resid = ca.Space("h", 8), ca.Space("resid", D)
    W_V = ca.Dense(rng.standard_normal((8, D)).astype(np.float32), resid, hs, "W_V")
    W_O = ca.Dense(rng.standard_normal((D, 8)).astype(np.float32), hs, resid, "W_O")
    (tE, tU), (pE, pU) = _leaves(E, U), _leaves(E, U, tie=False)
    tied_ov, plain_ov = tU @ W_O @ W_V @ tE, pU @ W_O @ W_V @ pE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.PrecisionWarning)
        tied_ov.eigenvalues(), plain_ov.eigenvalues()
    rel = tied_form(tU).relative_deviation_2
    assert 0 < rel < 16 * np.finfo(np.float32).eps * np.sqrt(D)
    # the rounding term of the tree (4 leaves, largest dimension V; each map's own Gram-factor
    # penalty, the tied W_U's factor coming from W_E's Gram matrix), plus the tie's deviation
    per_tied, per_plain = ca.accuracy(tied_ov) / magnitude(tied_ov), ca.accuracy(plain_ov) / magnitude(plain_ov)
    rounding = lambda m: error_bound(4, V, 1.0, np.float32, gram_penalty(m))  # noqa: E731
    assert per_tied - rounding(tied_ov) == pytest.approx(rel, rel=1e-6)
    assert per_plain == pytest.approx(rounding(plain_ov), rel=1e-12)
    assert gram_penalty(tied_ov) == pytest.approx(gram_penalty(plain_ov), rel=1e-4)
    assert magnitude(tied_ov) == pytest.approx(magnitude(plain_ov), rel=0.05)


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_checkpoints_with_tied_embeddings_load_tied(tmp_path, family, dtype) -> None:
    """Hugging Face checkpoints that tie lm_head to wte (GPT-2: LayerNorm, so the folded W_U is
    centred; Qwen2 with tie_word_embeddings: RMSNorm, only scaled) are recognised after loading and
    folding, in float64 and float32, with W_E kept in the checkpoint's layout; an untied Qwen2 is not.
    The full OV circuit's eigenvalues through the tie match dense numpy on the stored arrays."""
    from model_helpers import save_random_hf

    if family == "gpt2":
        save_random_hf(tmp_path, "GPT2LMHeadModel", "GPT2Config", n_layer=2, n_head=2, n_embd=16, vocab_size=97,
                       n_positions=12)
    else:
        save_random_hf(tmp_path, "Qwen2ForCausalLM", "Qwen2Config", hidden_size=16, intermediate_size=24,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, vocab_size=97,
                       tie_word_embeddings=True)
    m = ca.load(tmp_path, dtype=dtype, fold=True)
    assert m.W_E.array.flags.f_contiguous  # the transpose of wte's rows, as the checkpoint stores them
    tie = tied_form(m.W_U)
    assert tie is not None and tie.centred == (family == "gpt2")
    h = m.head(1, 0)
    lam = (m.W_U @ h.ov @ m.W_E).eigenvalues()
    A = {k: x.array.astype(np.float64) for k, x in (("E", m.W_E), ("U", m.W_U), ("V", h.W_V), ("O", h.W_O))}
    ref = np.linalg.eigvals(A["V"] @ A["E"] @ A["U"] @ A["O"])
    _same = np.sort_complex(lam[: len(ref)].astype(complex)), np.sort_complex(ref)
    np.testing.assert_allclose(*_same, rtol=1e-10 if dtype == np.float64 else 1e-4, atol=1e-12)


def test_an_untied_checkpoint_is_not_tied(tmp_path) -> None:
    from model_helpers import save_random_hf

    save_random_hf(tmp_path, "Qwen2ForCausalLM", "Qwen2Config", hidden_size=16, intermediate_size=24,
                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, vocab_size=97,
                   tie_word_embeddings=False)
    assert tied_form(ca.load(tmp_path, fold=True).W_U) is None


@pytest.mark.parametrize("centred", [True, False])
def test_sample_gains_solve_the_sample_normal_equations(centred) -> None:
    """The screen's gains (Woodbury through the sample's s x s matrix) are the solution of the
    dense d x d normal equations J g = f*(U) (J = diag(AᵀA) - AᵀA/d centred, diag(AᵀA) otherwise)."""
    from circuitalg.linalg.ties import _adjoint, _sample_gains
    from circuitalg.runtime import SERIAL

    E, U, _ = _tied_arrays(np.float64, centred)
    rows = np.linspace(0, V - 1, 40).astype(int)  # fewer rows than d: J's low-rank part is exact
    A, Us = E.T[rows], U[rows]
    rhs = _adjoint(Us, A, centred)
    G = A.T @ A
    J = np.diag(np.diag(G)) - (G / D if centred else 0)
    np.testing.assert_allclose(_sample_gains(A, rhs, centred, SERIAL), np.linalg.solve(J, rhs), rtol=1e-9)
    assert _sample_gains(np.zeros_like(A), rhs, centred, SERIAL) is None  # a singular J: no candidate
