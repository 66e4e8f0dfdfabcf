"""The measures the claims read, on synthetic per-case outcomes whose answers are known."""
import numpy as np
import pandas as pd
import torch

from cna_utils.paper import claims, measures


def _long(n_per_op, heads, flips, groups=None, seed=0):
    """A head sweep's long frame: every case right at base; head h flips a share flips[h] of cases."""
    rng = np.random.default_rng(seed)
    rows = []
    ops = "+-*/"
    cases = [(op, g) for op in ops for g in (groups or [None]) for _ in range(n_per_op)]
    for h, share in enumerate(flips):
        for i, (op, g) in enumerate(cases):
            wrong = rng.random() < share(op) if callable(share) else rng.random() < share
            rows.append(dict(layer=h // 4, head=h % 4, case=i, op=op, group=f"{g}D{op}" if g else "2D" + op,
                             first_correct=not wrong, base_first_correct=True,
                             gold_logprob=-1.0 - wrong, base_gold_logprob=-1.0))
    return pd.DataFrame(rows)


def _t3(ratio_mem=1.0):
    rows = []
    for op in "+-*/":
        for kind, drop in (("memorize", 0.4 * ratio_mem), ("change-one", 0.4)):
            for i in range(50):
                rows.append(dict(op=op, head="0_0", kind=kind, base=True, ablated=bool(i >= 50 * drop)))
    t = pd.DataFrame(index=["memorize"])
    t.attrs["digits"] = pd.DataFrame(rows).to_dict(orient="list")
    return t


def test_heads_measures_see_an_arithmetic_head_and_nothing_in_a_null_sweep():
    flips = [0.6] + [0.0] * 7                                   # head 0_0 flips 60% of every op, the rest nothing
    long = _long(30, None, flips)
    digits = _long(40, [1, 2, 3], flips, groups=[1, 2, 3])
    ms = measures.heads(long, long, digits, _t3())
    assert abs(ms["top_head_drop"].value - 100 * (1 - long[long.layer.eq(0) & long["head"].eq(0)].first_correct.mean())) < 1e-9
    assert 100 / 8 == ms["heads_beyond_2"].value                # one head of 8 beyond 2 points
    assert ms["distinct_top_heads"].value == 1 and ms["digits_agree_add"].value == 3
    assert 0.8 < ms["memorize_ratio_add"].value < 1.25
    null = measures.heads(_long(30, None, [0.0] * 8), _long(30, None, [0.0] * 8),
                          _long(40, None, [0.0] * 8, groups=[1, 2, 3]), _t3(0.0))
    assert null["top_head_drop"].value == 0 and null["top_head_drop"].interval == (0.0, 0.0)
    assert null["distinct_top_heads"].value == 0 and null["digits_agree_div"].value == 0
    rec = {r["rule_id"]: r["verdict"] for r in claims.verdicts({"measures": measures.as_dicts(null)}, "01_arithmetic_heads")}
    assert rec["table_2.distinct_heads"] == "inconclusive"       # 30 cases per op < the rule's 50
    assert rec["table_24.same_head_add"] == "inconclusive"      # 40 per digit count < 100
    assert rec["table_3.memorize_add"] == "does not"


def test_heads_measures_count_distinct_heads_per_operation():
    flips = [lambda op: 0.7 if op in "+-" else 0.0, lambda op: 0.7 if op in "*/" else 0.0] + [0.0] * 6
    long = _long(60, None, flips)
    ms = measures.heads(long, long, _long(10, None, flips, groups=[1, 2, 3]), _t3())
    assert ms["distinct_top_heads"].value == 2 and ms["distinct_top_heads"].interval == (2.0, 2.0)


def test_cna_pe_dag_hidden_measures():
    mk = pd.DataFrame(dict(case=range(40), k=99, mask_correct=[i % 4 == 0 for i in range(40)],
                           keep_correct=[True] * 40, coef=np.linspace(40, 60, 40)))
    eff = pd.DataFrame(dict(case=np.repeat(range(6), 5), score=np.tile(np.arange(5.0), 6), effect=np.tile(np.arange(5.0), 6)))
    ms = measures.cna(mk, eff, 2)
    assert ms["mask_top99"].value == 75 and ms["keep_top99"].value == 0 and abs(ms["coef_top99"].value - 50) < 1e-9
    assert ms["score_effect_spearman"].value == 1.0 and ms["answer_neurons_top3"].method == "exact"
    low = pd.DataFrame(dict(case=list(range(30)) * 2, k=[99] * 30 + [10] * 30, coef=[12.0] * 30 + [4.0] * 30))
    pd_ms = measures.pe_dag(low, 3)
    assert pd_ms["lowest_coef_top99"].value == 12 and pd_ms["lowest_trend"].value == 8
    t8 = pd.DataFrame({"M=2": [1]})
    t8.attrs["per_case"] = {"base": [True] * 30, 2: {"chosen": [i < 10 for i in range(30)], "random": [[True] * 30]}}
    h = measures.hidden(t8, 2, 0, 0, "no path")
    assert abs(h["zero_shot_decrease"].value - 100 * 20 / 30) < 1e-9 and h["zero_shot_gap"].value == h["zero_shot_decrease"].value
    assert h["vectors_gain"].n == 0
    rec = {r["rule_id"]: r for r in claims.verdicts({"measures": measures.as_dicts(h)}, "04_hidden_interpretable_neurons")}
    assert rec["table_7.hidden_vectors"]["verdict"] == "inconclusive" and "no path" in rec["table_7.hidden_vectors"]["this_run"]


def test_lora_pruning_bias_measures():
    base = np.zeros(120, bool)
    base[:30] = True
    better = np.zeros(120, bool)
    better[:90] = True
    groups = {"1-9": [1, 2], "17-30": [5]}
    coefs = torch.ones(4, 25, 10)
    coefs[1:3] *= 1.5                                          # the shallow LoRA models raise every score by 50%
    ms = measures.lora(base, {1: better, 2: better, 5: base}, groups, coefs, [1, 2, 5], case=0)
    assert abs(ms["lora_share_beat"].value - 200 / 3) < 1e-9 and ms["lora_depth_gap"].value == 50
    assert abs(ms["t9_share_grow"].value - 200 / 3) < 1e-9
    assert abs(ms["t10_shallow_top10"].value - 50) < 1e-6 and abs(ms["t10_shallow_minus_deep"].value - 50) < 1e-6
    pr = measures.pruning(base, better, base)
    assert pr["t11_vs_random"].value == 50 and pr["t11_vs_original"].value == 50
    rows = [dict(template=t, group=g, profession=f"{g}{j}", bias=1.0) for t in ("p1", "p2", "h1") for g in ("woman", "man")
            for j in range(10)]
    before = pd.DataFrame(rows)
    edits = {"original": before.to_dict(orient="list"),
             "top-18": before.assign(bias=0.5).to_dict(orient="list"),
             "random-18 #1": before.to_dict(orient="list")}
    b = measures.bias(edits["original"], edits, ["p1", "p2"], ["h1"], 18, ["nurse, a, b", "x, y"], ["nurse", "maid"], 4)
    assert b["mean_bias"].value == 1 and b["bias_cut"].value == 50 and b["bias_cut_held_out"].value == 50
    assert b["bias_cut_vs_random"].value == 50 and b["profession_neurons"].value == 50
    assert b["shared_professions"].value == 4
