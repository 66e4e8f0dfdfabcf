"""The verdict rules (claims.yaml) calibrated on the paper's own numbers, and the intervals they read."""
import numpy as np
import pytest

from cna_utils.paper import claims
from cna_utils.measure import stats
from cna_utils.measure.stats import Measure

ALL = claims.load_claims()["claims"]


def test_check_paper_passes_and_the_command_exits_zero(capsys):
    assert claims.main(["--check-paper"]) == 0
    out = capsys.readouterr().out
    assert f"{len(ALL)} of {len(ALL)} rules pass" in out


@pytest.mark.parametrize("c", ALL, ids=[c["rule_id"] for c in ALL])
def test_rule_replicates_on_the_paper_and_not_on_no_effect(c):
    n = c.get("min_n", 1)
    p = claims.paper_value(c)
    if p is not None:
        assert claims.judge(c, Measure.exact(p, n))["verdict"] == "replicates"
    assert claims.judge(c, Measure.exact(c["no_effect"], n))["verdict"] == "does not"


def _inside_points(t):
    """One value per outcome region of a rule's thresholds."""
    if t["kind"] == "band":
        a, b = t["replicates"]
        pts = {"replicates": (a + b) / 2}
        if "partly" in t:
            c, d = t["partly"]
            pts["partly"] = (b + d) / 2 if d > b else (c + a) / 2
            pts["does not"] = d + abs(d) + 1
        else:
            pts["does not"] = b + abs(b) + 1
        return pts, a
    up = t["kind"] == "higher"
    r = t["replicates"]
    sign = 1 if up else -1
    pts = {"replicates": r + sign * (abs(r) + 1)}
    if "partly" in t:
        pts["partly"] = (r + t["partly"]) / 2
        pts["does not"] = t["partly"] - sign * (abs(t["partly"]) + 1)
    else:
        pts["does not"] = r - sign * (abs(r) + 1)
    return pts, r


@pytest.mark.parametrize("c", ALL, ids=[c["rule_id"] for c in ALL])
def test_every_outcome_is_reachable(c):
    t = claims.thresholds(c)
    n = c.get("min_n", 1)
    pts, edge = _inside_points(t)
    for verdict, x in pts.items():
        assert claims.judge(c, Measure.exact(x, n))["verdict"] == verdict, (verdict, x, t)
    rec = claims.judge(c, Measure(edge, n, (edge - 0.5, edge + 0.5)))
    assert rec["verdict"] == "inconclusive"
    small = claims.judge(c, Measure.exact(pts["replicates"], max(0, n - 1))) if n > 1 else None
    if small is not None:
        assert small["verdict"] == "inconclusive" and small["n_needed"] == n


def test_record_carries_n_interval_threshold_and_rule():
    c = next(c for c in ALL if c["rule_id"] == "table_5.mask")
    rec = claims.judge(c, stats.proportion([True] * 34 + [False] * 14))
    assert rec["n"] == 48 and rec["rule_id"] == "table_5.mask"
    lo, hi = rec["interval"]
    assert lo < rec["value"] < hi
    assert rec["threshold"] == {"kind": "higher", "replicates": 85.0, "partly": 50.0}
    assert rec["verdict"] == "partly"            # 70.8% [56.8, 81.8]: above 50, below 85
    assert "85.0%" in rec["rule"] and "(n=48)" in rec["this_run"]


def test_straddling_interval_is_inconclusive_with_the_n_that_would_decide():
    c = next(c for c in ALL if c["rule_id"] == "table_1.top_head")
    rec = claims.judge(c, Measure(8.0, 400, (5.0, 11.0)))
    assert rec["verdict"] == "inconclusive"
    assert rec["n_needed"] == int(np.ceil(400 * (3 / 2) ** 2))        # half-width 3, 2 points from 10


def test_missing_measure_raises_with_the_names():
    with pytest.raises(KeyError, match="no measure .answer_neurons_top3. for claim table_4"):
        claims.verdicts({"measures": {}}, "02_cna")


def test_second_model_claims_use_gpt_j_numbers():
    by_id = {c["rule_id"]: c for c in claims.claims_for("second/02_cna")}
    assert claims.paper_value(by_id["table_19.mask"]) == 58.4
    assert {c["item"] for c in claims.claims_for("second/03_prediction_enhancing_dag")} == {"table_20"}


def test_every_item_has_a_claim():
    assert set(claims.items()) == {c["item"] for c in ALL}


def test_wilson_known_values():
    lo, hi = stats.wilson(0, 16)
    assert lo == 0 and abs(hi - 0.1936) < 1e-3          # 0 of 16: the upper bound is 19.4%, not 0
    lo, hi = stats.wilson(8, 8)
    assert abs(lo - 0.6756) < 1e-3 and hi == 1
    m = stats.proportion([1, 0, 1, 1])
    assert m.value == 75 and m.n == 4 and m.method == "wilson"


def test_bootstrap_is_seeded_and_paired():
    rng = np.random.default_rng(1)
    base = rng.random(200) < 0.7
    abl = base & (rng.random(200) < 0.6)
    a, b = stats.relative_drop(base, abl), stats.relative_drop(base, abl)
    assert a == b                                                           # seeded
    assert a.interval[0] < a.value < a.interval[1]
    none = stats.relative_drop(base, base)                                  # no effect: exactly zero, every resample
    assert none.value == 0 and none.interval == (0.0, 0.0)
    x = rng.normal(size=300)
    m = stats.mean(x)
    assert abs(m.value - x.mean()) < 1e-12
    assert abs((m.interval[1] - m.interval[0]) / 2 - 1.96 * x.std() / np.sqrt(300)) < 0.03


def test_stratified_bootstrap_keeps_group_sizes():
    strata = np.array(["a"] * 5 + ["b"] * 50)
    counts = []
    m = stats.bootstrap(len(strata), lambda idx: counts.append(int((idx < 5).sum())) or 0.0, strata=strata, resamples=50)
    assert m.n == 55 and set(counts) == {5}


def test_the_study_head_rule_passes_over_a_layer_0_head(tmp_path):
    import json

    from cna_utils.paper.study import chapter1_head
    r = dict(profile="book", table_2=dict(top_heads={"+": "0_8"}, ranked={"+": ["0_8", "0_3", "12_4", "3_1"]}))
    (tmp_path / "01_arithmetic_heads.json").write_text(json.dumps(r))
    head, note = chapter1_head(tmp_path, "+")
    assert head == "12_4" and "0_8" in note and "ranked 3" in note
    r["table_2"]["ranked"]["+"] = ["0_8", "0_1"]
    (tmp_path / "01_arithmetic_heads.json").write_text(json.dumps(r))
    assert chapter1_head(tmp_path, "+")[0] == "0_8"


def test_a_measure_read_back_from_json_keeps_its_nan():
    import json

    c = next(c for c in ALL if c["rule_id"] == "table_3.memorize_mul")
    m = Measure(3.5, 16, (0.0, float("nan")))
    back = json.loads(json.dumps({"m": m.to_dict()}).replace("NaN", "null"))["m"]
    rec = claims.judge(c, back)
    assert rec["verdict"] == "inconclusive" and rec["n"] == 16


def test_matched_threshold_takes_the_paper_share():
    import pandas as pd

    from cna_utils.paper.hidden import matched_threshold
    hid = pd.DataFrame({"concepts": [0] * 50 + [3] * 30 + [8] * 15 + [20] * 5})
    assert matched_threshold(hid, 100) == 0
    assert matched_threshold(hid, 20) == 3          # > 3: 20% of the neurons
    assert matched_threshold(hid, 5) == 8           # > 8: 5%
    assert matched_threshold(hid, 1) == 20          # none left
