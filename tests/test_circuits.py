"""Composition scores, head diagnostics, top tokens, the virtual-weight graph and circuit search,
each checked against dense numpy on small models (and TransformerLens where installed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from model_helpers import random_model

import circuitalg as ca


def dense_scores(m: ca.Transformer, kind: str) -> np.ndarray:
    L, H = m.config.n_layers, m.config.n_heads
    out = np.zeros((L, H, L, H))
    for h1 in m.heads():
        for h2 in m.heads():
            if h1.layer < h2.layer:
                OV1 = h1.W_O.array @ h1.W_V.array
                QK2 = h2.W_Q.array.T @ h2.W_K.array
                R = {"q": QK2.T, "k": QK2, "v": h2.W_O.array @ h2.W_V.array}[kind]
                out[h1.layer, h1.index, h2.layer, h2.index] = (
                    np.linalg.norm(R @ OV1) / np.linalg.norm(R) / np.linalg.norm(OV1)
                )
    return out


# --- composition scores ------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_composition_scores_match_dense(seed: int, kind: str) -> None:
    m = random_model(n_layers=3, n_heads=2, d_model=10 + seed, d_head=3, d_vocab=7, n_ctx=5, seed=seed)
    s = ca.composition_scores(m, kind)
    assert s.shape == (3, 2, 3, 2)
    np.testing.assert_allclose(s, dense_scores(m, kind), rtol=1e-10, atol=1e-12)
    assert np.all(s[:, :, 0, :] == 0) and np.all(s[2] == 0)  # only earlier writers


def test_composition_scores_wide_heads_and_upper_case() -> None:
    # n_heads * d_head > d_model and d_model not a multiple of the block size
    m = random_model(n_layers=2, n_heads=4, d_model=150, d_head=60, d_vocab=5, n_ctx=4, seed=7)
    np.testing.assert_allclose(ca.composition_scores(m, "K"), dense_scores(m, "k"), rtol=1e-9, atol=1e-12)


def test_zero_head_scores_zero_not_nan() -> None:
    m = random_model(n_layers=2, n_heads=2, d_model=8, d_head=2, seed=1)
    p = dict(m.params)
    p["blocks.0.attn.W_O"] = np.zeros_like(p["blocks.0.attn.W_O"])
    m0 = m.with_params(p)
    for kind in "qkv":
        s = ca.composition_scores(m0, kind)
        assert np.all(np.isfinite(s)) and np.all(s[0] == 0)


def test_composition_bad_input() -> None:
    m = random_model()
    with pytest.raises(ca.InvalidArgumentError, match="'q', 'k' or 'v'"):
        ca.composition_scores(m, "x")
    with pytest.raises(ca.InvalidArgumentError, match="ca.Transformer"):
        ca.composition_scores(np.eye(3), "k")
    with pytest.raises(ca.InvalidArgumentError, match=r"^n_samples=1; pass an integer >= 2\.$"):
        ca.composition_baseline(m, n_samples=1)
    with pytest.raises(ca.InvalidArgumentError, match=r"^k=True; pass an integer from 1 to 4 \(d_head\)\.$"):
        ca.head_table(m, k=True)
    with pytest.raises(ca.InvalidArgumentError, match=r"^max_heads=-1; pass an integer >= 0\.$"):
        ca.top_circuits(m, max_heads=-1)
    with pytest.raises(ca.InvalidArgumentError, match=r"^seq_len=2\.5; pass an integer >= 1\.$"):
        ca.repeated_random_tokens(m, 2.5)


def test_baseline_is_about_inverse_sqrt_d_model_and_deterministic() -> None:
    m = random_model(n_layers=2, n_heads=4, d_model=64, d_head=8, seed=0)
    b = ca.composition_baseline(m, "k", n_samples=500, seed=3)
    assert abs(b.mean - 1 / np.sqrt(64)) < 0.2 / np.sqrt(64)
    assert 0 < b.std < b.mean and b.quantile_99 > b.mean and b.n_samples >= 500
    assert ca.composition_baseline(m, "k", n_samples=500, seed=3) == b
    assert ca.composition_baseline(m, "k", n_samples=500, seed=4) != b


def test_composition_scores_equal_transformer_lens() -> None:
    torch = pytest.importorskip("torch")
    tl = pytest.importorskip("transformer_lens")
    if not hasattr(tl, "HookedTransformer"):
        pytest.skip("this transformer_lens has no HookedTransformer")
    torch.manual_seed(0)
    cfg = tl.HookedTransformerConfig(n_layers=3, n_heads=4, d_model=48, d_head=12, d_vocab=20, n_ctx=8,
                                     attn_only=True, normalization_type=None, act_fn="gelu")
    hooked = tl.HookedTransformer(cfg)
    m = ca.Transformer.from_hooked_transformer(hooked)
    with torch.no_grad():
        for kind in "QKV":
            ref = hooked.all_composition_scores(kind).double().numpy()
            np.testing.assert_allclose(ca.composition_scores(m, kind), ref, atol=1e-5)


# --- head diagnostics ------------------------------------------------------------------
def test_head_table_matches_dense() -> None:
    m = random_model(n_layers=2, n_heads=2, d_model=10, d_head=4, d_vocab=9, n_ctx=8, seed=2)
    tokens = ca.repeated_random_tokens(m, 4, 3, seed=1)
    t = ca.head_table(m, tokens, k=3)
    for head in m.heads():
        i = head.key
        OV = head.W_O.array @ head.W_V.array
        full = m.W_U.array @ OV @ m.W_E.array
        lam = np.linalg.eigvals(full)
        assert t.copying[i] == pytest.approx(lam.real.sum() / np.abs(lam).sum(), abs=1e-9)
        lam = np.linalg.eigvals(OV)
        assert t.copying_ov[i] == pytest.approx(lam.real.sum() / np.abs(lam).sum(), abs=1e-9)
        s = np.linalg.svd(OV, compute_uv=False)
        np.testing.assert_allclose(t.ov_singular_values[i], s[:3], rtol=1e-9)
        s = s[s > 1e-12 * s[0]]
        p = s / s.sum()
        assert t.ov_effective_rank[i] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
        P = m.W_pos.array
        S = (head.W_Q.array @ P).T @ (head.W_K.array @ P) / m.config.attn_scale
        S[np.triu_indices(8, 1)] = -np.inf
        A = np.exp(S - S.max(1, keepdims=True))
        A /= A.sum(1, keepdims=True)
        assert t.positional_prev_token[i] == pytest.approx(np.mean([A[q, q - 1] for q in range(1, 8)]))
        ind, prev = [], []
        for row in tokens:
            pat = m.run(row)[1].pattern[i]
            ind.append(np.mean([pat[q, q - 3] for q in range(4, 8)]))
            prev.append(np.mean([pat[q, q - 1] for q in range(1, 8)]))
        assert t.induction[i] == pytest.approx(np.mean(ind))
        assert t.prev_token[i] == pytest.approx(np.mean(prev))
    recs = t.records()
    assert len(recs) == 4 and recs[1]["head"] == "L0H1" and "induction" in recs[1]
    assert t.top("copying", 1)[0][1] == pytest.approx(t.copying.max())


def test_head_table_bad_tokens() -> None:
    m = random_model(n_ctx=10)
    with pytest.raises(ca.InvalidArgumentError, match="repeat"):
        ca.head_table(m, np.array([[1, 2, 3, 4]]))
    with pytest.raises(ca.ShapeError, match="repeated sequences"):
        ca.head_table(m, np.array([[1, 2, 3]]))
    with pytest.raises(ca.InvalidArgumentError, match="n_ctx"):
        ca.repeated_random_tokens(m, 6)
    with pytest.raises(ca.InvalidArgumentError, match="field"):
        ca.head_table(m).top("nope")


@pytest.mark.parametrize("by", ["value", "abs"])
@pytest.mark.parametrize("max_bytes", [None, 200])
def test_top_tokens_match_dense(by: str, max_bytes: int | None) -> None:
    m = random_model(n_layers=1, n_heads=2, d_model=12, d_head=3, d_vocab=40, seed=5)
    head = m.head(0, 1)
    for circuit in (m.W_U @ head.ov @ m.W_E, m.W_E.T @ head.qk @ m.W_E):
        dense = ca.to_dense(circuit)
        key = np.abs(dense) if by == "abs" else dense
        order = np.argsort(-key, axis=None)[:7]
        got = ca.top_tokens(circuit, 7, by=by, max_bytes=max_bytes)
        assert [(e.row, e.col) for e in got] == [tuple(np.unravel_index(o, dense.shape)) for o in order]
        np.testing.assert_allclose([e.value for e in got], dense.flat[order], rtol=1e-9)


@pytest.mark.parametrize("by", ["value", "abs"])
def test_top_tokens_rank_beyond_float32_resolution(by: str) -> None:
    """Entries that differ by 1e-10 relative (below float32's resolution, so the float32 screen
    cannot order them) still come out in the float64 order of the dense matrix; a zero map
    (every entry tied) returns zeros in (row, col) order."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(300), rng.standard_normal(200)
    L = ca.Dense(np.stack([np.ones(300), 1e-10 * a], axis=1), ca.Space("k", 2), ca.Space("out", 300))
    V = ca.Dense(np.stack([-np.ones(200) if by == "abs" else np.ones(200), b]), ca.Space("in", 200), ca.Space("k", 2))
    circuit = L @ V
    dense = ca.to_dense(circuit)
    key = np.abs(dense) if by == "abs" else dense
    order = np.lexsort((np.tile(np.arange(200), 300), np.repeat(np.arange(300), 200), -key.ravel()))[:25]
    got = ca.top_tokens(circuit, 25, by=by, max_bytes=4000)
    assert [(e.row, e.col) for e in got] == [tuple(np.unravel_index(o, dense.shape)) for o in order]
    zero = ca.Dense(np.zeros((400, 4)), ca.Space("k", 4), ca.Space("out", 400)) @ ca.Dense(
        np.zeros((4, 400)), ca.Space("in", 400), ca.Space("k", 4))  # 160,000 ties: the float64 fallback
    got = ca.top_tokens(zero, 5)
    assert [(e.row, e.col, e.value) for e in got] == [(0, j, 0.0) for j in range(5)]


def test_top_tokens_block_fallback_keeps_only_entries_that_can_enter() -> None:
    """A map of near-equal entries (1 + 1e-9 noise): every entry of a screened block lies within the
    float32 screen's error of the k-th value, so whole blocks are evaluated in float64 and only their
    entries at or above the running k-th value are kept; the result is still the dense ranking."""
    rng = np.random.default_rng(4)
    n = 3000
    L = ca.Dense(np.stack([np.ones(n), 1e-9 * rng.standard_normal(n)], axis=1), ca.Space("k", 2), ca.Space("out", n))
    V = ca.Dense(np.stack([np.ones(n), rng.standard_normal(n)]), ca.Space("in", n), ca.Space("k", 2))
    circuit = L @ V
    dense = ca.to_dense(circuit)
    top = np.argpartition(-dense, 40, axis=None)[:40]
    order = top[np.lexsort((top, -dense.flat[top]))][:12]
    got = ca.top_tokens(circuit, 12)
    assert [(e.row, e.col) for e in got] == [tuple(np.unravel_index(o, dense.shape)) for o in order]
    np.testing.assert_allclose([e.value for e in got], dense.flat[order], rtol=1e-15)


@pytest.mark.parametrize("by", ["value", "abs"])
def test_top_tokens_full_rank_float32_check_keeps_entries_within_its_error(by: str) -> None:
    """Entries that pass the screen are first evaluated at full rank in float32; entries within
    that evaluation's error of the k-th value must still reach float64. Planted entries 3 + 1e-10 x
    (all equal in float32) sit in rows scanned after the top k is already near 3, a few rows per
    block: dropping those whose float32 value is below the running k-th value loses most of them."""
    rng = np.random.default_rng(7)
    n_rows, n_cols, r = 200, 2000, 8
    planted_rows, planted_cols = np.arange(150, 170), np.arange(1000, 1020)
    A = np.zeros((n_rows, r))
    B = np.zeros((r, n_cols))
    A[:, 1:] = 0.15 * rng.standard_normal((n_rows, r - 1))  # entries of std 0.4: rows of norm ~18, above 13.4
    B[1:] = rng.standard_normal((r - 1, n_cols))
    A[planted_rows, 0] = B[0, planted_cols] = np.sqrt(3.0)
    A[planted_rows, 1:] = 1e-5 * rng.standard_normal((20, r - 1))
    B[1:, planted_cols] = 1e-5 * rng.standard_normal((r - 1, 20))
    if by == "abs":
        B[:, planted_cols] *= -1
    k_space = ca.Space("k", r)
    circuit = ca.Dense(A, k_space, ca.Space("out", n_rows)) @ ca.Dense(B, ca.Space("in", n_cols), k_space)
    dense = ca.to_dense(circuit)
    key = np.abs(dense) if by == "abs" else dense
    assert np.sort(key[np.ix_(planted_rows, planted_cols)].ravel())[-1] < 3 + 1e-8  # beyond float32's resolution
    assert key.max() == key[np.ix_(planted_rows, planted_cols)].max()
    cols, rows = np.tile(np.arange(n_cols), n_rows), np.repeat(np.arange(n_rows), n_cols)
    order = np.lexsort((cols, rows, -key.ravel()))[:30]
    got = ca.top_tokens(circuit, 30, by=by, max_bytes=24_000)  # one row first, then 3-row screened blocks
    assert [(e.row, e.col) for e in got] == [tuple(np.unravel_index(o, dense.shape)) for o in order]


def test_float32_thresholds_of_the_screen_round_down() -> None:
    """The screen compares float32 values with a float64 threshold: rounded to nearest it could
    rise above the threshold and drop entries just over it; the float32 used is the largest at
    most the threshold."""
    from circuitalg.linalg.topk import _float32_below

    rng = np.random.default_rng(3)
    xs = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-30, 30, 2000), [0.0, 3.0, -1.5]])
    rounded_up = 0
    for x in xs:
        y = _float32_below(float(x))
        assert y.dtype == np.float32 and float(y) <= x < float(np.nextafter(y, np.float32(np.inf)))
        rounded_up += float(np.float32(x)) > x
    assert rounded_up > 500  # rounding to nearest goes up about half the time: the case is exercised


def _localised_svd(n: int, r: int, i0: int, j0: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``U S`` and ``Vᵀ`` of a rank-``r`` map with singular values ``0.9^k`` whose weakest singular
    vectors are ``e_i0`` and ``e_j0``: its largest entry, ``(i0, j0)``, lies wholly in the weakest
    direction."""
    rng = np.random.default_rng(seed)

    def basis(zero: int) -> np.ndarray:
        a = rng.standard_normal((n, r - 1))
        a[zero] = 0.0
        q = np.linalg.qr(a)[0]
        e = np.zeros((n, 1))
        e[zero] = 1.0
        return np.hstack([q, e])

    s = 0.9 ** np.arange(r)
    return basis(i0) * s, basis(j0).T


@pytest.mark.parametrize("by", ["value", "abs"])
@pytest.mark.parametrize("seed", range(3))
def test_top_tokens_prefix_screen_is_exact(by: str, seed: int, monkeypatch) -> None:
    """The screened scan (a prefix of the singular directions plus a Cauchy-Schwarz bound on the
    rest) returns exactly the dense ranking, also causally masked and windowed. The largest entry
    lies wholly in the weakest singular direction and the prefix chosen is shorter than the rank,
    so only the tail bound keeps it in (a screen without it misses the entry)."""
    from circuitalg.linalg import topk

    chosen = []
    real = topk._screen_prefix
    monkeypatch.setattr(topk, "_screen_prefix", lambda *a: chosen.append(real(*a)) or chosen[-1])
    r, n, i0, j0 = 32, 700, 400 + seed, 380
    pos = ca.Space("pos", n)
    us, vt = _localised_svd(n, r, i0, j0, seed)
    circuit = ca.Dense(us, ca.Space("k", r), pos) @ ca.Dense(vt, pos, ca.Space("k", r))
    dense = ca.to_dense(circuit)
    for causal, window in ((False, None), (True, None), (True, 50)):
        key = np.abs(dense) if by == "abs" else dense.copy()
        if causal:
            back = np.arange(n)[:, None] - np.arange(n)[None, :]
            key[(back < 0) | ((back >= window) if window else False)] = -np.inf
        order = np.argsort(-key, axis=None, kind="stable")[:15]
        assert order[0] == i0 * n + j0
        got = ca.top_tokens(circuit, 15, by=by, roles=("query", "key"), causal=causal, window=window,
                            max_bytes=40_000)
        assert [(e.row, e.col) for e in got] == [tuple(np.unravel_index(o, dense.shape)) for o in order]
        np.testing.assert_allclose([e.value for e in got], dense.flat[order], rtol=1e-12, atol=1e-15)
    assert len(chosen) == 3 and all(p < r for p in chosen)


def test_top_tokens_vocab_strings() -> None:
    m = ca.zoo.planted_induction()
    got = ca.top_tokens(m.W_U @ m.head(1, 2).ov @ m.W_E, 3, vocab=m)
    assert all(e.row == e.col and e.row_token == f"t{e.row}" for e in got)
    assert all(e.value == pytest.approx(2.0) for e in got)
    with pytest.raises(ca.InvalidArgumentError, match="k="):
        ca.top_tokens(m.W_E, 0)


def test_composition_baselines_share_one_draw_and_equal_the_single_kind_baselines() -> None:
    m = random_model(n_layers=2, n_heads=2, d_model=16, d_head=4, seed=7)
    both = ca.composition_baselines(m, ("v", "k", "K"), n_samples=300, seed=3)
    assert list(both) == ["v", "k"]
    for kind, b in both.items():
        assert b == ca.composition_baseline(m, kind, n_samples=300, seed=3)
    assert both["v"] != both["k"]
    with pytest.raises(ca.InvalidArgumentError, match="composition kind"):
        ca.composition_baselines(m, ["x"])


# --- the graph -----------------------------------------------------------------------
def test_graph_edges_match_dense_and_composition_scores(tmp_path) -> None:
    m = random_model(n_layers=2, n_heads=2, d_model=8, d_head=3, d_vocab=7, n_ctx=5, d_mlp=6,
                     normalization="LN", seed=3)
    g = ca.CircuitGraph(m)
    nodes = set(g.nx.nodes)
    assert nodes == {"embed", "pos", "L0H0", "L0H1", "L1H0", "L1H1", "mlp0", "mlp1", "unembed"}
    # embed and pos feed all 15 reads; L0 heads feed mlp0, 6 L1 reads, mlp1, unembed; L1 heads
    # feed mlp1 and unembed; mlp0 feeds 6 L1 reads, mlp1, unembed; mlp1 feeds unembed
    assert g.nx.number_of_edges() == 2 * 15 + 2 * (1 + 6 + 1 + 1) + 2 * (1 + 1) + (6 + 1 + 1) + 1
    scores = {k: ca.composition_scores(m, k) for k in "qkv"}
    for u, v, kind, d in g.nx.edges(keys=True, data=True):
        W = ca.to_dense(d["weight"])
        assert d["norm"] == pytest.approx(np.linalg.norm(W), rel=1e-9, abs=1e-12)
        if u.startswith("L") and v.startswith("L"):
            (l1, h1), (l2, h2) = (tuple(int(x) for x in n[1:].split("H")) for n in (u, v))
            assert d["score"] == pytest.approx(scores[kind][l1, h1, l2, h2], rel=1e-9)
            assert d["baseline"] == g.baselines[kind].mean
        else:
            assert np.isnan(d["baseline"])
    assert not g.nx.has_edge("L1H0", "L0H0") and not g.nx.has_edge("mlp0", "L0H1")
    assert g.nx.has_edge("L0H0", "mlp0") and g.nx.has_edge("mlp0", "L1H1")


def test_graph_threshold_subgraph_and_round_trip(tmp_path) -> None:
    m = random_model(n_layers=2, n_heads=2, d_model=8, d_head=3, seed=4)
    g = ca.CircuitGraph(m)
    t = g.threshold(above_baseline=1.0, kinds="k")
    assert all(d["kind"] == "k" and d["score"] >= d["baseline"] for *_, d in t.nx.edges(data=True))
    assert set(t.nx.nodes) == set(g.nx.nodes)
    s = g.subgraph(["embed", "L0H0", "L1H1"])
    assert set(s.nx.nodes) == {"embed", "L0H0", "L1H1"} and s.nx.number_of_edges() == 3 + 3 + 3
    for suffix in (".graphml", ".json"):
        path = tmp_path / f"g{suffix}"
        getattr(g, "to_graphml" if suffix == ".graphml" else "to_json")(path)
        back = ca.CircuitGraph.read(path, model=m)
        e1, e2 = g.edges(), back.edges()
        assert len(e1) == len(e2)
        for a, b in zip(e1, e2):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key] == b[key] or (np.isnan(a[key]) and np.isnan(b[key]))
        assert dict(g.nx.nodes(data=True)) == dict(back.nx.nodes(data=True))
        d = back.edge("L0H1", "L1H0", "v")
        assert ca.norm(d["weight"]) == pytest.approx(d["norm"])
    bad = tmp_path / "bad.graphml"
    bad.write_text("<graphml><not closed")
    with pytest.raises(ca.LoadError, match="bad.graphml"):
        ca.CircuitGraph.read(bad)
    with pytest.raises(ca.InvalidArgumentError, match="edge kinds"):
        g.edges("z")
    with pytest.raises(ca.InvalidArgumentError, match="not in this graph"):
        g.subgraph(["L9H9"])


# --- circuit search -----------------------------------------------------------------------
def key(c: ca.Circuit) -> tuple:
    """A circuit as brute_force names it: (side, source, heads, sink head, other source)."""
    other = None if c.sink.other is None else c.sink.other.name
    return (c.sink.side, c.source.name, c.heads, c.sink.head, other)


def brute_force(m: ca.Transformer, max_heads: int, sinks: tuple[str, ...]) -> list[tuple]:
    """Every circuit, scored densely: (score, kind, source, heads, sink, other_source)."""
    L, H = m.config.n_layers, m.config.n_heads
    src = {"embed": m.W_E.array, "pos": m.W_pos.array}

    def OV(l: int, h: int) -> np.ndarray:
        return m.head(l, h).W_O.array @ m.head(l, h).W_V.array

    def chains(limit: int, n: int):
        for j in range(n + 1):
            for layers in itertools.combinations(range(limit), j):
                for hs in itertools.product(range(H), repeat=j):
                    yield tuple(zip(layers, hs))

    out = []
    for s, S in src.items():
        if "unembed" in sinks:
            for ch in chains(L, max_heads):
                P = S
                for l, h in ch:
                    P = OV(l, h) @ P
                out.append((np.linalg.norm(m.W_U.array @ P), "unembed", s, ch, None, None))
        if max_heads < 1:
            continue
        for l in range(L):
            for h in range(H):
                QK = m.head(l, h).W_Q.array.T @ m.head(l, h).W_K.array
                for side in ("k", "q"):
                    if side not in sinks:
                        continue
                    for o, So in src.items():
                        for ch in chains(l, max_heads - 1):
                            if side == "q" and "k" in sinks and not ch:
                                continue
                            P = S
                            for a, b in ch:
                                P = OV(a, b) @ P
                            W = So.T @ QK @ P if side == "k" else P.T @ QK @ So
                            out.append((np.linalg.norm(W), side, s, ch, (l, h), o))
    out.sort(key=lambda t: -t[0])
    return out


def _zeroed(m: ca.Transformer, heads: list[tuple[int, int]]) -> ca.Transformer:
    """``m`` with the OV maps of ``heads`` set to exactly zero (circuits through them score 0)."""
    p = dict(m.params)
    for l, h in heads:
        W_O = np.array(p[f"blocks.{l}.attn.W_O"])
        W_O[h] = 0.0
        p[f"blocks.{l}.attn.W_O"] = W_O
    return ca.Transformer(m.config, p, name=m.name + "-zeroed")


def _search_models() -> list[tuple[str, ca.Transformer]]:
    out = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        out.append((f"random{seed}", random_model(
            n_layers=int(rng.integers(2, 4)), n_heads=2, d_model=10, d_head=3, d_vocab=6, n_ctx=5, seed=seed)))
    out.append(("zero-heads", _zeroed(random_model(n_layers=3, n_heads=2, d_model=10, d_head=3, d_vocab=6,
                                                   n_ctx=5, seed=7), [(0, 0), (1, 1)])))
    out += [(name, ca.zoo.load(name)) for name in ca.zoo.list()]
    return out


_SEARCH_MODELS = _search_models()


@pytest.mark.parametrize("model", [m for _, m in _SEARCH_MODELS], ids=[n for n, _ in _SEARCH_MODELS])
@pytest.mark.parametrize(
    ("max_heads", "sinks", "k"),
    [(1, ("unembed",), 2), (2, ("unembed",), 5), (3, ("unembed", "q", "k"), 7), (2, ("k",), 4), (2, ("q",), 3),
     (0, ("unembed",), 1), (2, ("unembed", "q", "k"), 1), (3, ("unembed", "q", "k"), 20)],
)
def test_top_circuits_and_certificate_equal_brute_force(
    model: ca.Transformer, max_heads: int, sinks: tuple[str, ...], k: int
) -> None:
    """The top k are exact, and the printed certificate is true: every circuit the search did
    not score is at most ``bound`` (checked against every circuit, scored densely)."""
    from circuitalg.circuits.enumerate import _Search, _VirtualWeights
    from circuitalg.runtime import SERIAL

    m = model
    bf = brute_force(m, max_heads, sinks)
    scored: dict[tuple, float] = {}

    def record(c: ca.Circuit) -> None:
        assert key(c) not in scored, f"{c.name} scored twice"
        scored[key(c)] = c.score**2

    res = _Search(_VirtualWeights(m, sinks, SERIAL), k, max_heads, on_score=record).run()
    assert res.total == len(bf) == ca.count_circuits(m, max_heads, sinks)
    assert res.evaluated == len(scored)
    kk = min(k, len(bf))
    assert len(res) == kk
    np.testing.assert_allclose([c.score for c in res], [b[0] for b in bf[:kk]], rtol=1e-9, atol=1e-12 * bf[0][0])
    gaps = np.diff([b[0] for b in bf[: kk + 1]])
    if np.all(np.abs(gaps) > 1e-9 * bf[0][0]):  # no ties: the identities must agree too
        assert [key(c) for c in res] == [b[1:] for b in bf[:kk]]
    # the claim: unscored circuits are below the bound; the bound is below the k-th score
    unscored = [b[0] for b in bf if b[1:] not in scored]
    assert len(unscored) == res.unevaluated
    tol = 1e-12 * bf[0][0]
    assert all(v <= res.bound * (1 + 1e-9) + tol for v in unscored), (max(unscored), res.bound)
    if unscored:
        assert res.bound <= res[kk - 1].score * (1 + 1e-9) + tol
        assert f"<= {res.bound:.6g}" in res.summary()
    else:
        assert "every circuit was evaluated" in res.summary()
    # scored circuits outside the top k are below the k-th score
    top = {key(c) for c in res}
    assert top <= set(scored)
    assert all(np.sqrt(max(v2, 0)) <= res[kk - 1].score * (1 + 1e-9) + tol
               for key, v2 in scored.items() if key not in top)
    for c in res:
        assert ca.norm(c.weight) == pytest.approx(c.score, rel=1e-9, abs=tol)
        assert c.n_heads <= max_heads


def test_top_circuits_return_exactly_zero_circuits() -> None:
    m = _zeroed(random_model(n_layers=2, n_heads=2, d_model=10, d_head=3, d_vocab=6, n_ctx=5, seed=3),
                [(0, 0), (0, 1)])
    total = ca.count_circuits(m, 2, ("unembed",))
    res = ca.top_circuits(m, total, 2, ("unembed",))
    assert len(res) == total and res.evaluated == total and res.bound == 0.0
    # 2 sources x (2 one-head chains + 2 x 2 two-head chains) start at a zeroed layer-0 head
    assert sum(c.score == 0.0 for c in res) == 2 * (2 + 2 * 2)
    assert "every circuit was evaluated" in res.summary()


def test_top_circuits_bad_input() -> None:
    m = random_model()
    with pytest.raises(ca.InvalidArgumentError, match="sinks"):
        ca.top_circuits(m, sinks=("nowhere",))
    with pytest.raises(ca.InvalidArgumentError, match="k="):
        ca.top_circuits(m, k=0)


# --- the planted circuit -----------------------------------------------------------------
def test_planted_induction_circuit_is_identified() -> None:
    m = ca.zoo.planted_induction()  # previous-token head L0H1, induction head L1H2
    table = ca.head_table(m, ca.repeated_random_tokens(m, 12, 8, seed=0))
    # the model does what it was built to do (forward passes, independent of the analysis)
    assert table.top("induction", 1)[0] == ("L1H2", pytest.approx(table.induction[1, 2]))
    assert table.induction[1, 2] > 0.7 and table.prev_token[0, 1] > 0.9
    # ...and the weight-based analysis finds it
    k = ca.composition_scores(m, "k")
    assert np.unravel_index(np.argmax(k), k.shape) == (0, 1, 1, 2)
    base = ca.composition_baseline(m, "k")
    assert k[0, 1, 1, 2] > base.mean + 10 * base.std
    assert table.top("positional_prev_token", 1)[0][0] == "L0H1"
    assert table.copying[1, 2] == pytest.approx(1.0) and table.top("copying", 1)[0][0] == "L1H2"
    graph = ca.CircuitGraph(m)
    top_k_edge = graph.edges("k", top=10)
    top_k_edge = [e for e in top_k_edge if e["writer"].startswith("L")][0]
    assert (top_k_edge["writer"], top_k_edge["reader"]) == ("L0H1", "L1H2")
    qk = [c for c in ca.top_circuits(m, 20, 2, ("k", "q")) if c.sink.head == (1, 2)][0]
    assert key(qk) == ("k", "embed", ((0, 1),), (1, 2), "embed")


# --- honest labels and significance ----------------------------------------------------------
def test_position_tables_are_causal_and_labelled_as_positions() -> None:
    m = ca.zoo.load("attn2l")  # has a vocabulary: positions must still not be printed as tokens
    w = m.W_pos.T @ m.head(0, 2).qk @ m.W_pos
    entries = ca.top_tokens(w, 50, vocab=m)
    assert len(entries) == 50
    assert all(e.col <= e.row for e in entries)  # key <= query: what causal attention can use
    assert all(e.row_label == f"pos {e.row}" and e.col_label == f"pos {e.col}" for e in entries)
    assert (entries[0].row_role, entries[0].col_role) == ("query", "key")
    assert str(entries[0]).startswith(f"query pos {entries[0].row}, key pos {entries[0].col}:")
    # the same entries as a dense scan of the causal lower triangle
    dense = (m.W_pos.array.T @ m.head(0, 2).W_Q.array.T @ m.head(0, 2).W_K.array @ m.W_pos.array)
    dense[np.triu_indices(dense.shape[0], 1)] = -np.inf
    np.testing.assert_allclose([e.value for e in entries], np.sort(dense.ravel())[::-1][:50], rtol=1e-10)
    # without the mask the strongest pairs include keys after the query (what the issue saw)
    free = ca.top_tokens(w, 50, vocab=m, causal=False)
    assert any(e.col > e.row for e in free)
    with pytest.raises(ca.InvalidArgumentError, match="causal=True masks"):
        ca.top_tokens(m.W_U @ m.head(1, 1).ov @ m.W_E, 3, causal=True)


def test_token_tables_print_ids_without_a_vocabulary() -> None:
    m = ca.zoo.planted_induction()
    bare = ca.Transformer(m.config, m.params, name="no-vocab")
    assert bare.vocab is None
    for e in ca.top_tokens(bare.W_U @ bare.head(1, 2).ov @ bare.W_E, 5, vocab=bare):
        assert e.row_label == f"#{e.row}" and e.col_label == f"#{e.col}" and "None" not in str(e)
    qk = [c for c in ca.top_circuits(bare, 20, 2, ("k", "q")) if c.sink.head == (1, 2)][0]
    entries = qk.top_tokens(4)
    assert (entries[0].row_role, entries[0].col_role) == ("query", "key")
    dense = ca.to_dense(qk.weight)
    np.testing.assert_allclose([e.value for e in entries], np.sort(dense.ravel())[::-1][:4], rtol=1e-10)


def test_composition_significance_is_corrected_for_the_number_of_pairs() -> None:
    """Negative control: among random models the maximum over all valid pairs is called
    significant at 1% family-wise rarely; the planted composition is far beyond the threshold."""
    from circuitalg.circuits.composition import valid_pairs

    hits = total = 0
    for seed in range(30):
        m = random_model(n_layers=3, n_heads=4, d_model=64, d_head=16, d_vocab=20, n_ctx=8, seed=seed, biases=False)
        for kind in "qkv":
            f = ca.composition_finding(ca.composition_scores(m, kind), ca.composition_baseline(m, kind))
            assert f.n_pairs == valid_pairs(3, 4) == 48 and f.writer.layer < f.reader.layer
            hits += f.significant
            total += 1
            # the threshold and the p-value say the same thing
            assert (f.score >= f.threshold) == (f.family_p <= f.alpha * (1 + 1e-9)) or abs(f.score - f.threshold) < 1e-12
    assert hits <= 3, f"{hits} of {total} random models called significant at 1%"
    p = ca.zoo.planted_induction()
    f = ca.composition_finding(ca.composition_scores(p, "k"), ca.composition_baseline(p, "k"))
    assert (f.writer.name, f.reader.name) == ("L0H1", "L1H2") and f.significant and f.family_p < 1e-10
    one = ca.zoo.load("attn1l")
    assert ca.composition_finding(ca.composition_scores(one, "k"), ca.composition_baseline(one, "k")) is None


@pytest.mark.parametrize("causal", [True, False])
def test_stated_chance_level_is_what_uniform_attention_scores(causal: bool) -> None:
    """The 'uniform attention gives X' the report prints is the score of a head whose QK is zero."""
    import dataclasses

    m = random_model(n_layers=2, n_heads=2, d_model=10, d_head=3, d_vocab=9, n_ctx=12, seed=4)
    p = dict(m.params)
    for l in range(2):
        p[f"blocks.{l}.attn.W_Q"] = np.zeros_like(p[f"blocks.{l}.attn.W_Q"])
        p[f"blocks.{l}.attn.b_Q"] = np.zeros_like(p[f"blocks.{l}.attn.b_Q"])
    flat = ca.Transformer(dataclasses.replace(m.config, causal=causal), p, name="uniform")
    table = ca.head_table(flat, ca.repeated_random_tokens(flat, 6, 4, seed=1), k=2)
    prev, ind = ca.previous_token_head(table), ca.induction_head(table)
    np.testing.assert_allclose(table.prev_token, prev.chance, rtol=1e-12)
    np.testing.assert_allclose(table.induction[1:], ind.chance, rtol=1e-12)
    assert prev.head is None and ind.head is None  # chance is far below the naming threshold
    assert f"uniform attention gives {prev.chance:.3f}" in str(prev)


def test_graph_edge_weights_are_composed_on_first_read_and_survive_copies() -> None:
    """Edge weight maps are built lazily (a 30-layer graph has 100,000+ edges) but behave like a
    stored attribute: present, equal to reader @ writer, kept by threshold, subgraph and networkx copies."""
    import networkx as nx

    m = ca.zoo.load("attn2l")
    g = ca.CircuitGraph(m)
    d = g.nx.edges["L0H2", "L1H1", "k"]
    assert not dict.__contains__(d, "weight") and "weight" in d and len(d) == len(dict(d))
    dense = ca.to_dense(d["weight"])
    np.testing.assert_allclose(dense, ca.to_dense(m.head(1, 1).qk) @ ca.to_dense(m.head(0, 2).ov), atol=1e-12)
    assert np.linalg.norm(dense) == pytest.approx(d["norm"], rel=1e-9)
    for copy in (g.threshold(min_score=0.0).nx, g.subgraph(["L0H2", "L1H1"]).nx, nx.MultiDiGraph(g.nx)):
        e = copy.edges["L0H2", "L1H1", "k"]
        np.testing.assert_allclose(ca.to_dense(e["weight"]), dense, atol=1e-12)
        assert e.get("weight") is e["weight"] and e["norm"] == d["norm"]
    rec = g.edges("k", top=1)[0]
    assert "weight" not in rec and rec["score"] == g.nx.edges[rec["writer"], rec["reader"], "k"]["score"]


def test_transition_norm_bounds_hold_for_the_transitions_the_search_multiplies_by() -> None:
    """The search bounds every writer -> later-head transition from one batched product per writer
    and forms the transitions it follows in separate products: each bound is at least the squared
    spectral norm of the matrix ``transition`` returns (float64 SVD), at most a few times above it,
    exactly zero for a zeroed writer (no rounding slack where no term is nonzero), and zero for
    pairs that are not writer -> later head."""
    from circuitalg.circuits.enumerate import _VirtualWeights
    from circuitalg.runtime import SERIAL

    m = _zeroed(random_model(n_layers=3, n_heads=3, d_model=24, d_head=4, d_vocab=6, n_ctx=5, seed=8), [(0, 1)])
    weights = _VirtualWeights(m, ("unembed",), SERIAL)
    zeroed = weights.heads.index(ca.HeadId(0, 1))
    for g, g2 in itertools.product(range(len(weights.heads)), repeat=2):
        if weights.layer[g2] <= weights.layer[g]:
            assert weights.M_norm2[g, g2] == 0.0
            continue
        s2 = np.linalg.svd(weights.transition(g, g2), compute_uv=False)[0] ** 2
        if g == zeroed:
            assert s2 == 0.0 and weights.M_norm2[g, g2] == 0.0
        else:
            assert s2 <= weights.M_norm2[g, g2] <= 4 * s2, (g, g2)
