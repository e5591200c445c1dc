"""top_entries (circuitalg.linalg.topk): the top entries of L @ V against the dense ranking, the same
on every runtime; composition_pairs: the one list of writer -> later-reader pairs the command and
the report print."""

from __future__ import annotations

import numpy as np
import pytest

import circuitalg as ca
from circuitalg.circuits.composition import valid_pairs
from circuitalg.circuits.findings import composition_pairs, earlier_to_later
from circuitalg.linalg.topk import count_entries, top_entries
from circuitalg.runtime import AUTO, SERIAL, Runtime


def _dense_top(P: np.ndarray, k: int, by_abs: bool, causal: bool, window: int | None) -> list[tuple[int, int]]:
    key = np.abs(P) if by_abs else P.copy()
    if causal:
        back = np.arange(P.shape[0])[:, None] - np.arange(P.shape[1])[None, :]
        key[(back < 0) | ((back >= window) if window else False)] = -np.inf
    order = np.argsort(-key, axis=None, kind="stable")[:k]
    return [tuple(int(x) for x in np.unravel_index(o, P.shape)) for o in order]


@pytest.mark.parametrize("by_abs", [False, True])
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 7)])
def test_top_entries_are_the_dense_ranking_on_every_runtime(by_abs: bool, causal: bool, window: int | None) -> None:
    rng = np.random.default_rng(5)
    n, r, k = 300, 24, 12
    L = rng.standard_normal((n, r)) * 0.8 ** np.arange(r)
    V = rng.standard_normal((r, n))
    want = _dense_top(L @ V, k, by_abs, causal, window)
    got = [top_entries(L, V, k, rt, by_abs=by_abs, causal=causal, window=window, max_bytes=40_000)
           for rt in (SERIAL, AUTO, Runtime(workers=2))]
    for g in got:
        assert list(zip(g.rows.tolist(), g.cols.tolist())) == want
        assert g.exact and g.n_rows == n
        np.testing.assert_array_equal(g.values, got[0].values)  # bit for bit whatever the threads
    np.testing.assert_allclose(got[0].values, [(L @ V)[i, j] for i, j in want], rtol=1e-12)


def test_top_entries_with_a_row_budget_say_what_they_scanned() -> None:
    rng = np.random.default_rng(1)
    L, V = rng.standard_normal((200, 8)), rng.standard_normal((8, 50))
    top = top_entries(L, V, 5, SERIAL, max_rows=30)
    assert top.rows_scanned == 30 and not top.exact and top.bound > 0
    strongest = np.argsort(-np.linalg.norm(L, axis=1), kind="stable")[:30]
    P = L[strongest] @ V
    assert sorted(top.values.tolist(), reverse=True) == top.values.tolist()
    np.testing.assert_allclose(top.values, np.sort(P.ravel())[::-1][:5], rtol=1e-12)


def test_count_entries_and_argument_errors() -> None:
    assert count_entries(4, 6) == 24
    assert count_entries(4, 4, causal=True) == 10
    assert count_entries(4, 4, causal=True, window=2) == 7
    L, V = np.ones((3, 2)), np.ones((2, 3))
    with pytest.raises(ca.ShapeError, match="factors"):
        top_entries(L, np.ones((3, 3)), 1, SERIAL)
    with pytest.raises(ca.InvalidArgumentError, match="k=0"):
        top_entries(L, V, 0, SERIAL)
    with pytest.raises(ca.InvalidArgumentError, match="causal=True"):
        top_entries(L, V, 1, SERIAL, window=2)


def test_composition_pairs_rank_every_valid_pair_and_judge_it_over_the_whole_model() -> None:
    m = ca.zoo.load("attn2l")
    base = ca.composition_baseline(m, "k")
    scores = ca.composition_scores(m, "k")
    pairs = composition_pairs(scores, base)
    L, H = m.config.n_layers, m.config.n_heads
    assert pairs.n_pairs == len(pairs.pairs) == valid_pairs(L, H) == int(earlier_to_later(scores.shape).sum())
    assert all(p.writer.layer < p.reader.layer for p in pairs.pairs)
    assert [p.score for p in pairs.pairs] == sorted((p.score for p in pairs.pairs), reverse=True)
    assert pairs.threshold == base.threshold(pairs.n_pairs)
    for p in pairs.pairs:
        assert p.score == scores[p.writer.layer, p.writer.head, p.reader.layer, p.reader.head]
        assert p.z == base.z(p.score) and p.significant == (p.score >= pairs.threshold)
    assert pairs.family_p(pairs.pairs[0]) == base.family_p(pairs.pairs[0].score, pairs.n_pairs)
    best = ca.composition_finding(scores, base)
    assert (best.writer, best.reader, best.score) == pairs.pairs[0][1:4]
    shown = composition_pairs(scores, base, layers=[1])  # no writer before layer 1 among the shown
    assert shown.pairs == () and shown.n_pairs == pairs.n_pairs and shown.n_significant == 0
    one = ca.zoo.load("attn1l")
    none = composition_pairs(ca.composition_scores(one, "k"), ca.composition_baseline(one, "k"))
    assert none.n_pairs == 0 and none.pairs == () and none.threshold == np.inf


# --- the exactness flag: never a sentinel (issue 28 review) ----------------------------------------
def _adversarial() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Factors where the Cauchy-Schwarz bound of the rows left is 0 or ties the k-th value."""
    rng = np.random.default_rng(7)
    cases = []
    L = np.zeros((6, 2))
    L[5] = [1, 0]
    cases.append(("zero rows, a tie at 0", L, np.array([[0.0, 1, 2, 3, 4], [1, 1, 1, 1, 1]])))
    L = np.zeros((6, 2))
    L[5] = [-1, 0]
    cases.append(("zero rows, negative k-th value", L, np.array([[1.0, 1, 2, 3, 4], [1, 1, 1, 1, 1]])))
    cases.append(("all negative", -np.abs(rng.normal(size=(8, 2))), np.abs(rng.normal(size=(2, 9)))))
    cases.append(("all ties", np.ones((10, 2)), np.ones((2, 10))))
    L = np.zeros((7, 3))
    L[[1, 4]] = rng.normal(size=(2, 3))
    cases.append(("mostly zero rows", L, rng.normal(size=(3, 6))))
    cases.append(("zero V", rng.normal(size=(5, 2)), np.zeros((2, 4))))
    return cases


@pytest.mark.parametrize("by_abs", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_exact_means_every_unevaluated_entry_is_strictly_below_the_kth(by_abs: bool, causal: bool) -> None:
    for name, L, V in _adversarial():
        if causal:
            V = np.concatenate([V, V, V], axis=1)[:, : L.shape[0]]  # a square position table
            if V.shape[1] < L.shape[0]:
                continue
        P = L @ V
        n_entries = count_entries(*P.shape, causal=causal)
        for k in (1, 3, 5, n_entries, n_entries + 4):
            for max_rows in (None, 1, 2, 3):
                top = top_entries(L, V, k, SERIAL, by_abs=by_abs, causal=causal, max_rows=max_rows)
                got = list(zip(top.rows.tolist(), top.cols.tolist()))
                assert len(got) == min(k, n_entries), name
                key = np.abs(P) if by_abs else P
                left = top.unscanned_rows
                assert np.array_equal(left, np.sort(np.argsort(-np.linalg.norm(L, axis=1), kind="stable")[top.rows_scanned:]))
                if left.size:  # the bound holds for every entry not evaluated
                    assert np.abs(P[left]).max() <= top.unscanned_bound
                if top.exact:
                    assert top.bound == 0.0
                    assert got == _dense_top(P, min(k, n_entries), by_abs, causal, None), (name, k, max_rows)
                    if left.size:
                        assert top.unscanned_bound < key[tuple(np.array(got[-1]))], name
                else:
                    assert top.bound > 0 and top.bound == top.unscanned_bound
                    assert top.bound >= key[tuple(np.array(got[-1]))]  # an unevaluated entry could rank


def test_float32_factors_rank_as_their_float64_values() -> None:
    rng = np.random.default_rng(3)
    L = (rng.standard_normal((400, 24)) * 0.8 ** np.arange(24)).astype(np.float32)
    V = rng.standard_normal((24, 300)).astype(np.float32)
    for by_abs in (False, True):
        a = top_entries(L, V, 9, SERIAL, by_abs=by_abs, max_bytes=40_000)
        b = top_entries(L.astype(np.float64), V.astype(np.float64), 9, SERIAL, by_abs=by_abs, max_bytes=40_000)
        assert a.exact and b.exact
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)
        np.testing.assert_array_equal(a.values, b.values)
        assert a.values.dtype == np.float64
