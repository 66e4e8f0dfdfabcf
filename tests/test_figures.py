"""The figures a reader must read: no label on top of another, no glyph the font lacks, no empty stage."""
import itertools

import matplotlib
import pandas as pd
import pytest

from cna_utils.publish.plots import drawable, logic_chain, pe_dag

matplotlib.use("Agg")


def _boxes(fig):
    fig.canvas.draw()
    return [t.get_bbox_patch().get_window_extent() for ax in fig.axes for t in ax.texts if t.get_bbox_patch()]


def _overlaps(boxes):
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def test_tokens_the_font_cannot_draw_are_escaped():
    assert drawable("7 ü ж") == "7 ü ж" and drawable("中") == "\\u4e2d" and drawable("🙂") == "\\U0001f642"


def test_pe_dag_boxes_do_not_overlap_even_in_adjacent_crowded_layers():
    names = ["16_855", "18_790", "19_1247", "19_2974", "20_2734", "20_3611", "20_91", "21_1335", "21_3415", "23_1775"]
    nodes = pd.DataFrame({"name": names, "layer": [int(n.split("_")[0]) for n in names],
                          "label": ["中文", " seven", "(change", "9"] * 2 + ["x", "y"]})
    edges = pd.DataFrame({"lower": ["16_855", "19_1247", "20_91"], "upper": ["20_3611", "21_1335", "23_1775"],
                          "enhance": [0.5, 0.2, 0.1]})
    fig = pe_dag(nodes, edges, weight="enhance")
    boxes = _boxes(fig)
    assert len(boxes) == len(names) and _overlaps(boxes) == []
    assert all("\\u4e2d" in t.get_text() or "中" not in t.get_text() for t in fig.axes[0].texts)


def test_logic_chain_boxes_hold_text_and_do_not_overlap():
    stages = [("input", '"3 + 4 ="\noperands at\npositions [0, 3]'), ("feature enhancing", "shallow FFN:\nnone on a path"),
              ("feature transferring", "no attention layer\nbelow head 0_1"), ("feature predicting", "head 16_8"),
              ("prediction enhancing", "PE-DAG rooted at\n16_855\n20_3611: change, 2, (change, more text"),
              ("output", '"7"\np = 0.44')]
    fig = logic_chain(stages, "chain")
    boxes = _boxes(fig)
    assert len(boxes) == len(stages) and _overlaps(boxes) == []
    texts = [t.get_text() for t in fig.axes[0].texts if t.get_bbox_patch()]
    assert all(t.strip() for t in texts) and all(len(line) <= 26 for t in texts for line in t.splitlines())


def test_accuracies_carry_their_wilson_intervals():
    from matplotlib.container import ErrorbarContainer
    from cna_utils.measure.stats import wilson
    from cna_utils.publish.plots import accuracy_by_layer
    frame = pd.DataFrame({"layer": [0, 5], "test_acc": [0.2, 0.5], "test_first": [0.3, 0.6]})
    fig = accuracy_by_layer(frame, [0.1, 0.2], n=200)
    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    segment = bars[0].lines[2][0].get_segments()[0]               # the first point's bar: 20% of 200
    lo, hi = wilson(40, 200)
    assert segment[0][1] == pytest.approx(100 * lo) and segment[1][1] == pytest.approx(100 * hi)
    assert not [c for c in accuracy_by_layer(frame, [0.1, 0.2]).axes[0].containers
                if isinstance(c, ErrorbarContainer) and c.has_yerr]
