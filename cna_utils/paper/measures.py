"""The numbers the claims read (``claims.yaml``'s ``measure`` keys), each a ``stats.Measure`` with
its n and 95% interval, computed from a chapter's per-case outcomes.

Usage (a chapter's verdict cell)::

    results["measures"] = measures.heads(scr_long, sw_long, swg_long, t3)    # chapter 1
    verdicts = claims.verdicts(results, "01_arithmetic_heads")

Resampling is over the cases a number is an average of (stratified by operation or digit group
where the number is computed per group); paired numbers (ablated vs not, one model vs another)
resample the same cases on both sides.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cna_utils.data.arithmetic import OPERATIONS
from cna_utils.measure.neurons import coef_decrease
from cna_utils.measure.stats import (bootstrap, mean, Measure, proportion, relative_drop, resample_indices,
                                     RESAMPLES, SEED)

__all__ = ["OPS", "AGREE_K", "MIN_DECREASE", "head_matrix", "heads", "cna", "pe_dag", "hidden", "lora", "pruning",
           "bias", "as_dicts", "zero_shot_bands", "bias_bands", "drop_bands"]

OPS = {s: o.short for s, o in OPERATIONS.items()}
# Tables 24-27: the top-k within which the paper's own tables show one head shared by 1, 2 and 3 digits
AGREE_K = {"+": 1, "-": 2, "*": 5, "/": 1}
MIN_DECREASE = 5.0     # a "top head" must cost at least this relative decrease (%) to count as one
RATIO_CAP = 100.0      # Table 3's memorize / change-one ratio when change-one digits lose nothing


def as_dicts(ms: dict) -> dict:
    """{name: Measure} -> {name: dict} for a results file."""
    return {k: v.to_dict() for k, v in ms.items()}


def head_matrix(long: pd.DataFrame, metric: str = "first_correct"):
    """A head sweep's long frame as arrays: (heads ["l_h"], case info frame, base [cases],
    ablated [cases, heads])."""
    long = long.sort_values(["layer", "head", "case"])
    names = [f"{l}_{h}" for l, h in dict.fromkeys(zip(long["layer"], long["head"]))]
    n = long.case.nunique()
    abl = long[metric].to_numpy(dtype=float).reshape(len(names), n).T
    first = long[(long["layer"] == long["layer"].iloc[0]) & (long["head"] == long["head"].iloc[0])]
    return names, first.reset_index(drop=True), first["base_" + metric].to_numpy(dtype=float), abl


def _means(idx, X):
    """Means of ``X``'s rows over each resample of case indices ``idx`` [R, n]: [R] for a vector,
    [R, columns] for a matrix (as resample counts @ X, so a [R, n, columns] copy is never made)."""
    if X.ndim == 1:
        return X[idx].mean(-1)
    W = np.zeros((idx.shape[0], X.shape[0]))
    np.add.at(W, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), idx.ravel()), 1.0)
    return W @ X / idx.shape[1]


def drop_bands(long: pd.DataFrame, heads, metric: str = "first_correct", scale: float = 100.0) -> pd.DataFrame:
    """Each head's drop (base minus ablated mean of ``metric`` over a sweep's long frame, times
    ``scale``: points for accuracy) with its 95% bootstrap interval over the cases, paired and
    resampled within each operation. Index ``heads`` ("layer_head"); columns drop, lo, hi."""
    names, info, base, abl = head_matrix(long, metric)
    missing = [h for h in heads if h not in names]
    if missing:
        raise KeyError(f"heads {missing} are not in this sweep: sweep them first")
    X = abl[:, [names.index(h) for h in heads]]
    idx = resample_indices(len(base), RESAMPLES, SEED, info.op.to_numpy())
    draws = scale * (_means(idx, base)[:, None] - _means(idx, X))
    value = scale * (base.mean() - X.mean(0))
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    return pd.DataFrame(dict(drop=value, lo=np.minimum(lo, value), hi=np.maximum(hi, value)), index=list(heads))


def _rel(base_mean, abl_mean):
    return np.where(base_mean[..., None] > 0, 100 * (base_mean[..., None] - abl_mean)
                    / np.where(base_mean[..., None] > 0, base_mean[..., None], 1), 0.0)


def heads(screen: pd.DataFrame, sweep: pd.DataFrame, sweep_digits: pd.DataFrame, t3: pd.DataFrame) -> dict:
    """Chapter 1's measures from the long frames of the screen (every head), the 2-digit sweep and the
    per-digit sweep (the screened heads), and ``paper.heads.table_3``'s per-digit outcomes."""
    return {**_screen_measures(screen), **_sweep_measures(sweep), **_memorize_measures(t3),
            **_digit_agreement_measures(sweep_digits)}


def _screen_measures(screen: pd.DataFrame) -> dict:
    """Table 1's share of heads beyond 2 points, on every case of the screen."""
    out = {}
    names, info, base, abl = head_matrix(screen)
    strata = info.op.to_numpy()
    drop = lambda idx: np.abs(_means(idx, base)[:, None] - _means(idx, abl)) * 100       # [R, heads]
    out["heads_beyond_2"] = bootstrap(len(base), lambda idx: 100 * (drop(idx) > 2).mean(-1), strata=strata,
                                      unit="%", vectorized=True)
    return out


def _sweep_measures(sweep: pd.DataFrame) -> dict:
    """Table 1's top head and Table 2's per-operation heads, on the 2-digit sweep."""
    out = {}
    names, info, base, abl = head_matrix(sweep)
    strata = info.op.to_numpy()
    out["top_head_drop"] = bootstrap(len(base), lambda idx: 100 * (_means(idx, base)[:, None]
                                                                   - _means(idx, abl)).max(-1),
                                     strata=strata, unit=" points", vectorized=True)
    by_op = {op: np.flatnonzero(strata == op) for op in OPS}
    for op, word in OPS.items():
        rows = by_op[op]
        if not len(rows):
            out[f"op_head_decrease_{word}"] = Measure.exact(0.0, 0, "%", note="no case of this operation")
        else:
            b, a = base[rows], abl[rows]
            out[f"op_head_decrease_{word}"] = bootstrap(
                len(rows), lambda idx, b=b, a=a: _rel(_means(idx, b), _means(idx, a)).max(-1), unit="%",
                vectorized=True)

    def distinct(idx):
        tops = []
        for op, rows in by_op.items():
            mine = idx[np.isin(idx, rows)] if len(rows) else idx[:0]
            if not len(mine):
                continue
            rel = _rel(base[mine].mean()[None], abl[mine].mean(0)[None])[0]
            if rel.max() >= MIN_DECREASE:
                tops.append(int(rel.argmax()))
        return len(set(tops))

    out["distinct_top_heads"] = bootstrap(len(base), distinct, strata=strata, resamples=1000)
    out["distinct_top_heads"] = Measure(out["distinct_top_heads"].value, min(len(r) for r in by_op.values()),
                                        out["distinct_top_heads"].interval, "bootstrap",
                                        note="n: cases of the smallest operation")
    return out


def _memorize_measures(t3: pd.DataFrame) -> dict:
    """Table 3: the memorize / change-one ratio of each operation's digit outcomes."""
    out = {}
    digits = pd.DataFrame(t3.attrs["digits"]) if t3.attrs.get("digits") else None
    if digits is not None:
        for op, word in OPS.items():
            d = digits[digits.op == op]
            if not len(d):
                continue
            kinds = d.kind.to_numpy()
            b, a = d.base.to_numpy(dtype=float), d.ablated.to_numpy(dtype=float)
            mem, chg = kinds == "memorize", kinds == "change-one"
            if not mem.any() or not chg.any():
                out[f"memorize_ratio_{word}"] = Measure.exact(0.0, 0, "x", note="no digit of one kind among the cases")
                continue

            def ratio(idx, b=b, a=a, mem=mem, chg=chg):
                def dec(sel):
                    s = idx[sel[idx]]
                    mb = b[s].mean() if len(s) else 0.0
                    return 100 * (mb - a[s].mean()) / mb if mb > 0 else 0.0
                dm, dc = dec(mem), dec(chg)
                return min(RATIO_CAP, dm / dc) if dc > 0 else (0.0 if dm <= 0 else RATIO_CAP)

            m = bootstrap(len(b), ratio, strata=kinds, resamples=1000, unit="x")
            out[f"memorize_ratio_{word}"] = Measure(m.value, int(min(mem.sum(), chg.sum())), m.interval, m.method,
                                                    "x", note="n: digits of the rarer kind")
    return out


def _digit_agreement_measures(sweep_digits: pd.DataFrame) -> dict:
    """Tables 24-27: does a head stay among the top heads across 1-, 2- and 3-digit cases?"""
    out = {}
    names, info, base, abl = head_matrix(sweep_digits)
    lp_names, _, lp_base, lp_abl = head_matrix(sweep_digits, "gold_logprob")
    groups = info.group.to_numpy()
    for op, word in OPS.items():
        gs = [g for g in (f"{d}D{op}" for d in (1, 2, 3)) if (groups == g).any()]
        if len(gs) < 3:
            out[f"digits_agree_{word}"] = Measure.exact(0.0, 0, note="fewer than three digit counts swept")
            continue
        rows = [np.flatnonzero(groups == g) for g in gs]
        k = AGREE_K[op]

        def agree(idx, rows=rows, k=k):
            sets = []
            for r in rows:
                mine = idx[np.isin(idx, r)]
                rel = _rel(base[mine].mean()[None], abl[mine].mean(0)[None])[0]
                key = rel + 1e-6 * (lp_base[mine].mean() - lp_abl[mine].mean(0))        # ties: the log-prob drop
                order = np.argsort(-key)[:k]
                sets.append({int(h) for h in order if rel[h] >= MIN_DECREASE})
            return max((sum(h in s for s in sets) for s in sets for h in s), default=0)

        m = bootstrap(len(base), agree, strata=groups, resamples=1000)
        out[f"digits_agree_{word}"] = Measure(m.value, min(len(r) for r in rows), m.interval, m.method,
                                              note=f"top-{k} of each digit count; n: cases per digit count")
    return out


def _spearman(x, y) -> float:
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def cna(mk: pd.DataFrame, eff: pd.DataFrame | None = None, answer_neurons: int | None = None) -> dict:
    """Chapter 2: Table 5 at top-99 (mask and keep: share of correct cases lost, Wilson; coef: mean
    over cases, bootstrap), the importance-vs-effect Spearman (bootstrap over cases), Table 4's count."""
    top = mk[mk.k == 99]
    out = {"mask_top99": proportion(~top.mask_correct.to_numpy(dtype=bool)),
           "keep_top99": proportion(~top.keep_correct.to_numpy(dtype=bool)),
           "coef_top99": mean(top.coef.to_numpy(dtype=float))}
    if eff is not None and len(eff):
        cases = eff.case.unique()
        parts = [eff[eff.case == c] for c in cases]
        out["score_effect_spearman"] = bootstrap(
            len(parts), lambda idx: _spearman(np.concatenate([parts[i].score.to_numpy() for i in idx]),
                                              np.concatenate([parts[i].effect.to_numpy() for i in idx])),
            resamples=1000)
    if answer_neurons is not None:
        out["answer_neurons_top3"] = Measure.exact(answer_neurons, 3)
    return out


def pe_dag(low: pd.DataFrame, root_edges: int | None = None) -> dict:
    """Chapter 3: Table 6 at top-99 (mean over cases) and the top-99 minus top-10 change (paired per case)."""
    k99 = low[low.k == 99].set_index("case").coef
    out = {"lowest_coef_top99": mean(k99.to_numpy(dtype=float))}
    if 10 in set(low.k):
        k10 = low[low.k == 10].set_index("case").coef.reindex(k99.index)
        out["lowest_trend"] = mean((k99 - k10).to_numpy(dtype=float), unit=" points")
    if root_edges is not None:
        out["root_edges"] = Measure.exact(root_edges, 1)
    return out


def hidden(t8: pd.DataFrame, M: int, gain: int | None = None, n_vectors: int | None = None, why: str = "") -> dict:
    """Chapter 4: Table 8 at the paper's M (relative decrease of the per-case accuracy, and its gap to the
    random sets' mean, paired over cases) and Table 7's share of vectors that gain concepts."""
    pc = t8.attrs["per_case"]
    base, chosen, rand = (np.asarray(pc["base"], float), np.asarray(pc[M]["chosen"], float),
                          [np.asarray(r, float) for r in pc[M]["random"]])
    out = {"zero_shot_decrease": relative_drop(base, chosen)}
    if rand:
        def gap(idx):
            mb = base[idx].mean(-1)
            safe = np.where(mb > 0, mb, 1)
            d = np.where(mb > 0, 100 * (mb - chosen[idx].mean(-1)) / safe, 0)
            r = np.mean([np.where(mb > 0, 100 * (mb - x[idx].mean(-1)) / safe, 0) for x in rand], axis=0)
            return d - r
        out["zero_shot_gap"] = bootstrap(len(base), gap, unit=" points", vectorized=True)
    if n_vectors is not None:
        out["vectors_gain"] = Measure.exact(100 * gain / n_vectors if n_vectors else 0.0, n_vectors, "%", note=why)
    return out


def lora(base_correct, model_correct: dict, groups: dict, coefs: torch.Tensor, layer_order: list, case: int,
         k: int = 10) -> dict:
    """Chapter 5: Figure 2 (share of LoRA models above the original and first-minus-last group accuracy,
    paired over test sentences), Table 9 (share of the case's top-3 scores that grow, Wilson) and Table 10
    (top-k increase per case in the first group, and first minus last group, bootstrap over cases).
    ``model_correct``: {layer: per-test-sentence 0/1}; ``coefs``: ``lora_coefficients``' [models, cases, k]
    with row 0 the original and rows 1.. in ``layer_order``."""
    b = np.asarray(base_correct, float)
    layers = list(model_correct)
    acc = np.stack([np.asarray(model_correct[l], float) for l in layers])      # [models, n]
    out = {"lora_share_beat": bootstrap(len(b), lambda idx: 100 * (acc[:, idx].mean(-1) > b[idx].mean(-1)[None])
                                        .mean(0), unit="%", vectorized=True)}
    names = list(groups)
    first = [i for i, l in enumerate(layers) if l in groups[names[0]]]
    last = [i for i, l in enumerate(layers) if l in groups[names[-1]]]
    if not (first and last):
        out["lora_depth_gap"] = Measure.exact(0.0, 0, " points", note="no LoRA model in the first or last group")
    else:
        out["lora_depth_gap"] = bootstrap(len(b), lambda idx: 100 * (acc[first][:, idx].mean(-1).mean(0)
                                                                     - acc[last][:, idx].mean(-1).mean(0)),
                                          unit=" points", vectorized=True)
    c0 = coefs[0, case, :3]
    grow = (torch.sign(c0) * (coefs[1:, case, :3] - c0) > 0).flatten().numpy()
    out["t9_share_grow"] = proportion(grow)
    inc = np.array([[-coef_decrease(coefs[0, i, :k], coefs[j, i, :k]) for i in range(coefs.shape[1])]
                    for j in range(1, coefs.shape[0])])                                  # [models, cases]
    rows = {g: [j for j, l in enumerate(layer_order) if l in ls] for g, ls in groups.items()}
    sh, dp = rows[names[0]], rows[names[-1]]
    out["t10_shallow_top10"] = mean(np.nanmean(inc[sh], 0)) if sh else Measure.exact(0.0, 0, "%")
    if not (sh and dp):
        out["t10_shallow_minus_deep"] = Measure.exact(0.0, 0, " points", note="no LoRA model in the first or last group")
    else:
        out["t10_shallow_minus_deep"] = mean(np.nanmean(inc[sh], 0) - np.nanmean(inc[dp], 0), unit=" points")
    return out


def pruning(original, pruned_lora, random_lora) -> dict:
    """Chapter 6: Table 11's differences in whole-answer accuracy (points), paired over test sentences."""
    o, p, r = (np.asarray(x, float) for x in (original, pruned_lora, random_lora))
    return {"t11_vs_random": mean(100 * (p - r), unit=" points"),
            "t11_vs_original": mean(100 * (p - o), unit=" points")}


def _cut(before: np.ndarray, after: np.ndarray):
    def stat(idx):
        b = before[idx].mean(-1)
        return np.where(b != 0, 100 * (1 - after[idx].mean(-1) / np.where(b != 0, b, 1)), 0.0)
    return stat


def zero_shot_bands(t8: pd.DataFrame, thresholds=range(4)) -> pd.DataFrame:
    """95% bootstrap intervals (over cases, paired) of Table 8's decreases for each M: the chosen set's
    relative decrease and the random sets' mean one. Index ``M=<m>``; columns ``chosen_lo``,
    ``chosen_hi``, ``random_lo``, ``random_hi`` (%)."""
    pc = t8.attrs["per_case"]
    base = np.asarray(pc["base"], float)
    rows = {}
    for M in thresholds:
        chosen, rand = np.asarray(pc[M]["chosen"], float), [np.asarray(r, float) for r in pc[M]["random"]]
        lo, hi = relative_drop(base, chosen).interval
        row = dict(chosen_lo=lo, chosen_hi=hi, random_lo=float("nan"), random_hi=float("nan"))
        if rand:
            def mean_rel(idx, rand=rand):
                mb = base[idx].mean(-1)
                return np.mean([np.where(mb > 0, 100 * (mb - r[idx].mean(-1)) / np.where(mb > 0, mb, 1), 0)
                                for r in rand], axis=0)
            row["random_lo"], row["random_hi"] = bootstrap(len(base), mean_rel, vectorized=True).interval
        rows[f"M={M}"] = row
    return pd.DataFrame(rows).T


def bias_bands(scores: dict, prompt_sets: dict) -> pd.DataFrame:
    """95% bootstrap intervals (over professions) of Table 13's total bias (nats) after each edit of
    ``edit_table(...).attrs["scores"]``, per prompt set; the random sets of one k pooled as their mean
    (rows named as ``edit_table`` names them). Columns (prompt set, "lo" / "hi")."""
    frames = {name: pd.DataFrame(f) for name, f in scores.items()}
    per = {}
    for name, f in frames.items():
        for pname, ps in prompt_sets.items():
            per[name, pname] = _per_profession(f, ps)
    names = [n for n in frames if not n.startswith("random-")]
    draws = {}
    for n in frames:
        if n.startswith("random-"):
            draws.setdefault(n.split(" ")[0], []).append(n)
    rows = {}
    for label, members in [(n, [n]) for n in names] + [(f"{k} (mean of {len(m)})", m) for k, m in draws.items()]:
        row = {}
        for pname in prompt_sets:
            x = np.mean([per[m, pname].to_numpy() for m in members], axis=0)
            row[pname, "lo"], row[pname, "hi"] = mean(x, unit=" nats").interval
        rows[label] = row
    out = pd.DataFrame(rows).T
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


def _per_profession(frame: pd.DataFrame, prompts) -> pd.Series:
    """The mean bias of each (group, profession) over the ``prompts`` of a ``bias_scores`` frame."""
    return frame[frame.template.isin(prompts)].groupby(["group", "profession"], sort=True).bias.mean()


def bias(before: pd.DataFrame, edits: dict, prompts, held_out, k: int, top_tokens: list[str], occupations,
         shared: int) -> dict:
    """Chapter 7: the mean bias (nats) over prompts and professions and the top-``k`` edit's cut (%) on the
    eight prompts and on held-out prompts, and the cut minus the random sets' mean cut, resampled over
    professions (``bias_scores`` frames: ``before``, ``edits`` = ``edit_table(...).attrs["scores"]``); Table 12's share of
    neurons with a profession among their top tokens (Wilson); Table 23's shared professions."""
    before, edits = pd.DataFrame(before), {name: pd.DataFrame(f) for name, f in edits.items()}
    b8 = _per_profession(before, prompts)
    out = {"mean_bias": mean(b8.to_numpy(), unit=" nats")}
    top = edits[f"top-{k}"]
    e8 = _per_profession(top, prompts).reindex(b8.index).to_numpy()
    out["bias_cut"] = bootstrap(len(b8), _cut(b8.to_numpy(), e8), unit="%", vectorized=True)
    bh = _per_profession(before, held_out)
    eh = _per_profession(top, held_out).reindex(bh.index).to_numpy()
    out["bias_cut_held_out"] = bootstrap(len(bh), _cut(bh.to_numpy(), eh), unit="%", vectorized=True)
    rand = [_per_profession(f, prompts).reindex(b8.index).to_numpy() for name, f in edits.items()
            if name.startswith(f"random-{k} ")]
    if rand:
        cut_top = _cut(b8.to_numpy(), e8)
        cuts = [_cut(b8.to_numpy(), r) for r in rand]
        out["bias_cut_vs_random"] = bootstrap(len(b8), lambda idx: cut_top(idx) - np.mean([c(idx) for c in cuts], 0),
                                              unit=" points", vectorized=True)
    occ = {o.lower() for o in occupations}
    hits = [bool({t.strip().lower() for t in toks.split(", ")} & occ) for toks in top_tokens]
    out["profession_neurons"] = proportion(hits)
    out["shared_professions"] = Measure.exact(shared, 1)
    return out
