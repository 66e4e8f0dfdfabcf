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


def _band_heights(ax):
    """(min y, max y) of each filled band on ``ax``."""
    from matplotlib.collections import PolyCollection
    return [(p.get_paths()[0].vertices[:, 1].min(), p.get_paths()[0].vertices[:, 1].max())
            for p in ax.collections if isinstance(p, PolyCollection)]


def test_the_zero_shot_curve_draws_paired_intervals_that_vanish_without_an_effect():
    import numpy as np
    from cna_utils.paper.measures import zero_shot_bands
    from cna_utils.publish.plots import zero_shot_curve
    rng = np.random.default_rng(0)
    base = rng.random(80) < 0.6
    hit = base & (rng.random(80) < 0.5)                         # the chosen set costs about half the answers
    t8 = pd.DataFrame({f"M={m}": {"number": 10 - m, "accuracy_decrease": 100 * (1 - hit.sum() / base.sum()),
                                  "random_decrease": 0.0} for m in range(2)})
    t8.attrs["per_case"] = {"base": base.tolist(),
                            **{m: {"chosen": hit.tolist(), "random": [base.tolist()]} for m in range(2)}}
    bands = zero_shot_bands(t8, thresholds=range(2))
    assert (bands.chosen_lo < t8.loc["accuracy_decrease"]).all() and (t8.loc["accuracy_decrease"] < bands.chosen_hi).all()
    assert (bands.chosen_lo > 20).all()                         # about 50% with n = 80: far from zero
    assert (bands.random_lo == 0).all() and (bands.random_hi == 0).all()     # no effect: no width
    paper8 = pd.DataFrame({"M=0": {"accuracy_decrease": 30.0}, "M=1": {"accuracy_decrease": 20.0}})
    fig = zero_shot_curve(t8, paper8, thresholds=range(2), bands=bands)
    heights = _band_heights(fig.axes[0])
    assert len(heights) == 2 and heights[0] == pytest.approx((bands.chosen_lo.min(), bands.chosen_hi.max()))
    assert not _band_heights(zero_shot_curve(t8, paper8, thresholds=range(2)).axes[0])


def test_the_bias_curves_carry_intervals_over_professions():
    import numpy as np
    from cna_utils.paper.measures import bias_bands
    from cna_utils.publish.plots import bias_by_k
    rng = np.random.default_rng(1)
    profs = [("woman", f"w{i}") for i in range(6)] + [("man", f"m{i}") for i in range(6)]

    def scores(shift):
        rows = [dict(group=g, profession=p, template=t, bias=1.0 + shift + rng.normal(0, 0.3))
                for g, p in profs for t in ("a", "b")]
        return {k: [r[k] for r in rows] for k in rows[0]}
    sc = {"original": scores(0.0), "top-2": scores(-0.8), "random-2 #0": scores(0.0), "random-2 #1": scores(0.0)}
    sets = {"both": ["a", "b"], "a only": ["a"]}
    bands = bias_bands(sc, sets)
    assert list(bands.index) == ["original", "top-2", "random-2 (mean of 2)"]
    total = lambda name, ps: float(pd.DataFrame(sc[name]).loc[lambda f: f.template.isin(sets[ps])].bias.mean())
    t13 = pd.DataFrame({(ps, "total"): {name: total(name, ps) for name in ["original", "top-2"]} for ps in sets})
    t13.loc["random-2 (mean of 2)"] = [np.mean([total(n, ps) for n in ("random-2 #0", "random-2 #1")]) for ps in sets]
    for ps in sets:
        for row in bands.index:
            assert bands.loc[row, (ps, "lo")] <= t13.loc[row, (ps, "total")] <= bands.loc[row, (ps, "hi")]
    assert bands.loc["top-2", ("both", "hi")] < bands.loc["original", ("both", "lo")]    # the edit's cut is resolved
    fig = bias_by_k(t13, sets, [2], lambda k: f"random-{k} (mean of 2)", bands=bands)
    assert all(len(_band_heights(ax)) == 2 for ax in fig.axes)


def test_head_drops_carry_paired_intervals_and_the_scatter_draws_them():
    import numpy as np
    from matplotlib.container import ErrorbarContainer
    from cna_utils.paper.measures import drop_bands
    from cna_utils.publish.plots import zero_vs_mean
    rng = np.random.default_rng(2)
    n = 120
    base = rng.random(n) < 0.7
    ablated = {(3, 1): base & (rng.random(n) < 0.4), (3, 2): base.copy()}        # a strong head, a head with no effect
    long = pd.DataFrame([dict(layer=l, head=h, case=i, op="+-*/"[i % 4], first_correct=bool(a[i]),
                              base_first_correct=bool(base[i])) for (l, h), a in ablated.items() for i in range(n)])
    b = drop_bands(long, ["3_1", "3_2"])
    assert b.loc["3_1", "drop"] == pytest.approx(100 * (base.mean() - ablated[3, 1].mean()))
    assert 20 < b.loc["3_1", "lo"] < b.loc["3_1", "drop"] < b.loc["3_1", "hi"]
    assert b.loc["3_2", ["drop", "lo", "hi"]].tolist() == [0, 0, 0]                # paired: no effect, no width
    with pytest.raises(KeyError, match="sweep them"):
        drop_bands(long, ["9_9"])
    zm = pd.DataFrame({"head": list(b.index), "zero drop": b["drop"], "zero drop lo": b.lo, "zero drop hi": b.hi,
                       "mean drop": b["drop"] / 2, "mean drop lo": b.lo / 2, "mean drop hi": b.hi / 2})
    bars = [c for c in zero_vs_mean(zm).axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and bars[0].has_xerr and bars[0].has_yerr
    plain = [c for c in zero_vs_mean(zm[["head", "zero drop", "mean drop"]]).axes[0].containers
             if isinstance(c, ErrorbarContainer)]
    assert not (plain[0].has_xerr or plain[0].has_yerr)
