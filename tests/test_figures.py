"""The report's graph figure: edges are curved away from the heads they do not join."""

from __future__ import annotations

import numpy as np
import pytest

from circuitalg.circuits.findings import CompositionPair
from circuitalg.model.ids import HeadId
from circuitalg.report import figures
from circuitalg.report.figures import EDGE_CLEARANCE, _arc_points, edge_curvatures

# edges of a 30 x 9 report that used to read as a chain through a third head: three edges from
# L1H7 into layer 3 lay on top of each other, and L2H8 -> L25H4 ran through L4H8
PAIRS = [((1, 7), (3, 0)), ((1, 7), (3, 1)), ((1, 7), (3, 2)), ((2, 8), (4, 8)), ((2, 8), (25, 4)),
         ((4, 8), (19, 5)), ((13, 1), (21, 3)), ((21, 2), (23, 6))]
N_LAYERS, N_HEADS = 30, 9
SCALE = figures.graph_layout(N_LAYERS, N_HEADS)[1]


def _clearances(rads: list[float]) -> list[float]:
    """Each edge's smallest distance (inches) to a head it does not join, for the given curvatures."""
    sx, sy = SCALE
    pos = {n: np.array([n[0] * sx, -n[1] * sy]) for pair in PAIRS for n in pair}
    out = []
    for (w, r), rad in zip(PAIRS, rads):
        pts = _arc_points(pos[w], pos[r], rad, n=401)
        others = np.array([p for n, p in pos.items() if n not in (w, r)])
        out.append(float(np.min(np.linalg.norm(pts[:, None] - others[None], axis=-1))))
    return out


def test_arc_points_follow_matplotlibs_arc3() -> None:
    """The curve we route with is the one matplotlib draws: its ``arc3`` control point and a
    quadratic Bezier through it."""
    from matplotlib.patches import ConnectionStyle

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.normal(size=2) * 5, rng.normal(size=2) * 5
        rad = float(rng.uniform(-0.8, 0.8))
        path = ConnectionStyle.Arc3(rad=rad).connect(tuple(a), tuple(b))
        start, ctrl, end = path.vertices
        t = np.linspace(0, 1, 33)[:, None]
        bezier = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * end
        np.testing.assert_allclose(_arc_points(a, b, rad), bezier, rtol=0, atol=1e-12)


def test_edges_keep_clear_of_heads_they_do_not_join_and_stay_in_the_plot() -> None:
    rads = edge_curvatures(PAIRS, N_LAYERS, N_HEADS, SCALE)
    # the fixed curvature the figure used before passes over other heads: the check can fail
    assert min(_clearances([0.15] * len(PAIRS))) < EDGE_CLEARANCE / 2
    assert min(_clearances(rads)) >= EDGE_CLEARANCE * 0.99  # (a finer sampling than the routing's)
    sx, sy = SCALE
    for (w, r), rad in zip(PAIRS, rads):
        pts = _arc_points(np.array([w[0] * sx, -w[1] * sy]), np.array([r[0] * sx, -r[1] * sy]), rad)
        layers, heads = pts[:, 0] / sx, -pts[:, 1] / sy
        assert layers.min() >= -0.7 and layers.max() <= N_LAYERS - 0.3
        assert heads.min() >= -0.7 and heads.max() <= N_HEADS - 0.3


def test_an_edge_with_nothing_in_its_way_keeps_the_default_curvature() -> None:
    assert edge_curvatures([((0, 0), (5, 3))], 12, 12, (0.5, 0.5)) == [figures.EDGE_RADS[0]]


def test_edges_between_the_same_heads_do_not_overlap() -> None:
    """Q-, K- and V-composition between one pair of heads: three different curves."""
    pairs = [((0, 2), (1, 2))] * 3 + [((0, 0), (1, 3))]
    rads = edge_curvatures(pairs, 2, 4, figures.graph_layout(2, 4)[1])
    assert len(set(rads[:3])) == 3


@pytest.mark.parametrize("n_layers,n_heads", [(2, 4), (12, 12), (30, 9)])
def test_graph_figure_draws_the_chosen_curvatures(n_layers: int, n_heads: int, monkeypatch) -> None:
    """The figure passes each edge's routed curvature to matplotlib."""
    rng = np.random.default_rng(n_layers)
    edges = []
    for _ in range(10):
        l1 = int(rng.integers(0, n_layers - 1))
        l2 = int(rng.integers(l1 + 1, n_layers))
        writer, reader = HeadId(l1, int(rng.integers(n_heads))), HeadId(l2, int(rng.integers(n_heads)))
        edges.append(CompositionPair("qkv"[int(rng.integers(3))], writer, reader, float(rng.random()),
                                     float(rng.normal()), bool(rng.integers(2))))
    seen: list[str] = []
    from matplotlib.axes import Axes

    orig = Axes.annotate

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs["arrowprops"]["connectionstyle"])
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "annotate", spy)
    uri = figures.graph_figure(edges, n_layers, n_heads)
    assert uri.startswith("data:image/png;base64,")
    pairs = [(e.writer, e.reader) for e in edges]
    rads = edge_curvatures(pairs, n_layers, n_heads, figures.graph_layout(n_layers, n_heads)[1])
    assert seen == [f"arc3,rad={r}" for r in rads]
