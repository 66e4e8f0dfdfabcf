"""Section 3 tables from a made-up sweep summary (the numbers are chosen so the answers are known)."""
import pandas as pd
import pytest

from cna_utils.measure.evaluate import relative_decrease, summarize
from cna_utils.model.forward import Run
from cna_utils.paper import heads as ht


def fake_summary(column="op", values=("all", "+", "-", "*", "/"), base=0.8):
    """Head (0, h) ablated gives accuracy base - 0.1*h on every group; (1, 0) hurts only '-' and '2D-'."""
    rows = []
    for v in values:
        for l, h in [(0, 0), (0, 1), (0, 2), (1, 0)]:
            acc = base - 0.1 * h if l == 0 else (0.1 if v in ("-", "1D-", "2D-", "3D-") else base)
            rows.append({"layer": l, "head": h, column: v, "n": 10, "accuracy": acc, "base_accuracy": base,
                         "gold_logprob": -1.0, "drop": base - acc})
    return pd.DataFrame(rows)


def test_relative_decrease_is_the_papers():
    assert relative_decrease(94.5, 39.3) == pytest.approx(58.4, abs=0.05)      # Table 2 from Table 24
    assert relative_decrease(80.0, 37.9) == pytest.approx(52.6, abs=0.05)


def test_ranking_and_tables():
    sw = fake_summary()
    assert ht.ranked_heads(sw, "op", "+", 2) == ["0_2", "0_1"]
    assert ht.ranked_heads(sw, "op", "-", 1) == ["1_0"]
    t1 = ht.table_1(sw, k=2)
    assert list(t1.columns) == ["ori", "0_2", "0_1"]
    assert t1.loc["2D+", "ori"] == pytest.approx(80.0) and t1.loc["2D+", "0_2"] == pytest.approx(60.0)
    groups = [f"{d}D{op}" for d in (1, 2, 3) for op in "+-*/"]
    t2, top = ht.table_2(sw, fake_summary("group", groups))
    assert top == {"+": "0_2", "-": "1_0", "*": "0_2", "/": "0_2"}
    assert t2.loc["2D", "1_0(-)"] == pytest.approx(100 * 0.7 / 0.8)
    assert t2.loc["3D", "0_2(+)"] == pytest.approx(25.0)
    t24 = ht.tables_24_27(fake_summary("group", groups), k=2)
    assert t24.loc["1D-", "head 1"] == "1_0" and t24.loc["1D-", "acc 1"] == pytest.approx(10.0)
    assert list(t24.index[:3]) == ["1D+", "2D+", "3D+"]


def test_paper_frames():
    t1 = ht.paper_table_frame("table_1")
    assert t1.loc["2D+", "17_22"] == 42.9
    t24 = ht.paper_table_frame("tables_24_27")
    assert t24.loc["2D/", "head 1"] == "14_19" and t24.loc["2D/", "acc 1"] == 13.7


def test_candidate_heads_take_each_groups_best_then_fill_up():
    sw = fake_summary()
    sw["gold_logprob"] = -1.0 - sw["drop"]                 # log p falls with the accuracy: the same ranking
    groups = [f"{d}D{op}" for d in (1, 2, 3) for op in "+-*/"]
    # every group's best first: 0_2 (all, +, *, /), 1_0 (-); then the second choices
    assert ht.candidate_heads((sw, "op"), k=1, at_least=0) == ["0_2", "1_0"]
    assert ht.candidate_heads((sw, "op"), k=2, at_least=0) == ["0_2", "1_0", "0_1"]
    assert ht.candidate_heads((sw, "op"), (fake_summary("group", groups), "group"), k=1, limit=1, at_least=0) == ["0_2"]
    # too few for Table 1: filled with the next heads by the log-prob drop over all cases
    assert ht.candidate_heads((sw, "op"), k=1, at_least=4) == ["0_2", "1_0", "0_1", "0_0"]


def test_candidate_heads_add_every_head_the_screen_puts_beyond_the_threshold():
    sw = fake_summary()
    sw["gold_logprob"] = -1.0 - sw["drop"]
    up = (sw.layer == 1) & (sw.op == "all")
    sw.loc[up, "accuracy"] = 0.83                             # head 1_0 raises "all" by 3 points: beyond 2 too
    assert ht.beyond_heads(sw, 2.0) == ["0_2", "0_1", "1_0"]
    assert ht.beyond_heads(sw, 15.0) == ["0_2"]
    assert ht.candidate_heads((sw, "op"), k=1, at_least=0) == ["0_2", "1_0"]
    assert ht.candidate_heads((sw, "op"), k=1, at_least=0, beyond=12.0) == ["0_2", "1_0"]
    # the margin widens the net: 10 points is within 12 but beyond 12 - 3
    assert ht.candidate_heads((sw, "op"), k=1, at_least=0, beyond=12.0, margin=3.0) == ["0_2", "1_0", "0_1"]
    assert ht.candidate_heads((sw, "op"), k=1, at_least=0, beyond=12.0, margin=3.0, limit=2) == ["0_2", "1_0"]


def test_screen_and_confirm_sweeps_exactly_what_the_estimate_sends_on(tmp_path):
    from conftest import PadTokenizer, make_model, random_cases
    model, tok = make_model("llama-gqa"), PadTokenizer()
    cases = random_cases(model, n=8, seed=8)
    heads = [(l, h) for l in range(3) for h in range(6)]
    hs = ht.screen_and_confirm(model, tok, {"2d": (cases, "op"), "digits": (cases[:4], "group")}, heads,
                               ht.Screen(k=1, limit=4), Run(tmp_path, progress=False))
    for name in ("2d", "digits"):
        swept = {f"{l}_{h}" for l, h in hs.exact[name][["layer", "head"]].drop_duplicates().to_numpy()}
        assert swept == set(hs.confirmed[name])
    assert 1 <= len(hs.confirmed["2d"]) <= 5
    first = summarize(hs.exact["2d"], by="op", keys=("layer", "head"))
    for op in first.op.unique():                      # Table 2's heads reach the per-digit set
        assert ht.ranked_heads(first, "op", op, 1)[0] in hs.confirmed["digits"]
    merged = hs.merged["2d"]
    assert len(merged) == len(heads) * len(cases) and merged["exact"].sum() == len(hs.confirmed["2d"]) * len(cases)
    every = ht.screen_and_confirm(model, tok, {"2d": (cases, "op")}, heads, screen=None, run=Run(progress=False))
    assert len(every.confirmed["2d"]) == len(heads) and not every.estimate
    with pytest.raises(ValueError, match="screen"):
        ht.screen_and_confirm(model, tok, {"2d": (cases, "op")}, heads, screen=ht.Screen("exact"))
    profile = dict(screen="atp*", confirm_top=3, confirm_max=None, screen_margin=0.5)
    assert ht.Screen.from_profile(profile) == ht.Screen("atp*", k=3, limit=None, margin=0.5)
    assert ht.Screen.from_profile(dict(profile, screen=None)) is None
