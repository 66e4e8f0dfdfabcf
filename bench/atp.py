"""Benchmark: attribution patching (AtP, AtP*) against the exact sweep of every head, same cases.

What it measures, in one run on ``--cases`` two-digit cases ("a op b =", numerals, the four
operations in turn):

* the exact sweep (``head_sweep_cases``) of every head, or of ``--sample-heads`` random heads plus
  the ten the estimate ranks first (bigger models);
* ``atp`` and ``atp*`` (``attribution_patching_cases``) of every head;
* per head and group (each operation and "all"): the exact and estimated drops in accuracy (points)
  and in log p(answer) (nats); Spearman correlations of exact vs estimate over the heads;
* the screen chapter 1 uses (``head_tables.candidate_heads`` on the AtP estimate: each group's top
  ``--top`` heads by estimated log-prob and accuracy drop, plus every head whose estimated accuracy
  change over all cases is beyond 2 - ``--margin`` points, at most ``--limit``): how many heads it sends to the exact
  sweep, its recall of the heads whose exact accuracy drop over all cases is >= 2 and >= 10 points
  (Table 1's thresholds; with ``--sample-heads``, among the sampled heads), the same in any single
  operation, and the largest exact drop among the heads it does not send on;
* the cost: seconds of the exact sweep of every head (measured, or scaled from the sample by heads'
  layers), of AtP, of AtP*, and of AtP + the exact sweep of the screened heads; their ratios.

Results go to bench/results/atp.json under the model's name (other models' entries are kept).

    python bench/atp.py --cases 100                                    # SmolLM2, all 270 heads exactly
    python bench/atp.py --cases 100 --model qwen2.5-coder-0.5b --sample-heads 48
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
from _common import clock as timed, start, two_digit_cases

from cna_utils.measure.attribution import attribution_patching_cases
from cna_utils.measure.evaluate import summarize
from cna_utils.measure.names import head_name, parse_heads
from cna_utils.measure.sweep import head_sweep_cases
from cna_utils.model.forward import Run
from cna_utils.model import loading
from cna_utils.paper import heads as ht

THRESHOLDS = (2.0, 10.0)          # accuracy points: Table 1's "beyond 2 points" and "10 points or more"


def per_head(long: pd.DataFrame) -> pd.DataFrame:
    """Drops per (layer, head, op) and "all": accuracy in points and log p(answer) in nats."""
    s = summarize(long, by="op", keys=("layer", "head"), extra=[c for c in ("graddrop",) if c in long])
    s["acc_drop"] = 100 * s["drop"]
    s["lp_drop"] = s["base_gold_logprob"] - s["gold_logprob"]
    return s.set_index(["layer", "head", "op"])


def spearman(a: pd.Series, b: pd.Series) -> float:
    return float(a.rank().corr(b.rank()))


def main():
    args, model, tok, s = start(__doc__, "bench/results/atp.json",
                                **{"--sample-heads": dict(type=int, default=None,
                                                          help="exact sweep of this many random heads plus the "
                                                               "estimate's top ten (default: every head)"),
                                   "--batch-size": dict(type=int, default=32),
                                   "--methods": dict(default="atp,atp*",
                                                     help="estimates to time, comma-separated (atp* costs a "
                                                          "forward and backward per later layer)"),
                                   "--top": dict(type=int, default=3, help="screen: heads per group and metric"),
                                   "--limit": dict(type=int, default=24,
                                                   help="screen: at most this many heads (the book profile's)"),
                                   "--margin": dict(type=float, default=1.0,
                                                    help="screen: points below Table 1's 2 that still confirm")})
    cases = two_digit_cases(tok, args.cases)
    every = [(l, h) for l in range(s.n_layers) for h in range(s.n_heads)]
    est, sec = {}, {}
    methods = args.methods.split(",")
    for method in methods:
        long, sec[method] = timed(lambda: attribution_patching_cases(model, tok, cases, method=method,
                                                                        run=Run(batch_size=16, progress=False)))
        est[method] = per_head(long)
    screen = ht.candidate_heads((est["atp"].reset_index(), "op"), k=args.top, beyond=2.0, margin=args.margin,
                                limit=args.limit)
    if args.sample_heads:
        rng = random.Random(0)
        top = ht.ranked_heads(est["atp"].reset_index(), "op", "all", 10, "gold_logprob")
        heads = sorted(set(rng.sample(every, args.sample_heads)) | set(parse_heads(model, top)))
    else:
        heads = every
    quiet = Run(progress=False, batch_size=args.batch_size)
    exact_long, sec["exact_swept"] = timed(lambda: head_sweep_cases(model, tok, cases, heads=heads, run=quiet))
    exact = per_head(exact_long)
    if args.sample_heads:      # the sweep starts at each head's layer: scale by the layers' share of the work
        work = lambda hs: sum(s.n_layers - l for l, _ in hs)
        sec["exact_every_head"] = sec["exact_swept"] * work(every) / work(heads)
    else:
        sec["exact_every_head"] = sec["exact_swept"]
    confirm = parse_heads(model, screen)
    _, sec["confirm"] = timed(lambda: head_sweep_cases(model, tok, cases, heads=confirm, run=quiet))
    idx = exact.index
    res = dict(model=loading.model_label(model), cases=len(cases), heads=len(every), heads_exact=len(heads),
               screen_rule=dict(method="atp", top=args.top, beyond_points=2.0, margin_points=args.margin,
                                limit=args.limit),
               heads_confirmed=len(screen), correlation={}, screen={}, seconds=sec)
    for method in methods:
        e = est[method].loc[idx]
        res["correlation"][method] = {
            "spearman_logprob_drop": spearman(exact["lp_drop"], e["lp_drop"]),
            "spearman_accuracy_drop": spearman(exact["acc_drop"], e["acc_drop"]),
            "spearman_logprob_drop_all_rows": spearman(exact.xs("all", level="op")["lp_drop"],
                                                       e.xs("all", level="op")["lp_drop"])}
    if "atp*" in est:
        res["correlation"]["atp*"]["spearman_abs_logprob_drop_vs_graddrop"] = spearman(
            exact["lp_drop"].abs(), est["atp*"].loc[idx, "graddrop"])
    chosen = {tuple(h) for h in confirm}
    for scope, worst in (("all cases", exact.xs("all", level="op")["acc_drop"]),
                         ("any operation", exact["acc_drop"].groupby(level=["layer", "head"]).max())):
        r = res["screen"][scope] = {}
        for t in THRESHOLDS:
            big = [h for h, v in worst.items() if v >= t]
            r[f"heads_exact_drop_ge_{t:g}_points"] = len(big)
            r[f"recall_ge_{t:g}_points"] = sum(h in chosen for h in big) / len(big) if big else None
            r[f"missed_ge_{t:g}_points"] = [head_name(*h) for h in big if h not in chosen]
        missed = worst[[h not in chosen for h in worst.index]]
        r["largest_exact_drop_not_confirmed_points"] = float(missed.max()) if len(missed) else None
        r["largest_exact_drop_not_confirmed_head"] = head_name(*missed.idxmax()) if len(missed) else None
    res["ratios"] = {f"exact_over_{m}": sec["exact_every_head"] / sec[m] for m in methods}
    res["ratios"]["exact_over_atp_plus_confirm"] = sec["exact_every_head"] / (sec["atp"] + sec["confirm"])
    res["per_head"] = {f"{l}_{h}_{op}": dict(exact_acc=round(float(r.acc_drop), 3), exact_lp=round(float(r.lp_drop), 5),
                                            atp_acc=round(float(est["atp"].loc[(l, h, op), "acc_drop"]), 3),
                                            atp_lp=round(float(est["atp"].loc[(l, h, op), "lp_drop"]), 5),
                                            graddrop=round(float(est["atp*"].loc[(l, h, op), "graddrop"]), 5)
                                            if "atp*" in est else None)
                       for (l, h, op), r in exact.iterrows()}
    everything = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    everything[args.model] = res                       # one entry per model: a run on another model keeps this one
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(everything, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "per_head"}, indent=2))


if __name__ == "__main__":
    main()
