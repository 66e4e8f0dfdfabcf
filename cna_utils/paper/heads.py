"""Section 3's tables, built from ``head_sweep`` summaries, beside the paper's numbers.

Usage::

    sw = head_sweep(model, tok, cases_2d)                 # rows per (layer, head, op)
    ours, paper = table_1(sw), paper_table_frame("table_1")

Every function returns a pandas DataFrame with accuracies in percent. "Decrease (%)" is the
paper's relative decrease 100 x (original - ablated) / original (``relative_decrease``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

from cna_utils.measure.attribution import attribution_patching_cases, merge_exact
from cna_utils.data.arithmetic import Case, OPERATIONS
from cna_utils.measure.evaluate import accuracy, relative_decrease, summarize, token_table
from cna_utils.measure.interventions import ablate_heads
from cna_utils.measure.names import head_name
from cna_utils.measure.sweep import head_sweep_cases
from cna_utils.model.forward import Run
from cna_utils.paper.numbers import paper_table

__all__ = ["ranked_heads", "candidate_heads", "beyond_heads", "HeadSweeps", "Screen", "screen_and_confirm",
           "estimate_vs_exact", "head_value", "base_accuracy", "table_1", "table_2", "table_3", "tables_24_27",
           "paper_table_frame", "side_by_side", "OP_NAMES"]

OP_NAMES = {s: o.paper for s, o in OPERATIONS.items()}          # Table 2's columns


def ranked_heads(summary: pd.DataFrame, column: str = "op", value: str = "all", k: int | None = None,
                 metric: str = "accuracy") -> list[str]:
    """Heads ("layer_head") sorted by ``metric`` under ablation, lowest first (= biggest drop), for
    the rows where ``column == value``. With metric="accuracy" ties are broken by the mean gold
    log-prob (lower first); metric="gold_logprob" ranks by the mean log p of the answer alone."""
    keys = ["accuracy", "gold_logprob"] if metric == "accuracy" else ["gold_logprob"]
    rows = summary[summary[column] == value].sort_values(keys)
    names = [head_name(l, h) for l, h in zip(rows["layer"], rows["head"])]
    return names[:k] if k else names


def candidate_heads(*screens: tuple[pd.DataFrame, str], k: int = 2, limit: int | None = None,
                    at_least: int = 5, beyond: float | None = None, margin: float = 0.0) -> list[str]:
    """The heads a screen (a small exact sweep, or ``attribution_patching``'s estimate) sends on to
    the exact sweep of the full sets: for every ``(summary, column)`` given and every value of that
    column (each op, each digit group, "all"), the ``k`` heads with the biggest drop in mean log
    p(answer), then the ``k`` with the biggest accuracy drop, taken round-robin (every group's first
    choice before any group's second); then, with ``beyond`` (points), every head whose accuracy
    changes by more than ``beyond - margin`` points either way on the first screen's "all" row,
    biggest change first (Table 1 counts the heads beyond 2 points: ``margin`` is the allowance for
    the screen's error). Cut at ``limit``; when fewer than ``at_least`` (Table 1 shows five), the
    first screen's next heads by the log-prob drop over all its cases fill up."""
    lists = []
    for metric in ("gold_logprob", "accuracy"):
        for summary, column in screens:
            for value in summary[column].unique():
                lists.append(ranked_heads(summary, column, value, k, metric))
    out: list[str] = []
    summary, column = screens[0]
    for rank in range(k):
        for names in lists:
            if rank < len(names) and names[rank] not in out:
                out.append(names[rank])
    if beyond is not None:
        out += [h for h in beyond_heads(summary, beyond - margin, column) if h not in out]
    out = out[:limit] if limit else out
    for name in ranked_heads(summary, column, "all", metric="gold_logprob"):
        if len(out) >= at_least:
            break
        if name not in out:
            out.append(name)
    return out


def beyond_heads(summary: pd.DataFrame, points: float, column: str = "op") -> list[str]:
    """Heads whose accuracy on the "all" row changes by more than ``points`` either way, biggest first."""
    rows = summary[summary[column] == "all"]
    change = (100 * (rows["base_accuracy"] - rows["accuracy"])).abs()
    rows = rows.assign(change=change)[change > points].sort_values("change", ascending=False)
    return [head_name(l, h) for l, h in zip(rows["layer"], rows["head"])]


@dataclass
class HeadSweeps:
    """Chapter 1's sweeps of one run. Per named case set: ``estimate`` (attribution patching of every
    head, long frame; empty without a screen), ``confirmed`` (the heads swept exactly), ``exact``
    (their head_sweep) and ``merged`` (every head: exact rows where confirmed, estimated elsewhere).
    ``beyond_cut``: heads the estimate puts beyond the threshold on the first set that ``limit`` left
    unconfirmed (their numbers stay estimates)."""
    confirmed: dict = field(default_factory=dict)
    estimate: dict = field(default_factory=dict)
    exact: dict = field(default_factory=dict)
    merged: dict = field(default_factory=dict)
    beyond_cut: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def report(self, margin: float = 1.0) -> str:
        """What ran: seconds of the screen, the heads swept exactly per set, those left estimated."""
        text = (f"screen: {self.seconds.get('screen', 0):.0f} s; "
                + "; ".join(f"{len(v)} heads swept exactly on {k}: {', '.join(v)}" for k, v in self.confirmed.items())
                + f"; total {self.seconds.get('total', 0):.0f} s")
        if self.beyond_cut:
            text += f"\nestimated beyond {2 - margin:g} points but over the cap: {', '.join(self.beyond_cut)}"
        return text

    @property
    def all_confirmed(self) -> list[str]:
        """Every head swept exactly on some set, in the order first confirmed."""
        return list(dict.fromkeys(h for hs in self.confirmed.values() for h in hs))


@dataclass(frozen=True)
class Screen:
    """Chapter 1's rule for which heads the exact sweep confirms after an estimate of every head
    (``candidate_heads``): the estimate's ``method`` ("atp", or "atp*" with GradDrop), each group's
    top ``k`` heads, every head estimated beyond ``beyond - margin`` points on the first set's cases
    (``margin``: the allowance for the estimate's error), at most ``limit`` heads (an int, or {set
    name: int})."""
    method: str = "atp"
    k: int = 2
    limit: int | dict | None = None
    beyond: float = 2.0
    margin: float = 1.0

    def __post_init__(self):
        if self.method not in ("atp", "atp*"):
            raise ValueError(f"screen must be 'atp', 'atp*' or None (every head exactly), got {self.method!r}")

    @classmethod
    def from_profile(cls, p: dict) -> "Screen | None":
        """The rule of a profile's chapter-1 parameters (``screen``, ``confirm_top``, ``confirm_max``,
        ``screen_margin``); None when the profile sweeps every head exactly (``screen: null``)."""
        if p["screen"] is None:
            return None
        return cls(p["screen"], k=p["confirm_top"], limit=p["confirm_max"], margin=p["screen_margin"])


def screen_and_confirm(model, tokenizer, sets: dict, heads, screen: Screen | None = Screen(), run: Run = Run(),
                       **sweep) -> HeadSweeps:
    """Screen every head with an estimate, then sweep the heads it could not rule out exactly.

    ``sets``: {name: (cases, by)}. The first is Table 1's: its confirmed heads are the ``screen``
    rule's candidates on its estimate (``Screen``). Every later set confirms the first set's exact
    top head of each group (Table 2 reads the op's top head on the per-digit set) and its own
    estimate's candidates. ``screen``: the rule, its estimate ``attribution_patching_cases`` of
    every head of ``heads`` on every case; None: every head exactly on every set. ``run``: the
    exact sweeps' ``Run``; its ``cache_dir`` holds both stages (resumable). ``sweep``: the other
    ``head_sweep_cases`` options (method, means, answer)."""
    t0 = time.time()
    out = HeadSweeps()
    names = [head_name(l, h) for l, h in heads]
    carry: list[str] = []
    for i, (name, (cases, by)) in enumerate(sets.items()):
        t = time.time()
        if screen is None:
            out.confirmed[name] = names
        else:
            out.estimate[name] = attribution_patching_cases(model, tokenizer, cases, heads=heads, method=screen.method,
                                                            run=Run(run.at(f"atp_{name}").cache_dir, progress=False))
            est = summarize(out.estimate[name], by=by, keys=("layer", "head"))
            cap = screen.limit.get(name) if isinstance(screen.limit, dict) else screen.limit
            own = candidate_heads((est, by), k=screen.k, limit=cap, beyond=screen.beyond if i == 0 else None,
                                  margin=screen.margin)
            out.confirmed[name] = carry + [h for h in own if h not in carry]
            if i == 0:
                out.beyond_cut = [h for h in beyond_heads(est, screen.beyond - screen.margin, by) if h not in own]
        out.seconds[f"screen_{name}"] = time.time() - t
        out.exact[name] = head_sweep_cases(model, tokenizer, cases, heads=out.confirmed[name],
                                           run=run.at(f"sweep_{name}"), **sweep)
        out.merged[name] = merge_exact(out.estimate[name], out.exact[name]) if screen else out.exact[name]
        if i == 0:
            first = summarize(out.exact[name], by=by, keys=("layer", "head"))
            carry = list(dict.fromkeys(ranked_heads(first, by, v, 1)[0] for v in first[by].unique()))
    out.seconds["screen"] = sum(v for k, v in out.seconds.items() if k.startswith("screen_"))
    out.seconds["total"] = time.time() - t0
    return out


def estimate_vs_exact(estimate: pd.DataFrame, exact: pd.DataFrame, column: str = "op") -> pd.DataFrame:
    """The confirmed heads' estimated and exact drops side by side, one row per (head, ``column``
    value) of two summaries on the same cases: ``head``, ``column``, ``est_logprob_drop``,
    ``exact_logprob_drop`` (nats), ``est_drop``, ``exact_drop`` (points)."""
    keys = ["layer", "head", column]
    e, x = estimate.set_index(keys), exact.set_index(keys)
    e = e.loc[e.index.intersection(x.index)]
    x = x.loc[e.index]
    out = pd.DataFrame({"est_logprob_drop": e["base_gold_logprob"] - e["gold_logprob"],
                        "exact_logprob_drop": x["base_gold_logprob"] - x["gold_logprob"],
                        "est_drop": 100 * e["drop"], "exact_drop": 100 * x["drop"]}).reset_index()
    out.insert(0, "name", [head_name(l, h) for l, h in zip(out["layer"], out["head"])])
    return out.drop(columns=["layer", "head"]).rename(columns={"name": "head"})


def head_value(summary: pd.DataFrame, name: str, field: str = "accuracy", column: str = "op", value: str = "all"):
    """One number of a sweep summary: ``field`` of head ``name`` ("layer_head") in the row where
    ``column == value``."""
    l, h = (int(x) for x in name.split("_"))
    row = summary[(summary.layer == l) & (summary["head"] == h) & (summary[column] == value)]
    if row.empty:
        raise KeyError(f"head {name} with {column}={value!r} is not in this sweep summary")
    return float(row[field].iloc[0])


def _acc(summary, name, column, value, base=False):
    return 100 * head_value(summary, name, "base_accuracy" if base else "accuracy", column, value)


def base_accuracy(base: pd.DataFrame, word_answers: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The model's 2-digit accuracy before any ablation (``accuracy`` frames of the dataset and of
    its number-word prompts scored against the word answer): ``table`` (first-token and full-answer
    accuracy per operation beside the paper's Table 1 "ori" column), ``by_op`` (``summarize``),
    ``by_form`` (numerals / words with numeral answers / words with word answers) and
    ``by_template`` (Table 14's templates), all in %."""
    by_op = summarize(base, by="op").set_index("op")
    by_form = base.pivot_table(index="op", columns="form", values="first_correct", aggfunc="mean", margins=True) * 100
    by_form = by_form.rename(columns={"number": "numerals", "word": "words, numeral answer", "All": "all"})
    by_form["words, word answer"] = 100 * pd.concat([word_answers.groupby("op").first_correct.mean(),
                                                     pd.Series({"All": word_answers.first_correct.mean()})])
    by_template = base.pivot_table(index="op", columns="template", values="first_correct", aggfunc="mean",
                                   margins=True) * 100
    paper_ori = paper_table_frame("table_1")["ori"]
    rows = ["all", "+", "-", "*", "/"]
    table = pd.DataFrame({"paper (Llama-7B)": paper_ori.values,
                          "this run": by_op.loc[rows, "accuracy"].values * 100,
                          "this run, full answer": by_op.loc[rows, "answer_accuracy"].values * 100},
                         index=paper_ori.index)
    return dict(table=table, by_op=by_op, by_form=by_form, by_template=by_template)


def table_1(summary: pd.DataFrame, k: int = 5, ops="+-*/", digits: int = 2, metric: str = "accuracy") -> pd.DataFrame:
    """Accuracy (%) of the original model and with each of the top-k heads ablated (Table 1);
    heads ranked by ``metric`` over all ops."""
    heads = ranked_heads(summary, "op", "all", k, metric)
    rows = {}
    for op in ["all"] + list(ops):
        label = "all" if op == "all" else f"{digits}D{op}"
        any_head = heads[0]
        rows[label] = [_acc(summary, any_head, "op", op, base=True)] + [_acc(summary, h, "op", op) for h in heads]
    return pd.DataFrame(rows, index=["ori"] + heads).T


def table_2(summary_by_op: pd.DataFrame, summary_by_group: pd.DataFrame, ops="+-*/", digits=(1, 2, 3)):
    """Decrease (%) for each op's top head (chosen on ``summary_by_op``) on 1D / 2D / 3D (Table 2).
    Returns (table, {op: head})."""
    top = {op: ranked_heads(summary_by_op, "op", op, 1)[0] for op in ops}
    cols = {}
    for op in ops:
        vals = []
        for d in digits:
            g = f"{d}D{op}"
            base, abl = _acc(summary_by_group, top[op], "group", g, True), _acc(summary_by_group, top[op], "group", g)
            vals.append(relative_decrease(base, abl))
        cols[f"{top[op]}({op})"] = vals
    return pd.DataFrame(cols, index=[f"{d}D" for d in digits]), top


def table_3(model, tokenizer, cases: list[Case], top: dict[str, str], batch_size: int = 64,
            base_accuracy: pd.DataFrame | None = None) -> pd.DataFrame:
    """Decrease (%) of teacher-forced digit accuracy on "memorize" and "change-one" digits when the
    op's top head is ablated (Table 3); ``.attrs["digits"]`` holds one row per digit (op, head, kind,
    base and ablated correct) for the intervals. ``cases`` should be numeral cases (words have no digits).
    ``base_accuracy``: ``accuracy(model, tokenizer, cases)`` if already computed (saves one pass)."""
    if base_accuracy is not None and len(base_accuracy) != len(cases):
        raise ValueError("base_accuracy must be accuracy(model, tokenizer, cases) for these same cases")
    cols, digits = {}, []
    for op, head in top.items():
        keep = [i for i, c in enumerate(cases) if c.op == op and c.form == "number"]
        sel = [cases[i] for i in keep]
        if not sel:
            continue
        base = token_table(base_accuracy.iloc[keep] if base_accuracy is not None
                           else accuracy(model, tokenizer, sel, batch_size))
        with ablate_heads(model, [head]):
            abl = token_table(accuracy(model, tokenizer, sel, batch_size))
        digits.append(pd.DataFrame(dict(op=op, head=head, kind=base.kind.values, base=base.correct.values,
                                        ablated=abl.correct.values)))
        vals = []
        for kind in ("memorize", "change-one"):
            m = base.kind == kind
            vals.append(relative_decrease(100 * base.correct[m].mean(), 100 * abl.correct[m].mean()) if m.any()
                        else float("nan"))
        n = {kind: int((base.kind == kind).sum()) for kind in ("memorize", "change-one")}
        cols[f"{OP_NAMES[op]} ({head})"] = vals + [n["memorize"], n["change-one"]]
    out = pd.DataFrame(cols, index=["memorize", "change-one", "n memorize digits", "n change-one digits"])
    # per digit: base / ablated correct (plain lists: pandas compares attrs when it concatenates frames)
    out.attrs["digits"] = pd.concat(digits, ignore_index=True).to_dict(orient="list") if digits else None
    return out


def tables_24_27(summary_by_group: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Per op and digit count: original accuracy and the top-k heads with their accuracy (%)."""
    rows = []
    groups = [g for g in summary_by_group["group"].unique() if g != "all"]
    order = {op: i for i, op in enumerate("+-*/")}
    for g in sorted(groups, key=lambda g: (order.get(g[-1], 9), g)):
        heads = ranked_heads(summary_by_group, "group", g, k)
        row = {"group": g, "ori": _acc(summary_by_group, heads[0], "group", g, True)}
        for i, h in enumerate(heads, 1):
            row[f"head {i}"] = h
            row[f"acc {i}"] = _acc(summary_by_group, h, "group", g)
        row["n"] = int(summary_by_group[summary_by_group["group"] == g]["n"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def paper_table_frame(key: str) -> pd.DataFrame:
    """The paper's table as a DataFrame (rows x columns as printed in the paper)."""
    t = paper_table(key)
    if key == "tables_24_27":
        rows = []
        for g, v in t.items():
            row = {"group": g, "ori": v["ori"]}
            for i, (h, acc) in enumerate(v["heads"].items(), 1):
                row[f"head {i}"], row[f"acc {i}"] = h, acc
            rows.append(row)
        return pd.DataFrame(rows).set_index("group")
    if isinstance(t["rows"], list):                       # one list per row, first column the row name
        return pd.DataFrame(t["rows"], columns=t["columns"]).set_index(t["columns"][0])
    return pd.DataFrame(t["rows"], index=t["columns"]).T


def side_by_side(paper: pd.DataFrame, ours: pd.DataFrame, ours_label: str = "this run",
                 paper_label: str = "paper (Llama-7B)") -> pd.DataFrame:
    """Paper and this run in one frame (column blocks), aligned on the row labels."""
    return pd.concat({paper_label: paper, ours_label: ours}, axis=1)
