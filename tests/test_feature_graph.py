"""Feature nodes in the virtual-weight graph and feature sources/sinks in circuit search, each
checked against dense numpy on small random models and dictionaries (the depth rules and the
dictionaries' residual-stream vectors are re-derived here, independently of the library)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from model_helpers import random_model, random_rotation

import circuitalg as ca
from circuitalg.features import Dictionary, DictionaryKind, Hook, HookKind, ReLU
from circuitalg.features.binding import bind
from circuitalg.circuits.graph import feature_logit_norms, top_logit_features
from circuitalg.model.ids import FeatureId

# where each hook sits along the stream (offset from its layer)
OFFSET = {
    HookKind.RESID_PRE: 0.0, HookKind.ATTN_OUT: 0.25, HookKind.RESID_MID: 0.5, HookKind.MLP_IN: 0.5,
    HookKind.MLP_NORMALIZED: 0.5, HookKind.MLP_OUT: 0.75, HookKind.RESID_POST: 1.0,
}


def rdict(name: str, reads: list[str], writes: list[str], F: int, d: int, seed: int, *,
          kind: DictionaryKind = DictionaryKind.SAE, tweak=None) -> Dictionary:
    """A dictionary with Gaussian weights; ``tweak(W_enc, W_dec)`` may edit the lists first."""
    rng = np.random.default_rng(seed)
    W_enc = [rng.normal(size=(F, d)) for _ in reads]
    W_dec = [rng.normal(size=(d, F)) for _ in writes]
    if tweak is not None:
        tweak(W_enc, W_dec)
    return Dictionary(
        name, kind, tuple(Hook.parse(h) for h in reads), tuple(Hook.parse(h) for h in writes),
        W_enc, rng.normal(size=F), W_dec, [rng.normal(size=d) for _ in writes], ReLU(),
    )


def depth(h: Hook) -> float:
    return h.layer + OFFSET[h.kind]


def ref_reads(m: ca.Transformer, d: Dictionary, f: int, scale: float = 1.0) -> list[tuple[float, np.ndarray]]:
    """(depth, encoder row in the residual basis) per read hook, the norm map written out."""
    D = m.config.d_model
    out = []
    for h, W in zip(d.reads, d.W_enc):
        row = np.array(W[f], dtype=np.float64)
        if h.kind in (HookKind.MLP_IN, HookKind.MLP_NORMALIZED):
            P = np.eye(D) - 1.0 / D if m.config.normalization in ("LN", "LNPre") else np.eye(D)
            if h.kind is HookKind.MLP_IN:
                P = np.asarray(m.params[f"blocks.{h.layer}.ln2.w"])[:, None] * P
            row = row @ P / scale
        out.append((depth(h), row))
    return out


def ref_writes(d: Dictionary, f: int) -> list[tuple[float, np.ndarray]]:
    return [(depth(h), np.array(W[:, f], dtype=np.float64)) for h, W in zip(d.writes, d.W_dec)]


class Feat:
    """A feature's reference vectors and the depth rules, written out."""

    def __init__(self, m: ca.Transformer, d: Dictionary, f: int) -> None:
        self.id = FeatureId(d.name, f)
        self.name = self.id.name
        self.reads = ref_reads(m, d, f)
        self.writes = ref_writes(d, f)

    def seen_by(self, r: float) -> np.ndarray | None:
        """Decoder columns written at depth <= r (what a component reading at r sees)."""
        vs = [v for b, v in self.writes if b <= r]
        return sum(vs) if vs else None

    def reading(self, w: float) -> np.ndarray | None:
        """Encoder rows read at depth > w (how it reads a writer at w)."""
        rs = [r for a, r in self.reads if a > w]
        return sum(rs) if rs else None

    def direct(self, s: Feat) -> float | None:
        terms = [r @ v for a, r in self.reads for b, v in s.writes if b < a]
        return sum(terms) if terms else None


# --- models and dictionaries --------------------------------------------------------------
def graph_setup(seed: int = 3):
    m = random_model(n_layers=3, n_heads=2, d_model=10, d_head=3, d_vocab=7, n_ctx=5, d_mlp=6,
                     normalization="LN", seed=seed)
    D = m.config.d_model
    sae = bind(rdict("sae1", ["blocks.1.hook_resid_pre"], ["blocks.1.hook_resid_pre"], 6, D, 10), m)
    tc = bind(rdict("tc0", ["blocks.0.mlp.hook_in"], ["blocks.0.hook_mlp_out"], 5, D, 11,
                    kind=DictionaryKind.TRANSCODER), m)
    xc = bind(rdict("xc", ["blocks.0.hook_resid_mid", "blocks.2.hook_resid_pre"],
                    ["blocks.0.hook_attn_out", "blocks.1.hook_resid_post"], 4, D, 12,
                    kind=DictionaryKind.CROSSCODER), m)
    post = bind(rdict("post2", ["blocks.2.hook_resid_post"], ["blocks.2.hook_resid_post"], 3, D, 13), m)
    return m, [sae, tc, xc, post]


def components(m: ca.Transformer):
    """Readers (name, kind, depth, dense matrix) and writers (name, depth, dense matrix)."""
    L = m.config.n_layers
    readers, writers = [], [("embed", -math.inf, m.W_E.array), ("pos", -math.inf, m.W_pos.array)]
    for l in range(L):
        for h in range(m.config.n_heads):
            hd = m.head(l, h)
            Q, K, V, O = hd.W_Q.array, hd.W_K.array, hd.W_V.array, hd.W_O.array
            n = f"L{l}H{h}"
            readers += [(n, "q", l, K.T @ Q), (n, "k", l, Q.T @ K), (n, "v", l, O @ V)]
            writers.append((n, l + 0.25, O @ V))
        mlp = m.mlp(l)
        readers.append((f"mlp{l}", "in", l + 0.5, mlp.W_in.array))
        writers.append((f"mlp{l}", l + 0.75, mlp.writer.array))
    readers.append(("unembed", "out", float(L), m.W_U.array))
    return readers, writers


def expected_feature_edges(m: ca.Transformer, feats: list[Feat]) -> dict:
    """(u, v, kind) -> (dense weight, score denominator, signed value or None)."""
    readers, writers = components(m)
    out = {}
    for f in feats:
        for name, kind, r, R in readers:
            v = f.seen_by(r)
            if v is not None:
                out[(f.name, name, kind)] = (R @ v[:, None], np.linalg.norm(R) * np.linalg.norm(v), None)
        for name, w, W in writers:
            e = f.reading(w)
            if e is not None:
                out[(name, f.name, "enc")] = (e[None, :] @ W, np.linalg.norm(W) * np.linalg.norm(e), None)
    for t in feats:
        for s in feats:
            val = t.direct(s)
            if val is not None:
                den = sum(np.linalg.norm(r) * np.linalg.norm(s.seen_by(a - 1e-9))
                          for a, r in t.reads if s.seen_by(a - 1e-9) is not None)
                out[(s.name, t.name, "enc")] = (np.array([[val]]), den, val)
    return out


SELECTION = {"sae1": [0, 3, 5], "tc0": [1, 4], "xc": [0, 2], "post2": [1]}


# --- the graph ------------------------------------------------------------------------------------
def test_feature_edges_equal_dense_reference_and_the_rest_is_unchanged() -> None:
    m, dicts = graph_setup()
    g = ca.CircuitGraph(m, dictionaries=dicts, features=SELECTION)
    plain = ca.CircuitGraph(m)
    feats = [Feat(m, b.dictionary, i) for b in dicts for i in SELECTION[b.name]]
    names = {f.name for f in feats}
    # the nodes and edges without features are exactly those of the plain graph
    assert set(g.nx.nodes) == set(plain.nx.nodes) | names
    for u, v, key, d in plain.nx.edges(keys=True, data=True):
        e = g.nx.edges[u, v, key]
        assert all(e[k] == d[k] or (np.isnan(e[k]) and np.isnan(d[k])) for k in ("norm", "score", "baseline", "label"))
    feature_edges = {(u, v, k): d for u, v, k, d in g.nx.edges(keys=True, data=True) if u in names or v in names}
    want = expected_feature_edges(m, feats)
    assert set(feature_edges) == set(want)
    assert g.nx.number_of_edges() == plain.nx.number_of_edges() + len(want)
    for key, (W, den, val) in want.items():
        d = feature_edges[key]
        norm = np.linalg.norm(W)
        assert d["norm"] == pytest.approx(norm, rel=1e-12, abs=1e-13 * den)
        assert d["score"] == pytest.approx(norm / den, rel=1e-12, abs=1e-13)
        np.testing.assert_allclose(ca.to_dense(d["weight"]), W, rtol=1e-12, atol=1e-13 * den)
        assert np.isnan(d["baseline"]) and d["kind"] == key[2]
        if val is not None:
            assert d["value"] == pytest.approx(val, rel=1e-12, abs=1e-13 * den)
    node = g.nx.nodes["tc0#4"]
    assert node == {"kind": "feature", "dictionary": "tc0", "index": 4, "layer": 0, "hook": "blocks.0.mlp.hook_in",
                    "depth": 0.5, "write_hook": "blocks.0.hook_mlp_out", "write_depth": 0.75, "label": "tc0#4"}
    # depth: a resid_pre SAE feeds its own layer's heads; a transcoder is not read by its own MLP
    assert g.nx.has_edge("sae1#3", "L1H0") and not g.nx.has_edge("L1H0", "sae1#3")
    assert g.nx.has_edge("L0H1", "sae1#3") and not g.nx.has_edge("sae1#3", "L0H1")
    assert not g.nx.has_edge("tc0#1", "mlp0") and g.nx.has_edge("tc0#1", "mlp1") and g.nx.has_edge("L0H0", "tc0#1")
    assert not g.nx.has_edge("mlp0", "tc0#1") and g.nx.has_edge("tc0#1", "sae1#0")
    assert not g.nx.has_edge("sae1#0", "sae1#3")  # one hook: no virtual weight between its features
    assert g.nx.has_edge("xc#0", "xc#0")  # a crosscoder reads at layer 2 what it wrote at layer 0
    assert set(g.edges("enc")[0]) >= {"writer", "reader", "kind", "norm", "score"}


def test_top_features_rank_by_logit_effect_and_selections_are_checked() -> None:
    m, dicts = graph_setup()
    g = ca.CircuitGraph(m, dictionaries=dicts, top_features=2)
    for b in dicts:
        D = sum(W for W in b.dictionary.W_dec)
        norms = np.linalg.norm(m.W_U.array @ D, axis=0)
        want = list(np.argsort(-norms, kind="stable")[:2])
        got = sorted((n for n, d in g.nx.nodes(data=True) if d.get("dictionary") == b.name),
                     key=lambda n: -g.nx.edges[n, "unembed", "out"]["norm"])
        assert [FeatureId.parse(n).index for n in got] == want
        np.testing.assert_allclose(feature_logit_norms(b, block=3), norms, rtol=1e-12)
        assert top_logit_features(b, 2) == want
    same = ca.CircuitGraph(m, dictionaries=dicts, features=[FeatureId("sae1", 2), FeatureId("tc0", 0)])
    assert {n for n, d in same.nx.nodes(data=True) if d["kind"] == "feature"} == {"sae1#2", "tc0#0"}
    other = random_model(n_layers=3, n_heads=2, d_model=10, d_head=3, d_vocab=7, n_ctx=5, d_mlp=6,
                         normalization="LN", seed=3)
    bad = [
        (dict(dictionaries=dicts), "without a selection"),
        (dict(dictionaries=dicts, features={"nope": [0]}), "not among"),
        (dict(dictionaries=dicts, features={"sae1": [6]}), "out of range"),
        (dict(dictionaries=dicts, features={"sae1": [1, 1]}), "twice"),
        (dict(dictionaries=dicts, features={"sae1": [1]}, top_features=2), "not both"),
        (dict(features={"sae1": [1]}), "need dictionaries"),
        (dict(dictionaries=dicts, top_features=0), "positive integer"),
        (dict(dictionaries=[dicts[0], dicts[0]], top_features=1), "two dictionaries"),
        (dict(dictionaries=[bind(dicts[0].dictionary, other)], top_features=1), "bound to"),
        (dict(dictionaries=[dicts[0].dictionary], top_features=1), "bound dictionaries"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ca.InvalidArgumentError, match=match):
            ca.CircuitGraph(m, **kwargs)


def test_feature_graph_threshold_subgraph_and_round_trip(tmp_path) -> None:
    m, dicts = graph_setup()
    g = ca.CircuitGraph(m, dictionaries=dicts, features=SELECTION)
    t = g.threshold(min_score=0.3, kinds="enc")
    assert t.nx.number_of_edges() > 0 and all(d["kind"] == "enc" and d["score"] >= 0.3 for *_, d in t.nx.edges(data=True))
    s = g.subgraph(["embed", "L0H0", "sae1#3", "tc0#1", "unembed"])
    assert {(u, v, k) for u, v, k in s.nx.edges(keys=True)} >= {("embed", "sae1#3", "enc"), ("tc0#1", "sae1#3", "enc"),
                                                             ("sae1#3", "unembed", "out"), ("L0H0", "tc0#1", "enc")}
    assert s.nx.edges["tc0#1", "sae1#3", "enc"]["weight"].shape == (1, 1)
    for suffix in (".graphml", ".json"):
        path = tmp_path / f"g{suffix}"
        getattr(g, "to_graphml" if suffix == ".graphml" else "to_json")(path)
        with pytest.raises(ca.LoadError, match="dictionaries"):
            ca.CircuitGraph.read(path, model=m)
        back = ca.CircuitGraph.read(path, model=m, dictionaries=dicts)
        assert dict(g.nx.nodes(data=True)) == dict(back.nx.nodes(data=True))
        e1, e2 = g.edges(), back.edges()
        assert len(e1) == len(e2)
        for a, b in zip(e1, e2):
            assert a.keys() == b.keys()
            assert all(a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])) for k in a)
        for u, v, k, d in back.nx.edges(keys=True, data=True):
            if "#" in u or "#" in v:
                assert ca.norm(d["weight"]) == pytest.approx(d["norm"], rel=1e-9, abs=1e-12)
    plain = tmp_path / "plain.json"
    ca.CircuitGraph(m).to_json(plain)
    assert "value" not in json.loads(plain.read_text())["edges"][0]


# --- circuit search -------------------------------------------------------------------------------
def search_setup(seed: int):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(2, 4))
    m = random_model(n_layers=L, n_heads=2, d_model=10, d_head=3, d_vocab=6, n_ctx=5, d_mlp=5, seed=seed)
    D = m.config.d_model
    dicts = [
        bind(rdict("a", ["blocks.1.hook_resid_pre"], ["blocks.1.hook_resid_pre"], 5, D, seed + 1), m),
        bind(rdict("b", [f"blocks.{L - 1}.hook_resid_mid"], [f"blocks.{L - 1}.hook_resid_mid"], 4, D, seed + 2), m),
        bind(rdict("c", ["blocks.0.hook_resid_mid", f"blocks.{L - 1}.hook_resid_pre"],
                   ["blocks.0.hook_attn_out", "blocks.1.hook_resid_pre"], 4, D, seed + 3,
                   kind=DictionaryKind.CROSSCODER), m),
        bind(rdict("p", ["blocks.0.hook_resid_pre"], ["blocks.0.hook_resid_pre"], 3, D, seed + 4), m),
    ]
    # a cross-layer transcoder: member l reads layer l's normalised MLP input, writes MLP outputs l..L-1
    members = [rdict(f"clt{l}", [f"blocks.{l}.ln2.hook_normalized"], [f"blocks.{j}.hook_mlp_out" for j in range(l, L)],
                     3, D, seed + 10 + l, kind=DictionaryKind.CROSS_LAYER_TRANSCODER) for l in range(L)]
    dicts.append(bind(ca.features.DictionarySet("clt", members), m))
    return m, dicts


def key(c: ca.Circuit) -> tuple:
    other = None if c.sink.other is None else c.sink.other.name
    feature = None if c.sink.feature is None else c.sink.feature.name
    return (c.sink.side, c.source.name, tuple(h.name for h in c.heads), None if c.sink.head is None else c.sink.head.name,
            other, feature)


def brute_force(m: ca.Transformer, feats: dict, max_heads: int, sources: list, sinks: tuple) -> list[tuple]:
    """Every circuit with the depth rules written out, scored densely: (score, key...)."""
    L, H = m.config.n_layers, m.config.n_heads
    emb = {"embed": m.W_E.array, "pos": m.W_pos.array}

    def src(s, r):  # what a reader at depth r reads of source s
        if isinstance(s, FeatureId):
            v = feats[s].seen_by(r)
            return None if v is None else v[:, None]
        return emb[s.name]

    def OV(l, h):
        return m.head(l, h).W_O.array @ m.head(l, h).W_V.array

    def chains(max_len, min_len=0):
        for j in range(min_len, max_len + 1):
            for layers in itertools.combinations(range(L), j):
                for hs in itertools.product(range(H), repeat=j):
                    yield tuple(zip(layers, hs))

    def path(s, ch, r_bare):
        P = src(s, ch[0][0] if ch else r_bare)
        if P is None:
            return None
        for l, h in ch:
            P = OV(l, h) @ P
        return P

    names = lambda ch: tuple(f"L{l}H{h}" for l, h in ch)  # noqa: E731
    out = []
    sides = [x for x in sinks if isinstance(x, str)]
    for s in sources:
        if "unembed" in sides:
            for ch in chains(max_heads):
                P = path(s, ch, L)
                if P is not None:
                    out.append((np.linalg.norm(m.W_U.array @ P), "unembed", s.name, names(ch), None, None, None))
        for l, h in itertools.product(range(L), range(H)):
            QK = m.head(l, h).W_Q.array.T @ m.head(l, h).W_K.array
            for side in ("k", "q"):
                if side not in sides or max_heads < 1:
                    continue
                for o in sources:
                    So = src(o, l)
                    if So is None:
                        continue
                    for ch in chains(max_heads - 1):
                        if any(a >= l for a, _ in ch) or (side == "q" and "k" in sides and not ch):
                            continue
                        P = path(s, ch, l)
                        if P is None:
                            continue
                        W = So.T @ QK @ P if side == "k" else P.T @ QK @ So
                        out.append((np.linalg.norm(W), side, s.name, names(ch), f"L{l}H{h}", o.name, None))
        for t in (x for x in sinks if isinstance(x, FeatureId)):
            ft = feats[t]
            for ch in chains(max_heads):
                if not ch:
                    if isinstance(s, FeatureId):
                        val = ft.direct(feats[s])
                        if val is not None:
                            out.append((abs(val), "feature", s.name, (), None, None, t.name))
                    else:
                        out.append((np.linalg.norm(ft.reading(-math.inf) @ emb[s.name]), "feature", s.name, (), None,
                                    None, t.name))
                    continue
                e = ft.reading(ch[-1][0] + 0.25)
                P = path(s, ch, None)
                if e is not None and P is not None:
                    out.append((np.linalg.norm(e @ P), "feature", s.name, names(ch), None, None, t.name))
    out.sort(key=lambda t: -t[0])
    return out


F = FeatureId
CASES = [
    # (sources, sinks)
    ([ca.Source("embed"), F("a", 1), F("c", 2)], ("unembed", "k", "q", F("b", 3), F("a", 2), F("c", 0))),
    ([F("p", 0), F("a", 4), F("clt0", 1), F("clt1", 2)], ("unembed", F("b", 0), F("clt1", 0), F("c", 1))),
    ([ca.Source("pos"), F("clt0", 0), F("b", 1)], ("k", F("b", 2), F("clt0", 2))),
    (None, ("q", F("a", 0), F("c", 3))),
    ([F("a", 3), F("p", 2)], ("unembed", "q")),
    ([F("a", 4), ca.Source("embed"), F("clt1", 1)], (F("b", 1), F("clt0", 0))),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize(("max_heads", "k"), [(0, 3), (1, 4), (2, 6), (3, 10), (3, 1000)])
def test_feature_circuits_and_certificate_equal_brute_force(seed: int, case: int, max_heads: int, k: int) -> None:
    from circuitalg.circuits.enumerate import _ends, _Search, _VirtualWeights
    from circuitalg.runtime import SERIAL

    m, dicts = search_setup(seed)
    sources, sinks = CASES[case]
    flat = [b for x in dicts for b in (x if isinstance(x, tuple) else (x,))]
    by_name = {b.name: b for b in flat}
    src_list = list(m.embedding_sources) if sources is None else sources
    feats = {f: Feat(m, by_name[f.dictionary].dictionary, f.index)
             for f in [*src_list, *sinks] if isinstance(f, FeatureId)}
    bf = brute_force(m, feats, max_heads, src_list, sinks)
    scored: dict[tuple, float] = {}

    def record(c: ca.Circuit) -> None:
        assert key(c) not in scored, f"{c.name} scored twice"
        scored[key(c)] = c.score

    ends = _ends(m, k, max_heads, sinks, sources, dicts)
    res = _Search(_VirtualWeights(m, ends.sides, SERIAL, ends), k, max_heads, on_score=record).run()
    assert res.total == len(bf) == ca.count_circuits(m, max_heads, sinks, sources=sources, dictionaries=dicts)
    assert res.evaluated == len(scored)
    assert {b[1:] for b in bf} >= set(scored)
    kk = min(k, len(bf))
    assert len(res) == kk
    top = bf[0][0]
    np.testing.assert_allclose([c.score for c in res], [b[0] for b in bf[:kk]], rtol=1e-9, atol=1e-12 * top)
    gaps = np.diff([b[0] for b in bf[: kk + 1]])
    if np.all(np.abs(gaps) > 1e-9 * top):
        assert [key(c) for c in res] == [b[1:] for b in bf[:kk]]
    # the certificate: every circuit never scored is at most the bound, which is at most the k-th score
    unscored = [b[0] for b in bf if b[1:] not in scored]
    assert len(unscored) == res.unevaluated
    tol = 1e-12 * top
    assert all(v <= res.bound * (1 + 1e-9) + tol for v in unscored), (max(unscored), res.bound)
    if unscored:
        assert res.bound <= res[kk - 1].score * (1 + 1e-9) + tol
    else:
        assert res.bound == 0.0
    dense = {b[1:]: b[0] for b in bf}
    for kc, v in scored.items():
        assert v == pytest.approx(dense[kc], rel=1e-9, abs=tol)
    public = ca.top_circuits(m, k, max_heads, sinks, sources=sources, dictionaries=dicts)
    assert [key(c) for c in public] == [key(c) for c in res]
    for c in res:
        assert ca.norm(c.weight) == pytest.approx(c.score, rel=1e-9, abs=tol)
        assert c.n_heads <= max_heads


def test_feature_circuit_weights_and_names() -> None:
    m, dicts = search_setup(0)
    res = ca.top_circuits(m, 2000, 2, ("unembed", "k", F("b", 3)), sources=[F("a", 1), ca.Source("embed")],
                          dictionaries=dicts)
    by = {c.name: c for c in res}
    c = by["a#1 -> L1H0 -> b#3"]
    a, b = dicts[0].dictionary, dicts[1].dictionary
    W = b.W_enc[0][3] @ m.head(1, 0).W_O.array @ m.head(1, 0).W_V.array @ a.W_dec[0][:, 1]
    assert ca.to_dense(c.weight)[0, 0] == pytest.approx(W, rel=1e-12)
    assert c.to_dict()["sink_feature"] == "b#3" and c.to_dict()["sink"] == "feature"
    assert ca.to_dense(by["a#1 -> b#3"].weight)[0, 0] == pytest.approx(b.W_enc[0][3] @ a.W_dec[0][:, 1], rel=1e-12)
    qk = by["embed -> L1H1.k (query: a#1)"]
    want = a.W_dec[0][:, 1] @ m.head(1, 1).W_Q.array.T @ m.head(1, 1).W_K.array @ m.W_E.array
    np.testing.assert_allclose(ca.to_dense(qk.weight)[0], want, rtol=1e-12)
    assert not any(n.startswith("a#1 -> L0") for n in by)  # layer 0 writes before a#1 is written
    assert "sink_feature" not in next(c for c in res if c.sink.side == "unembed").to_dict()
    for args, match in [
        (dict(sinks=(F("zz", 0),)), "not among"),
        (dict(sinks=(F("b", 99),)), "out of range"),
        (dict(sinks=("unembed", "x")), "choose from"),
        (dict(sources=[]), "empty"),
        (dict(sources=[ca.Source("mlp", 0)]), "starts at"),
        (dict(sources=[F("a", 0), F("a", 0)]), "twice"),
    ]:
        with pytest.raises(ca.InvalidArgumentError, match=match):
            ca.top_circuits(m, 5, 2, **{"sinks": ("unembed",), **args}, dictionaries=dicts)


# --- negative control and basis rotation -----------------------------------------------------------
def test_orthogonal_feature_has_no_edges_and_no_circuits() -> None:
    """A feature whose decoder is e_0, with e_0 read by nothing downstream (column 0 of every
    reader zeroed): every edge from it and every circuit from it scores exactly 0."""
    m0 = random_model(n_layers=3, n_heads=2, d_model=10, d_head=3, d_vocab=6, n_ctx=5, d_mlp=5, seed=5)
    p = dict(m0.params)
    for l in range(3):
        for w in ("W_Q", "W_K", "W_V"):
            p[f"blocks.{l}.attn.{w}"] = np.array(p[f"blocks.{l}.attn.{w}"])
            p[f"blocks.{l}.attn.{w}"][..., 0] = 0.0
        p[f"blocks.{l}.mlp.W_in"] = np.array(p[f"blocks.{l}.mlp.W_in"])
        p[f"blocks.{l}.mlp.W_in"][:, 0] = 0.0
    p["W_U"] = np.array(p["W_U"])
    p["W_U"][:, 0] = 0.0
    m = ca.Transformer(m0.config, p, name="null-direction")

    def null_decoder(W_enc, W_dec):
        W_dec[0][:, 1] = np.eye(10)[0]

    def blind_encoder(W_enc, W_dec):
        W_enc[0][:, 0] = 0.0

    src = rdict("src", ["blocks.0.hook_resid_pre"], ["blocks.0.hook_resid_pre"], 3, 10, 1, tweak=null_decoder)
    snk = rdict("snk", ["blocks.2.hook_resid_post"], ["blocks.2.hook_resid_post"], 3, 10, 2, tweak=blind_encoder)
    dicts = [bind(src, m), bind(snk, m)]
    g = ca.CircuitGraph(m, dictionaries=dicts, features={"src": [1], "snk": [0, 2]})
    out_edges = list(g.nx.out_edges("src#1", data=True))
    assert len(out_edges) == 3 * 6 + 3 + 1 + 2  # 6 heads x q/k/v, 3 MLPs, the unembedding, 2 features
    assert all(d["norm"] == 0.0 and d["score"] == 0.0 for *_, d in out_edges)
    res = ca.top_circuits(m, 10_000, 3, ("unembed", "k", "q", F("snk", 0)), sources=[F("src", 1)], dictionaries=dicts)
    assert res.total == len(res) and res.bound == 0.0
    assert all(c.score == 0.0 for c in res)
    # the control is specific: another feature of the same dictionary is read
    live = ca.top_circuits(m, 5, 2, ("unembed",), sources=[F("src", 0)], dictionaries=dicts)
    assert live[0].score > 0


def rotate_dictionary(d: Dictionary, Q: np.ndarray) -> Dictionary:
    """``d`` in the residual basis ``r' = Q r``: encoders ``W Qᵀ``, decoders and biases ``Q W``."""
    return Dictionary(d.name, d.kind, d.reads, d.writes, [W @ Q.T for W in d.W_enc], d.b_enc,
                      [Q @ W for W in d.W_dec], [Q @ b for b in d.b_dec], d.activation)


def test_rotating_the_residual_basis_leaves_every_feature_number_unchanged() -> None:
    m = random_model(n_layers=3, n_heads=2, d_model=10, d_head=3, d_vocab=6, n_ctx=5, d_mlp=5, seed=8)
    Q = random_rotation(10, seed=8)
    mr = ca.rotate_residual(m, Q)
    raw = [
        rdict("r1", ["blocks.1.hook_resid_pre"], ["blocks.1.hook_resid_pre"], 5, 10, 20),
        rdict("t0", ["blocks.0.ln2.hook_normalized"], ["blocks.0.hook_mlp_out"], 4, 10, 21,
              kind=DictionaryKind.TRANSCODER),
        rdict("x", ["blocks.0.hook_resid_mid", "blocks.2.hook_resid_pre"],
              ["blocks.0.hook_attn_out", "blocks.1.hook_resid_post"], 3, 10, 22, kind=DictionaryKind.CROSSCODER),
    ]
    dicts = [bind(d, m) for d in raw]
    rdicts = [bind(rotate_dictionary(d, Q), mr) for d in raw]
    sel = {"r1": [0, 2, 4], "t0": [1, 3], "x": [0, 1]}
    g, gr = (ca.CircuitGraph(mm, dictionaries=dd, features=sel) for mm, dd in ((m, dicts), (mr, rdicts)))
    e, er = g.edges(), gr.edges()
    scale = max(d["norm"] for d in e)
    assert [(a["writer"], a["reader"], a["kind"]) for a in e] == [(a["writer"], a["reader"], a["kind"]) for a in er] or \
        sorted((a["writer"], a["reader"], a["kind"]) for a in e) == sorted((a["writer"], a["reader"], a["kind"]) for a in er)
    by = {(a["writer"], a["reader"], a["kind"]): a for a in er}
    n_feature = 0
    for a in e:
        b = by[(a["writer"], a["reader"], a["kind"])]
        if "#" in a["writer"] or "#" in a["reader"]:
            n_feature += 1
            assert b["norm"] == pytest.approx(a["norm"], rel=1e-12, abs=1e-12 * scale)
            assert b["score"] == pytest.approx(a["score"], rel=1e-12, abs=1e-12)
            if "value" in a:
                assert b["value"] == pytest.approx(a["value"], rel=1e-12, abs=1e-12 * scale)
    assert n_feature > 50
    srcs, sinks = [F("r1", 2), F("x", 1), ca.Source("embed")], ("unembed", "k", F("x", 0), F("t0", 3))
    res, resr = (ca.top_circuits(mm, 30, 3, sinks, sources=srcs, dictionaries=dd) for mm, dd in ((m, dicts), (mr, rdicts)))
    np.testing.assert_allclose([c.score for c in resr], [c.score for c in res], rtol=1e-12, atol=1e-12 * res[0].score)


def test_feature_ids_format_and_parse() -> None:
    f = FeatureId("blocks.8.res", 12)
    assert f.name == str(f) == "blocks.8.res#12" and FeatureId.parse(f.name) == f
    assert FeatureId.parse("a#b#3") == FeatureId("a#b", 3)
    for bad in ("x", "x#", "#3", "x#-1", "x#1.5", 3):
        with pytest.raises(ca.InvalidArgumentError, match="not a feature name"):
            FeatureId.parse(bad)
    with pytest.raises(ca.InvalidArgumentError, match="feature"):
        ca.Sink("feature")
    assert ca.Sink("feature", feature=f).name == "blocks.8.res#12"


def test_parallel_blocks_and_dictionary_sets_and_foreign_feature_ids() -> None:
    """In a parallel block the MLP (and a transcoder reading its input) reads the stream before
    the layer's attention output; a bound dictionary set's tuple is accepted; any named tuple
    (dictionary, index) is taken as a feature id."""
    import dataclasses
    from typing import NamedTuple

    m0 = random_model(n_layers=2, n_heads=2, d_model=8, d_head=2, d_vocab=5, n_ctx=4, d_mlp=4, seed=9)
    m = ca.Transformer(dataclasses.replace(m0.config, parallel_attn_mlp=True), dict(m0.params), name="parallel")
    tc = bind(rdict("tc", ["blocks.1.ln2.hook_normalized"], ["blocks.1.hook_mlp_out"], 3, 8, 1,
                    kind=DictionaryKind.TRANSCODER), m)
    attn = bind(rdict("ao", ["blocks.0.hook_resid_pre"], ["blocks.0.hook_attn_out"], 3, 8, 2), m)
    members = [rdict(f"clt{l}", [f"blocks.{l}.ln2.hook_normalized"], [f"blocks.{j}.hook_mlp_out" for j in range(l, 2)],
                     2, 8, 3 + l, kind=DictionaryKind.CROSS_LAYER_TRANSCODER) for l in range(2)]
    clt = bind(ca.features.DictionarySet("clt", members), m)

    class OtherFeatureId(NamedTuple):
        dictionary: str
        index: int

    g = ca.CircuitGraph(m, dictionaries=[tc, attn, clt],
                        features=[OtherFeatureId("tc", 0), FeatureId("ao", 1), FeatureId("clt0", 1), FeatureId("clt1", 0)])
    assert g.nx.has_edge("L0H1", "tc#0") and not g.nx.has_edge("L1H1", "tc#0")
    assert g.nx.has_edge("ao#1", "mlp1") and not g.nx.has_edge("ao#1", "mlp0") and g.nx.has_edge("ao#1", "L1H0")
    assert g.nx.has_edge("ao#1", "tc#0")  # layer 0's attention output is before layer 1's MLP input
    assert g.nx.has_edge("clt0#1", "clt1#0") and not g.nx.has_edge("clt1#0", "clt0#1")
    feats = [Feat(m, d, i) for d, i in ((tc.dictionary, 0), (attn.dictionary, 1), (members[0], 1), (members[1], 0))]
    for f in feats:  # the parallel MLP input reads at l + 0.1 in the reference
        f.reads = [(a - 0.4 if a % 1 == 0.5 else a, r) for a, r in f.reads]
    want = expected_feature_edges(m, feats)
    for (u, v, kind), (W, den, _) in want.items():
        if v.startswith("mlp"):  # the reference's MLP reads at l + 0.5; parallel MLPs read at l
            continue
        assert g.nx.edges[u, v, kind]["norm"] == pytest.approx(np.linalg.norm(W), rel=1e-12, abs=1e-13 * den)
    res = ca.top_circuits(m, 50, 2, (OtherFeatureId("tc", 0), "unembed"), sources=[OtherFeatureId("clt0", 1)],
                          dictionaries=[tc, clt])
    assert res.total == ca.count_circuits(m, 2, (FeatureId("tc", 0), "unembed"), sources=[FeatureId("clt0", 1)],
                                          dictionaries=[tc, clt])
    # clt0 writes from layer 0's MLP output on: layer 1's heads read it but write after tc reads
    assert {c.name for c in res if c.sink.feature is not None} == {"clt0#1 -> tc#0"}
    assert {c.name for c in res if not c.heads} == {"clt0#1 -> tc#0", "clt0#1 -> unembed"}
    assert all(c.heads[0].layer == 1 for c in res if c.heads)
