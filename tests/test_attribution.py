"""Attribution graphs (circuitalg.features.attribution, .graphfile) against references written here:
a numpy replay of the replacement model from ``model.params`` (raw weights, norms written out) with
the patterns and norm scales frozen at their real values, run forward with one source removed; and
circuit-tracer's influence and pruning formulas written out by brute force (matrix inverse, explicit
scans)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import circuitalg as ca
from circuitalg.features import Dictionary, DictionaryKind, DictionarySet, Hook, HookKind, JumpReLU, ReLU, TopK
from circuitalg.features.attribution import (
    ConstantNode, ErrorNode, FeatureNode, LogitNode, LogitTarget, SAEErrorNode, SAEFeatureNode, TokenNode, attribute,
    influence_matrix,
)
from circuitalg.features.graphfile import read_circuit_tracer_json, write_circuit_tracer_json

K = DictionaryKind
TOL = 1e-10


# --- models and transcoders --------------------------------------------------------------------------
def make_model(kind: str, seed: int = 0) -> ca.Transformer:
    """``ln``: LayerNorm with weights and biases, learned positions, GELU, 3 layers; ``llama``: RMSNorm,
    rotary, grouped-query attention, gated SiLU MLP; ``gemma``: RMSNorm, output norms, q/k norms, soft-caps;
    ``parallel``: LayerNorm, rotary, parallel blocks."""
    common = dict(d_model=16, d_head=4, d_vocab=19, n_ctx=12)
    if kind == "ln":
        cfg = ca.TransformerConfig(n_layers=3, n_heads=3, d_mlp=24, normalization="LN", act_fn="gelu_new", **common)
    elif kind == "llama":
        cfg = ca.TransformerConfig(n_layers=3, n_heads=4, n_kv_heads=2, d_mlp=20, normalization="RMS", act_fn="silu",
                                   gated_mlp=True, rotary={"dim": 4, "base": 50.0}, **common)
    elif kind == "gemma":
        cfg = ca.TransformerConfig(n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=20, normalization="RMS", act_fn="gelu",
                                   gated_mlp=True, rotary={"dim": 4, "base": 40.0}, post_norms=True, qk_norm=True,
                                   attn_softcap=5.0, final_softcap=3.0, **common)
    elif kind == "parallel":
        cfg = ca.TransformerConfig(n_layers=2, n_heads=2, d_mlp=20, normalization="LN", act_fn="gelu",
                                   parallel_attn_mlp=True, rotary={"dim": 2, "base": 30.0}, **common)
    else:
        raise ValueError(kind)
    rng = np.random.default_rng(seed)
    params = {k: (1.0 + 0.2 * rng.normal(size=s)) if k.endswith(".w") else 0.5 * rng.normal(size=s)
              for k, s in ca.param_shapes(cfg).items()}
    return ca.Transformer(cfg, params, name=f"{kind}-{seed}")


def make_tc(name, layer, writes, *, d=16, F=24, seed=0, activation=None, skip=False, reads=HookKind.MLP_IN,
            kind=K.TRANSCODER):
    rng = np.random.default_rng(seed)
    return Dictionary(
        name, kind, (Hook(reads, layer),), tuple(Hook(HookKind.MLP_OUT, w) for w in writes),
        [rng.normal(size=(F, d)) / np.sqrt(d)], 0.1 * rng.normal(size=F), [0.3 * rng.normal(size=(d, F)) for _ in writes],
        [0.1 * rng.normal(size=d) for _ in writes], activation or ReLU(),
        W_skip=0.3 * rng.normal(size=(d, d)) if skip else None, b_skip=0.1 * rng.normal(size=d) if skip else None,
    )


def transcoders(kind: str, n_layers: int, F: int = 24):
    """``relu``, ``jumprelu``, ``topk`` per-layer transcoders, ``skip`` skip transcoders (ReLU, with
    ``b_skip``; ``stream_skip`` the same reading the stream itself, ``hook_resid_mid``), ``clt`` a cross-layer transcoder (member l writes l..n-1), ``normalized`` per-layer
    transcoders reading ``ln2.hook_normalized``, ``partial`` transcoders on layer 0 only."""
    if kind == "clt":
        return DictionarySet("clt", [make_tc(f"clt{l}", l, range(l, n_layers), F=F, seed=20 + l,
                                             kind=K.CROSS_LAYER_TRANSCODER) for l in range(n_layers)])
    out = []
    for l in range(n_layers if kind != "partial" else 1):
        act = {"jumprelu": JumpReLU(np.linspace(0.0, 0.3, F)), "topk": TopK(5)}.get(kind)
        reads = {"normalized": HookKind.MLP_NORMALIZED, "stream_skip": HookKind.RESID_MID}.get(kind, HookKind.MLP_IN)
        skip = kind in ("skip", "stream_skip")
        out.append(make_tc(f"{kind}{l}", l, [l], F=F, seed=l, activation=act, skip=skip, reads=reads,
                           kind=K.SKIP_TRANSCODER if skip else K.TRANSCODER))
    return out


CASES = [("gemma", "jumprelu"), ("gemma", "clt"), ("ln", "relu"), ("ln", "jumprelu"), ("ln", "skip"), ("ln", "clt"), ("llama", "topk"), ("llama", "skip"),
         ("llama", "clt"), ("parallel", "relu"), ("parallel", "skip"), ("ln", "normalized"), ("ln", "partial"),
         ("ln", "stream_skip"), ("llama", "stream_skip")]
TOKENS = [3, 1, 4, 1, 5, 9, 2, 6, 5]


def members(tcs) -> list[Dictionary]:
    return list(tcs.members) if isinstance(tcs, DictionarySet) else list(tcs)


# --- the replay: the replacement model written from model.params, patterns and scales frozen ---------------
class Replay:
    """Runs the replacement model forward from its sources; ``drop`` removes one node's write."""

    def __init__(self, model: ca.Transformer, tcs, tokens, n0: int = 1, saes=()) -> None:
        self.m, self.p, self.c = model, model.params, model.config
        self.tok = np.asarray(tokens)
        self.logits, self.cache = model.run(self.tok)
        self.precap = self.logits if self.cache.logits_precap is None else self.cache.logits_precap
        self.n0 = n0
        self.tcs = {t.reads[0].layer: t for t in members(tcs)}
        cch = self.cache
        # real hook values and features at every layer (for errors and activations)
        self.real_hook = {l: self.hook(l, self.mlp_stream(cch, l)) for l in self.tcs}
        self.acts = {l: t.encode(self.real_hook[l]) for l, t in self.tcs.items()}
        self.real_skip = {l: self.skip(l, self.real_hook[l]) for l in self.tcs}
        # residual-stream SAEs: the real stream at each one's hook and its features there (key ("sae", i))
        self.saes = list(saes)
        self.sae_real = {}
        for i, s in enumerate(self.saes):
            h = s.reads[0]
            self.sae_real[i] = {HookKind.RESID_PRE: cch.resid[h.layer], HookKind.RESID_MID: cch.resid_mid[h.layer],
                                HookKind.RESID_POST: cch.resid[h.layer + 1]}[h.kind]
            self.acts[("sae", i)] = s.encode(self.sae_real[i])

    def sae_point(self, kind, l, x, pre, drop):
        """At an SAE's hook: its pre-activations read from the live stream ``x``; the stream goes on
        as the SAE's real reconstruction plus error (= the real stream) less a dropped SAE node's write."""
        for i, s in enumerate(self.saes):
            if s.reads[0] != Hook(kind, l):
                continue
            pre_all = s.pre_activations(x)
            a = self.acts[("sae", i)]
            for (pp, j) in zip(*np.nonzero(a)):
                pre[(("sae", i), int(pp), int(j))] = pre_all[pp, j]
            x = np.array(self.sae_real[i])
            if isinstance(drop, SAEFeatureNode) and drop.sae == i:
                x[drop.position] -= a[drop.position, drop.index] * s.W_dec[0][:, drop.index]
            if isinstance(drop, SAEErrorNode) and drop.sae == i:
                x[drop.position] -= self.sae_real[i][drop.position] - a[drop.position] @ s.W_dec[0].T - s.b_dec[0]
        return x

    def mlp_stream(self, cache_like, l):
        return cache_like.resid[l] if self.c.parallel_attn_mlp else cache_like.resid_mid[l]

    def norm(self, x, prefix, scale):
        y = x - x.mean(-1, keepdims=True) if self.c.normalization == "LN" else x
        y = y / scale[:, None] * self.p[prefix + ".w"]
        return y + self.p[prefix + ".b"] if prefix + ".b" in self.p else y

    def hook(self, l, x):
        t = self.tcs[l]
        if t.reads[0].on_residual:  # a transcoder reading the stream itself
            return x
        y = x - x.mean(-1, keepdims=True) if self.c.normalization == "LN" else x
        y = y / self.cache.ln2_scale[l][:, None]
        if t.reads[0].kind is HookKind.MLP_IN:
            y = y * self.p[f"blocks.{l}.ln2.w"]
            if f"blocks.{l}.ln2.b" in self.p:
                y = y + self.p[f"blocks.{l}.ln2.b"]
        return y

    def skip(self, l, h):
        t = self.tcs[l]
        if t.W_skip is None:
            return np.zeros_like(h)
        return h @ t.W_skip.T + (0 if t.b_skip is None else t.b_skip)

    def writes(self, l):
        """The transcoders' features and decoder biases written into MLP output ``l``, per
        position: ``{(layer, p, i): vector}`` and the bias."""
        feats, bias = {}, np.zeros(self.c.d_model)
        for m, t in self.tcs.items():
            for j, h in enumerate(t.writes):
                if h.layer != l:
                    continue
                bias = bias + t.b_dec[j]
                a = self.acts[m]
                for p, i in zip(*np.nonzero(a)):
                    feats[(m, int(p), int(i))] = a[p, i] * t.W_dec[j][:, i]
        return feats, bias

    def run(self, drop=None):
        """``(pre-activations {(l, p, i): value} of every real feature, pre-cap logits)``."""
        c, p, cch = self.c, self.p, self.cache
        seq = len(self.tok)
        x = p["W_E"][:, self.tok].T.copy()
        if drop == ("token",):
            raise AssertionError
        if isinstance(drop, TokenNode):
            x[drop.position] -= p["W_E"][:, drop.token]
        if c.rotary is None:
            x = x + p["W_pos"][:, :seq].T
        pre = {}
        for l in range(c.n_layers):
            x = self.sae_point(HookKind.RESID_PRE, l, x, pre, drop)
            a = f"blocks.{l}.attn."
            xn = self.norm(x, f"blocks.{l}.ln1", cch.ln1_scale[l])
            attn = np.zeros_like(x) + p[a + "b_O"]
            for h in range(c.n_heads):
                g = h // (c.n_heads // c.kv_heads)
                v = xn @ p[a + "W_V"][g].T + p[a + "b_V"][g]
                attn += (cch.pattern[l, h] @ v) @ p[a + "W_O"][h].T
            if c.post_norms:  # the attention output's RMSNorm, its scale frozen
                attn = attn / cch.ln1_post_scale[l][:, None] * p[f"blocks.{l}.ln1_post.w"]
            x_mid = self.sae_point(HookKind.RESID_MID, l, x + attn, pre, drop)
            x_in = x if c.parallel_attn_mlp else x_mid
            mlp = np.array(cch.mlp_out[l])
            if l in self.tcs:
                h_live = self.hook(l, x_in)
                pre_all = self.tcs[l].pre_activations(h_live)
                for (pp, i) in zip(*np.nonzero(self.acts[l])):
                    pre[(l, int(pp), int(i))] = pre_all[pp, i]
                mlp = mlp + self.skip(l, h_live) - self.real_skip[l]  # the skip map acts on the live stream
            feats, _ = self.writes(l)
            if isinstance(drop, FeatureNode) and (drop.layer, drop.position, drop.index) in feats:
                mlp[drop.position] -= feats[(drop.layer, drop.position, drop.index)]
            if isinstance(drop, ErrorNode) and drop.layer == l:
                mlp[drop.position] -= self.error(l)[drop.position]
            x = self.sae_point(HookKind.RESID_POST, l, x_mid + mlp, pre, drop)
        xf = self.norm(x, "ln_final", cch.ln_final_scale)
        return pre, xf @ p["W_U"].T + p["b_U"]

    def error(self, l):
        feats, bias = self.writes(l)
        rec = np.zeros((len(self.tok), self.c.d_model)) + bias
        for (m, pp, i), v in feats.items():
            rec[pp] += v
        if l in self.tcs:
            rec = rec + self.real_skip[l]
        return self.cache.mlp_out[l] - rec

    def value(self, node, out, C):
        pre, logits = out
        if isinstance(node, FeatureNode):
            return pre[(node.layer, node.position, node.index)]
        if isinstance(node, SAEFeatureNode):
            return pre[(("sae", node.sae), node.position, node.index)]
        return C[node.rank] @ logits[-1]


def coefficient_rows(g, model, demean=True):
    V = model.config.vocab_out
    C = np.zeros((g.n_logits, V))
    for n in g.logit_nodes:
        C[n.rank, n.vocab_index] = 1.0
    return C - C.sum(1, keepdims=True) / V if demean else C


# --- completeness and the replacement model ------------------------------------------------------------
@pytest.mark.parametrize("model_kind,tc_kind", CASES)
def test_completeness_and_replay(model_kind, tc_kind):
    model = make_model(model_kind)
    tcs = transcoders(tc_kind, model.config.n_layers)
    g = attribute(model, tcs, TOKENS)
    assert g.completeness_error().max() < TOL
    # feature values are the real pre-activations (= activations) and logit values the demeaned logits
    rp = Replay(model, tcs, TOKENS)
    for r, n in enumerate(g.nodes[:g.n_features]):
        assert g.values[r] == pytest.approx(rp.acts[n.layer][n.position, n.index], rel=1e-12)
        assert g.activations[r] == g.values[r]
    C = coefficient_rows(g, model)
    np.testing.assert_allclose(g.values[-g.n_logits:], C @ rp.precap[-1], rtol=1e-12, atol=1e-12)
    # the replay with every source reproduces the model's logits and the real pre-activations
    pre, logits = rp.run()
    np.testing.assert_allclose(logits, rp.precap, rtol=0, atol=TOL * np.abs(rp.precap).max())
    for (l, p, i), v in pre.items():
        assert v == pytest.approx(rp.acts[l][p, i], rel=TOL, abs=TOL)
    # a source's edge is the change at the target when the source is removed from the replay
    rng = np.random.default_rng(0)
    base = rp.run()
    rows = list(range(g.n_features)) + list(range(len(g.nodes) - g.n_logits, len(g.nodes)))
    sources = [s for s in range(len(g.nodes) - g.n_logits) if not isinstance(g.nodes[s], ErrorNode)
               or g.nodes[s].position >= g.zero_positions]
    checked = 0
    for t in rng.choice(rows, size=min(6, len(rows)), replace=False):
        nz = np.nonzero(g.adjacency[t])[0]
        picks = list(rng.choice(nz, size=min(4, len(nz)), replace=False)) + list(rng.choice(sources, size=3))
        for s in picks:
            out = rp.run(drop=g.nodes[s])
            want = rp.value(g.nodes[t], base, C) - rp.value(g.nodes[t], out, C)
            scale = max(1.0, np.abs(g.adjacency[t]).max())
            assert abs(g.adjacency[t, s] - want) <= TOL * scale, (g.nodes[t], g.nodes[s])
            checked += 1
    assert checked >= 10


def test_constants_by_origin():
    model = make_model("ln")
    g = attribute(model, transcoders("skip", 3), TOKENS)
    origins = {c.origin for c in g.constants}
    assert origins == {"pos", "attn_bias", "ln1_bias", "ln2_bias", "enc_bias", "dec_bias", "skip_bias", "mlp_frozen",
                       "ln_final_bias", "unembed_bias"}
    # position 0: no features, zero error nodes, and the MLP's output there is one constant per layer
    assert not np.any(g.active_features[:, 1] == 0)
    err = [i for i, n in enumerate(g.nodes) if isinstance(n, ErrorNode) and n.position == 0]
    assert not np.any(g.adjacency[:, err])
    assert [c for c in g.constants if c.origin == "mlp_frozen"] == [ConstantNode("mlp_frozen", l, 0) for l in range(3)]
    # without zeroing, position 0 has features and no frozen constant; completeness holds both ways
    seen = []
    g0 = attribute(model, transcoders("skip", 3), TOKENS, zero_positions=0, batch_size=7,
                   progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (g0.n_features + g0.n_logits,) * 2 and len(seen) > 3
    assert np.any(g0.active_features[:, 1] == 0) and not any(c.origin == "mlp_frozen" for c in g0.constants)
    assert g0.completeness_error().max() < TOL
    # RMSNorm without biases: no norm-bias constants
    gl = attribute(make_model("llama"), transcoders("relu", 3), TOKENS)
    assert not {"ln1_bias", "ln2_bias", "ln_final_bias", "pos"} & {c.origin for c in gl.constants}


def test_targets_and_demeaning():
    model = make_model("llama")
    tcs = transcoders("relu", 3)
    logits, _ = model.run(TOKENS)
    diff = LogitTarget("3-7", {3: 1.0, 7: -1.0}, weight=0.5)
    for demean in (True, False):
        g = attribute(model, tcs, TOKENS, targets=[5, diff], demean_logits=demean)
        assert g.completeness_error().max() < TOL
        mean = logits[-1].mean() if demean else 0.0
        assert g.values[-2] == pytest.approx(logits[-1, 5] - mean, rel=1e-12)
        assert g.values[-1] == pytest.approx(logits[-1, 3] - logits[-1, 7], rel=1e-12)
        assert g.logit_nodes[1].vocab_index == model.config.d_vocab + 1 and g.logit_probabilities[1] == 0.5
    with pytest.raises(ca.InvalidArgumentError):
        attribute(model, tcs, TOKENS, targets=[99])
    with pytest.raises(ca.InvalidArgumentError):
        attribute(model, tcs, TOKENS, targets=[])


# --- order and selection ----------------------------------------------------------------------------------
def test_node_order_and_logit_selection():
    model = make_model("ln")
    tcs = transcoders("jumprelu", 3)
    g = attribute(model, tcs, TOKENS, max_logits=6, logit_probability=0.5)
    n_f, seq, L = g.n_features, len(TOKENS), 3
    feats = g.nodes[:n_f]
    assert all(isinstance(n, FeatureNode) for n in feats)
    keys = [(n.layer, n.position, n.index) for n in feats]
    assert keys == sorted(keys)
    np.testing.assert_array_equal(g.active_features, np.array(keys))
    assert list(g.nodes[n_f:n_f + L * seq]) == [ErrorNode(l, p) for l in range(L) for p in range(seq)]
    assert list(g.nodes[n_f + L * seq:n_f + (L + 1) * seq]) == [TokenNode(p, t) for p, t in enumerate(TOKENS)]
    # logits: the most probable first, cut after the cumulative probability reaches the threshold
    logits, _ = model.run(TOKENS)
    pr = np.exp(logits[-1] - logits[-1].max())
    pr /= pr.sum()
    order = sorted(range(len(pr)), key=lambda v: -pr[v])[:6]
    keep = []
    for v in order:
        keep.append(v)
        if sum(pr[k] for k in keep) >= 0.5:
            break
    assert [n.vocab_index for n in g.logit_nodes] == keep
    np.testing.assert_allclose(g.logit_probabilities, pr[keep], rtol=1e-12)
    assert all(isinstance(n, LogitNode) and n.position == seq - 1 for n in g.logit_nodes)
    # circuit-tracer's ids
    assert feats[0].node_id == f"{feats[0].layer}_{feats[0].index}_{feats[0].position}"
    assert g.nodes[n_f].node_id == "0_0_0" and g.nodes[n_f + L * seq].node_id == f"E_{TOKENS[0]}_0"
    assert g.logit_nodes[0].node_id == f"{L + 1}_{keep[0]}_{seq - 1}"
    # every feature and error row and column respects the layer order (no edge from a later layer)
    for t, n in enumerate(feats):
        later = [s for s, m in enumerate(feats) if m.layer >= n.layer]
        assert not np.any(g.adjacency[t, later])
    assert not np.any(g.adjacency[n_f:len(g.nodes) - g.n_logits])  # errors and tokens have no inputs


# --- per-head split --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_kind,tc_kind", [("ln", "skip"), ("llama", "clt"), ("parallel", "skip"), ("gemma", "skip")])
def test_edge_by_head_sums_to_edge(model_kind, tc_kind):
    model = make_model(model_kind)
    g = attribute(model, transcoders(tc_kind, model.config.n_layers), TOKENS)
    rng = np.random.default_rng(1)
    rows = list(range(g.n_features)) + [len(g.nodes) - 1]
    for t in rng.choice(rows, size=5, replace=False):
        for s in rng.choice(np.nonzero(g.adjacency[t])[0], size=3):
            parts = g.edge_by_head(int(t), int(s))
            assert sum(parts.values()) == pytest.approx(g.adjacency[t, s], rel=1e-9, abs=1e-12)
            assert None in parts and all(k is None or isinstance(k, ca.HeadId) for k in parts)


# --- influence and pruning against circuit-tracer's formulas, by brute force ------------------------------------
def brute_threshold(scores, threshold):
    s = sorted(np.asarray(scores).ravel().tolist(), reverse=True)
    total = float(np.sum(np.array(s)))  # the total as circuit-tracer takes it (torch.sum; threshold 1.0 hinges on it)
    acc = 0.0
    for i, v in enumerate(s):
        acc += v
        if acc / total >= threshold:
            return v
    return s[-1]


def brute_prune(A, w, n_f, n_tok, n_log, node_threshold, edge_threshold):
    n = A.shape[0]
    absA = np.abs(A)
    Ahat = absA / np.maximum(absA.sum(1, keepdims=True), 1e-10)
    infl = w @ (np.linalg.inv(np.eye(n) - Ahat) - np.eye(n))
    node = infl >= brute_threshold(infl, node_threshold)
    node[n - n_log - n_tok:] = True
    P = A * node[:, None] * node[None, :]
    absP = np.abs(P)
    Phat = absP / np.maximum(absP.sum(1, keepdims=True), 1e-10)
    pin = w @ (np.linalg.inv(np.eye(n) - Phat) - np.eye(n)) + w
    escore = Phat * pin[:, None]
    edge = escore >= brute_threshold(escore, edge_threshold)
    keep_end = n - n_log - n_tok
    while True:
        old = node.copy()
        edge &= node[:, None] & node[None, :]
        for j in range(keep_end):
            node[j] &= bool(edge[:, j].any())
        for j in range(n_f):
            node[j] &= bool(edge[j].any())
        if np.array_equal(old, node):
            break
    cum = np.zeros(n)
    order = sorted(range(n), key=lambda i: -infl[i])
    acc = 0.0
    for i in order:
        acc += infl[i]
        cum[i] = acc / infl.sum()
    return infl, node, edge, cum


@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.5, 0.9), (1.0, 1.0)])
def test_pruning_matches_formulas(thresholds):
    model = make_model("ln")
    g = attribute(model, transcoders("relu", 3), TOKENS)
    w = g.logit_weights()
    infl, node, edge, cum = brute_prune(g.adjacency, w, g.n_features, g.n_pos, g.n_logits, *thresholds)
    np.testing.assert_allclose(g.node_influence(), infl, rtol=1e-9, atol=1e-14)
    M = g.influence_matrix()
    np.testing.assert_allclose(w @ M, infl, rtol=1e-9, atol=1e-14)
    pr = g.prune(*thresholds)
    np.testing.assert_array_equal(pr.node_mask, node)
    np.testing.assert_array_equal(pr.edge_mask, edge)
    np.testing.assert_allclose(pr.cumulative_scores, cum, rtol=1e-9)
    # the influence matrix is the power series of the normalised matrix
    Ahat = np.abs(g.adjacency) / np.maximum(np.abs(g.adjacency).sum(1, keepdims=True), 1e-10)
    S, term = np.zeros_like(Ahat), np.eye(len(Ahat))
    for _ in range(20):
        term = term @ Ahat
        S += term
    np.testing.assert_allclose(influence_matrix(g.adjacency), S, atol=1e-12)
    with pytest.raises(ca.InvalidArgumentError):
        g.prune(1.5)


# --- outputs ------------------------------------------------------------------------------------------------------
def test_networkx_and_graph_file(tmp_path):
    model = make_model("ln")
    g = attribute(model, transcoders("clt", 3), TOKENS)
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == len(g.nodes) and nxg.number_of_edges() == int(np.count_nonzero(g.adjacency))
    s, t = np.argwhere(g.adjacency.T != 0)[0]
    assert nxg.edges[g.nodes[s], g.nodes[t]]["weight"] == g.adjacency[t, s]
    assert nxg.nodes[g.nodes[s]]["node_id"] == g.nodes[s].node_id
    S = g.adjacency_sparse()
    assert S.nnz == np.count_nonzero(g.adjacency) and np.array_equal(S.toarray(), g.adjacency)
    full = g.to_networkx(constants=True)
    assert full.number_of_nodes() == len(g.nodes) + len(g.constants)
    pr = g.prune()
    path = tmp_path / "prompt.json"
    data = write_circuit_tracer_json(g, path, scan="test-scan", index=True)
    gf = read_circuit_tracer_json(path)
    assert gf.metadata["slug"] == "prompt" and gf.metadata["scan"] == "test-scan"
    assert json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"][0]["slug"] == "prompt"
    assert len(gf.nodes) == len(data["nodes"]) and len(gf.links) == int(np.count_nonzero(
        pr.edge_mask & pr.node_mask[:, None] & pr.node_mask[None, :]))
    ids: dict = {}
    for i, n in enumerate(g.nodes):  # circuit-tracer's ids can repeat (see AttributionGraph.to_networkx)
        ids.setdefault(n.node_id, []).append(i)
    for e in gf.links[:50]:
        assert any(e["weight"] == g.adjacency[t, s] for t in ids[e["target"]] for s in ids[e["source"]])
    kinds = {n["feature_type"] for n in gf.nodes}
    assert {"embedding", "logit", "cross layer transcoder"} <= kinds
    tokens = [n for n in gf.nodes if n["feature_type"] == "embedding"]
    assert len(tokens) == len(TOKENS)
    feat = next(n for n in gf.nodes if n["feature_type"] == "cross layer transcoder")
    i = ids[feat["node_id"]][0]
    assert feat["activation"] == g.activations[i] and feat["influence"] == pr.cumulative_scores[i]
    # ids repeat in circuit-tracer's scheme, so the file's graph can merge a few nodes' links
    assert 0 < gf.to_networkx().number_of_edges() <= len(gf.links)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metadata": {}, "qParams": {}, "nodes": [], "links": []}))
    with pytest.raises(ca.LoadError, match="slug"):
        read_circuit_tracer_json(bad)
    bad.write_text("{not json")
    with pytest.raises(ca.LoadError):
        read_circuit_tracer_json(bad)


# --- refusals --------------------------------------------------------------------------------------------------------
def test_refusals():
    model = make_model("ln")
    with pytest.raises(ca.ConfigError, match="both read layer 0"):
        attribute(model, [make_tc("a", 0, [0]), make_tc("b", 0, [0], seed=1)], TOKENS)
    sae = Dictionary("sae", K.SAE, (Hook(HookKind.RESID_PRE, 1),), (Hook(HookKind.RESID_PRE, 1),),
                     [np.ones((4, 16))], np.zeros(4), [np.ones((16, 4))], [np.zeros(16)], ReLU())
    with pytest.raises(ca.ConfigError):
        attribute(model, [sae], TOKENS)
    attn_only = ca.TransformerConfig(n_layers=1, n_heads=2, d_model=16, d_head=4, d_vocab=19, n_ctx=12)
    rng = np.random.default_rng(0)
    m2 = ca.Transformer(attn_only, {k: rng.normal(size=s) for k, s in ca.param_shapes(attn_only).items()})
    with pytest.raises(ca.ConfigError, match="attention-only"):
        attribute(m2, [make_tc("a", 0, [0])], TOKENS)
    with pytest.raises(ca.InvalidArgumentError):
        attribute(model, "not a transcoder", TOKENS)
    with pytest.raises(ca.InvalidArgumentError):
        attribute(model, [make_tc("a", 0, [0])], TOKENS, zero_positions=-1)


# --- residual-stream SAEs as extra nodes ------------------------------------------------------------------------------
def make_sae(name, kind, layer, *, d=16, F=32, seed=0, pre_shift=False, activation=None):
    rng = np.random.default_rng(100 + seed)
    h = Hook(kind, layer)
    return Dictionary(name, K.SAE, (h,), (h,), [rng.normal(size=(F, d)) / np.sqrt(d)], 0.1 * rng.normal(size=F),
                      [0.3 * rng.normal(size=(d, F))], [0.1 * rng.normal(size=d)], activation or ReLU(), pre_shift=pre_shift)


R = HookKind
SAE_CASES = [
    ("ln", "relu", [(R.RESID_MID, 1)]),
    ("ln", "skip", [(R.RESID_POST, 2), (R.RESID_PRE, 0)]),
    ("ln", "clt", [(R.RESID_PRE, 1), (R.RESID_MID, 2)]),
    ("llama", "topk", [(R.RESID_POST, 0)]),
    ("llama", "skip", [(R.RESID_PRE, 2), (R.RESID_MID, 0)]),
    ("gemma", "jumprelu", [(R.RESID_MID, 0), (R.RESID_POST, 1)]),
    ("parallel", "skip", [(R.RESID_PRE, 1), (R.RESID_POST, 1)]),
    ("ln", "partial", [(R.RESID_POST, 1), (R.RESID_MID, 0)]),
]


def sae_set(points):
    return [make_sae(f"sae{j}", kind, layer, seed=j, pre_shift=j % 2 == 1,
                     activation=JumpReLU(np.linspace(0.0, 0.2, 32)) if j == 1 else None)
            for j, (kind, layer) in enumerate(points)]


@pytest.mark.parametrize("model_kind,tc_kind,points", SAE_CASES)
def test_saes_completeness_and_replay(model_kind, tc_kind, points):
    model = make_model(model_kind)
    tcs = transcoders(tc_kind, model.config.n_layers)
    saes = sae_set(points)
    g = attribute(model, tcs, TOKENS, saes=saes)
    g0 = attribute(model, tcs, TOKENS)
    assert g.completeness_error().max() < TOL
    n_tf, n_sf, seq, L = g0.n_features, len(g.sae_features), len(TOKENS), model.config.n_layers
    assert n_sf > 0 and g.n_features == n_tf + n_sf and g.saes == tuple(s.name for s in saes)
    # node order: transcoder features, SAE features, transcoder errors, SAE errors, tokens, logits
    assert g.nodes[:n_tf] == g0.nodes[:n_tf]
    assert all(isinstance(n, SAEFeatureNode) for n in g.nodes[n_tf:n_tf + n_sf])
    assert g.nodes[g.n_features:g.n_features + L * seq] == g0.nodes[n_tf:n_tf + L * seq]
    assert all(isinstance(n, SAEErrorNode) for n in g.nodes[g.n_features + L * seq:g.n_features + g.n_errors])
    assert g.nodes[g.n_features + g.n_errors:] == g0.nodes[g0.n_features + g0.n_errors:]
    # the logits are unchanged (the reconstruction plus error is the real stream)
    np.testing.assert_array_equal(g.values[-g.n_logits:], g0.values[-g0.n_logits:])
    rp = Replay(model, tcs, TOKENS, saes=saes)
    for r, n in enumerate(g.nodes[n_tf:n_tf + n_sf]):
        assert (n.sae, n.position, n.index) == tuple(g.sae_features[r])
        assert g.values[n_tf + r] == g.sae_activations[r] == rp.acts[("sae", n.sae)][n.position, n.index]
    pre, logits = rp.run()
    np.testing.assert_allclose(logits, rp.precap, rtol=0, atol=TOL * np.abs(rp.precap).max())
    for (l, p, i), v in pre.items():
        assert v == pytest.approx(rp.acts[l][p, i], rel=TOL, abs=TOL)
    # sampled edges into and out of SAE features against the replay with one source removed
    C = coefficient_rows(g, model)
    rng = np.random.default_rng(1)
    base = rp.run()
    n = len(g.nodes)
    sae_rows = list(range(n_tf, n_tf + n_sf))
    rows = list(rng.choice(sae_rows, size=min(4, n_sf), replace=False))
    rows += list(rng.choice(range(n_tf), size=min(2, n_tf), replace=False)) + [n - 1]
    sources = [s for s in range(n - g.n_logits) if not isinstance(g.nodes[s], (ErrorNode, SAEErrorNode))
               or g.nodes[s].position >= g.zero_positions]
    sae_sources = [s for s in sources if isinstance(g.nodes[s], (SAEFeatureNode, SAEErrorNode))]
    checked = into_sae = from_sae = 0
    for t in rows:
        nz = np.nonzero(g.adjacency[t])[0]
        picks = list(rng.choice(nz, size=min(4, len(nz)), replace=False)) + list(rng.choice(sources, size=3))
        picks += list(rng.choice(sae_sources, size=3))
        nz_sae = [s for s in nz if s in set(sae_sources)]
        picks += list(rng.choice(nz_sae, size=min(3, len(nz_sae)), replace=False)) if nz_sae else []
        for s in picks:
            out = rp.run(drop=g.nodes[s])
            want = rp.value(g.nodes[t], base, C) - rp.value(g.nodes[t], out, C)
            scale = max(1.0, np.abs(g.adjacency[t]).max())
            assert abs(g.adjacency[t, s] - want) <= TOL * scale, (g.nodes[t], g.nodes[s])
            checked += 1
            into_sae += t in sae_rows and g.adjacency[t, s] != 0
            from_sae += s in sae_sources and g.adjacency[t, s] != 0
    assert checked >= 20 and into_sae >= 3 and from_sae >= 3
    # the SAE features' own edges: an SAE feature is a source of later targets only
    assert np.any(g.adjacency[:, n_tf:n_tf + n_sf] != 0)
    g.prune()


def test_saes_none_is_the_graph_without_saes():
    model = make_model("llama")
    tcs = transcoders("skip", 3)
    g = attribute(model, tcs, TOKENS)
    for other in (attribute(model, tcs, TOKENS, saes=None), attribute(model, tcs, TOKENS, saes=[])):
        assert other.nodes == g.nodes and other.constants == g.constants and other.saes == ()
        np.testing.assert_array_equal(other.adjacency, g.adjacency)
        np.testing.assert_array_equal(other.constant_adjacency, g.constant_adjacency)
        np.testing.assert_array_equal(other.values, g.values)
    assert not any(isinstance(n, (SAEFeatureNode, SAEErrorNode)) for n in g.nodes)
    assert not any(c.origin.startswith("sae_") for c in g.constants)


def test_saes_float32_and_qk():
    model = make_model("ln")
    tcs = transcoders("relu", 3)
    saes = sae_set([(R.RESID_MID, 1), (R.RESID_POST, 0)])
    g = attribute(model, tcs, TOKENS, saes=saes)
    g32 = attribute(model, tcs, TOKENS, saes=saes, dtype=np.float32, batch_size=5)
    np.testing.assert_allclose(g32.adjacency, g.adjacency, rtol=0, atol=1e-5 * np.abs(g.adjacency).max())
    # a head downstream of an SAE reads its reconstruction: the QK terms still sum to the score
    _, cache = model.run(np.asarray(TOKENS))
    ref = reference_scores(model, cache, 2, 1)
    qk = g.qk_attribution(2, 1, 7, 3)
    assert qk.score == pytest.approx(ref[7, 3], rel=1e-10, abs=1e-10)
    # an edge from before the SAE at resid_post 0 into a layer-2 feature runs only through SAE nodes
    t = next(i for i, n in enumerate(g.nodes) if isinstance(n, FeatureNode) and n.layer == 2)
    for s, n in enumerate(g.nodes):
        if isinstance(n, TokenNode) or (isinstance(n, FeatureNode) and n.layer == 0):
            assert g.adjacency[t, s] == 0


def test_sae_refusals():
    model = make_model("ln")
    tcs = transcoders("relu", 3)
    with pytest.raises(ca.ConfigError, match="residual-stream hook"):
        attribute(model, tcs, TOKENS, saes=[make_tc("t", 0, [0])])
    with pytest.raises(ca.ConfigError, match="same point"):
        attribute(model, tcs, TOKENS, saes=[make_sae("a", R.RESID_POST, 0), make_sae("b", R.RESID_PRE, 1)])
    with pytest.raises(ca.ConfigError, match="parallel"):
        attribute(make_model("parallel"), transcoders("relu", 2), TOKENS, saes=[make_sae("a", R.RESID_MID, 0)])
    with pytest.raises(ca.InvalidArgumentError):
        attribute(model, tcs, TOKENS, saes=make_sae("a", R.RESID_MID, 0))
    with pytest.raises(ca.InvalidArgumentError):
        attribute(model, tcs, TOKENS, saes=["sae"])
    g = attribute(model, tcs, TOKENS, saes=[make_sae("a", R.RESID_MID, 1)])
    with pytest.raises(ca.InvalidArgumentError, match="SAE"):
        g.edge_by_head(len(g.nodes) - 1, 0)


# --- QK attribution ---------------------------------------------------------------------------------------------------
def reference_scores(model: ca.Transformer, cache, l: int, h: int) -> np.ndarray:
    """Head (l, h)'s pre-softmax scores (before soft-capping) from ``model.params`` and the cached stream."""
    p, c = model.params, model.config
    x = cache.resid[l]
    y = x - x.mean(-1, keepdims=True) if c.normalization == "LN" else x
    y = y / np.sqrt((y ** 2).mean(-1, keepdims=True) + c.ln_eps) * p[f"blocks.{l}.ln1.w"]
    if f"blocks.{l}.ln1.b" in p:
        y = y + p[f"blocks.{l}.ln1.b"]
    a, g = f"blocks.{l}.attn.", h // (c.n_heads // c.kv_heads)
    q = y @ p[a + "W_Q"][h].T + p[a + "b_Q"][h]
    k = y @ p[a + "W_K"][g].T + p[a + "b_K"][g]
    if c.qk_norm:
        q = q / np.sqrt((q ** 2).mean(-1, keepdims=True) + c.ln_eps) * p[a + "q_norm.w"]
        k = k / np.sqrt((k ** 2).mean(-1, keepdims=True) + c.ln_eps) * p[a + "k_norm.w"]
    rot = c.layer_rotary(l)
    if rot is not None:
        pos = np.arange(len(x))
        q, k = rot.apply(q, pos, len(x)), rot.apply(k, pos, len(x))
    return q @ k.T / c.attn_scale


@pytest.mark.parametrize("model_kind,tc_kind", [("ln", "relu"), ("llama", "clt"), ("gemma", "skip"), ("parallel", "skip")])
def test_qk_attribution_sums_to_score(model_kind, tc_kind):
    model = make_model(model_kind)
    c = model.config
    g = attribute(model, transcoders(tc_kind, c.n_layers), TOKENS)
    _, cache = model.run(TOKENS)
    for l in range(c.n_layers):
        h = l % c.n_heads
        S = reference_scores(model, cache, l, h)
        # the reference is right: its soft-capped softmax is the cached pattern
        Sc = S if c.attn_softcap is None else c.attn_softcap * np.tanh(S / c.attn_softcap)
        Sc = np.where(np.tril(np.ones_like(S)) > 0, Sc, -np.inf)
        P = np.exp(Sc - Sc.max(1, keepdims=True))
        np.testing.assert_allclose(P / P.sum(1, keepdims=True), cache.pattern[l, h], atol=1e-12)
        for i, j in ((len(TOKENS) - 1, 2), (4, 4), (3, 0)):
            qa = g.qk_attribution(l, h, i, j)
            assert qa.score == pytest.approx(S[i, j], rel=TOL, abs=TOL)
            assert qa.terms().sum() == pytest.approx(S[i, j], rel=1e-9, abs=1e-9)
            assert qa.query_shares().sum() == pytest.approx(S[i, j], rel=1e-9, abs=1e-9)
            assert qa.key_shares().sum() == pytest.approx(S[i, j], rel=1e-9, abs=1e-9)
            # only sources before the head's layer write into what it reads
            later = [a for a, n in enumerate(qa.sources) if isinstance(n, FeatureNode) and n.layer >= l]
            assert not np.any(qa.query_vectors[later]) and not np.any(qa.key_vectors[later])
            top = qa.top_terms(3)
            assert len(top) == 3 and abs(top[0][2]) >= abs(top[-1][2])
    with pytest.raises(ca.InvalidArgumentError):
        g.qk_attribution(0, 0, 2, 5)  # a key after the query


@pytest.mark.parametrize("model_kind,tc_kind", [("ln", "relu"), ("llama", "clt"), ("gemma", "skip")])
def test_qk_feature_attribution_parts_sum_to_total(model_kind, tc_kind):
    """The pattern-weighted aggregate: query and key shares each sum to Σ_ij A_ij s_ij (the scores from
    the reference), and each source's share is the pattern-weighted sum of its per-pair shares."""
    model = make_model(model_kind)
    c = model.config
    g = attribute(model, transcoders(tc_kind, c.n_layers), TOKENS)
    _, cache = model.run(TOKENS)
    n = len(TOKENS)
    for l in range(c.n_layers):
        h = (l + 1) % c.n_heads
        S = reference_scores(model, cache, l, h)
        A = cache.pattern[l, h]
        agg = g.qk_feature_attribution(l, h)
        assert agg.queries == tuple(range(1, n))
        want = float(sum(A[i, j] * S[i, j] for i in range(1, n) for j in range(i + 1)))
        assert agg.total == pytest.approx(want, rel=TOL, abs=TOL)
        assert agg.query.sum() == pytest.approx(want, rel=TOL, abs=TOL)
        assert agg.key.sum() == pytest.approx(want, rel=TOL, abs=TOL)
        # brute force over pairs, for a subset of queries
        sub = g.qk_feature_attribution(l, h, queries=[n - 1, 3])
        assert sub.queries == (3, n - 1)
        bq, bk = np.zeros_like(sub.query), np.zeros_like(sub.key)
        for i in (3, n - 1):
            for j in range(i + 1):
                qa = g.qk_attribution(l, h, i, j)
                bq += A[i, j] * qa.query_shares()
                bk += A[i, j] * qa.key_shares()
        np.testing.assert_allclose(sub.query, bq, rtol=0, atol=1e-10 * max(1.0, np.abs(bq).max()))
        np.testing.assert_allclose(sub.key, bk, rtol=0, atol=1e-10 * max(1.0, np.abs(bk).max()))
        later = [a for a, s in enumerate(agg.sources) if isinstance(s, FeatureNode) and s.layer >= l]
        assert not np.any(agg.query[later]) and not np.any(agg.key[later])
        top = agg.top("key", 3)
        assert all(isinstance(s, FeatureNode) for s, _ in top)
        assert len(top) <= 3 and (len(top) < 2 or abs(top[0][1]) >= abs(top[-1][1]))
    with pytest.raises(ca.InvalidArgumentError):
        g.qk_feature_attribution(0, 0, queries=[n])
    with pytest.raises(ca.InvalidArgumentError):
        g.qk_feature_attribution(0, c.n_heads)
    with pytest.raises(ca.InvalidArgumentError):
        agg.top("value")


@pytest.mark.parametrize("model_kind,tc_kind", [("ln", "jumprelu"), ("llama", "clt")])
def test_float32_and_batching(model_kind, tc_kind):
    """float32 edges agree with float64 to float32 rounding; the batch size changes nothing."""
    model = make_model(model_kind)
    tcs = transcoders(tc_kind, model.config.n_layers)
    g64 = attribute(model, tcs, TOKENS)
    g32 = attribute(model, tcs, TOKENS, dtype=np.float32)
    g3 = attribute(model, tcs, TOKENS, batch_size=3)
    assert g32.adjacency.dtype == np.float32 and g64.adjacency.dtype == np.float64
    scale = np.abs(g64.adjacency).max()
    assert np.abs(g32.adjacency - g64.adjacency).max() <= 1e-5 * scale
    assert np.abs(g3.adjacency - g64.adjacency).max() <= 1e-12 * scale
    assert g32.completeness_error().max() < 1e-5
    np.testing.assert_array_equal(g32.active_features, g64.active_features)
    with pytest.raises(ca.InvalidArgumentError):
        attribute(model, tcs, TOKENS, dtype=np.int32)


def test_benchmark_quick(tmp_path):
    """benchmarks/bench_attribution.py --quick (tiny sizes, circuitalg only) runs and reports."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_attribution.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, cwd=root, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    ours = r["circuitalg"]
    assert ours["n_features"] > 0 and ours["completeness_max"] < 1e-10 and ours["peak_rss_gib"] > 0
    assert "circuit_tracer" not in r


def test_outputs_refuse_sae_graphs_they_cannot_show(tmp_path):
    """The graph file, the HTML view and the summary say so instead of dropping the SAE nodes."""
    from circuitalg.errors import InvalidArgumentError
    from circuitalg.features.graphfile import write_circuit_tracer_json
    from circuitalg.features.summary import summarise
    from circuitalg.features.view import write_attribution_html

    model = make_model("ln")
    g = attribute(model, transcoders("relu", 3), TOKENS, saes=sae_set([(R.RESID_MID, 1)]))
    for write in (lambda: write_circuit_tracer_json(g, tmp_path / "g.json"),
                  lambda: write_attribution_html(g, tmp_path / "g.html"), lambda: summarise(g)):
        with pytest.raises(InvalidArgumentError, match="residual-SAE nodes"):
            write()
    assert not (tmp_path / "g.json").exists() and not (tmp_path / "g.html").exists()


def test_bad_arguments_are_named():
    model = make_model("ln")
    tcs = transcoders("relu", 3)
    for kw, name in (({"batch_size": 0}, "batch_size"), ({"max_logits": 0}, "max_logits"),
                     ({"max_logits": -2}, "max_logits"), ({"logit_probability": 1.5}, "logit_probability"),
                     ({"zero_positions": len(TOKENS) + 1}, "zero_positions")):
        with pytest.raises(ca.InvalidArgumentError, match=name):
            attribute(model, tcs, TOKENS, **kw)
