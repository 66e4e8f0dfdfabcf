"""The at-a-glance figure: every claim on its rule's scale, where the verdict regions line up."""
import matplotlib
import pytest

from cna_utils.publish.findings import RESULTS
from cna_utils.publish.forest import forest_figure, forest_rows, margin
from cna_utils.publish.scoreboard import load_all

matplotlib.use("Agg")
HIGHER = {"kind": "higher", "replicates": 85.0, "partly": 50.0}
LOWER = {"kind": "lower", "replicates": 18.9, "partly": 59.45}
BAND = {"kind": "band", "replicates": [0.5, 2.0], "partly": [0.25, 4.0]}


@pytest.mark.parametrize("t, at_replicates, at_partly, inside, outside", [
    (HIGHER, 85.0, 50.0, 99.0, 10.0),
    (LOWER, 18.9, 59.45, 3.0, 80.0),
    (BAND, 2.0, 4.0, 1.0, 9.0),
    (BAND, 0.5, 0.25, 1.0, 0.1),
])
def test_the_thresholds_sit_at_0_and_minus_1_for_every_kind_of_rule(t, at_replicates, at_partly, inside, outside):
    assert margin(at_replicates, t) == pytest.approx(0.0) and margin(at_partly, t) == pytest.approx(-1.0)
    assert margin(inside, t) > 0 and margin(outside, t) < -1


def test_a_rule_without_a_partly_region_goes_straight_to_does_not():
    t = {"kind": "higher", "replicates": 2.0}
    assert margin(3.0, t) > 0 and margin(2.0, t) == 0 and margin(1.99, t) < -1


def test_every_committed_verdict_lies_in_its_region_and_every_paper_value_replicates():
    rows = forest_rows(load_all(RESULTS))
    assert len(rows) > 40 and set(rows.part) == {"main model", "division study", "second model"}
    eps = 1e-9
    for r in rows.itertuples():
        assert r.lo <= r.value + eps and r.value <= r.hi + eps, r.rule_id
        if r.verdict == "replicates":
            assert r.lo >= -eps, r.rule_id
        elif r.verdict == "partly":
            assert r.lo >= -1 - eps and r.hi < eps, r.rule_id
        elif r.verdict == "does not":
            assert r.hi < -1 + eps, r.rule_id
        assert r.paper != r.paper or r.paper >= -eps, r.rule_id
    fig = forest_figure(rows[rows.part == "main model"], "main")
    assert len(fig.axes[0].get_yticklabels()) == (rows.part == "main model").sum()


def test_the_readme_shows_the_figure_of_the_committed_results():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "(results/qwen2.5-coder-0.5b/book/at-a-glance.png)" in readme and (RESULTS / "at-a-glance.png").is_file()
